//! Crash safety: SIGKILL a training run 20 times at random moments (every other kill aimed at
//! a checkpoint being written), resume after each, and require the final weights to equal
//! those of an uninterrupted run bit for bit, and every checkpoint left on disk to load.
//!
//! The kill moments come from a seed printed at the start; `CRASH_SEED=<n>` replays one.
//! They scale with the machine: a random kill lands within the first fifth of the time the
//! uninterrupted run took, and no life may commit more than [`NEW_CHECKPOINTS_PER_LIFE`]
//! checkpoints, so however fast training is, 20 lives cannot reach the end of the run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use kiln::run::checkpoint::CheckpointState;
use kiln::run::RunDir;
use rand::{Rng, SeedableRng};

type B = burn::backend::NdArray<f32>;

const KILLS: usize = 20;

/// A life is killed once it has committed this many checkpoints: 20 lives then make at most
/// 10 × 2 checkpoints of progress (an aimed kill commits none), half of the run's 40.
const NEW_CHECKPOINTS_PER_LIFE: usize = 2;

/// Steps between checkpoints (`training.eval_interval` below).
const EVAL_INTERVAL: usize = 10;

/// Long enough that 20 kills land before the run ends; dropout on, so that its RNG is
/// part of what must resume exactly.
const SETTINGS: [&str; 5] = [
    "training.max_iters=400", "training.eval_interval=10", "training.eval_iters=2",
    "model.dropout=0.1", "training.keep_checkpoints=2",
];

fn start(artifacts: &Path, name: &str, extra: &[&str]) -> Child {
    let sets = SETTINGS
        .iter()
        .map(|s| s.to_string())
        .chain([format!("run.artifacts_dir={}", artifacts.display()), format!("run.name={name}")]);
    common::spawn_tiny_training(sets, extra)
}

fn finish(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kiln failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Half-written files a killed writer left behind.
fn partial_files(run: &Path) -> usize {
    [run.to_path_buf(), run.join("checkpoints")]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("-partial"))
        .count()
}

/// Every float parameter of a run's final model, as raw bits.
fn final_weights(run: &Path) -> Vec<u32> {
    common::final_weights(run).iter().map(|x| x.to_bits()).collect()
}

