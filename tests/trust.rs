//! What a hostile user (or an unlucky one) does to kiln's folders and files, one test per
//! class: someone else's folder, files that do not belong together, sizes that cannot fit,
//! two processes on one run, signals, full and read-only disks. Each asserts a failed exit,
//! a message naming the file, key or process, no panic, and the user's files unchanged.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{copy_dir, kiln, tiny_train_args};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file under `dir` with its bytes, but for a run's lock file, which holds the PID
/// of the last process that opened the run.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.ends_with(".kiln-lock") {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Runs kiln, asserts it failed cleanly, and returns its error line.
fn refused(args: &[&str]) -> String {
    let (ok, _, err) = kiln(args);
    assert!(!ok, "kiln {args:?} should fail:\n{err}");
    assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{err}");
    err.lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or_else(|| panic!("no error line in:\n{err}"))
        .to_string()
}

/// Runs kiln on `dir`'s files and asserts it failed with a message holding every one of
/// `parts` and left every file under `dir` as it was.
fn refused_leaving(dir: &Path, args: &[&str], parts: &[&str]) {
    let before = snapshot(dir);
    let err = refused(args);
    common::assert_mentions(&err, parts);
    assert!(snapshot(dir) == before, "kiln {args:?} changed files under {}", dir.display());
}

/// The first sets of every training here: 20 steps, a validation every 10.
const SHORT: [&str; 2] = ["training.max_iters=20", "training.eval_interval=10"];

/// Trains `configs/tiny.toml` for 20 steps into `<artifacts>/<name>` with `sets`.
fn train(artifacts: &Path, name: &str, sets: &[&str]) -> PathBuf {
    let sets: Vec<&str> = SHORT.iter().chain(sets).copied().collect();
    let args = tiny_train_args(artifacts, name, &sets);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = kiln(&args);
    assert!(ok, "{err}");
    artifacts.join(name)
}

/// Two finished runs of the same shape and one wider, made once: (narrow, twin, wide).
fn runs() -> &'static (PathBuf, PathBuf, PathBuf) {
    static RUNS: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    RUNS.get_or_init(|| {
        let artifacts = tempfile::tempdir().unwrap().keep();
        (
            train(&artifacts, "narrow", &[]),
            train(&artifacts, "twin", &["run.seed=7"]),
            train(&artifacts, "wide", &["model.d_model=64"]),
        )
    })
}

/// A copy of the narrow run to damage, in a folder of its own.
fn scratch_run() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("narrow");
    copy_dir(&runs().0, &run);
    (dir, run)
}

/// `train --resume` of the scratch copy of the narrow run.
fn resume_args(run: &Path, from: &Path) -> Vec<String> {
    let mut args = tiny_train_args(run.parent().unwrap(), "narrow", &SHORT);
    args.extend(["--resume".to_string(), s(from).to_string()]);
    args
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Class 1: kiln deletes or overwrites only what it made.
#[test]
fn folders_and_files_kiln_did_not_make_are_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    for (name, text) in [
        ("metrics.jsonl", "{\"step\": 1}\n"),
        ("config.toml", "mine = true\n"),
        ("tokenizer.json", "{}"),
        ("notes.txt", "my notes\n"),
    ] {
        std::fs::write(project.join(name), text).unwrap();
    }
    let artifacts = format!("run.artifacts_dir={}", dir.path().display());
    for force in [&[][..], &["--force"][..]] {
        let mut args = vec!["train", "--config", "configs/tiny.toml", "--set", &artifacts];
        args.extend(["--set", "run.name=project", "--sample-tokens", "0"]);
        args.extend(force);
        refused_leaving(dir.path(), &args, &[s(&project), "kiln-run.json"]);
    }
    let out = s(&project);
    refused_leaving(
        dir.path(),
        &["import", "--from", "/nonexistent", "--out", out, "--force"],
        &[out, "holds files kiln did not make"],
    );
    let run = s(&runs().0);
    refused_leaving(
        dir.path(),
        &["export", "--run", run, "--out", out],
        &[out, "holds files kiln did not export"],
    );

    // An output that is an input, or a file of a run.
    let text = project.join("notes.txt");
    let text = s(&text);
    let tokenizer = project.join("tokenizer.json");
    for args in [
        vec!["tokenizer", "train", "--input", text, "--vocab-size", "300", "--out", text],
        vec!["tokenizer", "encode", "--tokenizer", "tiktoken:gpt2", "--input", text, "--out", text],
        vec![
            "tokenizer",
            "encode",
            "--tokenizer",
            s(&tokenizer),
            "--input",
            text,
            "--out",
            s(&tokenizer),
        ],
    ] {
        refused_leaving(dir.path(), &args, &["--out", "is the file", "this command reads"]);
    }
    let (_keep, scratch) = scratch_run();
    for file in ["model.mpk", "config.toml", "kiln-run.json", "checkpoints/model-step10.mpk"] {
        let target = scratch.join(file);
        refused_leaving(
            &scratch,
            &["plot", "positions", "--out", s(&target)],
            &[s(&target), "is a file of the kiln run"],
        );
    }
}

