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
use crate::distributed::Exchange;
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
    allocator: String,
    final_loss: f64,
    /// With several `[distributed] devices`: the same steps on all of them at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    scaling: Option<Scaling>,
}

/// Data-parallel steps on several devices against one device, each replica with the
/// config's batch.
#[derive(Debug, Serialize)]
struct Scaling {
    devices: usize,
    ms_per_iter: f64,
    tokens_per_sec: f64,
    /// tokens/s on all devices over tokens/s on one.
    speedup: f64,
    /// speedup / devices: 1.0 is perfect scaling.
    efficiency: f64,
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
    let job = Job {
        spec,
        corpus,
        order,
        iters: args.iters,
        warmup: args.warmup,
    };
    let result = crate::backend::dispatch(&backend, job)??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!("backend:        {}", result.backend);
        println!(
            "steps timed:    {} (after {} warm-up)",
            result.iters, args.warmup
        );
        println!("ms/iter:        {:.1}", result.ms_per_iter);
        println!("tokens/s:       {:.0}", result.tokens_per_sec);
        println!(
            "model FLOP/s:   {:.3} GFLOP/s ({:.3} GFLOP per step)",
            result.flops_per_sec / 1e9,
            result.flops_per_iter / 1e9
        );
        println!("peak RSS:       {}", describe_rss(result.peak_rss_mb));
        println!("allocator:      {}", result.allocator);
        println!("final loss:     {:.4}", result.final_loss);
        if let Some(s) = &result.scaling {
            println!("on {} devices:   {:.1} ms/iter, {:.0} tokens/s (each device with the config's batch)", s.devices, s.ms_per_iter, s.tokens_per_sec);
            println!(
                "scaling:        {:.2}× the tokens/s of one device: {:.0} % efficiency",
                s.speedup,
                100.0 * s.efficiency
            );
        }
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
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        backend: BackendChoice,
    ) -> Result<TrainBench> {
        let (spec, t) = (&self.spec, &self.spec.training);
        B::seed(&device, spec.run.seed);
        let model: Gpt<B> = gpt_config(spec).init(&device);
        let flops_per_iter = flops_per_token(spec, model.param_counts())
            * t.tokens_per_step(spec.model.block_size) as f64;
        let one = self.time_steps(model.clone(), &device, Share::ALL, None)?;
        let scaling = match spec.distributed.local_replicas() {
            1 => None,
            _ => Some(self.time_replicas::<B>(model, &device, &backend, &one)?),
        };
        Ok(TrainBench {
            backend: backend.describe(),
            iters: self.iters,
            ms_per_iter: 1000.0 * one.seconds / self.iters as f64,
            tokens_per_sec: one.tokens_per_sec(self.iters),
            flops_per_iter,
            flops_per_sec: flops_per_iter * self.iters as f64 / one.seconds,
            peak_rss_mb: peak_rss_mb(),
            allocator: allocator(),
            final_loss: one.final_loss,
            scaling,
        })
    }
}

/// Which of every `of` micro-batches a replica trains on: `index`.
#[derive(Clone, Copy)]
struct Share {
    index: usize,
    of: usize,
}

impl Share {
    const ALL: Share = Share { index: 0, of: 1 };
}

/// One replica's timed steps.
struct Timing {
    seconds: f64,
    final_loss: f64,
    tokens_per_iter: usize,
}

impl Timing {
    fn tokens_per_sec(&self, iters: usize) -> f64 {
        (self.tokens_per_iter * iters) as f64 / self.seconds
    }
}

