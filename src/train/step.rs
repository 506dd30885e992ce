//! How the Learner runs the models: one forward + loss per batch, gradients when training.

use burn::prelude::*;
use burn::train::metric::{Adaptor, ItemLazy};
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use crate::data::{LmBatch, Seq2SeqBatch};
use crate::kernels::{KernelBackend, TrainBackend};
use crate::model::{Gpt, Seq2Seq};

/// Mean next-token cross-entropy of a batch: logits `[batch, seq, vocab]` vs targets `[batch, seq]`.
pub fn lm_loss<B: KernelBackend>(model: &Gpt<B>, batch: &LmBatch<B>) -> Tensor<B, 1> {
    let logits = model.forward(batch.inputs.clone());
    let [b, t, v] = logits.dims();
    let (logits, targets) = (logits.reshape([b * t, v]), batch.targets.clone().reshape([b * t]));
    B::cross_entropy(logits, targets)
}

/// Mean cross-entropy of a batch's target tokens under teacher forcing, padding left out.
///
/// With label smoothing ε (the batch's own: training batches carry the configured one,
/// validation batches none) each target is `1 - ε` on the right token plus `ε` spread evenly
/// over the vocabulary, as PyTorch's `CrossEntropyLoss(label_smoothing=ε)`.
pub fn seq2seq_loss<B: KernelBackend>(model: &Seq2Seq<B>, batch: &Seq2SeqBatch<B>) -> Tensor<B, 1> {
    let logits = model.forward(batch.source.clone(), batch.target_in.clone());
    let [b, t, v] = logits.dims();
    let log_probs = burn::tensor::activation::log_softmax(logits.reshape([b * t, v]), 1);
    let targets = batch.target_out.clone().reshape([b * t, 1]);
    let nll = -log_probs.clone().gather(1, targets.clone()); // [b * t, 1]
    let eps = batch.label_smoothing;
    let per_token = match eps > 0.0 {
        true => nll * (1.0 - eps) - log_probs.mean_dim(1) * eps,
        false => nll,
    };
    let real = targets.not_equal_elem(model.pad_id() as i64).float();
    (per_token * real).sum() / batch.target_tokens.max(1) as f64
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

/// A model's mean loss on a batch, with the tokens it is over: all its steps need.
trait Scored<B: KernelBackend> {
    type Batch;
    fn scored(&self, batch: &Self::Batch) -> LmOutput<B>;
}

impl<B: KernelBackend> Scored<B> for Gpt<B> {
    type Batch = LmBatch<B>;
    fn scored(&self, batch: &LmBatch<B>) -> LmOutput<B> {
        LmOutput { loss: lm_loss(self, batch), tokens: batch.inputs.dims().iter().product() }
    }
}

impl<B: KernelBackend> Scored<B> for Seq2Seq<B> {
    type Batch = Seq2SeqBatch<B>;
    fn scored(&self, batch: &Seq2SeqBatch<B>) -> LmOutput<B> {
        LmOutput { loss: seq2seq_loss(self, batch), tokens: batch.target_tokens }
    }
}

/// How the Learner runs a [`Scored`] model: its loss, and gradients when training.
macro_rules! steps {
    ($model:ident, $batch:ident) => {
        impl<B: TrainBackend> TrainStep for $model<B> {
            type Input = $batch<B>;
            type Output = LmOutput<B>;

            fn step(&self, batch: $batch<B>) -> TrainOutput<LmOutput<B>> {
                let output = self.scored(&batch);
                let grads = output.loss.backward();
                let detached = LmOutput { loss: output.loss.detach(), ..output };
                TrainOutput::new(self, grads, detached)
            }
        }

        impl<B: KernelBackend> InferenceStep for $model<B> {
            type Input = $batch<B>;
            type Output = LmOutput<B>;

            fn step(&self, batch: $batch<B>) -> LmOutput<B> {
                self.scored(&batch)
            }
        }
    };
}

steps!(Gpt, LmBatch);
steps!(Seq2Seq, Seq2SeqBatch);
