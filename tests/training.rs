//! End-to-end: train the tiny config, resume, generate, eval and inspect through the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::kiln;
use kiln::run::read_metrics;
use kiln::train::TrainOptions;

/// Trains one run at a time: Burn's ndarray backend draws weights and dropout masks from one
/// RNG per process, so runs trained side by side by parallel tests would interleave their
/// draws and stop being reproducible.
fn train(
    spec: kiln::config::RunSpec,
    options: TrainOptions,
) -> anyhow::Result<kiln::train::Outcome> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    kiln::train::train(spec, options)
}

/// One tiny run shared by the tests of this file: (artifacts dir kept alive, run dir).
fn trained_run() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let artifacts = tempfile::tempdir().unwrap().keep();
        train(common::tiny_spec(&artifacts, &[]), TrainOptions::default()).unwrap();
        artifacts.join("tiny")
    })
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn tiny_run_learns_and_writes_its_artifacts() {
    let run = trained_run();
    for file in [
        "config.toml", "tokenizer.json", "tokens.bin", "model.mpk", "metrics.jsonl", "summary.json",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let metrics = read_metrics(&run.join("metrics.jsonl"));
    let train_lines: Vec<_> = metrics.iter().filter(|l| l.split == "train").collect();
    assert_eq!(train_lines.len(), 150, "one line per optimizer step");
    assert_eq!(
        metrics.iter().filter(|l| l.split == "val").map(|l| l.step).collect::<Vec<_>>(),
        vec![50, 100, 150]
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    let first = train_lines[0].loss;
    let last_val = summary["final_val_loss"].as_f64().unwrap();
    assert!(last_val <= 0.7 * first, "loss fell from {first} to only {last_val}");
    for key in ["final_train_loss", "val_perplexity", "params", "wall_seconds", "tokens_per_second"]
    {
        assert!(summary[key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert_eq!(summary["backend"], "ndarray");
    // Checkpoints every eval_interval, the last 3 kept.
    let ckpts = kiln::run::RunDir::new(run).checkpoint_steps();
    assert_eq!(ckpts, vec![50, 100, 150]);
}

#[test]
fn generate_is_deterministic_per_seed_and_streams_the_prompt() {
    let run = path(trained_run());
    let sample = |seed: &str| {
        kiln(&[
            "generate", "--run", run, "--prompt", "ROMEO:", "--max-new-tokens", "80",
            "--temperature", "0.8", "--top-k", "20", "--seed", seed,
        ])
    };
    let (ok, a, err) = sample("7");
    assert!(ok, "{err}");
    assert!(a.starts_with("ROMEO:") && a.chars().count() >= 80, "{a:?}");
    assert_eq!(sample("7").1, a, "same seed, same text");
    assert_ne!(sample("8").1, a, "another seed, other text");
    let greedy = |p: &str| {
        kiln(&[
            "generate", "--run", run, "--prompt", "ROMEO:", "--max-new-tokens", "40",
            "--temperature", "0", "--top-p", p,
        ])
        .1
    };
    assert_eq!(greedy("0.9"), greedy("0.5"), "temperature 0 is greedy");
}

#[test]
fn generate_rejects_bad_input_clearly() {
    let run = path(trained_run());
    let (ok, _, err) = kiln(&["generate", "--run", run, "--prompt", "ROMEO: ✓"]);
    assert!(!ok && err.contains("'✓'") && err.contains("--prompt"), "{err}");
    let (ok, _, err) = kiln(&["generate", "--run", run, "--top-p", "1.5"]);
    assert!(!ok && err.contains("--top-p 1.5"), "{err}");
    let (ok, _, err) = kiln(&["generate", "--run", "/no/such/run"]);
    assert!(!ok && err.contains("not a kiln run directory"), "{err}");
}

#[test]
fn long_prompts_are_cropped_to_the_block() {
    let run = path(trained_run());
    let prompt = "First Citizen: ".repeat(10);
    let (ok, out, err) =
        kiln(&["generate", "--run", run, "--prompt", &prompt, "--max-new-tokens", "50"]);
    assert!(ok, "{err}");
    assert!(out.len() > prompt.len());
}

#[test]
fn eval_reports_the_summary_val_loss() {
    let run = trained_run();
    let (ok, out, err) = kiln(&["eval", "--run", path(run), "--json"]);
    assert!(ok, "{err}");
    let eval: serde_json::Value = serde_json::from_str(&out).unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    let (a, b) = (eval["val_loss"].as_f64().unwrap(), summary["final_val_loss"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-6, "eval {a} vs summary {b}");
    assert!((eval["val_perplexity"].as_f64().unwrap() - a.exp()).abs() < 1e-6);
}

#[test]
fn inspect_lists_every_parameter_of_runs_and_checkpoints() {
    let run = trained_run();
    let (ok, out, err) = kiln(&["inspect", path(run), "--json"]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let params = report["params"].as_array().unwrap();
    // wte, wpe, 2 blocks × 12 tensors, ln_f gamma + beta
    assert_eq!(params.len(), 2 + 2 * 12 + 2);
    let sum: u64 = params.iter().map(|p| p["count"].as_u64().unwrap()).sum();
    assert_eq!(sum, report["total_params"].as_u64().unwrap());
    assert!(params
        .iter()
        .any(|p| p["name"] == "blocks.1.attn.c_attn.weight"
            && p["shape"] == serde_json::json!([32, 96])));
    assert_eq!(report["step"], 150);

    let ckpt = run.join("checkpoints/model-step100.mpk");
    let (ok, out, err) = kiln(&["inspect", path(&ckpt)]);
    assert!(ok, "{err}");
    assert!(out.contains("step 100 (epoch 2)") && out.contains("total parameters:"), "{out}");

    let foreign = run.join("tokens.bin");
    let (ok, _, err) = kiln(&["inspect", path(&foreign)]);
    assert!(!ok && err.contains("not a model file of the run"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.mpk");
    std::fs::write(&junk, b"not a record at all").unwrap();
    let (ok, _, err) = kiln(&["inspect", path(&junk)]);
    assert!(!ok && err.contains("junk.mpk: cannot find the run it belongs to"), "{err}");
}

#[test]
fn existing_run_is_never_overwritten_without_asking() {
    let run = trained_run();
    let artifacts = run.parent().unwrap();
    let err =
        train(common::tiny_spec(artifacts, &[]), TrainOptions::default()).unwrap_err().to_string();
    assert!(err.contains("already holds a run"), "{err}");
    // The command line says which flags get past it.
    let artifacts = format!("run.artifacts_dir={}", artifacts.display());
    let (ok, _, err) = kiln(&["--config", "configs/tiny.toml", "--set", &artifacts]);
    assert!(!ok && err.contains("already holds a run"), "{err}");
    assert!(err.contains("--resume") && err.contains("--force"), "{err}");
}

#[test]
fn resume_continues_at_the_saved_step() {
    let artifacts = tempfile::tempdir().unwrap();
    let sets = ["run.name=resume"];
    train(common::tiny_spec(artifacts.path(), &sets), TrainOptions::default()).unwrap();
    let run = artifacts.path().join("resume");

    // Simulate a crash right after the step-50 checkpoint.
    let dir = kiln::run::RunDir::new(&run);
    dir.remove_checkpoint(150).unwrap();
    dir.remove_checkpoint(100).unwrap();
    std::fs::remove_file(run.join("model.mpk")).unwrap();

    let options = TrainOptions {
        start: kiln::run::start::StartMode::Resume(kiln::run::Resume::Newest),
        ..Default::default()
    };
    train(common::tiny_spec(artifacts.path(), &sets), options).unwrap();
    let metrics = read_metrics(&run.join("metrics.jsonl"));
    let steps = |split: &str| {
        metrics.iter().filter(|l| l.split == split).map(|l| l.step).collect::<Vec<_>>()
    };
    assert_eq!(
        steps("train"),
        (1..=150).collect::<Vec<_>>(),
        "metrics continue at step 51 without duplicates"
    );
    assert_eq!(steps("val"), [50, 100, 150]);
    assert_eq!(dir.checkpoint_steps(), vec![50, 100, 150]);

    // The resumed run ends exactly where the uninterrupted one did.
    let uninterrupted = trained_run();
    let reference = read_metrics(&uninterrupted.join("metrics.jsonl"));
    let losses =
        |m: &[kiln::run::MetricsLine]| m.iter().map(|l| (l.step, l.loss)).collect::<Vec<_>>();
    assert_eq!(losses(&metrics), losses(&reference));
    assert_eq!(
        final_logits(&run),
        final_logits(uninterrupted),
        "final weights differ from the uninterrupted run"
    );
}

/// Logits of a run's final model on a fixed batch, as raw f32 bits.
fn final_logits(run: &Path) -> Vec<u32> {
    type B = burn::backend::NdArray<f32>;
    let dir = kiln::run::RunDir::new(run);
    let spec = kiln::config::RunSpec::read_resolved(&dir.config()).unwrap();
    let device = Default::default();
    let (model, _) = kiln::run::load_gpt::<B>(&dir, &spec, None, &device).unwrap();
    let ids: Vec<i64> = (0..32).map(|i| i % 60).collect();
    let tokens = burn::tensor::Tensor::<B, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(ids, [1, 32]),
        &device,
    );
    model.forward(tokens).into_data().to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn cli_reports_config_errors_in_one_line() {
    let (ok, _, err) = kiln(&["--config", "configs/tiny.toml", "--set", "model.n_heads=3"]);
    assert!(!ok);
    assert_eq!(err.trim(), "error: model.n_heads = 3: expected a divisor of model.d_model (32)");
    let (ok, _, err) = kiln(&["train", "--config", "configs/no-such.toml"]);
    assert!(!ok && err.contains("configs/no-such.toml") && err.contains("not found"), "{err}");
}

#[test]
fn course_architecture_trains_generates_resumes_and_exports_under_its_own_names() {
    // CS336's choices (RoPE, RMSNorm, SwiGLU, no biases) with post-norm blocks on top, through
    // the whole product: training, the KV-cached sampler, eval, export.
    let artifacts = tempfile::tempdir().unwrap();
    let overrides = [
        "model.positions=rope", "model.norm=rmsnorm", "model.activation=swiglu",
        "model.bias=false", "model.norm_first=false", "model.tie_embeddings=false",
    ];
    let spec = common::tiny_spec(artifacts.path(), &overrides);
    train(spec, TrainOptions::default()).unwrap();
    let run = artifacts.path().join("tiny");
    let metrics = read_metrics(&run.join("metrics.jsonl"));
    let first = metrics.iter().find(|l| l.split == "train").unwrap().loss;
    let last_val = metrics.iter().rev().find(|l| l.split == "val").unwrap().loss;
    assert!(last_val <= 0.75 * first, "loss fell from {first} to only {last_val}");

    let (ok, out, err) = kiln(&[
        "generate",
        "--run",
        path(&run),
        "--prompt",
        "ROMEO:",
        "--max-new-tokens",
        "40",
        "--temperature",
        "0",
    ]);
    assert!(ok && out.starts_with("ROMEO:") && out.chars().count() >= 40, "{err}");
    let (ok, out, err) = kiln(&["inspect", path(&run)]);
    assert!(
        ok && out.contains("post-norm rmsnorm, swiglu, rope positions, gpt2 init")
            && !out.contains("wpe"),
        "{out}{err}"
    );

    let out_dir = artifacts.path().join("export");
    let (ok, _, err) = kiln(&["export", "--run", path(&run), "--out", path(&out_dir)]);
    assert!(!ok && err.contains("model.positions = rope") && err.contains("--names kiln"), "{err}");
    assert!(!out_dir.exists(), "a refused export writes nothing");
    let (ok, _, err) =
        kiln(&["export", "--run", path(&run), "--out", path(&out_dir), "--names", "kiln"]);
    assert!(ok && out_dir.join("model.safetensors").is_file(), "{err}");
}

/// `model.init_from` starts a run from a finished run's weights and tokenizer: its first
/// training loss is the base's last, far below a fresh model's; a `[model]` that describes
/// another network, or a base that has not finished, is refused by key.
#[test]
fn init_from_starts_from_the_base_runs_weights_and_tokenizer() {
    let base = trained_run();
    let artifacts = tempfile::tempdir().unwrap();
    let init_from = format!("model.init_from={}", base.display());
    let short = ["training.max_iters=10", "training.eval_interval=10", "training.warmup_iters=0"];
    let run = |name: &str, extra: &[&str]| {
        let name = format!("run.name={name}");
        let sets: Vec<&str> = short.iter().chain(extra).chain([&name.as_str()]).copied().collect();
        train(common::tiny_spec(artifacts.path(), &sets), TrainOptions::default())
    };
    run("tuned", &[&init_from, "model.dropout=0.1"]).unwrap();
    run("fresh", &[]).unwrap();
    let first_loss = |dir: &Path| read_metrics(&dir.join("metrics.jsonl"))[0].loss;
    let base_last = read_metrics(&base.join("metrics.jsonl"))
        .iter()
        .rfind(|l| l.split == "train")
        .unwrap()
        .loss;
    let (tuned, fresh) =
        (first_loss(&artifacts.path().join("tuned")), first_loss(&artifacts.path().join("fresh")));
    println!("first train loss: tuned {tuned:.4}, fresh {fresh:.4}; base's last {base_last:.4}");
    assert!(tuned < fresh - 1.0 && (tuned - base_last).abs() < 0.3, "{tuned} {fresh} {base_last}");
    assert_eq!(
        std::fs::read(artifacts.path().join("tuned/tokenizer.json")).unwrap(),
        std::fs::read(base.join("tokenizer.json")).unwrap()
    );

    let err = run("wider", &[&init_from, "model.d_model=64"]).unwrap_err();
    common::assert_mentions(
        &format!("{err:#}"),
        &["model.d_model = 64 (the base has 32)", "init_from"],
    );
    let unfinished = artifacts.path().join("unfinished");
    common::copy_dir(base, &unfinished);
    std::fs::remove_file(unfinished.join("model.mpk")).unwrap();
    let from = format!("model.init_from={}", unfinished.display());
    let err = run("on-unfinished", &[&from]).unwrap_err();
    common::assert_mentions(&format!("{err:#}"), &["model.init_from", "has not finished"]);
}

/// A run kiln made before it named checkpoints by step (manifest format 1, `model-2.mpk` and
/// a `state-2.json` that lists those names) resumes: its checkpoints are renamed first.
#[test]
fn a_run_with_checkpoints_named_by_epoch_resumes() {
    let artifacts = tempfile::tempdir().unwrap();
    let sets = |max_iters: &'static str| ["run.name=old", max_iters, "training.eval_interval=10"];
    let spec = common::tiny_spec(artifacts.path(), &sets("training.max_iters=20"));
    train(spec, TrainOptions::default()).unwrap();
    let dir = kiln::run::RunDir::new(artifacts.path().join("old"));
    let read = |path: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let mut by_epoch = serde_json::Map::new();
    for step in dir.checkpoint_steps() {
        let mut state = read(&dir.checkpoint_state(step));
        let epoch = state["epoch"].as_u64().unwrap();
        let mut files = serde_json::Map::new();
        for kind in ["model", "optim", "scheduler"] {
            let old = format!("{kind}-{epoch}.mpk");
            std::fs::rename(dir.checkpoint_file(kind, step), dir.checkpoints().join(&old)).unwrap();
            files.insert(old, state["files"][format!("{kind}-step{step}.mpk")].clone());
        }
        state["files"] = files.into();
        let text = serde_json::to_vec_pretty(&state).unwrap();
        std::fs::remove_file(dir.checkpoint_state(step)).unwrap();
        std::fs::write(dir.checkpoints().join(format!("state-{epoch}.json")), &text).unwrap();
        let hash = kiln::files::sha256_hex(&text);
        by_epoch.insert(epoch.to_string(), serde_json::json!({"step": step, "state_sha256": hash}));
    }
    let mut manifest = read(&dir.manifest());
    manifest["format"] = 1.into();
    manifest["checkpoints"] = by_epoch.into();
    std::fs::write(dir.manifest(), serde_json::to_vec(&manifest).unwrap()).unwrap();
    assert!(dir.checkpoint_steps().is_empty() && dir.checkpoints().join("model-2.mpk").is_file());

    let options = TrainOptions {
        start: kiln::run::start::StartMode::Resume(kiln::run::Resume::Newest),
        ..Default::default()
    };
    let spec = common::tiny_spec(artifacts.path(), &sets("training.max_iters=30"));
    train(spec, options).unwrap();
    assert_eq!(dir.checkpoint_steps(), vec![10, 20, 30]);
    assert!(!dir.checkpoints().join("model-2.mpk").exists());
    let steps: Vec<usize> = read_metrics(&dir.metrics()).iter().map(|l| l.step).collect();
    assert_eq!(steps.iter().filter(|&&s| s == 21).count(), 1, "resumed after step 20");
}
