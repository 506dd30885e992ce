//! Data-parallel training (`--features distributed`): two replicas in one process, and two
//! `kiln` processes on loopback as two nodes, against one device with the doubled batch.
#![cfg(feature = "distributed")]

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Child;
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap()
}

/// `kiln train` as node `rank` of two, with node 0 listening on loopback `port` and each
/// node writing under its own artifacts directory (as two machines would); `extra` are more
/// settings, `flags` more command-line flags.
fn node(artifacts: &Path, rank: usize, port: u16, extra: &[&str], flags: &[&str]) -> Child {
    let sets = SETTINGS.iter().chain(extra).map(|s| s.to_string()).chain([
        "run.name=nodes".to_string(),
        format!("run.artifacts_dir={}", artifacts.join(format!("node{rank}")).display()),
        "training.batch_size=16".to_string(),
        "distributed.nodes=2".to_string(),
        format!("distributed.node_rank={rank}"),
        format!("distributed.coordinator=127.0.0.1:{port}"),
    ]);
    common::spawn_tiny_training(sets, flags)
}

/// Waits at most `limit` for `child` to exit (killing it after that): success and stderr.
fn wait_for(child: Child, limit: Duration) -> (bool, String) {
    let (code, stderr) = wait_for_code(child, limit);
    (code == Some(0), stderr)
}