/// Class 2: a run's files are checked against each other before Burn sees them.
#[test]
fn files_that_do_not_belong_to_the_run_are_refused_by_name() {
    let (narrow, twin, wide) = runs();
    // An edited config.toml, for every command that reads the run.
    let (_keep, run) = scratch_run();
    let config = run.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("activation = \"gelu\"", "activation = \"relu\""))
        .unwrap();
    let r = s(&run);
    for args in [
        vec!["eval", "--run", r],
        vec!["generate", "--run", r, "--max-new-tokens", "3"],
        vec!["inspect", r],
        vec!["export", "--run", r, "--out", "/tmp/kiln-never-written"],
    ] {
        refused_leaving(&run, &args, &["config.toml", "does not match", "restore"]);
    }
    let state = run.join("checkpoints/state-step20.json");
    let args = resume_args(&run, &state);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused_leaving(&run, &args, &["config.toml", "does not match"]);

    // Weights of another run, of the same shape or not, named as a checkpoint.
    let (_keep, run) = scratch_run();
    let r = s(&run);
    for other in [twin.join("model.mpk"), wide.join("checkpoints/model-step10.mpk")] {
        for command in ["eval", "generate"] {
            refused_leaving(
                &run,
                &[command, "--run", r, "--checkpoint", s(&other)],
                &[s(&other), "not a model file of the run"],
            );
        }
    }
    // A whole checkpoint set copied in from another run.
    std::fs::remove_dir_all(run.join("checkpoints")).unwrap();
    copy_dir(&twin.join("checkpoints"), &run.join("checkpoints"));
    let state = run.join("checkpoints/state-step20.json");
    let args = resume_args(&run, &state);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused_leaving(&run, &args, &["checkpoint at step 20", "taken by another run"]);
    assert!(narrow.join("model.mpk").is_file());
}

/// Class 2, continued: damaged or edited files of the run itself.
#[test]
fn damaged_or_edited_run_files_are_refused_by_name() {
    let (_keep, run) = scratch_run();
    let r = s(&run);
    // One flipped bit in the final weights: without the hash this evaluates to a number.
    flip_byte(&run.join("model.mpk"), 60_000);
    refused_leaving(&run, &["eval", "--run", r], &["model.mpk", "does not match the SHA-256"]);
    refused_leaving(&run, &["generate", "--run", r], &["model.mpk", "does not match"]);

    // An edited step in a checkpoint's state file.
    let state = run.join("checkpoints/state-step20.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replace("\"step\": 20", "\"step\": 10")).unwrap();
    let args = resume_args(&run, &state);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused_leaving(&run, &args, &["state-step20.json", "changed since it was written"]);

    // A flipped byte in the token cache.
    let (_keep, run) = scratch_run();
    flip_byte(&run.join("tokens.bin"), 1000);
    refused_leaving(&run, &["eval", "--run", s(&run)], &["tokens.bin", "does not match"]);

    // A token id past the vocabulary, in a run without a manifest (an older kiln's) and
    // with the cache's own hash made to match: the ids are still checked.
    let (_keep, run) = scratch_run();
    std::fs::remove_file(run.join("kiln-run.json")).unwrap();
    let tokens = run.join("tokens.bin");
    let mut bytes = std::fs::read(&tokens).unwrap();
    bytes[..2].copy_from_slice(&9999u16.to_le_bytes());
    std::fs::write(&tokens, &bytes).unwrap();
    let meta = run.join("tokens.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    json["tokens_sha256"] = kiln::files::sha256_hex(&bytes).into();
    std::fs::write(&meta, json.to_string()).unwrap();
    refused_leaving(&run, &["eval", "--run", s(&run)], &["tokens.bin", "9999"]);
}

