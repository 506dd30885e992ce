//! How the Learner runs the GPT: one forward + loss per batch, gradients when training.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::{Adaptor, ItemLazy};
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use crate::data::LmBatch;
use crate::model::Gpt;

/// Mean next-token cross-entropy of a batch: logits `[batch, seq, vocab]` vs targets `[batch, seq]`.
pub fn lm_loss<B: Backend>(model: &Gpt<B>, batch: &LmBatch<B>) -> Tensor<B, 1> {
    let logits = model.forward(batch.inputs.clone());
    let [b, t, v] = logits.dims();
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits.reshape([b * t, v]), batch.targets.clone().reshape([b * t]))
}

/// What a step hands to the metrics: the loss (still on the device) and the tokens it saw.
pub struct LmOutput<B: Backend> {
    pub loss: Tensor<B, 1>,
    pub tokens: usize,
}

/// [`LmOutput`] read back to the host, off the training thread.
#[derive(Debug, Clone, Copy)]
pub struct LmStats {
    pub loss: f64,
    pub tokens: usize,
}

impl<B: Backend> ItemLazy for LmOutput<B> {
    type ItemSync = LmStats;
    fn sync(self) -> LmStats {
        LmStats { loss: self.loss.into_scalar().elem::<f64>(), tokens: self.tokens }
    }
}

impl Adaptor<LmStats> for LmStats {
    fn adapt(&self) -> LmStats {
        *self
    }
}

fn output<B: Backend>(loss: Tensor<B, 1>, batch: &LmBatch<B>) -> LmOutput<B> {
    LmOutput { loss, tokens: batch.inputs.dims().iter().product() }
}

impl<B: AutodiffBackend> TrainStep for Gpt<B> {
    type Input = LmBatch<B>;
    type Output = LmOutput<B>;

    fn step(&self, batch: LmBatch<B>) -> TrainOutput<LmOutput<B>> {
        let loss = lm_loss(self, &batch);
        let grads = loss.backward();
        TrainOutput::new(self, grads, output(loss.detach(), &batch))
    }
}

impl<B: Backend> InferenceStep for Gpt<B> {
    type Input = LmBatch<B>;
    type Output = LmOutput<B>;

    fn step(&self, batch: LmBatch<B>) -> LmOutput<B> {
        output(lm_loss(self, &batch), &batch)
    }
}
