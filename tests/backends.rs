//! One model, every backend: the same weights give the same logits, the same training losses
//! and the same greedy text on ndarray, flex, wgpu and libtorch's CPU device.
//!
//! Compiled with `--features wgpu,tch,flex` (as `.ci/run` does); each test compares every
//! backend compiled in with ndarray.
#![cfg(any(feature = "wgpu", feature = "tch", feature = "flex"))]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::Recorder;
use kiln::config::{Activation, NormKind, PositionKind};
use kiln::data::LmBatch;
use kiln::generate::{generate, Sampling};
use kiln::kernels::{KernelBackend, TrainBackend};
use kiln::model::{Gpt, GptConfig, Seq2Seq, Seq2SeqConfig};
use kiln::run::checkpoint::{load_record, CheckpointRecorder};
use kiln::tokenizer::{CharTokenizer, Tokenizer};
use kiln::train::{lm_loss, AdamW, ClippedAdamW};

type Reference = burn::backend::NdArray<f32>;
use burn::backend::ndarray::NdArrayDevice;

const STEPS: usize = 20;
/// Adam turns gradient noise into full-size steps, so backends drift apart faster at high
/// learning rates; 1e-3 is a usual rate for this model size.
const LR: f64 = 1e-3;
const BATCH: usize = 8;
const BLOCK: usize = 32;

fn config() -> GptConfig {
    GptConfig::new(65, 64, 4, 2, 256, BLOCK).with_bias(true)
}

/// The course architectures in one model: CS336's RoPE, RMSNorm and SwiGLU in post-norm
/// blocks (as HW4's) without biases.
fn course_config() -> GptConfig {
    GptConfig::new(65, 64, 4, 2, 192, BLOCK)
        .with_positions(PositionKind::Rope)
        .with_norm(NormKind::RmsNorm)
        .with_activation(Activation::SwiGlu)
        .with_norm_first(false)
        .with_bias(false)
        .with_qkv_bias(false)
}

/// Encoded tinyshakespeare (char level, 65 symbols).
fn corpus() -> &'static (CharTokenizer, Vec<u32>) {
    static CORPUS: OnceLock<(CharTokenizer, Vec<u32>)> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let text =
            std::fs::read_to_string(common::repo().join("data/tinyshakespeare.txt")).unwrap();
        let tok = CharTokenizer::fit(&text, false);
        let ids = tok.encode(&text).unwrap();
        (tok, ids)
    })
}

/// Initial weights of `config`, drawn on ndarray and saved as an f32 record.
fn draw_weights(config: &GptConfig) -> PathBuf {
    save_drawn(|device| {
        let model: Gpt<Reference> = config.init(device);
        // Touch every parameter so the lazily initialised values are the ones saved.
        let _ = model.forward(Tensor::zeros([1, 2], device));
        model
    })
}

/// The model `draw` makes on ndarray after seeding it, saved as an f32 record.
fn save_drawn<M: Module<Reference>>(draw: impl FnOnce(&NdArrayDevice) -> M) -> PathBuf {
    let path = tempfile::tempdir().unwrap().keep().join("init.mpk");
    let device = Default::default();
    Reference::seed(&device, 42);
    let record = draw(&device).into_record();
    Recorder::<Reference>::record(&CheckpointRecorder::default(), record, path.clone()).unwrap();
    path
}

fn initial_weights() -> &'static PathBuf {
    static WEIGHTS: OnceLock<PathBuf> = OnceLock::new();
    WEIGHTS.get_or_init(|| draw_weights(&config()))
}

fn load<B: KernelBackend>(path: &Path, device: &B::Device) -> Gpt<B> {
    load_as(&config(), path, device)
}

fn load_as<B: KernelBackend>(config: &GptConfig, path: &Path, device: &B::Device) -> Gpt<B> {
    config.init(device).load_record(load_record::<B, _>(path, device).unwrap())
}

/// Logits of the course model on `B` and on ndarray, from the same weights.
fn course_logits<B: KernelBackend>(device: &B::Device) -> (Vec<f32>, Vec<f32>) {
    static WEIGHTS: OnceLock<PathBuf> = OnceLock::new();
    let weights = WEIGHTS.get_or_init(|| draw_weights(&course_config()));
    let run = |model: Gpt<B>| {
        model.forward(batch::<B>(0, device).inputs).into_data().convert::<f32>().to_vec().unwrap()
    };
    let reference = load_as::<Reference>(&course_config(), weights, &Default::default())
        .forward(batch::<Reference>(0, &Default::default()).inputs)
        .into_data()
        .to_vec()
        .unwrap();
    (run(load_as::<B>(&course_config(), weights, device)), reference)
}