/// Class 3: every size the user gives is priced or bounded before anything is allocated.
#[test]
fn sizes_that_cannot_fit_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = format!("run.artifacts_dir={}", dir.path().display());
    let train = |sets: &[&str]| {
        let mut args = vec!["train", "--config", "configs/tiny.toml", "--set", &artifacts];
        for set in sets {
            args.extend(["--set", set]);
        }
        refused(&args)
    };
    for (sets, parts) in [
        (&["model.d_model=100000", "model.n_heads=1"][..], &["needs about", "model.d_model"][..]),
        (&["model.d_model=1000000000"], &["model.d_model = 1000000000", "up to"]),
        (&["training.batch_size=100000", "model.block_size=4096"], &["needs about", "batch_size"]),
        (&["model.vocab_size=100000000000"], &["model.vocab_size", "up to"]),
        (&["model.n_layers=100000"], &["model.n_layers", "up to"]),
        (&["model.d_ff=10000000000"], &["model.d_ff", "up to"]),
        (&["training.eval_iters=100000000"], &["training.eval_iters", "up to"]),
        (&["training.max_iters=100000000000000"], &["training.max_iters", "up to"]),
        (&["training.max_iters=1e23"], &["training.max_iters", "floating point"]),
    ] {
        common::assert_mentions(&train(sets), parts);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no run folder left behind");

    let huge = ["--set", "model.d_model=100000", "--set", "model.n_heads=1"];
    for mut args in [
        vec!["inspect", "configs/tiny.toml"],
        vec!["bench", "train", "--config", "configs/tiny.toml"],
    ] {
        args.extend(huge);
        common::assert_mentions(&refused(&args), &["needs about", "model.d_model"]);
    }
    common::assert_mentions(
        &refused(&["data", "show", "--config", "configs/tiny.toml", "--batches", "1000000000000"]),
        &["--batches 1000000000000", "expected"],
    );
    common::assert_mentions(
        &refused(&["plot", "positions", "--len", "1000000000", "--out", "/tmp/never.png"]),
        &["--len 1000000000", "expected"],
    );

    // An import whose config.json claims sizes its weights do not have.
    let export = dir.path().join("export");
    let (ok, _, err) = kiln(&["export", "--run", s(&runs().0), "--out", s(&export)]);
    assert!(ok, "{err}");
    let config = export.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"vocab_size\": 65", "\"vocab_size\": 100000000"))
        .unwrap();
    let out = dir.path().join("imported");
    common::assert_mentions(
        &refused(&["import", "--from", s(&export), "--out", s(&out)]),
        &["model.safetensors", "wte.weight", "config.json's vocab_size"],
    );
    assert!(!out.exists());
}

/// A training of tiny.toml long enough to be acted on, into `<artifacts>/live`.
fn spawn_long(artifacts: &Path, flags: &[&str]) -> Child {
    let sets = [
        format!("run.artifacts_dir={}", artifacts.display()),
        "run.name=live".into(),
        "training.max_iters=1000000".into(),
        "training.eval_interval=20".into(),
    ];
    common::spawn_tiny_training(sets, flags)
}

