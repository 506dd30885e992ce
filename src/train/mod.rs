//! Training through Burn's `SupervisedTraining` + `Learner`: wiring of data, model,
//! optimizer, schedule, metrics, progress bar and checkpoints; the summary at the end.

mod control;
mod metrics;
mod optim;
mod renderer;
mod schedule;
mod seq2seq;
mod step;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::data::dataloader::DataLoader;
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::record::Recorder;
use burn::tensor::backend::AutodiffBackend;
use burn::train::{InferenceStep, Learner, SupervisedTraining, TrainStep};
use serde::{Deserialize, Serialize};

pub use control::{Divergence, RunControl};
pub use metrics::{read_metrics, MetricsLine};
pub use optim::{global_norm, AdamW, ClippedAdamW};
pub use schedule::{ScheduleKind, WarmupSchedule};
pub use seq2seq::{
    fit_seq2seq_tokenizer, load_seq2seq, pair_split, seq2seq_config, seq2seq_mean_loss, PairSplit,
};
pub use step::{lm_loss, seq2seq_loss, LmOutput, LmStats};

use crate::backend::{BackendChoice, BackendJob};
use crate::checkpoint::{
    load_record, CheckpointJournal, CheckpointPolicy, CheckpointRecorder, CheckpointState,
    NoCheckpoints, RunIdentity,
};
use crate::config::{ModelKind, RunSpec, SamplingMode};
use crate::data::{
    Corpus, FixedWindows, LmBatch, StopCheck, TrainWindows, WindowOrder, WindowStarts,
};
use crate::distributed::{Exchange, Replica};
use crate::generate::{generate, Sampling};
use crate::model::{Gpt, GptConfig};
use crate::run_dir::{sha256_file, RunDir};
use crate::tokenizer::{self, Tokenizer, TokenizerSpec};

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue the run: from its newest valid checkpoint, or from the given checkpoint file.
    pub resume: Option<Resume>,
    /// Delete an existing run of the same name and start over.
    pub force: bool,
    /// Tokens of the sample printed at the end (0 for none).
    pub sample_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    Newest,
    From(std::path::PathBuf),
}

/// How a training ended without an error.
#[derive(Debug, Clone)]
pub enum Outcome {
    Finished(Summary),
    /// Stopped by SIGINT/SIGTERM after writing a checkpoint at `step`.
    Interrupted {
        step: usize,
    },
}

impl Outcome {
    pub fn summary(self) -> Option<Summary> {
        match self {
            Self::Finished(summary) => Some(summary),
            Self::Interrupted { .. } => None,
        }
    }
}

/// `summary.json`: the final figures of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub final_train_loss: f64,
    pub final_val_loss: f64,
    pub val_perplexity: f64,
    pub params: usize,
    pub params_non_embedding: usize,
    pub steps: usize,
    pub tokens_seen: usize,
    pub wall_seconds: f64,
    pub tokens_per_second: f64,
    pub backend: String,
}

/// Trains the run described by `spec` on its configured backend.
pub fn train(spec: RunSpec, options: TrainOptions) -> Result<Outcome> {
    let backend = spec.backend.clone();
    crate::backend::dispatch(&backend, TrainJob { spec, options })?
}

struct TrainJob {
    spec: RunSpec,
    options: TrainOptions,
}

impl BackendJob for TrainJob {
    type Output = Result<Outcome>;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendChoice) -> Result<Outcome> {
        run::<B>(self.spec, self.options, device, backend)
    }
}

/// The model a config describes, with the vocabulary already resolved.
pub fn gpt_config(spec: &RunSpec) -> GptConfig {
    let m = &spec.model;
    GptConfig::new(
        spec.vocab_size(),
        m.d_model,
        m.n_heads,
        m.n_layers,
        m.d_ff(),
        m.block_size,
    )
    .with_dropout(m.dropout)
    .with_bias(m.bias)
    .with_qkv_bias(m.qkv_bias())
    .with_tie_embeddings(m.tie_embeddings)
    .with_activation(m.activation)
    .with_norm(m.norm)
    .with_norm_first(m.norm_first)
    .with_norm_eps(m.norm_eps)
    .with_positions(m.positions)
    .with_rope_theta(m.rope_theta)
    .with_init(m.init)
}