/// The encoder-decoder, post-norm with sinusoidal positions as in the paper.
fn seq2seq_config() -> Seq2SeqConfig {
    Seq2SeqConfig::new(65, 64, 4, 2, 2, 128, BLOCK, 0).with_dropout(0.0)
}

/// Teacher-forced logits, then the logits of every step of incremental decoding (KV cache,
/// cross-attention memory, padded sources), of the seq2seq model on `B`, from weights drawn
/// on ndarray.
fn seq2seq_logits<B: KernelBackend>(device: &B::Device) -> Vec<f32> {
    static WEIGHTS: OnceLock<PathBuf> = OnceLock::new();
    let weights =
        WEIGHTS.get_or_init(|| save_drawn(|device| seq2seq_config().init::<Reference>(device)));
    let model: Seq2Seq<B> =
        seq2seq_config().init(device).load_record(load_record::<B, _>(weights, device).unwrap());
    let ints = |rows: Vec<i64>, width: usize| {
        Tensor::<B, 2, Int>::from_data(
            TensorData::new(rows.clone(), [rows.len() / width, width]),
            device,
        )
    };
    let source = ints(vec![5, 6, 7, 8, 2, 9, 10, 2, 0, 0], 5);
    let target = ints(vec![1, 11, 12, 13, 1, 14, 15, 16], 4);
    let mut logits: Vec<f32> = model
        .forward(source.clone(), target.clone())
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    let mut state = model.start_decoding(model.encode(source));
    for t in 0..4 {
        let step = model.decode_step(target.clone().slice([0..2, t..t + 1]), &mut state);
        logits.extend(step.into_data().convert::<f32>().to_vec::<f32>().unwrap());
    }
    logits
}

fn batch<B: KernelBackend>(step: usize, device: &B::Device) -> LmBatch<B> {
    let tokens = &corpus().1;
    let starts: Vec<usize> =
        (0..BATCH).map(|i| (step * 7919 + i * 104_729) % (tokens.len() - BLOCK - 1)).collect();
    LmBatch::from_starts(tokens, &starts, BLOCK, device)
}

fn logits<B: KernelBackend>(device: &B::Device) -> Vec<f32> {
    let model = load::<B>(initial_weights(), device);
    model.forward(batch::<B>(0, device).inputs).into_data().convert::<f32>().to_vec().unwrap()
}

/// Weights after 300 steps on ndarray: a model that writes something, for comparing greedy text.
fn trained_weights() -> &'static PathBuf {
    static WEIGHTS: OnceLock<PathBuf> = OnceLock::new();
    WEIGHTS.get_or_init(|| {
        let path = tempfile::tempdir().unwrap().keep().join("trained.mpk");
        train::<burn::backend::Autodiff<Reference>>(&Default::default(), 300, 3e-3, &path);
        path
    })
}

/// Losses of `steps` AdamW steps from the initial weights; the final weights go to `out`.
fn train<B: TrainBackend>(device: &B::Device, steps: usize, lr: f64, out: &Path) -> Vec<f32> {
    let mut model = load::<B>(initial_weights(), device);
    let adamw = AdamW { beta1: 0.9, beta2: 0.99, epsilon: 1e-8, weight_decay: 0.1 };
    let mut optimizer = ClippedAdamW::<Gpt<B>, B>::new(adamw, 1.0, 1);
    let mut losses = Vec::new();
    for step in 0..steps {
        let loss = lm_loss(&model, &batch::<B>(step, device));
        losses.push(loss.clone().into_scalar().elem::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(lr, model, grads);
    }
    Recorder::<B>::record(&CheckpointRecorder::default(), model.into_record(), out.to_path_buf())
        .unwrap();
    losses
}

fn greedy<B: KernelBackend>(weights: &Path, device: &B::Device) -> String {
    let (tok, _) = corpus();
    let model = load::<B>(weights, device);
    let sampling =
        Sampling { max_new_tokens: 40, temperature: 0.0, top_k: None, top_p: None, seed: 1 };
    let ids = generate(&model, &tok.encode("ROMEO:\n").unwrap(), &sampling, |_| {}).unwrap();
    tok.decode(&ids)
}

fn assert_logits_agree(name: &str, got: &[f32]) {
    assert_close(name, got, &logits::<Reference>(&Default::default()));
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: logits count");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = want.iter().zip(got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!(
        "{name}: logits within {:.2e} of ndarray (relative to the largest, {scale:.3})",
        worst / scale
    );
    assert!(worst / scale <= 1e-4, "{name}: logits differ by {worst} (relative {})", worst / scale);
}

