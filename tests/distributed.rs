//! Data-parallel training (`--features distributed`): two replicas in one process, and two
//! `kiln` processes under `mpirun` (Open MPI, on loopback), against one device with the
//! doubled batch.
#![cfg(feature = "distributed")]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::run::checkpoint::CheckpointState;
use kiln::run::RunDir;

type B = burn::backend::NdArray<f32>;

/// Dropout off (ndarray's RNG is one per process, shared by the replicas' threads) and a
/// short run.
const SETTINGS: [&str; 4] = [
    "training.max_iters=40", "training.eval_interval=20", "training.eval_iters=2",
    "model.dropout=0.0",
];

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn train(artifacts: &Path, extra: &[&str]) {
    let sets: Vec<&str> = SETTINGS.iter().copied().chain(extra.iter().copied()).collect();
    let spec = common::tiny_spec(artifacts, &sets);
    let options = kiln::train::TrainOptions { sample_tokens: 0, ..Default::default() };
    kiln::train::train(spec, options).expect("training succeeds");
}

/// Two replicas of batch 16 take the same steps as one device with batch 32: the same
/// windows (replica r takes micro-batch 2i + r) and the mean of their gradients. Not bit for
/// bit: the mean over 32 windows is summed in a different order than two means over 16, and
/// AdamW's division by √v magnifies those last-bit differences in small gradient components
/// (measured: 1.2e-4 after 40 steps, with weights of order 0.1).
#[test]
fn two_local_replicas_match_one_device_with_the_doubled_batch() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), &["run.name=single", "training.batch_size=32"]);
    train(
        dir.path(),
        &["run.name=replicated", "training.batch_size=16", "distributed.devices=[0, 1]"],
    );
    let single = common::final_weights(&dir.path().join("single"));
    let replicated = common::final_weights(&dir.path().join("replicated"));
    let diff = max_abs_diff(&single, &replicated);
    eprintln!("max |single - replicated| over {} weights after 40 steps: {diff:e}", single.len());
    assert!(diff < 1e-3, "weights differ by {diff}");
    let summary = std::fs::read_to_string(dir.path().join("replicated/summary.json")).unwrap();
    assert!(summary.contains("\"tokens_seen\": 40960"), "{summary}");
}

/// `mpirun --oversubscribe -np 2 kiln train` on `configs/tiny.toml` with batch 16 and each of
/// `extra` as a `--set` (then `flags`), writing under `artifacts`; each process's temporary
/// folder is `tmp`. Output is piped for the test to read.
fn mpirun(artifacts: &Path, tmp: &Path, extra: &[&str], flags: &[&str]) -> Child {
    let mut command = Command::new("mpirun");
    command.args(["--oversubscribe", "-np", "2"]);
    command.args([env!("CARGO_BIN_EXE_kiln"), "train", "--config", "configs/tiny.toml"]);
    command.args(["--sample-tokens", "0"]);
    let sets = SETTINGS.iter().chain(extra).map(|s| s.to_string()).chain([
        "run.name=mpi".to_string(),
        format!("run.artifacts_dir={}", artifacts.display()),
        "training.batch_size=16".to_string(),
    ]);
    for set in sets {
        command.args(["--set", &set]);
    }
    launched(command.args(flags), tmp)
}

/// `command` (an mpirun) started from the repository with `tmp` as TMPDIR, allowed to run as
/// root (as CI does), its output piped.
fn launched(command: &mut Command, tmp: &Path) -> Child {
    command
        .current_dir(common::repo())
        .env("TMPDIR", tmp)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts: install Open MPI (Debian: openmpi-bin)")
}

/// Waits at most `limit` for `child` to exit (killing it after that): success, and what it
/// wrote to stdout and stderr.
fn wait_for(child: Child, limit: Duration) -> (bool, String) {
    let (code, output) = wait_for_code(child, limit);
    (code == Some(0), output)
}

