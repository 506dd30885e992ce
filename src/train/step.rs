//! How the Learner runs the models: one forward + loss per batch, gradients when training.

use burn::prelude::*;
use burn::train::metric::{Adaptor, ItemLazy};
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use crate::data::{LmBatch, Objective, Seq2SeqBatch};
use crate::kernels::{KernelBackend, TrainBackend};
use crate::model::{Gpt, Seq2Seq};

/// The loss of a batch as its objective defines it (and, for DPO, the reward margin and
/// accuracy).
pub fn lm_objective<B: KernelBackend>(
    model: &Gpt<B>,
    batch: &LmBatch<B>,
) -> (Tensor<B, 1>, Option<Tensor<B, 1>>) {
    match &batch.objective {
        Objective::NextToken => (next_token_loss(model, batch), None),
        Objective::Preference { beta, reference } => {
            let (loss, rewards) = preference_loss(model, batch, *beta, reference.clone());
            (loss, Some(rewards))
        }
    }
}

/// The loss of a batch as its objective defines it.
pub fn lm_loss<B: KernelBackend>(model: &Gpt<B>, batch: &LmBatch<B>) -> Tensor<B, 1> {
    lm_objective(model, batch).0
}

/// Mean next-token cross-entropy of a batch: logits `[batch, seq, vocab]` vs targets
/// `[batch, seq]`, over the targets its loss mask counts.
fn next_token_loss<B: KernelBackend>(model: &Gpt<B>, batch: &LmBatch<B>) -> Tensor<B, 1> {
    let logits = model.forward(batch.inputs.clone());
    let [b, t, v] = logits.dims();
    let (logits, targets) = (logits.reshape([b * t, v]), batch.targets.clone().reshape([b * t]));
    let Some(mask) = &batch.loss_mask else {
        return B::cross_entropy(logits, targets);
    };
    let log_probs = burn::tensor::activation::log_softmax(logits, 1);
    let nll = -log_probs.gather(1, targets.reshape([b * t, 1]));
    (nll * mask.clone().reshape([b * t, 1])).sum() / batch.loss_tokens.max(1) as f64
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

/// Mean log-probability of each row's counted targets (its response): `[rows]`.
pub fn response_logprobs<B: KernelBackend>(model: &Gpt<B>, batch: &LmBatch<B>) -> Tensor<B, 1> {
    let log_probs = burn::tensor::activation::log_softmax(model.forward(batch.inputs.clone()), 2);
    let [rows, seq, _] = log_probs.dims();
    let picked = log_probs.gather(2, batch.targets.clone().unsqueeze_dim(2)).reshape([rows, seq]);
    let mask = batch.loss_mask.clone().unwrap_or_else(|| picked.ones_like());
    let counted = mask.clone().sum_dim(1).clamp_min(1.0);
    ((picked * mask).sum_dim(1) / counted).reshape([rows])
}

/// The DPO loss of a preference batch (Rafailov et al. 2023, as Raschka's notebook computes
/// it): `-log σ(β·((π_c − ref_c) − (π_r − ref_r)))` averaged over pairs, with the mean reward
/// margin and the fraction of pairs whose chosen response earns the higher reward.
pub fn preference_loss<B: KernelBackend>(
    model: &Gpt<B>,
    batch: &LmBatch<B>,
    beta: f64,
    reference: Tensor<B, 1>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let rewards = (response_logprobs(model, batch) - reference) * beta;
    let pairs = rewards.dims()[0] / 2;
    let margins = rewards.clone().narrow(0, 0, pairs) - rewards.narrow(0, pairs, pairs);
    let loss = -burn::tensor::activation::log_sigmoid(margins.clone()).mean();
    let detached = margins.detach();
    let accuracy = detached.clone().greater_elem(0.0).float().mean();
    (loss, Tensor::cat(vec![detached.mean(), accuracy], 0))
}

/// What a step hands to the metrics: the loss (still on the device), the tokens it saw and
/// what the loss is a mean over.
pub struct LmOutput<B: Backend> {
    pub loss: Tensor<B, 1>,
    pub tokens: usize,
    /// Targets (or, for DPO, pairs) the loss averages over: its weight in a mean over batches.
    pub weight: usize,
    /// DPO: the mean reward margin and the reward accuracy.
    pub rewards: Option<Tensor<B, 1>>,
}

/// [`LmOutput`] read back to the host, off the training thread.
#[derive(Debug, Clone, Copy)]
pub struct LmStats {
    pub loss: f64,
    pub tokens: usize,
    pub weight: usize,
    pub rewards: Option<[f64; 2]>,
}

impl<B: Backend> ItemLazy for LmOutput<B> {
    type ItemSync = LmStats;
    fn sync(self) -> LmStats {
        let rewards = self.rewards.map(|r| {
            let values = r.into_data().convert::<f64>().to_vec::<f64>().unwrap_or_default();
            [
                values.first().copied().unwrap_or(f64::NAN),
                values.get(1).copied().unwrap_or(f64::NAN),
            ]
        });
        LmStats {
            loss: self.loss.into_scalar().elem::<f64>(),
            tokens: self.tokens,
            weight: self.weight,
            rewards,
        }
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
        let (loss, rewards) = lm_objective(self, batch);
        LmOutput { loss, tokens: batch.loss_tokens, weight: batch.loss_weight(), rewards }
    }
}

impl<B: KernelBackend> Scored<B> for Seq2Seq<B> {
    type Batch = Seq2SeqBatch<B>;
    fn scored(&self, batch: &Seq2SeqBatch<B>) -> LmOutput<B> {
        let tokens = batch.target_tokens;
        LmOutput { loss: seq2seq_loss(self, batch), tokens, weight: tokens, rewards: None }
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
