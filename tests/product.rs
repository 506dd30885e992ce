//! kiln as a new user meets it: the README's quickstart run from an empty folder with an
//! installed binary, presets, `generate`'s conveniences, the files a run leaves for other
//! tools, the report in a real browser, and the CLI reference kept in step with the code.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::copy_dir;

/// Training made short enough for a test, through the environment so that the README's
/// commands run as written.
const SHORT: [(&str, &str); 5] = [
    ("KILN_TRAINING__MAX_ITERS", "40"),
    ("KILN_TRAINING__EVAL_INTERVAL", "20"),
    ("KILN_TRAINING__EVAL_ITERS", "4"),
    ("KILN_TRAINING__WARMUP_ITERS", "5"),
    ("KILN_TRAINING__CHECKPOINT_INTERVAL", "20"),
];

/// A text of about 30 kB that the test writes itself: sentences from a small grammar.
fn my_text() -> String {
    let who = ["the potter", "a student", "the old kiln", "my neighbour", "the river"];
    let what = ["shapes the clay", "waits for the fire", "sings at dawn", "counts the pots"];
    let how = ["slowly", "with care", "every morning", "before the rain", "in silence"];
    let mut text = String::new();
    for i in 0..700 {
        let line = format!(
            "{} {} {}.",
            who[i % who.len()],
            what[(i / 3) % what.len()],
            how[(i / 7) % how.len()]
        );
        let mut chars = line.chars();
        let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or(' ');
        text.push(first);
        text.extend(chars);
        text.push(if i % 5 == 4 { '\n' } else { ' ' });
    }
    text
}

/// An empty folder with `bin/kiln` copied in (an installed binary, away from the checkout).
struct Sandbox {
    _dir: tempfile::TempDir,
    home: PathBuf,
    bin: PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_kiln"), bin.join("kiln")).unwrap();
        let home = dir.path().join("work");
        std::fs::create_dir(&home).unwrap();
        Self { _dir: dir, home, bin }
    }

    /// Runs a shell command line in the folder, with the installed kiln first on PATH.
    fn sh(&self, line: &str, stdin: &str) -> Output {
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default());
        let mut child = Command::new("sh")
            .args(["-c", line])
            .current_dir(&self.home)
            .env("PATH", path)
            .envs(SHORT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    fn ok(&self, line: &str) -> (String, String) {
        self.ok_with(line, "")
    }

    fn ok_with(&self, line: &str, stdin: &str) -> (String, String) {
        let out = self.sh(line, stdin);
        let (stdout, stderr) = texts(&out);
        assert!(out.status.success(), "`{line}` failed:\n{stdout}\n{stderr}");
        (stdout, stderr)
    }

    fn refused(&self, line: &str) -> String {
        let out = self.sh(line, "");
        let (stdout, stderr) = texts(&out);
        assert_eq!(out.status.code(), Some(1), "`{line}` should fail:\n{stdout}\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `kiln …` lines of the README's quickstart block (between `<!-- quickstart -->` and the
/// end of the next code block).
fn quickstart_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let start = readme.find("<!-- quickstart -->").expect("README marks its quickstart");
    let block = &readme[start..];
    let open = block.find("```").unwrap();
    let body = &block[open + 3..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let body = &body[..body.find("```").unwrap()];
    body.lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim())
        .filter(|l| l.starts_with("kiln "))
        .map(str::to_string)
        .collect()
}

/// Each quickstart command with its stdout and stderr.
type Transcript = Vec<(String, String, String)>;

/// The sandbox after the README's quickstart, shared by the tests that look at its run.
fn quickstart() -> &'static (Sandbox, Transcript) {
    static DONE: OnceLock<(Sandbox, Transcript)> = OnceLock::new();
    DONE.get_or_init(|| {
        let sandbox = Sandbox::new();
        std::fs::write(sandbox.home.join("my.txt"), my_text()).unwrap();
        let commands = quickstart_commands();
        assert!(commands.len() >= 3, "the quickstart has train, generate and more: {commands:?}");
        let outputs = commands
            .iter()
            .map(|line| {
                let (out, err) = sandbox.ok(line);
                (line.clone(), out, err)
            })
            .collect();
        (sandbox, outputs)
    })
}

#[test]
fn the_readme_quickstart_runs_from_an_empty_folder_with_an_installed_binary() {
    let (sandbox, outputs) = quickstart();
    let run = sandbox.home.join("artifacts/my");
    for file in [
        "model.mpk", "model.safetensors", "config.json", "tokenizer.json", "summary.json",
        "metrics.jsonl", "loss.png", "report.html", "samples.txt",
    ] {
        assert!(run.join(file).is_file(), "{file} missing from the run: {outputs:#?}");
    }
    let (_, generated, said) = outputs
        .iter()
        .find(|(line, _, _)| line.starts_with("kiln generate"))
        .map(|(l, o, e)| (l, o.clone(), e.clone()))
        .expect("the quickstart samples");
    assert!(said.contains("sampling artifacts/my/model.mpk (the final model)"), "{said}");
    assert!(generated.chars().count() > 20, "{generated}");
}

#[test]
fn a_run_is_named_after_its_data_unless_the_user_names_it() {
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.home.join("notes.txt"), my_text()).unwrap();
    let (_, err) = sandbox.ok("kiln train --data notes.txt --preset tiny --sample-tokens 0");
    assert!(err.contains("artifacts/notes"), "{err}");
    sandbox.ok("kiln train --data notes.txt --preset tiny --set run.name=mine --sample-tokens 0");
    assert!(sandbox.home.join("artifacts/mine/model.mpk").is_file());
    // The second run on the same file is the user's existing run: refused, with the way out.
    let err = sandbox.refused("kiln train --data notes.txt --preset tiny");
    assert!(
        err.contains("artifacts/notes already holds a run") && err.contains("--resume"),
        "{err}"
    );
    // Presets and their errors.
    let err = sandbox.refused("kiln train --preset tiny");
    assert!(err.contains("data.path") && err.contains("--data FILE"), "{err}");
    let err = sandbox.refused("kiln train --data notes.txt --preset multi30k-cpu");
    assert!(err.contains("--data is for text"), "{err}");
    let err = sandbox.refused("kiln train --data notes.txt --preset nope");
    assert!(err.contains("preset = nope") && err.contains("small"), "{err}");
    let err = sandbox.refused("kiln train");
    assert!(err.contains("--data FILE"), "{err}");
}