/// A config's tokenizer, its corpus encoded in memory (no run directory is touched) and the
/// order training would visit windows in; `model.vocab_size` is resolved in `spec`. For
/// commands that look at or time a config without training it.
pub fn prepare_in_memory(spec: &mut RunSpec) -> Result<(Box<dyn Tokenizer>, Corpus, WindowOrder)> {
    let (text, tokenizer) = fit_tokenizer(spec)?;
    let corpus = Corpus::in_memory(
        &spec.data.path,
        &text,
        tokenizer.as_ref(),
        spec.data.val_fraction,
        spec.model.block_size,
    )?;
    let order = train_order(spec, &corpus, document_separator(spec, tokenizer.as_ref())?)?;
    Ok((tokenizer, corpus, order))
}

/// A config's corpus and its tokenizer, fitted in memory, with `model.vocab_size` resolved
/// in `spec`: all a model needs to be built from a config without a run.
pub fn fit_tokenizer(spec: &mut RunSpec) -> Result<(String, Box<dyn Tokenizer>)> {
    let text = crate::data::read_text(&spec.data.path)?;
    let tokenizer =
        TokenizerSpec::parse(&spec.data.tokenizer)?.build(&text, spec.data.fit_options())?;
    resolve_vocab(spec, tokenizer.as_ref())?;
    Ok((text, tokenizer))
}

/// The `<|endoftext|>` id that windows must not cross when `data.respect_documents` is set.
pub fn document_separator(spec: &RunSpec, tokenizer: &dyn Tokenizer) -> Result<Option<u32>> {
    if !spec.data.respect_documents {
        return Ok(None);
    }
    match tokenizer.special_id(tokenizer::END_OF_TEXT) {
        Some(id) => Ok(Some(id)),
        None => bail!(
            "data.respect_documents = true: the tokenizer {:?} has no {} token to split documents on; \
             use the word or a tiktoken tokenizer, or set respect_documents = false",
            spec.data.tokenizer,
            tokenizer::END_OF_TEXT
        ),
    }
}

/// Allowed window starts in one split, an error when none fits.
fn split_starts(
    spec: &RunSpec,
    tokens: &[u32],
    stride: usize,
    separator: Option<u32>,
    split: &'static str,
) -> Result<WindowStarts> {
    let starts = WindowStarts::new(tokens, spec.model.block_size, stride, separator);
    if starts.is_empty() {
        bail!(
            "data.respect_documents = true: no window of model.block_size + 1 = {} tokens fits inside one document \
             of the {split} split of {:?}; lower model.block_size or set respect_documents = false",
            spec.model.block_size + 1,
            spec.data.path
        );
    }
    Ok(starts)
}

/// The order in which training visits windows of the train split (`data.sampling`).
pub fn train_order(spec: &RunSpec, corpus: &Corpus, separator: Option<u32>) -> Result<WindowOrder> {
    let seed = spec.run.seed;
    Ok(match spec.data.sampling {
        SamplingMode::Random => WindowOrder::Random {
            starts: split_starts(spec, &corpus.train, 1, separator, "training")?,
            seed,
        },
        SamplingMode::Sliding => {
            let stride = spec.data.stride(spec.model.block_size);
            WindowOrder::Shuffled {
                starts: split_starts(spec, &corpus.train, stride, separator, "training")?,
                seed,
            }
        }
    })
}

/// Validation windows of a run: the same batches during training, `eval` and the summary.
pub fn val_windows<B: Backend>(
    spec: &RunSpec,
    corpus: &Corpus,
    separator: Option<u32>,
    device: &B::Device,
) -> Result<FixedWindows<B>> {
    let t = &spec.training;
    let allowed = split_starts(spec, &corpus.val, 1, separator, "validation")?;
    let (batch, block) = (t.batch_size, spec.model.block_size);
    Ok(FixedWindows::new(
        corpus.val.clone(),
        &allowed,
        batch,
        block,
        t.eval_iters,
        spec.run.seed,
        device.clone(),
    ))
}

/// Mean per-token loss of `model` over `batches` (batches of unequal size weigh by size).
pub fn mean_loss<B: Backend>(model: &Gpt<B>, batches: impl Iterator<Item = LmBatch<B>>) -> f64 {
    let (sum, n) = batches.fold((0.0, 0usize), |(sum, n), batch| {
        let windows = batch.inputs.dims()[0];
        (
            sum + lm_loss(model, &batch).into_scalar().elem::<f64>() * windows as f64,
            n + windows,
        )
    });
    sum / n.max(1) as f64
}

