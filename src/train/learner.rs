//! The part of training every model kind shares: the steps left, Burn's Learner wired with
//! kiln's optimizer, schedule, metrics, progress bar and checkpoints, on every replica, and
//! the summary at the end.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::prelude::Backend;
use burn::record::Recorder;
use burn::train::{Learner, SupervisedTraining};

use super::log::RunLog;
use super::metrics::{self, LatestMetrics};
use super::optim::{ClippedAdamW, RunGuard};
use super::renderer::ProgressRenderer;
use super::schedule::WarmupSchedule;
use super::task::{Loaders, Task, TaskModel, Trained};
use crate::config::{DataKind, RunSpec};
use crate::data::{MicroBatches, StopCheck, TrainBatches};
use crate::distributed::{Exchange, Replica};
use crate::files::sha256_file;
use crate::kernels::TrainBackend;
use crate::model::ParamCounts;
use crate::run::checkpoint::{
    CheckpointJournal, CheckpointPolicy, CheckpointRecorder, CheckpointState, Latest,
    NoCheckpoints, RunIdentity,
};
use crate::run::control::Divergence;
use crate::run::metrics::{best_validation, rfc3339, unix_time};
use crate::run::{read_metrics, RunControl, RunDir, Started, Summary};

/// A run's training, planned from where it starts.
pub struct Plan<'a> {
    pub spec: &'a RunSpec,
    pub run: &'a RunDir,
    run_id: &'a str,
    resume_from: Option<&'a CheckpointState>,
    pub start_step: usize,
    /// The Learner epoch the run continues with.
    pub first_epoch: usize,
    /// The Learner epochs left, in micro-batches: `(first, count)`.
    pub epochs: Vec<(usize, usize)>,
    pub control: Arc<RunControl>,
    latest: Arc<Mutex<LatestMetrics>>,
}

impl<'a> Plan<'a> {
    pub fn new(spec: &'a RunSpec, started: &'a Started) -> Self {
        let (run, resume_from) = (&started.dir, started.resume_from.as_ref());
        let t = &spec.training;
        let start_step = resume_from.map_or(0, |s| s.step);
        let acc = t.grad_accumulation;
        let epochs = epoch_plan(start_step, t.eval_interval, t.max_iters)
            .into_iter()
            .map(|(first, steps)| (first * acc, steps * acc))
            .collect();
        Self {
            spec,
            run,
            run_id: &started.run_id,
            resume_from,
            start_step,
            first_epoch: resume_from.map_or(1, |s| s.epoch + 1),
            epochs,
            control: Arc::new(control(spec, start_step)),
            latest: Arc::new(Mutex::new(LatestMetrics::default())),
        }
    }

    /// True once the run must end (SIGINT/SIGTERM, divergence): loaders stop serving.
    pub fn stop(&self) -> StopCheck {
        let control = self.control.clone();
        Arc::new(move || control.should_stop())
    }

    /// `replica`'s share of the run's micro-batches of `source`, ending early once the run
    /// must stop.
    pub fn train_batches<B: Backend, S: MicroBatches<B>>(
        &self,
        source: S,
        replica: Replica,
        device: &B::Device,
    ) -> TrainBatches<B, S> {
        TrainBatches::of(source, self.first_epoch, &self.epochs, device.clone())
            .with_stop(self.stop(), self.spec.training.grad_accumulation)
            .for_replica(replica.rank, replica.world)
    }

    /// When `replica`'s validation passes yield nothing: only the replica that logs
    /// validates, until the run must stop.
    pub fn validation_stop(&self, replica: Replica) -> StopCheck {
        match replica.writes_run() {
            true => self.stop(),
            false => Arc::new(|| true),
        }
    }

