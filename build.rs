//! With the `tch` feature, records where libtorch's shared libraries live as an rpath of the
//! binaries, so that `kiln` runs without `LD_LIBRARY_PATH`. The directory is found the way
//! torch-sys finds it: `$LIBTORCH/lib`, or the `torch` package of the active Python when
//! `LIBTORCH_USE_PYTORCH` is set (see scripts/setup-venv.sh).
//!
//! Also makes the `--version` line: the backends compiled in and the git commit built from.
//!
//! With the `tcmalloc` feature, links the system's tcmalloc ahead of libc, so that its
//! malloc serves the whole process, the C++ of libtorch included (a Rust global allocator
//! would serve only Rust's allocations).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for var in
        ["LIBTORCH", "LIBTORCH_LIB", "LIBTORCH_USE_PYTORCH", "VIRTUAL_ENV", "PATH", "LIBRARY_PATH"]
    {
        println!("cargo:rerun-if-env-changed={var}");
    }
    version_line();
    if std::env::var_os("CARGO_FEATURE_TCMALLOC").is_some() {
        link_tcmalloc();
    }
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    match libtorch_lib_dir() {
        Some(dir) => println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display()),
        None => println!(
            "cargo:warning=libtorch not located (set LIBTORCH_USE_PYTORCH=1 with torch on the python path, or LIBTORCH); \
             kiln will need LD_LIBRARY_PATH to run"
        ),
    }
}

const TCMALLOC: &str = "libtcmalloc_minimal.so.4";

/// A native library of the kiln crate is linked before std's libc, so the loader finds
/// tcmalloc's `malloc` first (a plain link-arg would come after libc). kiln calls its
/// `tc_version` (`kiln bench` prints the allocator), so `--as-needed` keeps it.
fn link_tcmalloc() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        panic!("the `tcmalloc` feature is for Linux only; build without it on this target");
    }
    // `LIBRARY_PATH` first, for a tcmalloc outside the system's directories.
    let library_path = std::env::var_os("LIBRARY_PATH").unwrap_or_default();
    let system = [
        "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
        "/usr/local/lib",
    ];
    let dirs: Vec<PathBuf> =
        std::env::split_paths(&library_path).chain(system.iter().map(PathBuf::from)).collect();
    let Some(dir) = dirs.iter().find(|dir| dir.join(TCMALLOC).is_file()) else {
        let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        panic!(
            "the `tcmalloc` feature links {TCMALLOC}, which is not in {}: install it \
             (Debian/Ubuntu: apt-get install libtcmalloc-minimal4; Fedora: dnf install gperftools-libs), \
             name its directory in LIBRARY_PATH, or build without the feature",
            searched.join(", ")
        );
    };
    println!("cargo:rustc-link-search=native={}", dir.display());
    if !system.iter().any(|s| dir == std::path::Path::new(s)) {
        // The loader searches only the system's directories on its own.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
    println!("cargo:rustc-link-lib=dylib:+verbatim={TCMALLOC}");
}

fn libtorch_lib_dir() -> Option<PathBuf> {
    if let Some(lib) = std::env::var_os("LIBTORCH_LIB") {
        return Some(PathBuf::from(lib).join("lib"));
    }
    if let Some(root) = std::env::var_os("LIBTORCH") {
        return Some(PathBuf::from(root).join("lib"));
    }
    std::env::var_os("LIBTORCH_USE_PYTORCH")?;
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.is_dir().then_some(dir)
}

/// `KILN_VERSION_LINE` (`0.1.0 (backends: ndarray, wgpu; commit 1a2b3c4)`) and
/// `KILN_GIT_COMMIT` (empty outside a git checkout, e.g. from a crates tarball).
fn version_line() {
    let feature = |name: &str| std::env::var_os(format!("CARGO_FEATURE_{name}")).is_some();
    let mut backends = Vec::new();
    for (name, on) in [
        ("ndarray", feature("NDARRAY")),
        ("flex", feature("FLEX")),
        ("wgpu", feature("WGPU")),
        ("tch-cpu", feature("TCH")),
        ("cuda", feature("CUDA")),
    ] {
        if on {
            backends.push(name);
        }
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // A new commit changes HEAD (or the branch it points to).
    for head in [".git/HEAD", ".git/refs/heads"] {
        if std::path::Path::new(head).exists() {
            println!("cargo:rerun-if-changed={head}");
        }
    }
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let built_from = if commit.is_empty() { String::new() } else { format!("; commit {commit}") };
    println!("cargo:rustc-env=KILN_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=KILN_VERSION_LINE={version} (backends: {}{built_from})",
        backends.join(", ")
    );
}
