//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod serve;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use kiln::config::RunSpec;
use kiln::run::RunDir;

/// The repository root (tests run with it as the working directory).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `configs/tiny.toml` with `overrides` applied and its artifacts under `artifacts`.
pub fn tiny_spec(artifacts: &Path, overrides: &[&str]) -> RunSpec {
    let mut sets: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    sets.push(format!("run.artifacts_dir={}", artifacts.display()));
    kiln::config::load_with_env(&repo().join("configs/tiny.toml"), &sets, Vec::new())
        .expect("tiny config loads")
}

/// Every float parameter of a run's final model, in model order (ndarray).
pub fn final_weights(run: &Path) -> Vec<f32> {
    type B = burn::backend::NdArray<f32>;
    struct Values(Vec<f32>);
    impl ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.extend(param.val().into_data().to_vec::<f32>().unwrap());
        }
    }
    let dir = RunDir::new(run);
    let spec = RunSpec::read_resolved(&dir.config()).unwrap();
    let (model, _) =
        kiln::run::load_gpt::<B>(&dir, &spec, Some(&dir.final_model()), &Default::default())
            .unwrap();
    let mut values = Values(Vec::new());
    model.visit(&mut values);
    values.0
}

/// Writes `text` as a config file in `dir` and loads it, returning the error message.
pub fn config_error(dir: &Path, text: &str) -> String {
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    match kiln::config::load_with_env(&path, &[], Vec::new()) {
        Ok(_) => panic!("config should have been rejected:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// A valid config with the data path made absolute, for mutation in error tests.
pub fn valid_config_text() -> String {
    std::fs::read_to_string(repo().join("configs/tiny.toml")).unwrap().replace(
        "data/tinyshakespeare.txt",
        &repo().join("data/tinyshakespeare.txt").display().to_string(),
    )
}

/// Runs the kiln binary in the repository root: (success, stdout, stderr).
pub fn kiln(args: &[&str]) -> (bool, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).current_dir(repo()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kiln train` on `configs/tiny.toml` in the background, with each of `sets` as a `--set`
/// and `flags` after them; stderr is piped for the test to read.
pub fn spawn_tiny_training(sets: impl IntoIterator<Item = String>, flags: &[&str]) -> Child {
    let mut args: Vec<String> = ["train", "--config", "configs/tiny.toml", "--sample-tokens", "0"]
        .map(String::from)
        .to_vec();
    for set in sets {
        args.extend(["--set".to_string(), set]);
    }
    args.extend(flags.iter().map(|s| s.to_string()));
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&args)
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts")
}

/// The Python that has `module`: the repo's `.venv` (scripts/setup-venv.sh), else `python3`
/// on PATH.
pub fn python_with(module: &str) -> PathBuf {
    let venv = repo().join(".venv/bin/python");
    let python = if venv.is_file() { venv } else { "python3".into() };
    let probe = Command::new(&python).args(["-c", &format!("import {module}")]).output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "{} cannot import {module}: run scripts/setup-venv.sh",
        python.display()
    );
    python
}

/// Runs `tests/<script>` with `python`, returning its stdout; fails the test on a non-zero exit.
pub fn run_python(python: &Path, script: &str, args: &[&str]) -> String {
    let out =
        Command::new(python).arg(repo().join("tests").join(script)).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tests/{script} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Fails, showing `text`, unless it holds every one of `parts`.
pub fn assert_mentions(text: &str, parts: &[&str]) {
    let missing: Vec<&&str> = parts.iter().filter(|p| !text.contains(**p)).collect();
    assert!(missing.is_empty(), "{missing:?} not in:\n{text}");
}

/// Copies the folder `from` to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// `kiln train` of `configs/tiny.toml` into `<artifacts>/<name>`, without the closing sample,
/// with each of `sets` as a `--set`.
pub fn tiny_train_args(artifacts: &Path, name: &str, sets: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["train", "--config", "configs/tiny.toml", "--sample-tokens", "0"].map(String::from).into();
    let base = [format!("run.artifacts_dir={}", artifacts.display()), format!("run.name={name}")];
    for set in base.iter().map(String::as_str).chain(sets.iter().copied()) {
        args.extend(["--set".to_string(), set.to_string()]);
    }
    args
}
