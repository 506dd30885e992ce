//! Training through Burn's `SupervisedTraining` + `Learner`.
//!
//! [`train`] runs one flow for every model kind ([`fit`]): read the data, open the run folder
//! ([`crate::run::start`]), encode the data with the run's tokenizer, build the model, and
//! train it on every replica ([`learner`]). What differs between a GPT and an
//! encoder-decoder is a [`Task`] ([`gpt`], [`seq2seq`]).

pub mod bench;
mod gpt;
mod instructions;
mod learner;
mod log;
mod metrics;
mod optim;
mod preferences;
mod renderer;
mod schedule;
mod seq2seq;
mod step;
mod task;

use anyhow::Result;

pub use gpt::{
    config as gpt_config, document_separator, mean_loss, prepare_in_memory, val_windows,
};
pub use gpt::{fit_tokenizer, train_order};
pub use instructions::{split_instructions, InstructionSplit};
pub use learner::epoch_plan;
pub use optim::{global_norm, AdamW, ClippedAdamW};
pub use schedule::WarmupSchedule;
pub use seq2seq::{fit_seq2seq_tokenizer, pair_split, seq2seq_mean_loss, PairSplit};
pub use step::{lm_loss, seq2seq_loss, LmOutput, LmStats};

use self::gpt::GptTask;
use self::instructions::InstructionTask;
use self::learner::{announce, Figures, Plan};
use self::preferences::PreferenceTask;
use self::seq2seq::Seq2SeqTask;
use self::task::Task;
use crate::backend::TrainJob;
use crate::config::{DataKind, ModelKind, RunSpec};
use crate::kernels::TrainBackend;
use crate::run::start::StartMode;
use crate::run::Summary;

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// What to do with the run folder the config names.
    pub start: StartMode,
    /// Tokens of the sample printed at the end (0 for none).
    pub sample_tokens: usize,
}

/// How a training ended without an error.
#[derive(Debug, Clone)]
pub enum Outcome {
    Finished(Box<Summary>),
    /// Stopped by SIGINT/SIGTERM after writing a checkpoint at `step`.
    Interrupted {
        step: usize,
    },
}

impl Outcome {
    pub fn summary(self) -> Option<Summary> {
        match self {
            Self::Finished(summary) => Some(*summary),
            Self::Interrupted { .. } => None,
        }
    }
}

/// Trains the run described by `spec` on its configured backend.
pub fn train(mut spec: RunSpec, options: TrainOptions) -> Result<Outcome> {
    crate::distributed::take_place(&mut spec)?;
    let backend = spec.backend.clone();
    crate::backend::dispatch_train(&backend, Training { spec, options })?
}

struct Training {
    spec: RunSpec,
    options: TrainOptions,
}

impl TrainJob for Training {
    type Output = Result<Outcome>;
    fn run<B: TrainBackend>(self, device: B::Device) -> Result<Outcome> {
        let options = &self.options;
        match (self.spec.model.kind(), self.spec.data.kind) {
            (ModelKind::Gpt, DataKind::Instructions) => {
                fit::<B, InstructionTask<B>>(self.spec, options, device)
            }
            (ModelKind::Gpt, DataKind::Preferences) => {
                fit::<B, PreferenceTask<B>>(self.spec, options, device)
            }
            (ModelKind::Gpt, _) => fit::<B, GptTask<B>>(self.spec, options, device),
            (ModelKind::Seq2Seq, _) => fit::<B, Seq2SeqTask<B>>(self.spec, options, device),
        }
    }
}

/// The whole of a training run of model kind `T` on `B`.
fn fit<B: TrainBackend, T: Task<B>>(
    mut spec: RunSpec,
    options: &TrainOptions,
    device: B::Device,
) -> Result<Outcome> {
    crate::memory::check_training(&spec)?;
    if let Some(tokenizer) = gpt::base_tokenizer_spec(&spec)? {
        spec.data.tokenizer = tokenizer;
    }
    let raw = T::read(&spec)?;
    let as_given = spec.clone();
    let (started, _scratch) = crate::distributed::start_run(&mut spec, &options.start, || {
        T::fit_tokenizer(&raw, &as_given)
    })?;
    crate::memory::check_training(&spec)?;
    B::seed(&device, spec.run.seed);
    let task = T::encode(raw, &spec, &started, &device)?;
    let resuming = started.resume_from.is_some();
    let (model, counts) = task.init_model(&spec, resuming, &device)?;
    announce(&spec, &started.dir, counts, &task.describe(&spec))?;

    let plan = Plan::new(&spec, &started);
    let Some((model, wall_seconds)) = plan.launch_replicas(&task, model, &device)? else {
        return Ok(Outcome::Interrupted { step: plan.control.steps() });
    };
    crate::distributed::check_final_weights(&model, &spec.distributed)?;
    let figures = Figures {
        val_loss: task.final_val_loss(&model, &spec, &device),
        counts,
        wall_seconds,
        tokens_seen: task.tokens_seen(&spec),
    };
    let summary = plan.finish(figures)?;
    task.finish(&model, &started, &spec)?;
    if options.sample_tokens > 0 {
        let tokenizer = started.tokenizer.as_ref();
        let shown = task.show_samples(&model, tokenizer, &spec, options.sample_tokens, &device)?;
        started.dir.write_samples(&shown)?;
    }
    Ok(Outcome::Finished(Box::new(summary)))
}