#[test]
fn killed_runs_resume_to_the_same_weights() {
    let artifacts = tempfile::tempdir().unwrap();
    let began = Instant::now();
    finish(start(artifacts.path(), "reference", &[]));
    let uninterrupted = began.elapsed();

    let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
    });
    eprintln!("crash harness: CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let run: PathBuf = artifacts.path().join("crashed");
    let dir = RunDir::new(&run);
    let (mut kills, mut during_write, mut resumes) = (0, 0, 0);
    while kills < KILLS {
        let committed = dir.checkpoint_steps();
        let resumable = !committed.is_empty();
        resumes += usize::from(resumable);
        let mut child =
            start(artifacts.path(), "crashed", &[if resumable { "--resume" } else { "--force" }]);
        let aimed = kills % 2 == 1;
        let deadline = Instant::now()
            + if aimed {
                Duration::from_secs(30)
            } else {
                rng.random_range(Duration::ZERO..uninterrupted / 5)
            };
        let progress_cap =
            committed.last().map_or(0, |&newest| newest) + NEW_CHECKPOINTS_PER_LIFE * EVAL_INTERVAL;
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            if aimed && partial_files(&dir.checkpoints()) > 0 {
                break;
            }
            if dir.checkpoint_steps().last().is_some_and(|&newest| newest >= progress_cap) {
                break;
            }
            std::thread::sleep(Duration::from_micros(if aimed { 50 } else { 5000 }));
        }
        if child.try_wait().unwrap().is_some() {
            panic!(
                "the run ended before kill {} (seed {seed}); raise training.max_iters",
                kills + 1
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        during_write += usize::from(partial_files(&run) > 0);
    }
    let resumable = !dir.checkpoint_steps().is_empty();
    resumes += usize::from(resumable);
    finish(start(artifacts.path(), "crashed", &[if resumable { "--resume" } else { "--force" }]));

    let checkpoints = dir.checkpoint_steps();
    let spec = kiln::config::RunSpec::read_resolved(&dir.config()).unwrap();
    for &step in &checkpoints {
        CheckpointState::verify(&dir, step).unwrap_or_else(|e| panic!("checkpoint {step}: {e}"));
        let model = kiln::run::load_gpt::<B>(
            &dir,
            &spec,
            Some(&dir.checkpoint_file("model", step)),
            &Default::default(),
        );
        assert!(model.is_ok(), "the checkpoint at step {step} does not load");
    }
    assert_eq!(partial_files(&run), 0, "a resumed run cleans up half-written files");
    let same = final_weights(&run) == final_weights(&artifacts.path().join("reference"));
    eprintln!(
        "crash harness: {kills} SIGKILLs ({during_write} left a half-written file), {resumes} resumes, \
         {} checkpoints on disk all verified and loaded, final weights bit-identical: {same}",
        checkpoints.len()
    );
    assert!(same, "final weights differ from the uninterrupted run (seed {seed})");
}

fn stderr_of(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// SIGINT (and SIGTERM, the same handler) ends the run after the current step with a
/// checkpoint and exit status 130 (143); `--resume` then ends where an uninterrupted run does.
#[test]
fn sigint_checkpoints_and_exits_cleanly() {
    let artifacts = tempfile::tempdir().unwrap();
    let run = artifacts.path().join("interrupted");
    let dir = RunDir::new(&run);
    let child = start(artifacts.path(), "interrupted", &[]);
    // Wait until training is under way (the first checkpoint is on disk), then interrupt.
    let deadline = Instant::now() + Duration::from_secs(60);
    while dir.checkpoint_steps().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the pid of a child this test started and has not yet waited for.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(130), "an interrupted run exits 128 + SIGINT:\n{err}");
    assert!(err.contains("stopped at step") && err.contains("--resume"), "{err}");
    let newest = *dir.checkpoint_steps().last().unwrap();
    let state = CheckpointState::verify(&dir, newest).unwrap();
    assert!(
        state.step < 400 && matches!(state.reason.as_str(), "interrupt" | "interval"),
        "{state:?}"
    );
    assert!(!run.join("model.mpk").exists(), "an interrupted run has no final model");

    finish(start(artifacts.path(), "interrupted", &["--resume"]));
    finish(start(artifacts.path(), "reference", &[]));
    assert_eq!(final_weights(&run), final_weights(&artifacts.path().join("reference")));
}

/// A damaged newest checkpoint is reported and the one before it is used; the damaged one is
/// moved aside, not deleted. `--resume PATH` starts from the named checkpoint.
#[test]
fn resume_skips_a_damaged_checkpoint_and_accepts_a_path() {
    let artifacts = tempfile::tempdir().unwrap();
    let run = artifacts.path().join("damaged");
    let dir = RunDir::new(&run);
    let mut child = start(artifacts.path(), "damaged", &[]);
    while dir.checkpoint_steps().len() < 2 {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let steps = dir.checkpoint_steps();
    let (older, newest) = (steps[steps.len() - 2], steps[steps.len() - 1]);
    let model = dir.checkpoint_file("model", newest);
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();

    let (ok, err) = stderr_of(start(
        artifacts.path(),
        "damaged",
        &["--resume", "--set", "training.max_iters=40"],
    ));
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("checkpoint at step {newest}"))
            && err.contains("is damaged")
            && err.contains("trying the one before"),
        "{err}"
    );
    assert!(err.contains(&format!("from the checkpoint at step {older}")), "{err}");
    assert!(err.contains("moved to"), "{err}");
    let set_aside: Vec<_> = std::fs::read_dir(run.join("checkpoints/set-aside")).unwrap().collect();
    assert_eq!(set_aside.len(), 1);

    let path = dir.checkpoint_state(dir.checkpoint_steps()[0]);
    let (ok, err) = stderr_of(start(
        artifacts.path(),
        "damaged",
        &["--resume", path.to_str().unwrap(), "--set", "training.max_iters=60"],
    ));
    assert!(ok && err.contains("resuming"), "{err}");
    let (ok, err) = stderr_of(start(artifacts.path(), "damaged", &["--resume", "Cargo.toml"]));
    assert!(
        !ok && err.contains("--resume Cargo.toml: expected a checkpoint file of this run"),
        "{err}"
    );
}

/// A loss that stops being a number ends the run with a non-zero status and advice.
#[test]
fn a_diverging_run_stops_with_advice() {
    let artifacts = tempfile::tempdir().unwrap();
    let child = start(
        artifacts.path(),
        "diverged",
        &["--set", "training.learning_rate=1e30", "--set", "training.warmup_iters=0"],
    );
    let (ok, err) = stderr_of(child);
    assert!(!ok, "{err}");
    assert!(
        err.contains("the loss stopped being a number at step")
            && err.contains("training.learning_rate (now 1e30)"),
        "{err}"
    );
}