fn run<B: AutodiffBackend>(
    spec: RunSpec,
    options: TrainOptions,
    device: B::Device,
    backend: BackendChoice,
) -> Result<Outcome> {
    match spec.model.kind {
        ModelKind::Gpt => run_gpt::<B>(spec, options, device, backend),
        ModelKind::Seq2Seq => seq2seq::run::<B>(spec, options, device, backend),
    }
}

fn run_gpt<B: AutodiffBackend>(
    mut spec: RunSpec,
    options: TrainOptions,
    device: B::Device,
    backend: BackendChoice,
) -> Result<Outcome> {
    let text = crate::data::read_text(&spec.data.path)?;
    let data = spec.data.clone();
    let started = start_run::<B>(&mut spec, &options, &device, || {
        Ok(TokenizerSpec::parse(&data.tokenizer)?.build(&text, data.fit_options())?)
    })?;
    let (run, tokenizer) = (&started.run, started.tokenizer.as_ref());
    let corpus = Corpus::prepare(
        &spec.data.path,
        &text,
        tokenizer,
        run,
        spec.data.val_fraction,
        spec.model.block_size,
    )?;
    drop(text);

    let t = spec.training.clone();
    let model: Gpt<B> = gpt_config(&spec).init(&device);
    let counts = model.param_counts();
    announce(
        run,
        &backend,
        counts,
        &format!(
            "{} train / {} val tokens",
            corpus.train.len(),
            corpus.val.len()
        ),
    )?;

    let plan = Fit::plan(&spec, run, started.resume_from.as_ref())?;
    let separator = document_separator(&spec, tokenizer)?;
    let order = train_order(&spec, &corpus, separator)?;
    let val = val_windows::<B::InnerBackend>(&spec, &corpus, separator, &device)?;
    let loaders = |replica: Replica, device: &B::Device| -> Loaders<B, Gpt<B>> {
        let train = TrainWindows::<B>::new(
            corpus.train.clone(),
            order.clone(),
            t.batch_size,
            spec.model.block_size,
            plan.first_epoch,
            &plan.epochs,
            device.clone(),
        )
        .with_stop(plan.stop(), t.grad_accumulation)
        .for_replica(replica.rank, replica.world);
        // Only the replica that logs validates; the others' passes are empty.
        let valid = val.clone().skip_when(if replica.writes_run() {
            plan.stop()
        } else {
            Arc::new(|| true)
        });
        (Arc::new(train), Arc::new(valid))
    };
    let Some((model, wall_seconds)) = plan.launch_replicas(model, &device, backend, loaders)?
    else {
        return Ok(Outcome::Interrupted {
            step: plan.control.steps(),
        });
    };

    let final_val_loss = mean_loss(&model, val.batches());
    let tokens_seen =
        t.max_iters * t.tokens_per_step(spec.model.block_size) * spec.distributed.replicas();
    let summary = plan.finish(final_val_loss, counts, wall_seconds, tokens_seen, &backend)?;
    if options.sample_tokens > 0 {
        print_sample(&model, tokenizer, options.sample_tokens, spec.run.seed)?;
    }
    Ok(Outcome::Finished(summary))
}

/// A run directory ready to train in, and its tokenizer.
struct Started {
    run: RunDir,
    resume_from: Option<CheckpointState>,
    tokenizer: Box<dyn Tokenizer>,
}

/// What every model kind starts with: the run directory (new, or checked for `--resume`),
/// the backend seeded, the tokenizer (the run's own when resuming, else `fit` and saved),
/// `model.vocab_size` resolved and the resolved config written.
fn start_run<B: Backend>(
    spec: &mut RunSpec,
    options: &TrainOptions,
    device: &B::Device,
    fit: impl FnOnce() -> Result<Box<dyn Tokenizer>>,
) -> Result<Started> {
    let run = RunDir::of(spec);
    let resume_from = prepare_run_dir(&run, spec, options)?;
    B::seed(device, spec.run.seed);
    let tokenizer: Box<dyn Tokenizer> = match resume_from {
        // The run's own file, left as it is: its hash is what checkpoints refer to.
        Some(_) => tokenizer::load(&run.tokenizer())?,
        None => {
            let tokenizer = fit()?;
            tokenizer::save(tokenizer.as_ref(), &run.tokenizer())
                .with_context(|| format!("writing {}", run.tokenizer().display()))?;
            tokenizer
        }
    };
    resolve_vocab(spec, tokenizer.as_ref())?;
    spec.write_resolved(&run.config())?;
    Ok(Started {
        run,
        resume_from,
        tokenizer,
    })
}

