//! Sentence pairs in padded batches: bucketed by length for training, fixed for validation.

use std::sync::Arc;

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::PairTokens;
use crate::data::batches::{Batcher, FixedBatches};
use crate::data::loader::MicroBatches;

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

/// Pairs of similar length, so batches hold little padding: each pass over the data
/// shuffles the pairs, sorts them by length within pools of 100 batches, cuts the pools into
/// batches and shuffles the batches. A pass depends only on the seed and its number.
#[derive(Clone)]
pub struct PairBatches {
    pairs: Arc<[PairTokens]>,
    batch_size: usize,
    pad: u32,
    seed: u64,
    label_smoothing: f64,
}

const POOL_BATCHES: usize = 100;

impl PairBatches {
    pub fn new(pairs: Arc<[PairTokens]>, batch_size: usize, pad: u32, seed: u64) -> Self {
        Self { pairs, batch_size, pad, seed, label_smoothing: 0.0 }
    }

    pub fn with_label_smoothing(self, label_smoothing: f64) -> Self {
        Self { label_smoothing, ..self }
    }

    /// Micro-batches in one pass over the pairs.
    pub fn per_pass(&self) -> usize {
        let pool = POOL_BATCHES * self.batch_size;
        let full = self.pairs.len() / pool * POOL_BATCHES;
        full + (self.pairs.len() % pool).div_ceil(self.batch_size)
    }

    /// The pair indices of every batch of pass `pass`.
    pub fn pass(&self, pass: usize) -> Vec<Vec<usize>> {
        let mut rng =
            StdRng::seed_from_u64(crate::data::windows::mix(self.seed ^ 0xB0C4E7, pass as u64));
        let mut order: Vec<usize> = (0..self.pairs.len()).collect();
        order.shuffle(&mut rng);
        let mut batches: Vec<Vec<usize>> = Vec::with_capacity(self.per_pass());
        for pool in order.chunks_mut(POOL_BATCHES * self.batch_size) {
            pool.sort_by_key(|&i| self.pairs[i].len());
            batches.extend(pool.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        batches.shuffle(&mut rng);
        batches
    }
}

impl<B: Backend> MicroBatches<B> for PairBatches {
    type Batcher = Pairs;
    fn batcher(&self) -> Pairs {
        let (pairs, pad) = (self.pairs.clone(), self.pad);
        Pairs { pairs, pad, label_smoothing: self.label_smoothing }
    }
    /// The pair indices of micro-batches `first..first + count`, each pass drawn once.
    fn indices(&self, first: usize, count: usize) -> Vec<Vec<usize>> {
        let per_pass = self.per_pass().max(1);
        let mut pass_cache: Option<(usize, Vec<Vec<usize>>)> = None;
        (first..first + count)
            .map(|index| {
                let pass = index / per_pass;
                if pass_cache.as_ref().is_none_or(|(p, _)| *p != pass) {
                    pass_cache = Some((pass, self.pass(pass)));
                }
                pass_cache
                    .as_ref()
                    .map(|(_, batches)| batches[index % per_pass].clone())
                    .unwrap_or_default()
            })
            .collect()
    }
    fn batch_size(&self) -> usize {
        self.batch_size
    }
    fn seed(&self) -> u64 {
        self.seed
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
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by_key(|&i| pairs[i].len());
        let mut batches: Vec<Vec<usize>> =
            order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect();
        if max_batches > 0 && batches.len() > max_batches {
            // Spread over all lengths rather than the shortest sentences only.
            let step = batches.len() as f64 / max_batches as f64;
            batches =
                (0..max_batches).map(|i| batches[(i as f64 * step) as usize].clone()).collect();
        }
        Self::of(Pairs { pairs, pad, label_smoothing: 0.0 }, batches, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::NdArray<f32>;

    fn pairs(n: usize) -> Arc<[PairTokens]> {
        (0..n)
            .map(|i| PairTokens { source: vec![5; 1 + i % 7], target: vec![1; 2 + i % 5] })
            .collect::<Vec<_>>()
            .into()
    }

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

    #[test]
    fn every_pass_serves_every_pair_once_in_its_own_order() {
        let batches = PairBatches::new(pairs(1234), 8, 0, 3);
        let (first, second) = (batches.pass(0), batches.pass(1));
        assert_eq!(first.len(), batches.per_pass());
        let mut seen: Vec<usize> = first.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1234).collect::<Vec<_>>());
        assert_ne!(first, second);
        assert_eq!(first, PairBatches::new(pairs(1234), 8, 0, 3).pass(0));
    }
}
