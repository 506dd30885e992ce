//! Sentence pairs in padded batches: bucketed by length for training, fixed for validation.

use std::sync::Arc;

use burn::prelude::*;

use super::PairTokens;
use crate::data::batches::{Batcher, FixedBatches};
use crate::data::buckets::Bucketed;

/// A batch of padded pairs. `source: [batch, src]`; `target_in` (`<bos> …`) and
/// `target_out` (`… <eos>`): `[batch, tgt]`, the target shifted by one.
#[derive(Debug, Clone)]
pub struct Seq2SeqBatch<B: Backend> {
    pub source: Tensor<B, 2, Int>,
    pub target_in: Tensor<B, 2, Int>,
    pub target_out: Tensor<B, 2, Int>,
    /// Target tokens that are not padding: what the loss averages over.
    pub target_tokens: usize,
    /// The label smoothing the loss applies: the configured one in training, 0 in validation.
    pub label_smoothing: f64,
}

impl<B: Backend> Seq2SeqBatch<B> {
    pub fn new(pairs: &[&PairTokens], pad: u32, device: &B::Device) -> Self {
        let src = pairs.iter().map(|p| p.source.len()).max().unwrap_or(1);
        let tgt = pairs.iter().map(|p| p.target.len() - 1).max().unwrap_or(1);
        let padded = |ids: &[u32], len: usize| {
            ids.iter()
                .map(|&t| t as i64)
                .chain(std::iter::repeat(pad as i64))
                .take(len)
                .collect::<Vec<_>>()
        };
        let tensor = |rows: Vec<Vec<i64>>, len: usize| {
            Tensor::from_data(TensorData::new(rows.concat(), [pairs.len(), len]), device)
        };
        let source = pairs.iter().map(|p| padded(&p.source, src)).collect();
        let target_in =
            pairs.iter().map(|p| padded(&p.target[..p.target.len() - 1], tgt)).collect();
        let target_out = pairs.iter().map(|p| padded(&p.target[1..], tgt)).collect();
        Self {
            source: tensor(source, src),
            target_in: tensor(target_in, tgt),
            target_out: tensor(target_out, tgt),
            target_tokens: pairs.iter().map(|p| p.target.len() - 1).sum(),
            label_smoothing: 0.0,
        }
    }
}

/// Pairs of similar length, so batches hold little padding.
pub type PairBatches = Bucketed<Pairs>;

impl Bucketed<Pairs> {
    pub fn pairs(pairs: Arc<[PairTokens]>, batch_size: usize, pad: u32, seed: u64) -> Self {
        let lengths = pairs.iter().map(PairTokens::len).collect();
        Self::new(Pairs { pairs, pad, label_smoothing: 0.0 }, lengths, batch_size, seed)
    }

    pub fn with_label_smoothing(mut self, label_smoothing: f64) -> Self {
        self.batcher.label_smoothing = label_smoothing;
        self
    }

    /// Micro-batches in one pass over the pairs.
    pub fn per_pass(&self) -> usize {
        self.buckets.per_pass()
    }
}

/// Sentence pairs of a split, by their indices, padded into one batch.
#[derive(Clone)]
pub struct Pairs {
    pairs: Arc<[PairTokens]>,
    pad: u32,
    /// The label smoothing the batches carry (training's; validation's is 0).
    label_smoothing: f64,
}

impl<B: Backend> Batcher<B> for Pairs {
    type Batch = Seq2SeqBatch<B>;
    fn batch(&self, indices: &[usize], device: &B::Device) -> Seq2SeqBatch<B> {
        let pairs: Vec<&PairTokens> = indices.iter().map(|&i| &self.pairs[i]).collect();
        let batch = Seq2SeqBatch::new(&pairs, self.pad, device);
        Seq2SeqBatch { label_smoothing: self.label_smoothing, ..batch }
    }
}

/// Every pair of a split, sorted by length and cut into batches: validation and evaluation
/// see the same batches every time.
pub type FixedPairs<B> = FixedBatches<B, Pairs>;

impl<B: Backend> FixedBatches<B, Pairs> {
    /// At most `max_batches` batches (0: all) of `batch_size` pairs.
    pub fn new(
        pairs: Arc<[PairTokens]>,
        batch_size: usize,
        max_batches: usize,
        pad: u32,
        device: B::Device,
    ) -> Self {
        let lengths: Vec<usize> = pairs.iter().map(PairTokens::len).collect();
        let batcher = Pairs { pairs, pad, label_smoothing: 0.0 };
        Self::by_length(batcher, &lengths, batch_size, max_batches, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::NdArray<f32>;

    #[test]
    fn batches_pad_and_shift_the_target() {
        let a = PairTokens { source: vec![7, 8, 2], target: vec![1, 9, 2] };
        let b = PairTokens { source: vec![7, 2], target: vec![1, 9, 9, 2] };
        let batch = Seq2SeqBatch::<B>::new(&[&a, &b], 0, &Default::default());
        assert_eq!(batch.source.into_data().to_vec::<i64>().unwrap(), vec![7, 8, 2, 7, 2, 0]);
        assert_eq!(batch.target_in.into_data().to_vec::<i64>().unwrap(), vec![1, 9, 0, 1, 9, 9]);
        assert_eq!(batch.target_out.into_data().to_vec::<i64>().unwrap(), vec![9, 2, 0, 9, 9, 2]);
        assert_eq!(batch.target_tokens, 5);
    }
}