/// Refuses to start when the disk cannot hold the model, two checkpoints (model and two Adam
/// moments, f32) and the final model; then prints the run's first line: where, on what, how
/// big, and on what `data`.
fn announce(
    run: &RunDir,
    backend: &BackendChoice,
    counts: crate::model::ParamCounts,
    data: &str,
) -> Result<()> {
    let checkpoint_bytes = counts.total as u64 * 4 * 3;
    run.check_room(
        2 * checkpoint_bytes + counts.total as u64 * 4,
        "training (two checkpoints and the final model)",
    )
    .map_err(anyhow::Error::msg)?;
    eprintln!(
        "kiln: run {} on {} | {} params ({} without embeddings, {:.2} MB f32) | {data}",
        run.root().display(),
        backend.describe(),
        counts.total,
        counts.total - counts.embedding,
        counts.total as f64 * 4.0 / 1e6,
    );
    Ok(())
}

/// A replica's training and validation loaders.
type Loaders<B, M> = (
    Arc<dyn DataLoader<B, <M as TrainStep>::Input>>,
    Arc<
        dyn DataLoader<
            <B as AutodiffBackend>::InnerBackend,
            <<M as AutodiffModule<B>>::InnerModule as InferenceStep>::Input,
        >,
    >,
);

/// The part of training every model kind shares: the steps left, the Learner wired with
/// kiln's optimizer, schedule, metrics, progress bar and checkpoints, and the summary.
struct Fit<'a> {
    spec: &'a RunSpec,
    run: &'a RunDir,
    resume_from: Option<&'a CheckpointState>,
    start_step: usize,
    first_epoch: usize,
    /// The Learner epochs left, in micro-batches: `(first, count)`.
    epochs: Vec<(usize, usize)>,
    control: Arc<RunControl>,
    latest: Arc<Mutex<metrics::LatestMetrics>>,
}

impl<'a> Fit<'a> {
    fn plan(
        spec: &'a RunSpec,
        run: &'a RunDir,
        resume_from: Option<&'a CheckpointState>,
    ) -> Result<Self> {
        let t = &spec.training;
        let start_step = resume_from.map_or(0, |s| s.step);
        if start_step >= t.max_iters {
            bail!(
                "--resume: {} already reached training.max_iters = {} (checkpoint at step {start_step}); \
                 raise it, e.g. --set training.max_iters={}, to train further",
                run.root().display(),
                t.max_iters,
                2 * t.max_iters.max(1)
            );
        }
        let acc = t.grad_accumulation;
        let epochs = epoch_plan(start_step, t.eval_interval, t.max_iters)
            .into_iter()
            .map(|(first, steps)| (first * acc, steps * acc))
            .collect();
        Ok(Self {
            spec,
            run,
            resume_from,
            start_step,
            first_epoch: resume_from.map_or(1, |s| s.epoch + 1),
            epochs,
            control: Arc::new(Self::control(spec, start_step)),
            latest: Arc::new(Mutex::new(metrics::LatestMetrics::default())),
        })
    }

    fn control(spec: &RunSpec, start_step: usize) -> RunControl {
        match spec.distributed.replicas() {
            1 => RunControl::new(start_step),
            _ => RunControl::new(start_step).replicated(),
        }
    }

    /// True once the run must end (SIGINT/SIGTERM, divergence): loaders stop serving.
    fn stop(&self) -> StopCheck {
        let control = self.control.clone();
        Arc::new(move || control.should_stop())
    }