    /// Trains `model` on this process's replicas, one per device of `[distributed] devices`,
    /// and returns what the first replica returns.
    pub fn launch_replicas<B: TrainBackend, T: Task<B>>(
        &self,
        task: &T,
        model: T::Model,
        device: &B::Device,
    ) -> Result<Option<Done<B, T::Model>>> {
        let section = &self.spec.distributed;
        let devices =
            crate::backend::replica_devices::<B>(&self.spec.backend, device, &section.devices)?;
        if section.replicas() > 1 {
            let t = &self.spec.training;
            let ranks = [0, devices.len() - 1].map(|local| Replica::on(section, local).rank);
            eprintln!(
                "kiln: process {} of {}: replicas {}..{} of {} on {} device(s); effective batch \
                 {} windows",
                section.process_rank,
                section.processes,
                ranks[0],
                ranks[1],
                section.replicas(),
                devices.len(),
                t.batch_size * t.grad_accumulation * section.replicas()
            );
        }
        let mut agreement =
            crate::distributed::agreement(self.spec, self.start_step, model.num_params());
        let tokenizer = self.run.tokenizer();
        agreement["tokenizer.json (sha256)"] = sha256_file(&tokenizer)
            .with_context(|| format!("reading {}", tokenizer.display()))?
            .into();
        let mut results = crate::distributed::launch::<B, _, _>(
            section,
            &devices,
            &agreement,
            model,
            |replica, model, device, exchange| {
                let loaders = task.loaders(self, replica, device);
                self.launch::<B, T::Model>(replica, exchange, model, loaders)
            },
        )?;
        Ok(results.swap_remove(0))
    }

    /// Trains `model` through the Learner as `replica`. Returns the trained model and the
    /// seconds it took, or `None` when a signal stopped the run (a checkpoint was written).
    fn launch<B: TrainBackend, M: TaskModel<B>>(
        &self,
        replica: Replica,
        exchange: Option<Arc<Exchange>>,
        model: M,
        (train_loader, valid_loader): Loaders<B, M>,
    ) -> Result<Option<Done<B, M>>> {
        let (run, t) = (self.run, &self.spec.training);
        // The process's loaders watch the plan's control: its first replica, which learns
        // of a stop the replicas agreed on, sets it.
        let control = match replica.local {
            0 => self.control.clone(),
            _ => Arc::new(control(self.spec, self.start_step)),
        };
        let guard = RunGuard { control: control.clone(), exchange };
        let optimizer = ClippedAdamW::of(t).guarded(guard);
        let journal = CheckpointJournal::new(run.clone(), t.keep_checkpoints);
        if let Some(state) = self.resume_from {
            journal.resumes_from(state);
        }
        let renderer = ProgressRenderer::new(t.max_iters, self.start_step, t.grad_accumulation);
        let mut training = SupervisedTraining::new(run.root(), train_loader, valid_loader)
            .metric_train_numeric(metrics::WeightedMetric::loss())
            .metric_valid_numeric(metrics::WeightedMetric::loss())
            .metric_train_numeric(burn::train::metric::LearningRateMetric::new())
            .metric_train_numeric(metrics::TokensPerSecond::new())
            // Every replica reads a resumed run's checkpoint; only replica 0 writes them.
            .with_file_checkpointer(CheckpointRecorder::for_journal(journal.clone()))
            .with_interrupter(control.interrupter())
            .num_epochs(self.first_epoch - 1 + self.epochs.len());
        training = match replica.writes_run() {
            true => training
                .with_metric_logger(
                    metrics::JsonlLogger::new(
                        &run.metrics(),
                        t.grad_accumulation,
                        self.start_step,
                        self.latest.clone(),
                    )
                    .with_context(|| format!("opening {}", run.metrics().display()))?
                    .with_step_figures(self.tokens_per_step(), control.clone()),
                )
                .with_checkpointing_strategy(self.checkpoint_policy(journal)?)
                .with_application_logger(Some(Box::new(RunLog::new(run.experiment_log()))))
                .renderer(renderer),
            false => training
                .with_metric_logger(metrics::JsonlLogger::silent())
                .with_application_logger(None)
                .with_checkpointing_strategy(NoCheckpoints { control: control.clone() })
                .renderer(renderer.hidden()),
        };
        if self.spec.data.kind == DataKind::Preferences {
            training = training
                .metric_train_numeric(metrics::WeightedMetric::reward_margin())
                .metric_valid_numeric(metrics::WeightedMetric::reward_margin())
                .metric_train_numeric(metrics::WeightedMetric::reward_accuracy())
                .metric_valid_numeric(metrics::WeightedMetric::reward_accuracy());
        }
        if t.grad_accumulation > 1 {
            training = training.grads_accumulation(t.grad_accumulation);
        }
        if let Some(state) = self.resume_from {
            training = training.checkpoint(state.epoch);
        }
        // Burn creates its own checkpoint folder; kiln's recorder writes to `checkpoints/`.
        let _ = std::fs::remove_dir(run.learner_checkpoints());

        let started = Instant::now();
        let schedule = WarmupSchedule::of(t);
        let result = training.launch(Learner::new(model, optimizer, schedule));
        let wall_seconds = started.elapsed().as_secs_f64();
        if !self.ended_well(replica, &control)? {
            return Ok(None);
        }
        if replica.writes_run() {
            self.save_final_model::<B, M>(&result.model)?;
        }
        Ok(Some((result.model, wall_seconds)))
    }