/// The exit status of `child` and its output, once it ends within `limit`.
fn wait_for_code(mut child: Child, limit: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "mpirun did not exit within {limit:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text.into_owned())
}

/// The pid of the process of MPI rank `rank` among `mpirun`'s children.
fn rank_pid(mpirun: &Child, rank: usize) -> libc::pid_t {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let parent = stat.rsplit(')').next().and_then(|s| s.split_whitespace().nth(1));
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            let ours = parent == Some(mpirun.id().to_string().as_str());
            if ours && environ.split(|&b| b == 0).any(|var| var == wanted.as_bytes()) {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no process of rank {rank} under mpirun");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A job of `max_iters` steps (validating every 10) under mpirun in `dir`, and `signal` sent
/// to its process 1 once process 0 has written a checkpoint: the run and the job.
fn signal_process_1(dir: &Path, tmp: &Path, max_iters: usize, signal: i32) -> (RunDir, Child) {
    let steps = format!("training.max_iters={max_iters}");
    let job = mpirun(dir, tmp, &[&steps, "training.eval_interval=10"], &[]);
    let run = RunDir::new(dir.join("mpi"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while run.checkpoint_steps().is_empty() {
        assert!(Instant::now() < deadline, "process 0 wrote no checkpoint within 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on a process of the job this test started.
    assert_eq!(unsafe { libc::kill(rank_pid(&job, 1), signal) }, 0);
    (run, job)
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

/// Two processes of batch 16 under mpirun end with the same weights, bit for bit (checked
/// by the processes themselves), which match one process with batch 32 as closely as two
/// local replicas do. Only process 0 writes the run, and the other's scratch folder is gone.
#[test]
fn two_processes_under_mpirun_match_one_with_the_doubled_batch() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (ok, output) = wait_for(mpirun(dir.path(), tmp.path(), &[], &[]), Duration::from_secs(300));
    assert!(ok, "{output}");
    assert!(output.contains("the final weights are the same on all 2 processes"), "{output}");
    train(dir.path(), &["run.name=single", "training.batch_size=32"]);
    let weights = common::final_weights(&dir.path().join("mpi"));
    let diff = max_abs_diff(&weights, &common::final_weights(&dir.path().join("single")));
    eprintln!("two processes: max |single - mpi| over {} weights: {diff:e}", weights.len());
    assert!(diff < 1e-3, "weights differ from one process with the doubled batch by {diff}");
    let summary = std::fs::read_to_string(dir.path().join("mpi/summary.json")).unwrap();
    assert!(summary.contains("\"tokens_seen\": 40960"), "{summary}");
    let runs: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(runs.len(), 2, "only process 0 writes a run folder: {runs:?}");
    assert!(is_empty(tmp.path()), "process 1 left its scratch folder behind");
}

/// Two processes whose configs differ: both refuse to start, naming the key.
#[test]
fn a_process_with_other_settings_is_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let kiln = |d_model: &str| {
        let set = format!("model.d_model={d_model}");
        let artifacts = format!("run.artifacts_dir={}", dir.path().display());
        let mut args = vec!["-np", "1", env!("CARGO_BIN_EXE_kiln"), "train"];
        args.extend(["--config", "configs/tiny.toml", "--set", "run.name=mismatch"]);
        let owned = [set, artifacts];
        args.extend(owned.iter().flat_map(|s| ["--set", s.as_str()]).collect::<Vec<_>>());
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    // MPMD: process 0 with one config, process 1 with another.
    let mut command = Command::new("mpirun");
    command.arg("--oversubscribe").args(kiln("32")).arg(":").args(kiln("48"));
    let (ok, output) = wait_for(launched(&mut command, tmp.path()), Duration::from_secs(120));
    assert!(!ok, "{output}");
    assert!(output.contains("model.d_model is 48 on process 1 but 32 on process 0"), "{output}");
}

/// SIGKILL process 1 once process 0 has written a checkpoint: mpirun ends process 0 within
/// seconds, names the rank that died, and process 0's checkpoints still load.
#[test]
fn killing_a_process_ends_the_job_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (run, job) = signal_process_1(dir.path(), tmp.path(), 100_000, libc::SIGKILL);
    let killed = Instant::now();
    let (ok, output) = wait_for(job, Duration::from_secs(60));
    let took = killed.elapsed();
    eprintln!("mpirun exited {took:?} after rank 1 was killed");
    assert!(!ok, "the job cannot finish without process 1");
    assert!(took < Duration::from_secs(30), "the job took {took:?} to end");
    assert!(output.contains("rank 1") && output.contains("signal 9"), "{output}");

    let spec = kiln::config::RunSpec::read_resolved(&run.config()).unwrap();
    let newest = *run.checkpoint_steps().last().unwrap();
    CheckpointState::verify(&run, newest).unwrap();
    kiln::run::load_gpt::<B>(
        &run,
        &spec,
        Some(&run.checkpoint_file("model", newest)),
        &Default::default(),
    )
    .expect("process 0's newest checkpoint loads");
}

/// SIGINT to process 1 stops both processes at the same step, and process 0 writes a
/// checkpoint. `mpirun … --resume` then ends where a job that was never stopped does, bit
/// for bit.
#[test]
fn an_interrupted_job_resumes_on_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (run, job) = signal_process_1(dir.path(), tmp.path(), 200, libc::SIGINT);
    let (code, output) = wait_for_code(job, Duration::from_secs(60));
    // Both stopped by the interrupt (process 0 by its agreement with process 1).
    let stopped = code == Some(130) && output.contains("stopped at step");
    assert!(stopped, "mpirun ({code:?}):\n{output}");
    let step = CheckpointState::verify(&run, *run.checkpoint_steps().last().unwrap()).unwrap().step;
    assert!(step < 200, "the run was stopped at step {step}");

    let long = ["training.max_iters=200", "training.eval_interval=10"];
    let (ok, output) =
        wait_for(mpirun(dir.path(), tmp.path(), &long, &["--resume"]), Duration::from_secs(300));
    assert!(ok && output.contains("resuming"), "{output}");
    let reference = dir.path().join("reference");
    let (ok, output) =
        wait_for(mpirun(&reference, tmp.path(), &long, &[]), Duration::from_secs(300));
    assert!(ok, "{output}");
    assert!(
        common::final_weights(run.root()) == common::final_weights(&reference.join("mpi")),
        "resuming at step {step} changed the weights"
    );
    assert!(is_empty(tmp.path()), "a scratch folder was left behind");
    eprintln!("two processes stopped at step {step} by SIGINT on process 1, resumed: final weights bit-identical to an unstopped job");
}

/// `kiln bench train` under mpirun times process 0 alone, then both processes, and process 0
/// alone prints the scaling; `kiln bench allreduce` prints the time of one exchange.
#[test]
fn the_benchmarks_time_two_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = |args: &[&str]| {
        let mut command = Command::new("mpirun");
        command.args(["--oversubscribe", "-np", "2", env!("CARGO_BIN_EXE_kiln"), "bench"]);
        let (ok, output) =
            wait_for(launched(command.args(args), tmp.path()), Duration::from_secs(180));
        assert!(ok, "{output}");
        output
    };
    let output =
        bench(&["train", "--config", "configs/tiny.toml", "--iters", "3", "--warmup", "1"]);
    assert!(output.contains("on 2 replicas") && output.contains("(2 process(es)"), "{output}");
    assert!(output.contains("% efficiency"), "{output}");
    assert_eq!(output.matches("ms/iter:").count(), 1, "only process 0 reports:\n{output}");
    let output = bench(&["allreduce", "--floats", "3000000", "--steps", "3"]);
    assert!(output.contains("mean of 3000000 floats (12 MB) over 2 processes"), "{output}");
    assert!(output.contains("per exchange: median"), "{output}");
}
