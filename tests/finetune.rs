//! Instruction finetuning (`data.kind = "instructions"`) and `kiln chat`: records in, the
//! loss on the responses only, the base run's weights and tokenizer, held-out responses out.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use kiln::config::PromptTemplate;
use kiln::data::Example;
use kiln::train::{train, TrainOptions};

type B = burn::backend::NdArray<f32>;

/// A base GPT on TinyStories with a byte-level BPE (which has `<|endoftext|>`), wide enough
/// in context for the Alpaca template.
const BASE: &[&str] = &[
    "run.name=base", "data.path=data/tinystories_val.txt", "data.tokenizer=bpe:train:1000",
    "model.block_size=192", "model.d_model=48", "training.batch_size=8", "training.max_iters=60",
    "training.eval_interval=60",
];

fn base_run() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let artifacts = tempfile::tempdir().unwrap().keep();
        train(common::tiny_spec(&artifacts, BASE), TrainOptions::default()).unwrap();
        artifacts.join("base")
    })
}

/// The settings of an instruction run on `records` that starts from the base run.
fn sft_sets(records: &Path, name: &str) -> Vec<String> {
    let mut sets: Vec<String> = BASE[1..].iter().map(|s| s.to_string()).collect();
    sets.extend([
        format!("run.name={name}"),
        "data.format=instructions".into(),
        format!("data.path={}", records.display()),
        format!("model.init_from={}", base_run().display()),
        "training.max_iters=60".into(),
        "training.eval_interval=10".into(),
        "training.warmup_iters=0".into(),
        "training.learning_rate=3e-3".into(),
        "training.eval_iters=4".into(),
    ]);
    sets
}

/// The first `n` records of the book's instruction data, as JSON Lines.
fn records(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(common::repo().join("data/instruction-data.json")).unwrap();
    let all: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let path = dir.join("records.jsonl");
    let lines: Vec<String> = all[..n].iter().map(|r| r.to_string()).collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// An instruction run on the first 200 of the book's records, from the base run: its
/// folder and its records file.
fn sft_run() -> &'static (PathBuf, PathBuf) {
    static RUN: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let artifacts = tempfile::tempdir().unwrap().keep();
        let data = records(&artifacts, 200);
        let sets = sft_sets(&data, "sft");
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let spec = common::tiny_spec(&artifacts, &sets);
        assert_eq!(spec.data.template, PromptTemplate::Alpaca);
        train(spec, TrainOptions::default()).unwrap();
        (artifacts.join("sft"), data)
    })
}

/// Finetuning from a base run: the base's tokenizer is kept, the held-out response loss
/// falls, and the run answers every held-out instruction in `responses.json`; `kiln chat`
/// then talks to it through stdin.
#[test]
fn a_base_run_is_finetuned_on_instructions_and_answers_them() {
    let (run, data) = sft_run();
    assert_eq!(
        std::fs::read(run.join("tokenizer.json")).unwrap(),
        std::fs::read(base_run().join("tokenizer.json")).unwrap()
    );
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let named = format!("tokenizer = \"bpe:{}\"", base_run().join("tokenizer.json").display());
    assert!(config.contains(&named), "{config}");

    let val: Vec<f64> = metrics(run)
        .iter()
        .filter(|l| l["split"] == "val")
        .map(|l| l["loss"].as_f64().unwrap())
        .collect();
    println!("held-out response loss by evaluation: {val:?}");
    assert!(val.len() == 6 && val[5] < val[0] - 0.2, "{val:?}");

    let responses: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(run.join("responses.json")).unwrap()).unwrap();
    assert_eq!(responses.len(), 20, "every held-out record answered");
    let held_out: Vec<serde_json::Value> = std::fs::read_to_string(data)
        .unwrap()
        .lines()
        .skip(180)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (response, record) in responses.iter().zip(&held_out) {
        assert_eq!(response["instruction"], record["instruction"]);
        assert_eq!(response["output"], record["output"]);
        assert!(response["model_response"].is_string());
    }

    let mut chat = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["chat", "--run", run.to_str().unwrap(), "--max-new-tokens", "20"])
        .current_dir(common::repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let messages = "Name a color.\n\n/reset\nWhat is the capital of France?\n";
    chat.stdin.take().unwrap().write_all(messages.as_bytes()).unwrap();
    let out = chat.wait_with_output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches('\n').count(), 2, "one reply a message:\n{stdout}");
    assert!(!stdout.contains("### "), "a reply stops at the next turn marker:\n{stdout}");
}

/// The loss of an instruction batch is the mean over the response tokens alone: the same
/// number computed position by position from the logits.
#[test]
fn the_loss_counts_the_response_tokens_only() {
    let spec = common::tiny_spec(Path::new("unused"), &["model.vocab_size=50"]);
    let config = kiln::train::gpt_config(&spec).unwrap();
    let device = Default::default();
    let model = config.init::<B>(&device);
    let a = Example { prompt: vec![1, 2, 3, 4], response: vec![5, 6, 0] };
    let b = Example { prompt: vec![7, 8], response: vec![9, 10, 11, 12, 0] };
    let batch = kiln::data::LmBatch::<B>::from_examples(&[&a, &b], 0, &device);
    let loss = kiln::train::lm_loss(&model, &batch).into_scalar();

    let log_probs = burn::tensor::activation::log_softmax(model.forward(batch.inputs.clone()), 2);
    let targets = batch.targets.clone().into_data().to_vec::<i64>().unwrap();
    let seq = targets.len() / 2;
    let mut expected = Vec::new();
    for (row, example) in [&a, &b].iter().enumerate() {
        // Target j predicts token j + 1: the response starts at target prompt.len() - 1.
        for j in example.prompt.len() - 1..example.len() - 1 {
            let target = targets[row * seq + j] as usize;
            let value = log_probs.clone().slice([row..row + 1, j..j + 1, target..target + 1]);
            expected.push(-value.into_scalar());
        }
    }
    assert_eq!(expected.len(), 3 + 5);
    let expected = expected.iter().sum::<f32>() / expected.len() as f32;
    assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
}

