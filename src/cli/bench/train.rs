//! `kiln bench train`: time training steps of a config on a backend.
//!
//! Steps run outside the Learner (forward, backward, clipped AdamW step) so the figure is the
//! cost of the model and optimizer alone. FLOPs follow nanoGPT's `estimate_mfu`:
//! 6·N per token for the weights plus 12·L·H·Q·T for attention.

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::Distribution;
use clap::Args;
use serde::Serialize;

use super::common::{allocator, describe_rss, peak_rss_mb, BenchConfig};
use crate::backend::{replica_devices, TrainJob};
use crate::config::RunSpec;
use crate::data::{Corpus, WindowOrder};
use crate::kernels::TrainBackend;
use crate::model::Gpt;
use crate::train::bench::{time_steps, StepTiming, StepsToTime};
use crate::train::{gpt_config, prepare_in_memory};

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
    cpu: String,
    backend: String,
    iters: usize,
    ms_per_iter: f64,
    tokens_per_sec: f64,
    flops_per_iter: f64,
    flops_per_sec: f64,
    /// The backend's best f32 matrix product on this machine, measured by the bench.
    sgemm_peak_flops_per_sec: f64,
    /// Model FLOP/s over that peak.
    peak_fraction: f64,
    peak_rss_mb: Option<f64>,
    allocator: String,
    /// Where the linear layers' products ran, where kiln chose between libraries.
    #[serde(skip_serializing_if = "Option::is_none")]
    matmul: Option<String>,
    final_loss: f64,
    /// With several `[distributed] devices` or processes: the same steps on all of them at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    scaling: Option<Scaling>,
}

/// Data-parallel steps on several devices or processes against one device, each replica
/// with the config's batch.
#[derive(Debug, Serialize)]
struct Scaling {
    /// Replicas: devices per process × processes.
    replicas: usize,
    processes: usize,
    ms_per_iter: f64,
    tokens_per_sec: f64,
    /// tokens/s on all devices over tokens/s on one.
    speedup: f64,
    /// speedup / devices: 1.0 is perfect scaling.
    efficiency: f64,
}