/// Waits for the first checkpoint of `run`.
fn wait_for_checkpoint(run: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !run.join("checkpoints/latest.json").is_file() {
        assert!(Instant::now() < deadline, "no checkpoint in {}", run.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child this test started and has not yet waited for.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

/// Classes 4 and 5: a live run is locked against a second trainer, `--resume` and
/// `--force`; SIGTERM and SIGINT end it with a checkpoint and exit 143 and 130.
#[test]
fn a_live_run_is_locked_and_signals_set_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("live");
    let trainer = spawn_long(dir.path(), &[]);
    wait_for_checkpoint(&run);
    let pid = trainer.id().to_string();
    let artifacts = format!("run.artifacts_dir={}", dir.path().display());
    let state = run.join("checkpoints/state-step20.json");
    for flags in [vec![], vec!["--force"], vec!["--resume"], vec!["--resume", s(&state)]] {
        let mut args = vec!["train", "--config", "configs/tiny.toml", "--sample-tokens", "0"];
        args.extend(["--set", &artifacts, "--set", "run.name=live"]);
        args.extend(flags);
        common::assert_mentions(&refused(&args), &[s(&run), "in use by kiln process", &pid]);
    }
    assert!(run.join("kiln-run.json").is_file() && run.join("config.toml").is_file());

    signal(&trainer, libc::SIGTERM);
    let (code, err) = exit_of(trainer);
    assert_eq!(code, Some(143), "a run ended by SIGTERM exits 128 + 15:\n{err}");
    assert!(err.contains("stopped at step") && err.contains("--resume"), "{err}");

    // Resumed (the lock went with the process), then interrupted with SIGINT.
    let latest = run.join("checkpoints/latest.json");
    let stopped_at = std::fs::read(&latest).unwrap();
    let resumed = spawn_long(dir.path(), &["--resume"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read(&latest).unwrap() == stopped_at {
        assert!(Instant::now() < deadline, "the resumed run wrote no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&resumed, libc::SIGINT);
    let (code, err) = exit_of(resumed);
    assert_eq!(code, Some(130), "a run ended by SIGINT exits 128 + 2:\n{err}");
    assert!(!run.join("model.mpk").exists(), "an interrupted run has no final model");
}

fn exit_of(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Class 5, continued: a full disk and a read-only one, on small file systems of the test's
/// own (a tmpfs in a private mount namespace: `unshare` maps the test's user to root there).
#[test]
fn write_failures_name_the_file_and_what_happened() {
    let mnt = tempfile::tempdir().unwrap();
    let (m, k) = (s(mnt.path()), env!("CARGO_BIN_EXE_kiln"));
    let train = format!(
        "{k} train --config configs/tiny.toml --sample-tokens 0 --set run.artifacts_dir={m} \
         --set training.max_iters=100000 --set training.eval_interval=50"
    );
    let script = format!(
        r#"
        exec 2>&1
        mount -t tmpfs -o size=256k none {m} || exit 99
        echo '== encode'; {k} tokenizer encode --tokenizer tiktoken:gpt2 \
            --input data/tinyshakespeare.txt --out {m}/ids.bin; echo "rc=$?"
        ls -A {m}
        mount -o remount,ro {m}
        echo '== tokenizer'; {k} tokenizer train --input data/the-verdict.txt --vocab-size 300 \
            --out {m}/tok.json; echo "rc=$?"
        echo '== train-ro'; {train}; echo "rc=$?"
        umount {m} && mount -t tmpfs -o size=8m none {m}
        echo '== train-full'; {train} & pid=$!
        while [ ! -f {m}/tiny/checkpoints/latest.json ]; do sleep 0.05; done
        dd if=/dev/zero of={m}/filler bs=64k 2>/dev/null
        wait $pid; echo "rc=$?"
        rm {m}/filler
        echo '== resume'; {train} --set training.max_iters=500 --resume >/dev/null; echo "rc=$?"
        "#
    );
    let out = Command::new("unshare")
        .args(["--map-root-user", "--mount", "sh", "-c", &script])
        .current_dir(common::repo())
        .stdin(Stdio::null())
        .output()
        .expect("unshare (util-linux) runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "the file systems could not be mounted:\n{text}");
    assert!(!text.contains("panicked"), "{text}");
    let section = |name: &str| {
        let start = text.find(&format!("== {name}")).unwrap_or_else(|| panic!("{text}"));
        let rest = &text[start..];
        let end = rest.find("rc=").unwrap() + 4;
        rest[..end].to_string()
    };
    for (name, parts) in [
        ("encode", vec![format!("writing {m}/ids.bin: no space left on the device")]),
        ("tokenizer", vec![format!("writing {m}/tok.json: the file system is read-only")]),
        ("train-ro", vec![format!("{m}/tiny"), "read-only".into()]),
        ("train-full", vec![format!("{m}/tiny/checkpoints/"), "no space left".into()]),
    ] {
        let section = section(name);
        assert!(section.ends_with("rc=1"), "{name} should fail:\n{section}");
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        common::assert_mentions(&section, &parts);
    }
    assert!(!text.contains("ids.bin\n"), "a failed write leaves no file:\n{text}");
    assert!(section("resume").ends_with("rc=0"), "the run resumes once there is room:\n{text}");
}