impl Job {
    /// Times `warmup + iters` optimizer steps of `model` on `device`, training on `share` of
    /// the windows and, with an `exchange`, averaging gradients with the other replicas.
    fn time_steps<B: AutodiffBackend>(
        &self,
        mut model: Gpt<B>,
        device: &B::Device,
        share: Share,
        exchange: Option<&Exchange>,
    ) -> Result<Timing> {
        let (spec, t) = (&self.spec, &self.spec.training);
        let adamw = AdamW {
            beta1: t.beta1,
            beta2: t.beta2,
            epsilon: 1e-8,
            weight_decay: t.weight_decay,
        };
        let mut optimizer = ClippedAdamW::<Gpt<B>, B>::new(adamw, t.grad_clip, t.grad_accumulation);
        let (micro, block) = (t.batch_size, spec.model.block_size);
        let total = self.warmup + self.iters;
        // Every window up front: drawing them is not part of a training step.
        let starts = self
            .order
            .range(0, total * t.grad_accumulation * micro * share.of);

        let devices = format!(
            "{} device{}",
            share.of,
            if share.of == 1 { "" } else { "s" }
        );
        let bar = match share.index {
            0 => ProgressBar::new(total as u64),
            _ => ProgressBar::hidden(),
        }
        .with_style(
            ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} steps")
                .expect("valid template"),
        )
        .with_message(format!("warm-up ({devices})"));
        let mut started = Instant::now();
        let mut last_loss = None;
        for step in 0..total {
            if step == self.warmup {
                B::sync(device).map_err(|e| anyhow::anyhow!("backend sync failed: {e:?}"))?;
                bar.set_message(format!("timing ({devices})"));
                started = Instant::now();
            }
            let mut accumulator = GradientsAccumulator::<Gpt<B>>::new();
            for m in 0..t.grad_accumulation {
                let first = ((step * t.grad_accumulation + m) * share.of + share.index) * micro;
                let batch = LmBatch::<B>::from_starts(
                    &self.corpus.train,
                    &starts[first..first + micro],
                    block,
                    device,
                );
                let loss = lm_loss(&model, &batch);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                accumulator.accumulate(&model, grads);
                last_loss = Some(loss.detach());
            }
            let mut grads = accumulator.grads();
            if let Some(exchange) = exchange {
                grads = exchange.average(&model, grads, false)?.0;
            }
            model = optimizer.step(t.learning_rate, model, grads);
            bar.inc(1);
        }
        let final_loss = last_loss.map_or(f64::NAN, |l| l.into_scalar().elem::<f64>());
        B::sync(device).map_err(|e| anyhow::anyhow!("backend sync failed: {e:?}"))?;
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        Ok(Timing {
            seconds,
            final_loss,
            tokens_per_iter: t.tokens_per_step(block),
        })
    }

    /// Times one replica per device of `[distributed] devices`, each with the config's
    /// batch (so the run's batch grows with the devices, as in training), against `one`.
    #[cfg(feature = "distributed")]
    fn time_replicas<B: AutodiffBackend>(
        &self,
        model: Gpt<B>,
        device: &B::Device,
        backend: &BackendChoice,
        one: &Timing,
    ) -> Result<Scaling> {
        use crate::distributed::Replica;
        let section = crate::config::DistributedSection {
            nodes: 1,
            node_rank: 0,
            ..self.spec.distributed.clone()
        };
        let devices = crate::backend::replica_devices::<B>(backend, device, &section.devices)?;
        let agreement = crate::distributed::agreement(&self.spec, 0, model.num_params());
        let replicas = devices.len();
        let timings: Vec<Result<Timing>> = std::thread::scope(|scope| {
            let replicas: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(local, device)| {
                    let (model, section, agreement) =
                        (model.clone().fork(device), &section, &agreement);
                    scope.spawn(move || {
                        let exchange = Exchange::join::<B::InnerBackend>(
                            Replica::on(section, local),
                            device,
                            section,
                            agreement,
                        )?;
                        let timing = self.time_steps(
                            model,
                            device,
                            Share {
                                index: local,
                                of: replicas,
                            },
                            Some(&exchange),
                        )?;
                        exchange.leave::<B::InnerBackend>()?;
                        Ok(timing)
                    })
                })
                .collect();
            replicas
                .into_iter()
                .map(|r| {
                    r.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a replica panicked")))
                })
                .collect()
        });
        let timings = timings.into_iter().collect::<Result<Vec<_>>>()?;
        // Replicas wait for one another every step: the slowest one's time is the run's.
        let seconds = timings.iter().map(|t| t.seconds).fold(0.0, f64::max);
        let tokens_per_sec = (one.tokens_per_iter * replicas * self.iters) as f64 / seconds;
        let speedup = tokens_per_sec / one.tokens_per_sec(self.iters);
        Ok(Scaling {
            devices: replicas,
            ms_per_iter: 1000.0 * seconds / self.iters as f64,
            tokens_per_sec,
            speedup,
            efficiency: speedup / replicas as f64,
        })
    }

    #[cfg(not(feature = "distributed"))]
    fn time_replicas<B: AutodiffBackend>(
        &self,
        _: Gpt<B>,
        _: &B::Device,
        _: &BackendChoice,
        _: &Timing,
    ) -> Result<Scaling> {
        unreachable!("the config check refuses several devices without the `distributed` feature")
    }
}

/// nanoGPT's count: 6·N (N without the position embedding) + 12·L·H·Q·T per token.
fn flops_per_token(spec: &RunSpec, counts: crate::model::ParamCounts) -> f64 {
    let m = &spec.model;
    let n = (counts.total - m.block_size * m.d_model) as f64;
    let (l, h, q, t) = (
        m.n_layers as f64,
        m.n_heads as f64,
        (m.d_model / m.n_heads) as f64,
        m.block_size as f64,
    );
    6.0 * n + 12.0 * l * h * q * t
}

/// The malloc that serves the process, which decides how fast big tensors are reused.
pub(super) fn allocator() -> String {
    #[cfg(feature = "tcmalloc")]
    {
        use std::ffi::{c_char, c_int, CStr};
        extern "C" {
            fn tc_version(
                major: *mut c_int,
                minor: *mut c_int,
                patch: *mut *const c_char,
            ) -> *const c_char;
        }
        // SAFETY: gperftools' tc_version accepts null out-pointers and returns a static C string.
        let version = unsafe {
            CStr::from_ptr(tc_version(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ))
        };
        format!("{} (the `tcmalloc` feature)", version.to_string_lossy())
    }
    #[cfg(not(feature = "tcmalloc"))]
    "the system's malloc (build with --features tcmalloc on Linux to use tcmalloc)".to_string()
}

/// `123 MB`, or why there is no figure.
pub(super) fn describe_rss(peak_rss_mb: Option<f64>) -> String {
    peak_rss_mb.map_or_else(
        || "unknown on this OS".to_string(),
        |mb| format!("{mb:.0} MB"),
    )
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