/// What cannot be finetuned is refused with the key or file at fault.
#[test]
fn bad_instruction_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = records(dir.path(), 30);
    let run = |extra: &[&str]| {
        let mut sets: Vec<String> = vec![
            "data.kind=instructions".into(),
            format!("data.path={}", data.display()),
            "model.block_size=128".into(),
            "training.max_iters=2".into(),
            "training.warmup_iters=0".into(),
        ];
        sets.extend(extra.iter().map(|s| s.to_string()));
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let spec = kiln::config::load_with_env(
            &common::repo().join("configs/tiny.toml"),
            &sets
                .iter()
                .map(|s| s.to_string())
                .chain([format!("run.artifacts_dir={}", dir.path().display())])
                .collect::<Vec<_>>(),
            Vec::new(),
        );
        match spec {
            Err(e) => e.to_string(),
            Ok(spec) => format!("{:#}", train(spec, TrainOptions::default()).unwrap_err()),
        }
    };
    common::assert_mentions(&run(&[]), &["data.tokenizer = \"char\"", "<|endoftext|>"]);
    common::assert_mentions(
        &run(&["data.template=Q: {question}"]),
        &["data.template", "{instruction}"],
    );
    common::assert_mentions(
        &run(&["data.tokenizer=bpe:train:300", "model.block_size=16"]),
        &["model.block_size = 16", "raise model.block_size"],
    );
    common::assert_mentions(&run(&["model.kind=seq2seq"]), &["data.kind", "instructions"]);
    common::assert_mentions(&run(&["data.kind=preferences"]), &["model.init_from", "reference"]);
    common::assert_mentions(
        &run(&["data.tokenizer=bpe:train:300", "training.dpo_beta=0"]),
        &["training.dpo_beta", "positive"],
    );
    std::fs::write(&data, "[{\"instruction\": \"a\", \"output\": 1}]").unwrap();
    common::assert_mentions(
        &run(&["data.tokenizer=bpe:train:300"]),
        &["records.jsonl", "record 1", "\"output\" is 1"],
    );
}

/// DPO from the instruction run on the book's preference pairs: the reward margin of the
/// held-out pairs grows from zero (the tuned model starts as the reference), their reward
/// accuracy ends above chance, every figure is in metrics.jsonl, and the held-out
/// instructions are answered.
#[test]
fn dpo_raises_the_reward_margin_of_held_out_pairs() {
    let (sft, _) = sft_run();
    let artifacts = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(common::repo().join("data/instruction-data-with-preference.json"))
            .unwrap();
    let all: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let data = artifacts.path().join("pairs.json");
    std::fs::write(&data, serde_json::to_string(&all[..300]).unwrap()).unwrap();
    let mut sets: Vec<String> = BASE[1..].iter().map(|s| s.to_string()).collect();
    sets.extend([
        "run.name=dpo".into(),
        "data.kind=preferences".into(),
        format!("data.path={}", data.display()),
        format!("model.init_from={}", sft.display()),
        "training.max_iters=34".into(),
        "training.eval_interval=17".into(),
        "training.warmup_iters=0".into(),
        "training.learning_rate=1e-3".into(),
        "training.min_lr=1e-3".into(),
        "training.eval_iters=4".into(),
    ]);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    train(common::tiny_spec(artifacts.path(), &sets), TrainOptions::default()).unwrap();
    let run = artifacts.path().join("dpo");
    let lines = metrics(&run);
    let figure = |line: &serde_json::Value, key: &str| line[key].as_f64().unwrap();
    let val: Vec<(f64, f64, f64)> = lines
        .iter()
        .filter(|l| l["split"] == "val")
        .map(|l| (figure(l, "loss"), figure(l, "reward_margin"), figure(l, "reward_accuracy")))
        .collect();
    println!("held-out (loss, reward margin, reward accuracy): {val:?}");
    assert_eq!(val.len(), 2);
    assert!(val[0].1 > 0.0 && val[1].1 > val[0].1, "{val:?}");
    assert!(val[1].0 < std::f64::consts::LN_2 && val[1].2 > 0.5, "{val:?}");
    assert!(lines.iter().filter(|l| l["split"] == "train").all(|l| l["reward_accuracy"].is_f64()));

    let responses: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(run.join("responses.json")).unwrap()).unwrap();
    assert_eq!(responses.len(), 30);
    assert_eq!(responses[0]["chosen"], all[270]["chosen"]);
    assert!(responses[0]["rejected"].is_string() && responses[0]["model_response"].is_string());
    let (ok, _, err) = common::kiln(&["eval", "--run", run.to_str().unwrap()]);
    assert!(!ok && err.contains("metrics.jsonl"), "{err}");
}
