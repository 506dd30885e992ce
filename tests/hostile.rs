//! Malformed input of every kind gets a one-line error that names the thing and the fix,
//! through the CLI a user runs: config, data, checkpoints, tokenizer files, flags.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{copy_dir, kiln, tiny_train_args};

/// Two small finished runs of different widths: (artifacts dir kept alive, narrow, wide).
fn runs() -> &'static (PathBuf, PathBuf) {
    static RUNS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    RUNS.get_or_init(|| {
        let artifacts = tempfile::tempdir().unwrap().keep();
        for (name, width) in [("narrow", "32"), ("wide", "64")] {
            let width = format!("model.d_model={width}");
            let sets = [width.as_str(), "training.max_iters=10", "training.eval_interval=10"];
            let args = tiny_train_args(&artifacts, name, &sets);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, _, err) = kiln(&args);
            assert!(ok, "{err}");
        }
        (artifacts.join("narrow"), artifacts.join("wide"))
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The error line of a failed command.
fn error_of(args: &[&str]) -> String {
    let (ok, _, err) = kiln(args);
    assert!(!ok, "kiln {args:?} should fail");
    let line = err
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or_else(|| panic!("no error line in:\n{err}"))
        .to_string();
    assert!(!err.contains("panicked"), "{err}");
    line
}

/// A copy of the narrow run that a test may damage.
fn scratch_run() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("narrow");
    copy_dir(&runs().0, &run);
    (dir, run)
}

#[test]
fn config_errors_say_where_and_what_once() {
    let dir = tempfile::tempdir().unwrap();
    let syntax = dir.path().join("syntax.toml");
    std::fs::write(&syntax, "[run]\nname = \"x\"\n[data\npath = \"a\"\n").unwrap();
    let err = error_of(&["train", "--config", s(&syntax)]);
    assert!(err.contains("syntax.toml") && err.contains("TOML parse error at line 3"), "{err}");

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(
        &unknown,
        common::valid_config_text().replace("batch_size = 16", "batch_size = 16\nbatchsize = 3"),
    )
    .unwrap();
    let err = error_of(&["train", "--config", s(&unknown)]);
    assert!(err.contains("unknown field `batchsize`") && err.contains("`batch_size`"), "{err}");
    assert_eq!(err.matches("unknown field").count(), 1, "said once: {err}");

    let err = error_of(&[
        "train", "--config", "configs/tiny.toml", "--set", "training.warmup_iters=1000",
    ]);
    assert_eq!(
        err,
        "error: training.warmup_iters = 1000: expected at most training.max_iters (150)"
    );
}

#[test]
fn data_errors_name_the_file_and_leave_no_run_behind() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = format!("run.artifacts_dir={}", dir.path().display());
    let cases: [(&str, &[u8], &str); 3] = [
        ("empty.txt", b"", "the file is empty"),
        ("latin1.txt", b"caf\xe9 ol\xe9\n", "not UTF-8 text (invalid byte at offset 3)"),
        ("short.txt", b"short\n", "needs at least 33"),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let data = format!("data.path={}", path.display());
        let err = error_of(&[
            "train", "--config", "configs/tiny.toml", "--set", &data, "--set", &artifacts,
            "--sample-tokens", "0",
        ]);
        assert!(err.contains(name) && err.contains(expected), "{err}");
    }
    // The failed starts above did not leave a run that blocks the next one.
    let (ok, _, err) = kiln(&[
        "train", "--config", "configs/tiny.toml", "--set", &artifacts, "--set",
        "training.max_iters=2", "--set", "training.eval_interval=1", "--set",
        "training.warmup_iters=1", "--sample-tokens", "0",
    ]);
    assert!(ok, "{err}");
}