/// The exit status of `child` and what it wrote to stderr, once it ends within `limit`.
fn wait_for_code(mut child: Child, limit: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("kiln did not exit within {limit:?}:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Two processes on loopback train as two nodes of batch 16: both end with the same final
/// weights, bit for bit (every node applies the mean node 0 computed), which match one
/// device with batch 32 as closely as two local replicas do. Only node 0 writes the run.
#[test]
fn two_nodes_on_loopback_write_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let first = node(dir.path(), 0, port, &["distributed.timeout_secs=60"], &[]);
    let second = node(dir.path(), 1, port, &["distributed.timeout_secs=60"], &[]);
    let (ok0, err0) = wait_for(first, Duration::from_secs(300));
    let (ok1, err1) = wait_for(second, Duration::from_secs(60));
    assert!(ok0 && ok1, "node 0:\n{err0}\nnode 1:\n{err1}");

    let (run0, run1) = (dir.path().join("node0/nodes"), dir.path().join("node1/nodes"));
    let weights = common::final_weights(&run0);
    assert!(weights == common::final_weights(&run1), "the nodes' final weights differ");
    train(dir.path(), &["run.name=single", "training.batch_size=32"]);
    let diff = max_abs_diff(&weights, &common::final_weights(&dir.path().join("single")));
    eprintln!(
        "two nodes: final weights bit-identical; max |single - nodes| over {} weights: {diff:e}",
        weights.len()
    );
    assert!(diff < 1e-3, "weights differ from one device with the doubled batch by {diff}");

    for file in ["metrics.jsonl", "summary.json"] {
        assert!(run0.join(file).exists(), "node 0 writes {file}");
        assert!(!run1.join(file).exists(), "node 1 writes no {file}");
    }
    assert!(!RunDir::new(&run0).checkpoint_steps().is_empty(), "node 0 writes checkpoints");
    assert!(RunDir::new(&run1).checkpoint_steps().is_empty(), "node 1 writes no checkpoints");
    let summary = std::fs::read_to_string(run0.join("summary.json")).unwrap();
    assert!(summary.contains("\"tokens_seen\": 40960"), "{summary}");
}

/// SIGKILL node 1 once node 0 has written a checkpoint: node 0 fails within seconds with an
/// error naming node 1, instead of waiting for it, and its checkpoints still load.
#[test]
fn killing_a_node_ends_the_other_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let long =
        ["training.max_iters=100000", "training.eval_interval=10", "distributed.timeout_secs=5"];
    let first = node(dir.path(), 0, port, &long, &[]);
    let mut second = node(dir.path(), 1, port, &long, &[]);
    let run0 = RunDir::new(dir.path().join("node0/nodes"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while run0.checkpoint_steps().is_empty() {
        assert!(Instant::now() < deadline, "node 0 wrote no checkpoint within 2 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let killed = Instant::now();
    let (ok, stderr) = wait_for(first, Duration::from_secs(60));
    let took = killed.elapsed();
    eprintln!(
        "node 0 exited {took:?} after node 1 was killed:\n{}",
        stderr.lines().last().unwrap_or_default()
    );
    assert!(!ok, "node 0 cannot finish without node 1");
    assert!(took < Duration::from_secs(30), "node 0 took {took:?} to give up");
    assert!(
        stderr.contains("node 1 closed its connection") || stderr.contains("node 1 sent nothing"),
        "{stderr}"
    );

    let spec = kiln::config::RunSpec::read_resolved(&run0.config()).unwrap();
    let newest = *run0.checkpoint_steps().last().unwrap();
    CheckpointState::verify(&run0, newest).unwrap();
    kiln::run::load_gpt::<B>(
        &run0,
        &spec,
        Some(&run0.checkpoint_file("model", newest)),
        &Default::default(),
    )
    .expect("node 0's newest checkpoint loads");
}

/// Ctrl-C on node 1 stops both nodes at the same step, and node 0 writes a checkpoint. With
/// node 0's checkpoints copied to node 1, both resume and end where two nodes that were never
/// stopped do, bit for bit.
#[test]
fn interrupted_nodes_resume_from_node_0s_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let long =
        ["training.max_iters=200", "training.eval_interval=10", "distributed.timeout_secs=60"];
    let port = free_port();
    let first = node(dir.path(), 0, port, &long, &[]);
    let second = node(dir.path(), 1, port, &long, &[]);
    let (run0, run1) =
        (RunDir::new(dir.path().join("node0/nodes")), RunDir::new(dir.path().join("node1/nodes")));
    let deadline = Instant::now() + Duration::from_secs(120);
    while run0.checkpoint_steps().is_empty() {
        assert!(Instant::now() < deadline, "node 0 wrote no checkpoint within 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the pid of a child this test started and has not yet waited for.
    assert_eq!(unsafe { libc::kill(second.id() as libc::pid_t, libc::SIGINT) }, 0);
    let (code0, err0) = wait_for_code(first, Duration::from_secs(60));
    let (code1, err1) = wait_for_code(second, Duration::from_secs(60));
    // Both stopped by the interrupt (node 0 by its agreement with node 1): 128 + SIGINT.
    let stopped = code0 == Some(130) && code1 == Some(130) && err0.contains("stopped at step");
    assert!(stopped, "node 0 ({code0:?}):\n{err0}\nnode 1 ({code1:?}):\n{err1}");
    let newest = *run0.checkpoint_steps().last().unwrap();
    let step = CheckpointState::verify(&run0, newest).unwrap().step;
    assert!(step < 200, "the run was stopped at step {step}");

    std::fs::create_dir_all(run1.checkpoints()).unwrap();
    for entry in std::fs::read_dir(run0.checkpoints()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), run1.checkpoints().join(entry.file_name())).unwrap();
    }
    let port = free_port();
    let first = node(dir.path(), 0, port, &long, &["--resume"]);
    let second = node(dir.path(), 1, port, &long, &["--resume"]);
    let (ok0, err0) = wait_for(first, Duration::from_secs(300));
    let (ok1, err1) = wait_for(second, Duration::from_secs(60));
    assert!(ok0 && ok1, "node 0:\n{err0}\nnode 1:\n{err1}");

    let reference = dir.path().join("reference");
    let port = free_port();
    let first = node(&reference, 0, port, &long, &[]);
    let second = node(&reference, 1, port, &long, &[]);
    assert!(
        wait_for(first, Duration::from_secs(300)).0 && wait_for(second, Duration::from_secs(60)).0
    );
    let resumed = common::final_weights(run0.root());
    assert!(resumed == common::final_weights(run1.root()), "the resumed nodes' weights differ");
    assert!(
        resumed == common::final_weights(&reference.join("node0/nodes")),
        "resuming at step {step} changed the weights"
    );
    eprintln!("two nodes stopped at step {step} by SIGINT on node 1, resumed on both: final weights bit-identical to an unstopped pair");
}
