//! The shape of the code that ARCHITECTURE.md promises, read from the sources: modules import
//! only those below them, the model names no backend, files and functions stay short.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// kiln's top-level modules, bottom first: each may import only those before it.
const LAYERS: &[&str] = &[
    "files", "config", "memory", "tokenizer", "data", "kernels", "model", "backend", "run",
    "generate", "translate", "serve", "distributed", "train", "interop", "plot", "cli",
];

const MAX_FILE_LINES: usize = 500;
const MAX_FN_LINES: usize = 80;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a readable source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The top-level module a file belongs to (`src/run/checkpoint.rs` → `run`).
fn module_of(file: &Path) -> String {
    let relative = file.strip_prefix(src()).expect("a file under src");
    let first = relative.components().next().expect("a path");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// A file's code without its comments (`//…` to the end of the line, outside strings).
fn code(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("a readable source file");
    text.lines().map(strip_comment).collect()
}

fn strip_comment(line: &str) -> String {
    let mut in_string = false;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '"' if previous != '\\' => in_string = !in_string,
            '/' if !in_string && previous == '/' => return line[..i - 1].to_string(),
            _ => {}
        }
        previous = c;
    }
    line.to_string()
}

/// The kiln modules a file names as `crate::<module>`, in paths or `use` groups.
fn imports(file: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in code(file) {
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group.split([',', '}']).collect(),
                None => vec![rest],
            };
            for name in names {
                let name: String =
                    name.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if LAYERS.contains(&name.as_str()) {
                    found.insert(name);
                }
            }
        }
    }
    found
}

#[test]
fn modules_import_only_those_below_them() {
    let mut wrong = Vec::new();
    for file in rust_files(&src()) {
        let module = module_of(&file);
        let Some(level) = LAYERS.iter().position(|m| *m == module) else {
            assert!(
                ["lib", "main"].contains(&module.as_str()),
                "{}: a module ARCHITECTURE.md and this test do not place",
                file.display()
            );
            continue;
        };
        for imported in imports(&file) {
            let theirs = LAYERS.iter().position(|m| *m == imported).expect("listed");
            if imported != module && theirs > level {
                wrong.push(format!("{} ({module}) imports {imported}", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
}

#[test]
fn config_is_a_leaf() {
    for file in rust_files(&src().join("config")) {
        let imported = imports(&file);
        assert!(imported.iter().all(|m| m == "config"), "{} imports {imported:?}", file.display());
    }
}

#[test]
fn the_model_names_no_backend() {
    let backends = ["NdArray", "LibTorch", "Wgpu", "Flex", "ndarray", "libtorch", "tch", "wgpu"];
    let backends = backends.map(|b| (b, regex::Regex::new(&format!(r"\b{b}\b")).unwrap()));
    for file in rust_files(&src().join("model")) {
        for (number, line) in code(&file).iter().enumerate() {
            for (name, pattern) in &backends {
                assert!(
                    !pattern.is_match(line) && !line.contains("TypeId"),
                    "{}:{}: names {name}: {line}",
                    file.display(),
                    number + 1
                );
            }
        }
    }
}

#[test]
fn files_stay_short() {
    for file in rust_files(&src()) {
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        assert!(
            lines <= MAX_FILE_LINES,
            "{}: {lines} lines (at most {MAX_FILE_LINES})",
            file.display()
        );
    }
}

/// Functions as rustfmt lays them out: from the `fn` line to the `}` at its indentation.
fn function_lengths(file: &Path) -> Vec<(String, usize, usize)> {
    let lines = code(file);
    let fn_start =
        regex::Regex::new(r"^(\s*)(pub(\([^)]*\))? )?(const )?(unsafe )?fn (\w+)").unwrap();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(caps) = fn_start.captures(line) else {
            continue;
        };
        let indent = caps[1].to_string();
        let signature_end = lines[start..]
            .iter()
            .position(|l| l.trim_end().ends_with('{') || l.trim_end().ends_with(';'));
        let Some(end_offset) = signature_end else {
            continue;
        };
        if lines[start + end_offset].trim_end().ends_with(';') {
            continue;
        }
        let close = format!("{indent}}}");
        let end = lines[start..].iter().position(|l| l.trim_end() == close);
        if let Some(end) = end {
            found.push((caps[6].to_string(), start + 1, end + 1));
        }
    }
    found
}

#[test]
fn functions_stay_short() {
    let mut long = Vec::new();
    for file in rust_files(&src()) {
        for (name, line, length) in function_lengths(&file) {
            if length > MAX_FN_LINES {
                long.push(format!("{}:{line}: fn {name} has {length} lines", file.display()));
            }
        }
    }
    assert!(long.is_empty(), "functions over {MAX_FN_LINES} lines:\n{}", long.join("\n"));
}

#[test]
fn the_checks_see_what_they_check() {
    // A layer list that no longer matches the folders would make the import check vacuous.
    let on_disk: BTreeSet<String> = rust_files(&src()).iter().map(|f| module_of(f)).collect();
    for module in LAYERS {
        assert!(on_disk.contains(*module), "no src/{module}(.rs)");
    }
    assert!(imports(&src().join("cli/mod.rs")).contains("config"));
    let here = Path::new(file!());
    let lengths = function_lengths(&Path::new(env!("CARGO_MANIFEST_DIR")).join(here));
    assert!(lengths.iter().any(|(name, _, n)| name == "function_lengths" && *n > 10));
}