#[test]
fn damaged_checkpoints_are_named_with_the_cause() {
    let (narrow, wide) = runs();
    let err =
        error_of(&["generate", "--run", s(narrow), "--checkpoint", s(&wide.join("model.mpk"))]);
    assert!(err.contains("not a model file of the run"), "{err}");

    // A run from before manifests existed is read without hashes; the shapes still catch a
    // model file that belongs elsewhere.
    let (_keep_old, old_run) = scratch_run();
    std::fs::remove_file(old_run.join("kiln-run.json")).unwrap();
    let err =
        error_of(&["generate", "--run", s(&old_run), "--checkpoint", s(&wide.join("model.mpk"))]);
    assert!(
        err.contains(
            "parameter wte.weight has shape [65, 64] in the file but [65, 32] in the run's config"
        ),
        "{err}"
    );

    let (_keep, run) = scratch_run();
    let model = run.join("model.mpk");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 3]).unwrap();
    let err = error_of(&["generate", "--run", s(&run)]);
    assert!(err.contains("model.mpk does not match the SHA-256 the run recorded"), "{err}");
    // Without the manifest's hash, the record's own reader names the damage.
    std::fs::remove_file(run.join("kiln-run.json")).unwrap();
    let err = error_of(&["generate", "--run", s(&run)]);
    assert!(
        err.contains("model.mpk: not a readable kiln model record (the file ends early)"),
        "{err}"
    );
    let err = error_of(&["inspect", s(&model)]);
    assert!(err.contains("the file ends early"), "{err}");

    // Found by the `checkpoint` fuzz target: a parameter id Burn cannot parse made it panic.
    let fuzzed = run.join("fuzzed.mpk");
    std::fs::copy(
        common::repo().join("tests/fixtures/fuzz-checkpoint-invalid-param-id.mpk"),
        &fuzzed,
    )
    .unwrap();
    let err = error_of(&["inspect", s(&fuzzed)]);
    assert!(
        err.contains("fuzzed.mpk: not a readable kiln model record (damaged data: Invalid id.)"),
        "{err}"
    );

    let (_keep_newer, run) = scratch_run();
    let state = run.join("checkpoints/state-step10.json");
    let text = std::fs::read_to_string(&state).unwrap().replace("\"version\": 1", "\"version\": 9");
    std::fs::write(&state, text).unwrap();
    let sets = ["model.d_model=32", "training.max_iters=10", "training.eval_interval=10"];
    let mut args = tiny_train_args(run.parent().unwrap(), "narrow", &sets);
    args.extend(["--resume".to_string(), s(&state).to_string()]);
    let err = error_of(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("checkpoint format version 9; this kiln reads version 1"), "{err}");
}

#[test]
fn a_replaced_tokenizer_is_refused() {
    let (_keep, run) = scratch_run();
    let tokenizer = run.join("tokenizer.json");
    let original = std::fs::read_to_string(&tokenizer).unwrap();

    std::fs::write(&tokenizer, r#"{"kind": "tiktoken", "encoding": "gpt2"}"#).unwrap();
    let err = error_of(&["generate", "--run", s(&run)]);
    assert!(err.contains("tokenizer.json does not match the SHA-256 the run recorded"), "{err}");
    // A run without a manifest (an older kiln's) still checks the tokenizer against the
    // model and the checkpoints.
    std::fs::remove_file(run.join("kiln-run.json")).unwrap();
    let err = error_of(&["generate", "--run", s(&run)]);
    assert!(err.contains("a vocabulary of 50257 tokens, but the run's model has 65"), "{err}");

    // Same size, other order: only the checkpoint's hash can tell.
    let value: serde_json::Value = serde_json::from_str(&original).unwrap();
    let chars: String = value["chars"].as_str().unwrap().chars().rev().collect();
    std::fs::write(
        &tokenizer,
        serde_json::json!({"kind": "char", "chars": chars, "unk": false}).to_string(),
    )
    .unwrap();
    let err = error_of(&["eval", "--run", s(&run)]);
    assert!(
        err.contains("changed since the checkpoint at step 10")
            && err.contains("restore the run's own tokenizer.json"),
        "{err}"
    );

    std::fs::write(&tokenizer, &original[..original.len() / 2]).unwrap();
    let err = error_of(&["generate", "--run", s(&run)]);
    assert!(err.contains("tokenizer.json: not JSON"), "{err}");
}

#[test]
fn generate_flags_are_checked() {
    let run = s(&runs().0);
    let cases = [
        (
            vec!["--temperature", "-1"],
            "error: --temperature -1: expected a finite number >= 0 (0 means greedy)",
        ),
        (vec!["--top-p", "0"], "error: --top-p 0: expected a number in (0, 1]"),
        (vec!["--top-p", "1.5"], "error: --top-p 1.5: expected a number in (0, 1]"),
        (
            vec!["--max-new-tokens", "0"],
            "error: --max-new-tokens 0: expected a number from 1 to 1000000",
        ),
        (
            vec!["--max-new-tokens", "99999999999"],
            "error: --max-new-tokens 99999999999: expected a number from 1 to 1000000",
        ),
        (
            vec!["--prompt", "日本"],
            "error: --prompt: character '日' (U+65E5) at char 0 is not in the vocabulary",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["generate", "--run", run];
        args.extend(flags);
        let err = error_of(&args);
        assert!(err.starts_with(expected), "{err}");
    }
}

#[test]
fn a_run_folder_without_room_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let run = kiln::run::RunDir::new(dir.path());
    assert!(run.check_room(1024, "a test").is_ok());
    let err =
        run.check_room(u64::MAX, "training (two checkpoints and the final model)").unwrap_err();
    assert!(
        err.contains("free on this disk, but training (two checkpoints and the final model) needs"),
        "{err}"
    );
    assert!(err.contains("run.artifacts_dir"), "{err}");
}