    /// Writes `model.mpk` and records it in the manifest.
    fn save_final_model<B: TrainBackend, M: TaskModel<B>>(
        &self,
        model: &Trained<B, M>,
    ) -> Result<()> {
        let run = self.run;
        let record = model.clone().into_record();
        Recorder::<B::InnerBackend>::record(
            &CheckpointRecorder::default(),
            record,
            run.final_model(),
        )
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", run.final_model().display()))?;
        run.record_file("model.mpk")
            .with_context(|| format!("recording {}", run.manifest().display()))?;
        Ok(())
    }

    /// Whether the Learner ran to `max_iters`; an error when it stopped for anything but a
    /// signal (told on replica 0, with how to go on).
    fn ended_well(&self, replica: Replica, control: &RunControl) -> Result<bool> {
        if let Some(divergence) = control.divergence() {
            bail!(divergence_message(self.run, self.spec, divergence));
        }
        if let Some(failure) = control.failure() {
            bail!("training stopped at step {}: {failure}", control.steps());
        }
        let max_iters = self.spec.training.max_iters;
        if control.steps() >= max_iters {
            return Ok(true);
        }
        if replica.writes_run() {
            eprintln!(
                "kiln: stopped at step {} of {max_iters}; checkpoint written to {}. Continue \
                 with the same command plus --resume (kiln train --config <config> --resume)",
                control.steps(),
                self.run.checkpoints().display()
            );
        }
        Ok(false)
    }

    /// Tokens one optimizer step trains on, over all replicas.
    fn tokens_per_step(&self) -> usize {
        let spec = self.spec;
        spec.training.tokens_per_step(spec.model.block_size()) * spec.distributed.replicas()
    }

    /// When replica 0 checkpoints: every `checkpoint_interval` steps, at the end, and when
    /// the run is stopped.
    fn checkpoint_policy(&self, journal: CheckpointJournal) -> Result<CheckpointPolicy> {
        let (spec, run, t) = (self.spec, self.run, &self.spec.training);
        let hash = |path: std::path::PathBuf| {
            sha256_file(&path).with_context(|| format!("reading {}", path.display()))
        };
        let identity = RunIdentity {
            run_id: self.run_id.to_string(),
            seed: spec.run.seed,
            tokens_per_step: self.tokens_per_step(),
            config_sha256: hash(run.config())?,
            tokenizer_sha256: hash(run.tokenizer())?,
        };
        Ok(CheckpointPolicy {
            journal,
            control: self.control.clone(),
            identity,
            interval: t.checkpoint_interval(),
            max_iters: t.max_iters,
            last_saved: self.resume_from.map(|s| s.step),
        })
    }

