//! Timed training steps of a GPT config, for `kiln bench train`: forward, backward and the
//! run's own optimizer, outside the Learner (no validation, checkpoints or metrics), so the
//! figure is the cost of the model and optimizer alone; on several devices through the same
//! replica launcher and gradient exchange as training.

use std::time::Instant;

use anyhow::Result;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};

use super::optim::ClippedAdamW;
use super::step::lm_loss;
use crate::config::{DistributedSection, RunSpec};
use crate::data::{Corpus, LmBatch, WindowOrder};
use crate::distributed::{Exchange, Replica};
use crate::kernels::TrainBackend;
use crate::model::Gpt;

/// One replica's timed steps.
#[derive(Debug, Clone, Copy)]
pub struct StepTiming {
    pub seconds: f64,
    pub final_loss: f64,
    pub tokens_per_iter: usize,
}

impl StepTiming {
    pub fn tokens_per_sec(&self, iters: usize) -> f64 {
        (self.tokens_per_iter * iters) as f64 / self.seconds
    }
}

/// The steps to time and the data they train on.
pub struct StepsToTime<'a> {
    pub spec: &'a RunSpec,
    pub corpus: &'a Corpus,
    pub order: &'a WindowOrder,
    pub iters: usize,
    /// Untimed steps first (allocations, kernel compilation, caches).
    pub warmup: usize,
}

/// Times the steps on each of `devices` at once, one replica each with the config's batch
/// (so the run's batch grows with the devices, as in training), in every process of
/// `processes` (1, or all the launcher started); the slowest replica's time, since replicas
/// wait for one another every step.
pub fn time_steps<B: TrainBackend>(
    steps: &StepsToTime,
    model: Gpt<B>,
    devices: &[B::Device],
    processes: usize,
) -> Result<StepTiming> {
    let section = DistributedSection {
        devices: (0..devices.len()).collect(),
        processes,
        process_rank: if processes == 1 { 0 } else { steps.spec.distributed.process_rank },
        ..steps.spec.distributed.clone()
    };
    let agreement = crate::distributed::agreement(steps.spec, 0, model.num_params());
    let launched = crate::distributed::launch::<B, _, _>(
        &section,
        devices,
        &agreement,
        model,
        |replica, model, device, exchange| {
            steps.on_replica(model, device, replica, exchange.as_deref())
        },
    )?;
    let slowest = launched.into_iter().fold(None, |slowest: Option<StepTiming>, t| {
        Some(match slowest {
            Some(s) if s.seconds >= t.seconds => s,
            _ => t,
        })
    });
    Ok(slowest.expect("one replica at least"))
}

impl StepsToTime<'_> {
    /// Times `warmup + iters` optimizer steps of `model` on `device`, training on the
    /// replica's share of the windows and, with an `exchange`, averaging gradients with the
    /// other replicas.
    fn on_replica<B: TrainBackend>(
        &self,
        mut model: Gpt<B>,
        device: &B::Device,
        replica: Replica,
        exchange: Option<&Exchange>,
    ) -> Result<StepTiming> {
        let t = &self.spec.training;
        let mut optimizer = ClippedAdamW::<Gpt<B>, B>::of(t);
        let (micro, block) = (t.batch_size, self.spec.model.block_size());
        let total = self.warmup + self.iters;
        // Every window up front: drawing them is not part of a training step.
        let starts = self.order.range(0, total * t.grad_accumulation * micro * replica.world);
        let bar = progress_bar(replica, total);
        let mut started = Instant::now();
        let mut last_loss = None;
        for step in 0..total {
            if step == self.warmup {
                B::sync(device).map_err(|e| anyhow::anyhow!("backend sync failed: {e:?}"))?;
                bar.set_message(format!("timing ({})", devices(replica.world)));
                started = Instant::now();
            }
            let mut accumulator = GradientsAccumulator::<Gpt<B>>::new();
            for m in 0..t.grad_accumulation {
                let first =
                    ((step * t.grad_accumulation + m) * replica.world + replica.rank) * micro;
                let windows = &starts[first..first + micro];
                let batch = LmBatch::<B>::from_starts(&self.corpus.train, windows, block, device);
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
        let tokens_per_iter = t.tokens_per_step(block);
        Ok(StepTiming { seconds, final_loss, tokens_per_iter })
    }
}

/// The first replica's progress; the others' are hidden.
fn progress_bar(replica: Replica, steps: usize) -> ProgressBar {
    let bar = match replica.local {
        0 => ProgressBar::new(steps as u64),
        _ => ProgressBar::hidden(),
    };
    let style =
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} steps").expect("a valid template");
    bar.with_style(style).with_message(format!("warm-up ({})", devices(replica.world)))
}

fn devices(n: usize) -> String {
    format!("{n} device{}", if n == 1 { "" } else { "s" })
}