pub fn run(args: TrainBenchArgs) -> Result<()> {
    if args.iters == 0 {
        anyhow::bail!("--iters 0: expected at least one timed step");
    }
    let mut spec = args.config.load("bench train")?;
    crate::distributed::take_place(&mut spec)?;
    let (_, corpus, order) = prepare_in_memory(&mut spec)?;
    crate::memory::check_training(&spec)?;
    let (backend, rank) = (spec.backend.clone(), spec.distributed.process_rank);
    let job = Job { spec, corpus, order, iters: args.iters, warmup: args.warmup };
    let result = crate::backend::dispatch_train(&backend, job)??;
    // Every process times the steps together; process 0 reports.
    if rank > 0 {
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!("cpu:            {}", result.cpu);
        println!("backend:        {}", result.backend);
        println!("steps timed:    {} (after {} warm-up)", result.iters, args.warmup);
        println!("ms/iter:        {:.1}", result.ms_per_iter);
        println!("tokens/s:       {:.0}", result.tokens_per_sec);
        println!(
            "model FLOP/s:   {:.3} GFLOP/s ({:.3} GFLOP per step)",
            result.flops_per_sec / 1e9,
            result.flops_per_iter / 1e9
        );
        println!(
            "SGEMM peak:     {:.3} GFLOP/s (the best square f32 matmul of 512-2048 on this \
             backend): the model runs at {:.0} % of it",
            result.sgemm_peak_flops_per_sec / 1e9,
            100.0 * result.peak_fraction
        );
        println!("peak RSS:       {}", describe_rss(result.peak_rss_mb));
        println!("allocator:      {}", result.allocator);
        if let Some(matmul) = &result.matmul {
            println!("matmul:         {matmul}");
        }
        println!("final loss:     {:.4}", result.final_loss);
        if let Some(s) = &result.scaling {
            println!(
                "on {} replicas: {:.1} ms/iter, {:.0} tokens/s ({} process(es); each replica with \
                 the config's batch)",
                s.replicas, s.ms_per_iter, s.tokens_per_sec, s.processes
            );
            println!(
                "scaling:        {:.2}× the tokens/s of one replica: {:.0} % efficiency",
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

impl TrainJob for Job {
    type Output = Result<TrainBench>;
    fn run<B: TrainBackend>(self, device: B::Device) -> Result<TrainBench> {
        let spec = &self.spec;
        B::seed(&device, spec.run.seed);
        let model: Gpt<B> = gpt_config(spec)?.init(&device);
        let tokens_per_step = spec.training.tokens_per_step(spec.model.block_size());
        let flops_per_iter = flops_per_token(spec, model.param_counts()) * tokens_per_step as f64;
        let steps = StepsToTime {
            spec,
            corpus: &self.corpus,
            order: &self.order,
            iters: self.iters,
            warmup: self.warmup,
        };
        let one = time_alone(&steps, model.clone(), &device)?;
        let (devices, processes) = (&spec.distributed.devices, spec.distributed.processes);
        let scaling = match devices.len() > 1 || processes > 1 {
            true => {
                let all = replica_devices::<B>(&spec.backend, &device, devices)?;
                let timed = time_steps(&steps, model, &all, processes)?;
                Some(scaling(&one, &timed, all.len(), processes, self.iters))
            }
            false => None,
        };
        let flops_per_sec = flops_per_iter * self.iters as f64 / one.seconds;
        // The training's peak memory, before the SGEMM measurement allocates its own.
        let peak_rss_mb = peak_rss_mb();
        // Process 0 alone measures the peak, while any other process waits without a core.
        let sgemm = match spec.distributed.process_rank {
            0 => sgemm_peak::<B::InnerBackend>(&device),
            _ => f64::NAN,
        };
        crate::distributed::idle_barrier(spec.distributed.processes);
        Ok(TrainBench {
            cpu: crate::kernels::cpu_name(),
            backend: spec.backend.describe(),
            iters: self.iters,
            ms_per_iter: 1000.0 * one.seconds / self.iters as f64,
            tokens_per_sec: one.tokens_per_sec(self.iters),
            flops_per_iter,
            flops_per_sec,
            sgemm_peak_flops_per_sec: sgemm,
            peak_fraction: flops_per_sec / sgemm,
            peak_rss_mb,
            allocator: allocator(),
            matmul: crate::kernels::matmul_summary(),
            final_loss: one.final_loss,
            scaling,
        })
    }
}

/// The steps on one device of process 0, while any other process waits without using a core.
fn time_alone<B: TrainBackend>(
    steps: &StepsToTime,
    model: Gpt<B>,
    device: &B::Device,
) -> Result<StepTiming> {
    let (rank, processes) = (steps.spec.distributed.process_rank, steps.spec.distributed.processes);
    let one = match rank {
        0 => Some(time_steps(steps, model, std::slice::from_ref(device), 1)),
        _ => None,
    };
    crate::distributed::idle_barrier(processes);
    // The other processes only take part in the timing of all replicas.
    one.unwrap_or(Ok(StepTiming { seconds: f64::NAN, final_loss: f64::NAN, tokens_per_iter: 0 }))
}

/// `all` (replicas on `devices` devices in each of `processes`, each with the config's
/// batch) against `one` device.
fn scaling(
    one: &StepTiming,
    all: &StepTiming,
    devices: usize,
    processes: usize,
    iters: usize,
) -> Scaling {
    let replicas = devices * processes;
    let tokens_per_sec = all.tokens_per_sec(iters) * replicas as f64;
    let speedup = tokens_per_sec / one.tokens_per_sec(iters);
    Scaling {
        replicas,
        processes,
        ms_per_iter: 1000.0 * all.seconds / iters as f64,
        tokens_per_sec,
        speedup,
        efficiency: speedup / replicas as f64,
    }
}

/// The best FLOP/s of square f32 matrix products of 512, 1024 and 2048 on `B`: the peak the
/// model's own FLOP/s is measured against, taken on the machine and backend at hand.
fn sgemm_peak<B: Backend>(device: &B::Device) -> f64 {
    let mut best: f64 = 0.0;
    for n in [512, 1024, 2048] {
        let a = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
        let b = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
        let reps = (1usize << 31) / (n * n * n) + 2;
        for rep in 0..reps + 2 {
            let started = std::time::Instant::now();
            let product = a.clone().matmul(b.clone());
            let _ = B::sync(device);
            let seconds = started.elapsed().as_secs_f64();
            drop(product);
            // The first two are warm-up (allocation, packing, kernel selection).
            if rep >= 2 {
                best = best.max(2.0 * (n * n * n) as f64 / seconds);
            }
        }
    }
    best
}

/// nanoGPT's count: 6·N (N without the position embedding) + 12·L·H·Q·T per token.
fn flops_per_token(spec: &RunSpec, counts: crate::model::ParamCounts) -> f64 {
    let m = &spec.model;
    let n = (counts.total - m.block_size() * m.d_model()) as f64;
    let (l, h, q, t) = (
        m.n_layers() as f64,
        m.n_heads() as f64,
        (m.d_model() / m.n_heads()) as f64,
        m.block_size() as f64,
    );
    6.0 * n + 12.0 * l * h * q * t
}