fn assert_training_agrees<B: TrainBackend>(name: &str, device: &B::Device) {
    let dir = tempfile::tempdir().unwrap();
    let (want_weights, got_weights) =
        (dir.path().join("ndarray.mpk"), dir.path().join(format!("{name}.mpk")));
    let want =
        train::<burn::backend::Autodiff<Reference>>(&Default::default(), STEPS, LR, &want_weights);
    let got = train::<B>(device, STEPS, LR, &got_weights);
    for (step, (a, b)) in want.iter().zip(&got).enumerate() {
        assert!((a - b).abs() / a.abs() <= 0.01, "{name}: step {step} loss {b} vs ndarray {a}");
    }
    let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs() / a.abs()).fold(0f32, f32::max);
    eprintln!(
        "{name}: {STEPS} steps, loss {:.4} → {:.4}, worst step {:.2e} relative to ndarray",
        got[0],
        got[STEPS - 1],
        worst
    );
    assert!(want[STEPS - 1] < want[0] * 0.85, "the model learns: {want:?}");
    let text = greedy::<B::InnerBackend>(trained_weights(), device);
    assert_eq!(
        text,
        greedy::<Reference>(trained_weights(), &Default::default()),
        "{name}: greedy text differs"
    );
    eprintln!("{name}: greedy text equal to ndarray's: {text:?}");
}

/// The agreement tests of one backend, in a module of its own.
macro_rules! agrees_with_ndarray {
    ($module:ident, $name:literal, $backend:ty, $device:expr) => {
        mod $module {
            use super::*;
            type B = $backend;

            #[test]
            fn logits_match_ndarray() {
                assert_logits_agree($name, &logits::<B>(&$device));
            }

            #[test]
            fn course_model_logits_match_ndarray() {
                let (got, want) = course_logits::<B>(&$device);
                assert_close(concat!($name, " (rope, rmsnorm, swiglu, post-norm)"), &got, &want);
            }

            #[test]
            fn training_and_greedy_text_match_ndarray() {
                assert_training_agrees::<burn::backend::Autodiff<B>>($name, &$device);
            }

            #[test]
            fn seq2seq_logits_match_ndarray() {
                let want = seq2seq_logits::<Reference>(&Default::default());
                let got = seq2seq_logits::<B>(&$device);
                let what = concat!($name, " (seq2seq, teacher forcing and cached decoding)");
                assert_close(what, &got, &want);
            }
        }
    };
}

#[cfg(feature = "wgpu")]
agrees_with_ndarray!(
    wgpu,
    "wgpu",
    burn::backend::Wgpu,
    burn::backend::wgpu::WgpuDevice::DefaultDevice
);
#[cfg(feature = "tch")]
agrees_with_ndarray!(
    tch_cpu,
    "tch-cpu",
    burn::backend::LibTorch<f32>,
    burn::backend::libtorch::LibTorchDevice::Cpu
);
#[cfg(feature = "flex")]
agrees_with_ndarray!(flex, "flex", burn::backend::Flex<f32>, Default::default());

#[test]
fn backends_are_picked_by_name_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().to_str().unwrap();
    for backend in ["flex", "wgpu", "tch-cpu"] {
        if !kiln::config::BackendName::try_from(backend.to_string()).is_ok_and(|b| b.compiled_in())
        {
            continue;
        }
        let (ok, _, err) = common::kiln(&[
            "--config",
            "configs/tiny.toml",
            "--backend",
            backend,
            "--set",
            &format!("run.artifacts_dir={artifacts}"),
            "--set",
            &format!("run.name={backend}"),
            "--set",
            "training.max_iters=20",
            "--set",
            "training.eval_interval=10",
            "--sample-tokens",
            "0",
        ]);
        assert!(ok, "{backend}: {err}");
        let summary =
            std::fs::read_to_string(dir.path().join(backend).join("summary.json")).unwrap();
        assert!(summary.contains(&format!("\"backend\": \"{backend}\"")), "{summary}");
    }
    let (ok, _, err) = common::kiln(&[
        "--config", "configs/tiny.toml", "--backend", "ndarray", "--set", "backend.precision=bf16",
    ]);
    assert!(
        !ok && err.contains("backend.precision = \"bf16\"") && err.contains("ndarray"),
        "{err}"
    );
}
