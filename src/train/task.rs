//! What differs between training a GPT and an encoder-decoder: the data, the tokenizer a new
//! run fits, the model, its batches and its losses. Everything else — the run folder, the
//! Learner, checkpoints, replicas, the summary — is shared ([`super::fit`]).

use std::fmt::Display;
use std::sync::Arc;

use anyhow::Result;
use burn::data::dataloader::DataLoader;
use burn::module::AutodiffModule;
use burn::train::{InferenceStep, TrainStep};

use super::learner::Plan;
use super::step::LmOutput;
use crate::config::RunSpec;
use crate::distributed::Replica;
use crate::kernels::TrainBackend;
use crate::model::ParamCounts;
use crate::run::Started;
use crate::tokenizer::Tokenizer;

/// The model a task trains, as Burn's Learner needs it.
pub trait TaskModel<B: TrainBackend>:
    TrainStep<Output = LmOutput<B>>
    + AutodiffModule<B, InnerModule: InferenceStep<Output = LmOutput<B::InnerBackend>>>
    + Display
    + 'static
{
}

impl<B, M> TaskModel<B> for M
where
    B: TrainBackend,
    M: TrainStep<Output = LmOutput<B>>
        + AutodiffModule<B, InnerModule: InferenceStep<Output = LmOutput<B::InnerBackend>>>
        + Display
        + 'static,
{
}

/// The trained model, without autodiff.
pub type Trained<B, M> = <M as AutodiffModule<B>>::InnerModule;

/// A replica's training and validation loaders.
pub type Loaders<B, M> = (
    Arc<dyn DataLoader<B, <M as TrainStep>::Input>>,
    Arc<
        dyn DataLoader<
            <B as burn::tensor::backend::AutodiffBackend>::InnerBackend,
            <Trained<B, M> as InferenceStep>::Input,
        >,
    >,
);

/// A model kind's data and model; built by [`Task::encode`] once the run's tokenizer is known.
pub trait Task<B: TrainBackend>: Sized + Sync {
    /// The data as read, before any tokenizer.
    type Raw;
    type Model: TaskModel<B>;

    fn read(spec: &RunSpec) -> Result<Self::Raw>;

    /// The tokenizer a new run fits on the raw data.
    fn fit_tokenizer(raw: &Self::Raw, spec: &RunSpec) -> Result<Box<dyn Tokenizer>>;

    /// The data encoded with the run's tokenizer; validation batches on `device`.
    fn encode(
        raw: Self::Raw,
        spec: &RunSpec,
        started: &Started,
        device: &B::Device,
    ) -> Result<Self>;

    /// The data in a few words, for the run's first line.
    fn describe(&self, spec: &RunSpec) -> String;

    /// The model training starts from, and its parameter counts: a new one, or the weights
    /// of the run `spec` starts from; when `resuming`, the checkpoint's weights replace it.
    fn init_model(
        &self,
        spec: &RunSpec,
        resuming: bool,
        device: &B::Device,
    ) -> Result<(Self::Model, ParamCounts)>;

    /// A replica's loaders for `plan` (which holds the run's spec).
    fn loaders(&self, plan: &Plan, replica: Replica, device: &B::Device)
        -> Loaders<B, Self::Model>;

    /// The loss of the trained model over the whole validation set.
    fn final_val_loss(
        &self,
        model: &Trained<B, Self::Model>,
        spec: &RunSpec,
        device: &B::Device,
    ) -> f64;

    /// Tokens the whole run trained on.
    fn tokens_seen(&self, spec: &RunSpec) -> usize;

    /// Shows what the trained model makes of some input: `tokens` of sampled text, or a few
    /// validation sentences translated.
    fn show_samples(
        &self,
        model: &Trained<B, Self::Model>,
        tokenizer: &dyn Tokenizer,
        spec: &RunSpec,
        tokens: usize,
        device: &B::Device,
    ) -> Result<String>;

    /// Writes what the finished run keeps besides its model (an instruction run: the
    /// responses to its held-out instructions).
    fn finish(
        &self,
        _model: &Trained<B, Self::Model>,
        _started: &Started,
        _spec: &RunSpec,
    ) -> Result<()> {
        Ok(())
    }
}