    /// Trains `model` on this node's replicas, one per device of `[distributed] devices`
    /// (a thread each), and returns what replica 0 of the node returns.
    fn launch_replicas<B, M>(
        &self,
        model: M,
        device: &B::Device,
        backend: BackendChoice,
        loaders: impl Fn(Replica, &B::Device) -> Loaders<B, M> + Sync,
    ) -> Result<Option<(M::InnerModule, f64)>>
    where
        B: AutodiffBackend,
        M: TrainStep<Output = LmOutput<B>> + AutodiffModule<B> + std::fmt::Display + 'static,
        M::InnerModule: InferenceStep<Output = LmOutput<B::InnerBackend>>,
    {
        let section = &self.spec.distributed;
        if section.replicas() == 1 {
            let (train, valid) = loaders(Replica::SOLE, device);
            return self.launch(Replica::SOLE, None, model, train, valid);
        }
        let devices = crate::backend::replica_devices::<B>(&backend, device, &section.devices)?;
        #[cfg(not(feature = "distributed"))]
        unreachable!(
            "the config check refuses {} replicas without the `distributed` feature",
            devices.len()
        );
        #[cfg(feature = "distributed")]
        {
            let agreement =
                crate::distributed::agreement(self.spec, self.start_step, model.num_params());
            eprintln!(
                "kiln: node {} of {}: replicas {}..{} of {} on {} device(s); effective batch {} windows",
                section.node_rank,
                section.nodes,
                Replica::on(section, 0).rank,
                Replica::on(section, devices.len() - 1).rank,
                section.replicas(),
                devices.len(),
                self.spec.training.batch_size * self.spec.training.grad_accumulation * section.replicas()
            );
            let replica_run = |local: usize, model: M, device: &B::Device| {
                let replica = Replica::on(section, local);
                let exchange = Arc::new(Exchange::join::<B::InnerBackend>(
                    replica, device, section, &agreement,
                )?);
                let (train, valid) = loaders(replica, device);
                let trained = self.launch(replica, Some(exchange.clone()), model, train, valid)?;
                exchange.leave::<B::InnerBackend>()?;
                Ok(trained)
            };
            std::thread::scope(|scope| {
                let others: Vec<_> = devices[1..]
                    .iter()
                    .enumerate()
                    .map(|(i, device)| {
                        let model = model.clone().fork(device);
                        let replica_run = &replica_run;
                        scope.spawn(move || replica_run(i + 1, model, device))
                    })
                    .collect();
                let first = replica_run(0, model, &devices[0]);
                for (i, other) in others.into_iter().enumerate() {
                    match other.join() {
                        Ok(result) => {
                            result.with_context(|| {
                                format!("replica on distributed.devices[{}]", i + 1)
                            })?;
                        }
                        Err(_) => bail!("the replica on distributed.devices[{}] panicked", i + 1),
                    }
                }
                first
            })
        }
    }

