//! `kiln bench train`: time training steps of a config on a backend. (`kiln bench generate`
//! and `kiln bench tokenizer` are in `bench_generate.rs` and `bench_tokenizer.rs`.)
//!
//! Steps run outside the Learner (forward, backward, clipped AdamW step) so the figure is the
//! cost of the model and optimizer alone. FLOPs follow nanoGPT's `estimate_mfu`:
//! 6·N per token for the weights plus 12·L·H·Q·T for attention.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::backend::{BackendChoice, BackendJob};
use crate::config::RunSpec;
use crate::data::{Corpus, LmBatch, WindowOrder};
use crate::model::Gpt;
use crate::train::{gpt_config, lm_loss, prepare_in_memory, AdamW, ClippedAdamW};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// ms per training step, tokens/s, model FLOP/s and peak memory for a config.
    Train(TrainBenchArgs),
    /// Generation speed with the KV cache: first-token latency, ms/token, tokens/s, peak memory.
    Generate(super::bench_generate::GenerateBenchArgs),
    /// BPE training time, peak memory and encode MB/s, against Hugging Face tokenizers and tiktoken-rs.
    Tokenizer(super::bench_tokenizer::TokenizerBenchArgs),
}

/// The config a benchmark builds its model from, with its overrides.
#[derive(Debug, Args)]
pub(super) struct BenchConfig {
    /// A run config, e.g. configs/small.toml.
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    backend: super::BackendArg,
    /// Override a config value (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
}

impl BenchConfig {
    /// The config with `--set` and `--backend` applied; only GPT configs are benchmarked.
    pub(super) fn load(&self, command: &str) -> Result<RunSpec> {
        let spec = crate::config::load(&self.config, &self.backend.add_to(&self.overrides))?;
        super::require_gpt(&spec, command)?;
        Ok(spec)
    }
}

#[derive(Debug, Args)]
pub struct TrainBenchArgs {
    #[command(flatten)]
    config: BenchConfig,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Untimed steps first (allocations, kernel compilation, caches).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct TrainBench {
    backend: String,
    iters: usize,
    ms_per_iter: f64,
    tokens_per_sec: f64,
    flops_per_iter: f64,
    flops_per_sec: f64,
    peak_rss_mb: Option<f64>,
    final_loss: f64,
}

pub fn run(command: BenchCommand) -> Result<()> {
    let args = match command {
        BenchCommand::Train(args) => args,
        BenchCommand::Generate(args) => return super::bench_generate::run(args),
        BenchCommand::Tokenizer(args) => return super::bench_tokenizer::run(args),
    };
    if args.iters == 0 {
        anyhow::bail!("--iters 0: expected at least one timed step");
    }
    let mut spec = args.config.load("bench train")?;
    let (_, corpus, order) = prepare_in_memory(&mut spec)?;
    let backend = spec.backend.clone();
    let job = Job { spec, corpus, order, iters: args.iters, warmup: args.warmup };
    let result = crate::backend::dispatch(&backend, job)??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!("backend:        {}", result.backend);
        println!("steps timed:    {} (after {} warm-up)", result.iters, args.warmup);
        println!("ms/iter:        {:.1}", result.ms_per_iter);
        println!("tokens/s:       {:.0}", result.tokens_per_sec);
        println!("model FLOP/s:   {:.3} GFLOP/s ({:.3} GFLOP per step)", result.flops_per_sec / 1e9, result.flops_per_iter / 1e9);
        println!("peak RSS:       {}", describe_rss(result.peak_rss_mb));
        println!("final loss:     {:.4}", result.final_loss);
    }
    Ok(())
}

struct Job {
    spec: RunSpec,
    corpus: Corpus,
    order: WindowOrder,
    iters: usize,
    warmup: usize,
}

impl BackendJob for Job {
    type Output = Result<TrainBench>;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendChoice) -> Result<TrainBench> {
        let (spec, t) = (&self.spec, &self.spec.training);
        B::seed(&device, spec.run.seed);
        let mut model: Gpt<B> = gpt_config(spec).init(&device);
        let adamw = AdamW { beta1: t.beta1, beta2: t.beta2, epsilon: 1e-8, weight_decay: t.weight_decay };
        let mut optimizer = ClippedAdamW::<Gpt<B>, B>::new(adamw, t.grad_clip, t.grad_accumulation);
        let micro = t.batch_size;
        let block = spec.model.block_size;
        let total = self.warmup + self.iters;
        // Every window up front: drawing them is not part of a training step.
        let starts = self.order.range(0, total * t.grad_accumulation * micro);

        let bar = ProgressBar::new(total as u64)
            .with_style(ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} steps").expect("valid template"))
            .with_message("warm-up");
        let mut started = Instant::now();
        let mut loss_sum = None;
        for step in 0..total {
            if step == self.warmup {
                B::sync(&device).map_err(|e| anyhow::anyhow!("backend sync failed: {e:?}"))?;
                bar.set_message("timing");
                started = Instant::now();
            }
            let mut accumulator = GradientsAccumulator::<Gpt<B>>::new();
            for m in 0..t.grad_accumulation {
                let first = (step * t.grad_accumulation + m) * micro;
                let batch = LmBatch::<B>::from_starts(&self.corpus.train, &starts[first..first + micro], block, &device);
                let loss = lm_loss(&model, &batch);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                accumulator.accumulate(&model, grads);
                loss_sum = Some(loss.detach());
            }
            model = optimizer.step(t.learning_rate, model, accumulator.grads());
            bar.inc(1);
        }
        let final_loss = loss_sum.map_or(f64::NAN, |l| l.into_scalar().elem::<f64>());
        B::sync(&device).map_err(|e| anyhow::anyhow!("backend sync failed: {e:?}"))?;
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();

        let tokens_per_iter = (t.tokens_per_step(block)) as f64;
        let flops_per_iter = flops_per_token(spec, model.param_counts()) * tokens_per_iter;
        Ok(TrainBench {
            backend: backend.describe(),
            iters: self.iters,
            ms_per_iter: 1000.0 * seconds / self.iters as f64,
            tokens_per_sec: tokens_per_iter * self.iters as f64 / seconds,
            flops_per_iter,
            flops_per_sec: flops_per_iter * self.iters as f64 / seconds,
            peak_rss_mb: peak_rss_mb(),
            final_loss,
        })
    }
}

/// nanoGPT's count: 6·N (N without the position embedding) + 12·L·H·Q·T per token.
fn flops_per_token(spec: &RunSpec, counts: crate::model::ParamCounts) -> f64 {
    let m = &spec.model;
    let n = (counts.total - m.block_size * m.d_model) as f64;
    let (l, h, q, t) = (m.n_layers as f64, m.n_heads as f64, (m.d_model / m.n_heads) as f64, m.block_size as f64);
    6.0 * n + 12.0 * l * h * q * t
}

/// `123 MB`, or why there is no figure.
pub(super) fn describe_rss(peak_rss_mb: Option<f64>) -> String {
    peak_rss_mb.map_or_else(|| "unknown on this OS".to_string(), |mb| format!("{mb:.0} MB"))
}

/// The process's peak resident memory (Linux; `None` elsewhere).
pub(super) fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Restarts the peak-memory count from the current resident size (Linux), so that
/// [`peak_rss_mb`] measures one phase.
pub(super) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