    /// Writes `summary.json` (process 0 of a data-parallel run) and prints the closing line.
    pub fn finish(&self, figures: Figures) -> Result<Summary> {
        let (run, t) = (self.run, &self.spec.training);
        let latest = self.latest.lock().expect("metrics lock").clone();
        let steps = t.max_iters - self.start_step;
        let this_run_tokens = figures.tokens_seen as f64 * steps as f64 / t.max_iters as f64;
        let best = best_validation(&read_metrics(&run.metrics()));
        let ended = unix_time();
        let summary = Summary {
            final_train_loss: latest.train_loss.unwrap_or(f64::NAN),
            final_val_loss: figures.val_loss,
            val_perplexity: figures.val_loss.exp(),
            params: figures.counts.total,
            params_non_embedding: figures.counts.total - figures.counts.embedding,
            steps: t.max_iters,
            tokens_seen: figures.tokens_seen,
            wall_seconds: figures.wall_seconds,
            tokens_per_second: this_run_tokens / figures.wall_seconds.max(1e-9),
            backend: self.spec.backend.describe(),
            best_val_loss: best.map(|(loss, _)| loss),
            best_val_step: best.map(|(_, step)| step),
            started: rfc3339(ended - figures.wall_seconds),
            ended: rfc3339(ended),
            kiln_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("KILN_GIT_COMMIT").into(),
        };
        if self.spec.distributed.process_rank > 0 {
            return Ok(summary);
        }
        run.write_summary(&summary)?;
        eprintln!(
            "kiln: done in {:.1}s | val loss {:.4} (perplexity {:.2}) | {:.0} tokens/s | {}",
            figures.wall_seconds,
            figures.val_loss,
            summary.val_perplexity,
            summary.tokens_per_second,
            run.root().display()
        );
        Ok(summary)
    }
}

/// A replica's trained model and the seconds it trained for.
type Done<B, M> = (Trained<B, M>, f64);

/// What a finished run measured.
pub struct Figures {
    pub val_loss: f64,
    pub counts: ParamCounts,
    pub wall_seconds: f64,
    pub tokens_seen: usize,
}

fn control(spec: &RunSpec, start_step: usize) -> RunControl {
    match spec.distributed.replicas() {
        1 => RunControl::new(start_step),
        _ => RunControl::new(start_step).replicated(),
    }
}

/// The Learner epochs left from `start_step`: `(first step, steps)`, cut at every multiple
/// of `eval_interval` (a resumed run validates and checkpoints where an uninterrupted one would).
pub fn epoch_plan(
    start_step: usize,
    eval_interval: usize,
    max_iters: usize,
) -> Vec<(usize, usize)> {
    let mut plan = Vec::new();
    let mut step = start_step;
    while step < max_iters {
        let end = ((step / eval_interval + 1) * eval_interval).min(max_iters);
        plan.push((step, end - step));
        step = end;
    }
    plan
}

/// Refuses to start when the disk cannot hold the model, two checkpoints (model and two Adam
/// moments, f32) and the final model; then prints the run's first line: where, on what, how
/// big, and on what `data`.
pub fn announce(spec: &RunSpec, run: &RunDir, counts: ParamCounts, data: &str) -> Result<()> {
    // The other processes of a data-parallel run work in scratch folders: nothing to tell.
    if spec.distributed.process_rank > 0 {
        return Ok(());
    }
    let checkpoint_bytes = counts.total as u64 * 4 * 3;
    let needed = 2 * checkpoint_bytes + counts.total as u64 * 4;
    run.check_room(needed, "training (two checkpoints and the final model)")
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "kiln: run {} on {} | {} params ({} without embeddings, {:.2} MB f32) | {data}",
        run.root().display(),
        spec.backend.describe(),
        counts.total,
        counts.total - counts.embedding,
        counts.total as f64 * 4.0 / 1e6,
    );
    Ok(())
}

fn divergence_message(run: &RunDir, spec: &RunSpec, divergence: Divergence) -> String {
    let t = &spec.training;
    let last_good = match Latest::read(run) {
        Some(latest) => format!(
            "the last good checkpoint (step {}) is kept; `kiln train --resume` continues from it",
            latest.step
        ),
        None => "no checkpoint had been taken yet".to_string(),
    };
    let clip = match t.grad_clip > 0.0 {
        true => format!("lower training.grad_clip (now {})", t.grad_clip),
        false => "set training.grad_clip = 1.0 (now off)".into(),
    };
    format!(
        "the loss stopped being a number at step {} (gradient norm {}): training stopped and \
         that step was not applied; {last_good}. Try a lower training.learning_rate (now {:e}), \
         a longer training.warmup_iters (now {}), or {clip}",
        divergence.step, divergence.grad_norm, t.learning_rate, t.warmup_iters
    )
}