    /// Trains `model` through the Learner as `replica`. Returns the trained model and the
    /// seconds it took, or `None` when a signal stopped the run (a checkpoint was written).
    fn launch<B, M>(
        &self,
        replica: Replica,
        exchange: Option<Arc<Exchange>>,
        model: M,
        train_loader: Arc<dyn DataLoader<B, M::Input>>,
        valid_loader: Arc<
            dyn DataLoader<B::InnerBackend, <M::InnerModule as InferenceStep>::Input>,
        >,
    ) -> Result<Option<(M::InnerModule, f64)>>
    where
        B: AutodiffBackend,
        M: TrainStep<Output = LmOutput<B>> + AutodiffModule<B> + std::fmt::Display + 'static,
        M::InnerModule: InferenceStep<Output = LmOutput<B::InnerBackend>>,
    {
        let (spec, run, t) = (self.spec, self.run, &self.spec.training);
        let acc = t.grad_accumulation;
        let control = match replica.writes_run() {
            true => self.control.clone(),
            false => Arc::new(Self::control(spec, self.start_step)),
        };
        let adamw = AdamW {
            beta1: t.beta1,
            beta2: t.beta2,
            epsilon: 1e-8,
            weight_decay: t.weight_decay,
        };
        let mut optimizer =
            ClippedAdamW::<M, B>::new(adamw, t.grad_clip, acc).with_control(control.clone());
        if let Some(exchange) = exchange {
            optimizer = optimizer.with_exchange(exchange);
        }
        let schedule =
            WarmupSchedule::new(t.learning_rate, t.min_lr, t.warmup_iters, t.max_iters, acc)
                .with_kind(t.schedule);
        let journal = CheckpointJournal::new(run.clone(), t.keep_checkpoints);
        let renderer = renderer::ProgressRenderer::new(t.max_iters, self.start_step, acc);

        let mut training = SupervisedTraining::new(run.root(), train_loader, valid_loader)
            .metric_train_numeric(metrics::LossMetric::new())
            .metric_valid_numeric(metrics::LossMetric::new())
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
                        acc,
                        self.start_step,
                        self.latest.clone(),
                    )
                    .with_context(|| format!("opening {}", run.metrics().display()))?,
                )
                .with_checkpointing_strategy(self.checkpoint_policy(journal)?)
                .renderer(renderer),
            false => training
                .with_metric_logger(metrics::SilentLogger)
                .with_application_logger(None)
                .with_checkpointing_strategy(NoCheckpoints {
                    control: control.clone(),
                })
                .renderer(renderer.hidden()),
        };
        if acc > 1 {
            training = training.grads_accumulation(acc);
        }
        if let Some(state) = self.resume_from {
            training = training.checkpoint(state.epoch);
        }
        // Burn creates its own checkpoint folder; kiln's recorder writes to `checkpoints/`.
        let _ = std::fs::remove_dir(run.root().join("checkpoint"));

        let started = Instant::now();
        let result = training.launch(Learner::new(model, optimizer, schedule));
        let wall_seconds = started.elapsed().as_secs_f64();

        if let Some(divergence) = control.divergence() {
            bail!(divergence_message(run, spec, divergence));
        }
        if let Some(failure) = control.failure() {
            bail!("training stopped at step {}: {failure}", control.steps());
        }
        if control.steps() < t.max_iters {
            if replica.writes_run() {
                eprintln!(
                    "kiln: stopped at step {} of {}; checkpoint written to {}. Continue with the same command plus --resume \
                     (kiln train --config <config> --resume)",
                    control.steps(),
                    t.max_iters,
                    run.checkpoints().display()
                );
            }
            return Ok(None);
        }
        if replica.writes_final_model() {
            Recorder::<B::InnerBackend>::record(
                &CheckpointRecorder::default(),
                result.model.clone().into_record(),
                run.final_model(),
            )
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", run.final_model().display()))?;
        }
        Ok(Some((result.model, wall_seconds)))
    }

    /// When replica 0 checkpoints: every `checkpoint_interval` steps, at the end, and when
    /// the run is stopped.
    fn checkpoint_policy(&self, journal: CheckpointJournal) -> Result<CheckpointPolicy> {
        let (spec, run, t) = (self.spec, self.run, &self.spec.training);
        let identity = RunIdentity {
            seed: spec.run.seed,
            tokens_per_step: t.tokens_per_step(spec.model.block_size) * spec.distributed.replicas(),
            config_sha256: sha256_file(&run.config())
                .with_context(|| format!("reading {}", run.config().display()))?,
            tokenizer_sha256: sha256_file(&run.tokenizer())
                .with_context(|| format!("reading {}", run.tokenizer().display()))?,
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

    /// Writes `summary.json` (node 0 of a data-parallel run) and prints the closing line.
    fn finish(
        &self,
        final_val_loss: f64,
        counts: crate::model::ParamCounts,
        wall_seconds: f64,
        tokens_seen: usize,
        backend: &BackendChoice,
    ) -> Result<Summary> {
        let (run, t) = (self.run, &self.spec.training);
        let latest = self.latest.lock().expect("metrics lock").clone();
        let steps = t.max_iters - self.start_step;
        let summary = Summary {
            final_train_loss: latest.train_loss.unwrap_or(f64::NAN),
            final_val_loss,
            val_perplexity: final_val_loss.exp(),
            params: counts.total,
            params_non_embedding: counts.total - counts.embedding,
            steps: t.max_iters,
            tokens_seen,
            wall_seconds,
            tokens_per_second: (tokens_seen as f64 * steps as f64 / t.max_iters as f64)
                / wall_seconds.max(1e-9),
            backend: backend.describe(),
        };
        if self.spec.distributed.node_rank > 0 {
            eprintln!(
                "kiln: node {} done | final model {}",
                self.spec.distributed.node_rank,
                run.final_model().display()
            );
            return Ok(summary);
        }
        let json = serde_json::to_vec_pretty(&summary).expect("summary serializes");
        crate::run_dir::write_atomic(&run.summary(), &json)
            .with_context(|| format!("writing {}", run.summary().display()))?;
        eprintln!(
            "kiln: done in {:.1}s | val loss {:.4} (perplexity {:.2}) | {:.0} tokens/s | {}",
            wall_seconds,
            final_val_loss,
            summary.val_perplexity,
            summary.tokens_per_second,
            run.root().display()
        );
        Ok(summary)
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

fn divergence_message(run: &RunDir, spec: &RunSpec, divergence: Divergence) -> String {
    let t = &spec.training;
    let last_good = match crate::checkpoint::Latest::read(run) {
        Some(latest) => format!(
            "the last good checkpoint (step {}) is kept; `--resume` continues from it",
            latest.step
        ),
        None => "no checkpoint had been taken yet".to_string(),
    };
    let clip = if t.grad_clip > 0.0 {
        format!("lower training.grad_clip (now {})", t.grad_clip)
    } else {
        "set training.grad_clip = 1.0 (now off)".into()
    };
    format!(
        "the loss stopped being a number at step {} (gradient norm {}): training stopped and that step was not applied; \
         {last_good}. Try a lower training.learning_rate (now {:e}), a longer training.warmup_iters (now {}), or {clip}",
        divergence.step, divergence.grad_norm, t.learning_rate, t.warmup_iters
    )
}

/// Creates the run directory, refusing to overwrite an existing run unless asked, and finds
/// the checkpoint to resume from.
fn prepare_run_dir(
    run: &RunDir,
    spec: &RunSpec,
    options: &TrainOptions,
) -> Result<Option<CheckpointState>> {
    // Training has started once metrics are logged; a start that failed on its input (and
    // left only config, tokenizer and tokens.bin) holds nothing to protect.
    let has_run =
        run.metrics().exists() || run.final_model().exists() || !run.checkpoint_epochs().is_empty();
    if let Some(resume) = &options.resume {
        if !has_run {
            bail!(
                "--resume: {} holds no run to resume; train without --resume first",
                run.root().display()
            );
        }
        let saved = RunSpec::read_resolved(&run.config())?;
        for (section, same) in [
            ("model", saved.model_matches(spec)),
            ("data", saved.data == spec.data),
        ] {
            if !same {
                bail!(
                    "--resume: the [{section}] section differs from the one {} was trained with; \
                     resume with the same config or choose another run.name",
                    run.config().display()
                );
            }
        }
        if saved.training != spec.training {
            eprintln!("kiln: warning: the [training] section differs from the one the run started with; the resumed run will not match an uninterrupted one");
        }
        let state = match resume {
            Resume::Newest => newest_valid_checkpoint(run)?,
            Resume::From(path) => checkpoint_at(run, path)?,
        };
        state.check_tokenizer(run)?;
        let partials = run
            .remove_partial_files()
            .with_context(|| format!("cleaning {}", run.root().display()))?;
        if partials > 0 {
            eprintln!("kiln: removed {partials} half-written file(s) left by an interrupted write");
        }
        if let Some(dir) = run
            .set_aside_after(state.epoch)
            .with_context(|| format!("cleaning {}", run.checkpoints().display()))?
        {
            eprintln!(
                "kiln: checkpoints newer than the resume point were moved to {}",
                dir.display()
            );
        }
        crate::train::metrics::truncate_metrics(&run.metrics(), state.step)?;
        eprintln!(
            "kiln: resuming {} from step {} (checkpoint {})",
            run.root().display(),
            state.step,
            state.epoch
        );
        return Ok(Some(state));
    }
    if has_run {
        if !options.force {
            bail!(
                "{} already holds a run; pass --resume to continue it, --force to delete it and start over, \
                 or --set run.name=<new name>",
                run.root().display()
            );
        }
        std::fs::remove_dir_all(run.root())
            .with_context(|| format!("removing {}", run.root().display()))?;
    }
    std::fs::create_dir_all(run.checkpoints())
        .with_context(|| format!("creating {}", run.checkpoints().display()))?;
    Ok(None)
}

/// The newest checkpoint whose records match their hashes; damaged newer ones are reported
/// and skipped.
fn newest_valid_checkpoint(run: &RunDir) -> Result<CheckpointState> {
    for epoch in run.checkpoint_epochs().into_iter().rev() {
        match CheckpointState::verify(run, epoch) {
            Ok(state) => return Ok(state),
            Err(e) => eprintln!("kiln: {e}; trying the one before"),
        }
    }
    bail!("--resume: {} has no complete checkpoint; train without --resume (add --force to start over)", run.checkpoints().display())
}

/// The checkpoint a `--resume PATH` names: any of its files, inside this run.
fn checkpoint_at(run: &RunDir, path: &std::path::Path) -> Result<CheckpointState> {
    let epoch = crate::run_dir::checkpoint_epoch(path).filter(|_| {
        let dir = path.parent().and_then(|d| d.canonicalize().ok());
        dir.is_some() && dir == run.checkpoints().canonicalize().ok()
    });
    let Some(epoch) = epoch else {
        bail!(
            "--resume {}: expected a checkpoint file of this run, such as {}",
            path.display(),
            run.checkpoint_state(run.checkpoint_epochs().last().copied().unwrap_or(1))
                .display()
        );
    };
    Ok(CheckpointState::verify(run, epoch)?)
}

/// Fills `model.vocab_size` from the tokenizer, or checks that a configured one is big enough.
fn resolve_vocab(spec: &mut RunSpec, tokenizer: &dyn Tokenizer) -> Result<()> {
    let needed = tokenizer.vocab_size();
    match spec.model.vocab_size {
        Some(v) if v < needed => {
            bail!("model.vocab_size = {v}: expected at least the tokenizer's vocabulary size ({needed}, {})", spec.data.tokenizer)
        }
        Some(_) => {}
        None => spec.model.vocab_size = Some(needed),
    }
    Ok(())
}

fn print_sample<B: Backend>(
    model: &Gpt<B>,
    tokenizer: &dyn Tokenizer,
    tokens: usize,
    seed: u64,
) -> Result<()> {
    // A newline where the tokenizer has one (char, BPE), else the document separator.
    let prompt = match tokenizer.encode("\n") {
        Ok(ids) if !ids.is_empty() => ids,
        _ => vec![tokenizer.special_id(tokenizer::END_OF_TEXT).unwrap_or(0)],
    };
    let sampling = Sampling {
        max_new_tokens: tokens,
        temperature: 0.8,
        top_k: Some(200),
        top_p: None,
        seed,
    };
    eprintln!("kiln: sample ({tokens} tokens, temperature 0.8, top-k 200):");
    let mut out = crate::generate::Utf8Stream::stdout();
    generate(model, &prompt, &sampling, |id| {
        out.push(&tokenizer.decode_next(id))
    })?;
    out.push(b"\n");
    out.finish();
    Ok(())
}

/// The tokenizer of a trained run, checked against the model it belongs to: its vocabulary
/// must fit the model's, and it must be the file the run's checkpoints were taken with.
pub fn run_tokenizer(run: &RunDir, spec: &RunSpec) -> Result<Box<dyn Tokenizer>> {
    let path = run.tokenizer();
    let tokenizer = tokenizer::load(&path)?;
    let (have, model) = (tokenizer.vocab_size(), spec.vocab_size());
    if have > model {
        bail!(
            "{}: a vocabulary of {have} tokens, but the run's model has {model} (model.vocab_size in {}); \
             the file is not the one this run was trained with: restore it",
            path.display(),
            run.config().display()
        );
    }
    let state = crate::checkpoint::Latest::read(run)
        .and_then(|l| CheckpointState::read(&run.checkpoint_state(l.epoch)).ok());
    if let Some(state) = state {
        state.check_tokenizer(run)?;
    }
    Ok(tokenizer)
}

/// Loads the weights of a GPT run: a given checkpoint file, else the final model, else the
/// newest checkpoint. Returns the model and the file it came from.
pub fn load_model<B: Backend>(
    run: &RunDir,
    spec: &RunSpec,
    file: Option<&std::path::Path>,
    device: &B::Device,
) -> Result<(Gpt<B>, std::path::PathBuf)> {
    load_weights(run, gpt_config(spec).init(device), file, device)
}

/// Loads the weights of a run into `model`, built from the run's config: a given checkpoint
/// file, else the final model, else the newest checkpoint.
fn load_weights<B: Backend, M: Module<B>>(
    run: &RunDir,
    model: M,
    file: Option<&std::path::Path>,
    device: &B::Device,
) -> Result<(M, std::path::PathBuf)> {
    let path = match file {
        Some(f) => f.to_path_buf(),
        None if run.final_model().is_file() => run.final_model(),
        None => match run.checkpoint_epochs().last() {
            Some(&epoch) => run.checkpoint_file("model", epoch),
            None => bail!(
                "{} holds no model yet (no model.mpk, no checkpoints)",
                run.root().display()
            ),
        },
    };
    let expected = crate::model::named_params(&model);
    let record = load_record::<B, _>(&path, device)?;
    let model = model.load_record(record);
    let loaded = crate::model::named_params(&model);
    if let Some((want, got)) = expected
        .iter()
        .zip(&loaded)
        .find(|(want, got)| want.shape != got.shape)
    {
        bail!(crate::checkpoint::CheckpointError::Shape {
            path,
            name: got.name.clone(),
            file: got.shape.clone(),
            config: want.shape.clone(),
        });
    }
    Ok((model, path))
}