#[test]
fn presets_are_the_configs_folder_and_init_never_overwrites() {
    let mut files: Vec<String> = std::fs::read_dir(common::repo().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut names: Vec<String> = kiln::config::PRESETS.iter().map(|p| p.name.into()).collect();
    names.sort();
    assert_eq!(names, files, "every file in configs/ is a preset, and only those");
    for preset in kiln::config::PRESETS {
        let summary = preset.summary();
        assert!(!summary.is_empty() && summary.len() <= 90, "{}: {summary:?}", preset.name);
        kiln::config::RunSpec::from_toml(preset.text, preset.name).unwrap();
    }

    let sandbox = Sandbox::new();
    let (listed, _) = sandbox.ok("kiln presets");
    for preset in kiln::config::PRESETS {
        assert!(listed.contains(preset.name) && listed.contains(preset.summary()), "{listed}");
    }
    sandbox.ok("kiln init --preset tiny");
    let written = std::fs::read_to_string(sandbox.home.join("tiny.toml")).unwrap();
    assert_eq!(written, kiln::config::Preset::find("tiny").unwrap().text);
    std::fs::write(sandbox.home.join("tiny.toml"), "# mine\n").unwrap();
    let err = sandbox.refused("kiln init --preset tiny");
    assert!(err.contains("tiny.toml already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(sandbox.home.join("tiny.toml")).unwrap(), "# mine\n");
}

#[test]
fn generate_reads_prompts_every_way_and_stops_where_told() {
    let (sandbox, _) = quickstart();
    let greedy = "--temperature 0 --max-new-tokens 30";
    let (from_flag, _) = sandbox.ok(&format!("kiln generate --prompt 'The potter' {greedy}"));
    let (from_stdin, _) =
        sandbox.ok_with(&format!("kiln generate --prompt - {greedy}"), "The potter");
    std::fs::write(sandbox.home.join("prompt.txt"), "The potter").unwrap();
    let (from_file, _) = sandbox.ok(&format!("kiln generate --prompt-file prompt.txt {greedy}"));
    assert!(from_flag.starts_with("The potter"), "{from_flag}");
    assert_eq!(from_flag, from_stdin);
    assert_eq!(from_flag, from_file);

    // A stop string ends the sample before it; the text up to it is the greedy text's.
    let continuation = &from_flag["The potter".len()..];
    let stop = continuation.chars().skip(5).take(3).collect::<String>();
    let (stopped, _) =
        sandbox.ok(&format!("kiln generate --prompt 'The potter' {greedy} --stop '{stop}'"));
    let cut = "The potter".len() + continuation.find(&stop).unwrap();
    assert_eq!(stopped.trim_end_matches('\n'), &from_flag[..cut]);

    let (three, _) = sandbox.ok("kiln generate --num-samples 3 --max-new-tokens 10 --seed 4");
    assert_eq!(three.matches("\n---\n").count(), 2, "{three}");

    let (chat, said) = sandbox
        .ok_with("kiln generate --interactive --max-new-tokens 10", "The river\nMy neigh\n\n");
    assert!(chat.contains("The river") && chat.contains("My neigh"), "{chat}");
    assert_eq!(said.matches("> ").count(), 3, "a prompt per line and one for the end: {said}");

    let err = sandbox.refused("kiln generate --num-samples 0");
    assert!(err.contains("--num-samples 0"), "{err}");
    let err = sandbox.refused("kiln generate --prompt-file missing.txt");
    assert!(err.contains("missing.txt"), "{err}");
}

#[test]
fn generate_says_which_weights_it_loaded_and_finds_the_newest_run() {
    let sandbox = Sandbox::new();
    let err = sandbox.refused("kiln generate");
    assert!(err.contains("no --run given") && err.contains("holds no finished gpt run"), "{err}");

    let (quick, _) = quickstart();
    let run = quick.home.join("artifacts/my");
    let copy = sandbox.home.join("unfinished");
    copy_dir(&run, &copy);
    std::fs::remove_file(copy.join("model.mpk")).unwrap();
    let (_, said) = sandbox.ok("kiln generate --run unfinished --max-new-tokens 5");
    assert!(
        said.contains(
            "unfinished/checkpoints/model-step40.mpk (the checkpoint at step 40; the run has not finished)"
        ),
        "{said}"
    );

    // Without --run: the newest finished GPT run, past a newer translation run.
    copy_dir(&run, &sandbox.home.join("artifacts/story"));
    let translation = sandbox.home.join("artifacts/translation");
    std::fs::create_dir_all(&translation).unwrap();
    let preset = kiln::config::Preset::find("multi30k-cpu").unwrap();
    let config = preset.text.replace("[model]\n", "[model]\nvocab_size = 100\n");
    std::fs::write(translation.join("config.toml"), config).unwrap();
    std::fs::write(translation.join("model.mpk"), b"weights").unwrap();
    std::fs::write(translation.join("summary.json"), b"{}").unwrap();
    let (_, said) = sandbox.ok("kiln generate --max-new-tokens 5");
    assert!(said.contains("sampling artifacts/story/model.mpk (the final model)"), "{said}");
}

#[test]
fn runs_record_what_other_tools_read() {
    let (sandbox, _) = quickstart();
    let run = sandbox.home.join("artifacts/my");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train = lines.iter().find(|l| l["split"] == "train" && l["step"] == 40).unwrap();
    assert!(train["grad_norm"].as_f64().is_some_and(|n| n > 0.0), "{train}");
    assert_eq!(train["tokens"], 40 * 12 * 64, "{train}");
    assert!(train["time"].as_f64().is_some_and(|t| t > 1.7e9), "{train}");

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    for key in ["kiln_version", "git_commit", "backend", "started", "ended"] {
        assert!(summary[key].is_string(), "{key}: {summary}");
    }
    assert!(summary["started"].as_str().unwrap().ends_with('Z'), "{summary}");
    let best = lines
        .iter()
        .filter(|l| l["split"] == "val")
        .min_by(|a, b| a["loss"].as_f64().unwrap().total_cmp(&b["loss"].as_f64().unwrap()))
        .unwrap();
    assert_eq!(summary["best_val_loss"], best["loss"]);
    assert_eq!(summary["best_val_step"], best["step"]);

    // The safetensors and config.json are part of the run, verified like its other files.
    let manifest = std::fs::read_to_string(run.join("kiln-run.json")).unwrap();
    assert!(manifest.contains("model.safetensors") && manifest.contains("config.json"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "gpt2");
}

#[test]
fn overlaid_plots_never_replace_a_runs_own_and_name_the_runs() {
    let (quick, _) = quickstart();
    let sandbox = Sandbox::new();
    copy_dir(&quick.home.join("artifacts/my"), &sandbox.home.join("artifacts/a"));
    copy_dir(&quick.home.join("artifacts/my"), &sandbox.home.join("artifacts/b"));
    let own = std::fs::read(sandbox.home.join("artifacts/a/loss.png")).unwrap();
    let (out, _) = sandbox.ok("kiln plot --run artifacts/a --run artifacts/b");
    assert!(out.contains("plots/my-vs-my/loss.png"), "{out}");
    assert_eq!(std::fs::read(sandbox.home.join("artifacts/a/loss.png")).unwrap(), own);
    assert!(sandbox.home.join("plots/my-vs-my/lr.png").is_file());
    let err = sandbox.refused("kiln plot --run artifacts/a --run artifacts/b --out artifacts/a");
    assert!(err.contains("--out artifacts/a: is the folder of the kiln run"), "{err}");
    assert_eq!(std::fs::read(sandbox.home.join("artifacts/a/loss.png")).unwrap(), own);
    let err = sandbox.refused("kiln plot --run artifacts/a --out artifacts/b");
    assert!(err.contains("is the folder of the kiln run"), "{err}");
}

/// The report opened in Debian's Chromium, headless: the page renders with its curves.
#[test]
fn the_report_renders_in_a_real_browser() {
    let (sandbox, _) = quickstart();
    let report = sandbox.home.join("artifacts/my/report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(!html.contains("src=\"http") && !html.contains("<script"), "self-contained");
    let shot = sandbox.home.join("report.png");
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("the tests need Debian's chromium (apt-get install chromium; .ci/run installs it)");
    let url = format!("file://{}", report.display());
    let run = |args: &[&str]| {
        let out = Command::new(browser)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
            .args(args)
            .arg(&url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(&["--dump-dom"]);
    assert!(dom.contains("kiln run <code>my</code>") && dom.contains("best_val_loss"), "{dom}");
    run(&["--window-size=1000,1400", &format!("--screenshot={}", shot.display())]);
    let image = image::open(&shot).unwrap().to_rgb8();
    let inked = image.pixels().filter(|p| p.0.iter().any(|&c| c < 200)).count();
    let share = inked as f64 / (image.width() * image.height()) as f64;
    assert!(share > 0.02, "the screenshot is blank ({:.4} of the pixels inked)", share);
    // The loss curve's blue is on the page, so the inlined PNG was decoded and drawn.
    let blue = image.pixels().filter(|p| p.0[2] > 150 && p.0[0] < 90 && p.0[1] < 160).count();
    assert!(blue > 200, "no curve pixels in the screenshot ({blue})");
}

#[test]
fn cli_conventions_help_version_and_completions() {
    let sandbox = Sandbox::new();
    let (help, _) = sandbox.ok("kiln");
    assert!(help.contains("Usage:") && help.contains("generate"), "{help}");
    let (version, _) = sandbox.ok("kiln --version");
    assert!(version.starts_with("kiln 0.") && version.contains("backends: ndarray"), "{version}");
    for shell in ["bash", "zsh", "fish"] {
        let (script, _) = sandbox.ok(&format!("kiln completions {shell}"));
        assert!(script.contains("presets") && script.contains("num-samples"), "{shell}");
    }
    // A command line clap cannot parse exits 2, as usage errors do in most tools.
    let out = sandbox.sh("kiln completions tcsh", "");
    let (_, err) = texts(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("invalid value 'tcsh'") && err.contains("bash"), "{err}");
}

/// Every flag of every command has help text.
#[test]
fn every_flag_has_help() {
    fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let builtin = ["help", "version"].contains(&arg.get_id().as_str());
            if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&kiln::cli::command(), "kiln", &mut missing);
    assert!(missing.is_empty(), "flags without help: {missing:#?}");
}

/// `docs/cli.md` is every command's `--help`, regenerated here: with `KILN_BLESS=1` the test
/// writes it, otherwise it fails when the file and the code differ.
#[test]
fn the_cli_reference_is_the_code() {
    fn render(command: &mut clap::Command, path: &str, out: &mut String) {
        let help = command.render_long_help().to_string();
        out.push_str(&format!("## `{path}`\n\n```text\n{}\n```\n\n", help.trim_end()));
        let mut subs: Vec<clap::Command> = command.get_subcommands().cloned().collect();
        for sub in &mut subs {
            let name = sub.get_name().to_string();
            if name != "help" {
                render(sub, &format!("{path} {name}"), out);
            }
        }
    }
    let mut reference = String::from(
        "# Command-line reference\n\nEvery command's `--help`, generated from the code by \
         `tests/product.rs` (`KILN_BLESS=1 cargo test --test product the_cli_reference` \
         rewrites it).\n\n",
    );
    let mut command = kiln::cli::command().term_width(100);
    command.build();
    render(&mut command, "kiln", &mut reference);
    let path = common::repo().join("docs/cli.md");
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&path, &reference).unwrap();
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == reference,
        "docs/cli.md is out of date; run KILN_BLESS=1 cargo test --test product the_cli_reference"
    );
}
