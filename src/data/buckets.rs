//! Items of unequal length (sentence pairs, instruction examples) cut into batches of
//! similar length, so that padded batches hold little padding.

use std::sync::Arc;

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::batches::{Batcher, FixedBatches};
use super::loader::MicroBatches;

/// Training micro-batches of items of similar length ([`LengthBuckets`]), made by `batcher`.
#[derive(Clone)]
pub struct Bucketed<M> {
    pub batcher: M,
    pub buckets: LengthBuckets,
}

impl<M> Bucketed<M> {
    /// Batches of `batch_size` items whose lengths are `lengths`, by `batcher`.
    pub fn new(batcher: M, lengths: Vec<usize>, batch_size: usize, seed: u64) -> Self {
        Self { batcher, buckets: LengthBuckets::new(lengths.into(), batch_size, seed) }
    }
}

impl<B: Backend, M: Batcher<B, Batch: 'static>> MicroBatches<B> for Bucketed<M> {
    type Batcher = M;
    fn batcher(&self) -> M {
        self.batcher.clone()
    }
    fn indices(&self, first: usize, count: usize) -> Vec<Vec<usize>> {
        self.buckets.indices(first, count)
    }
    fn batch_size(&self) -> usize {
        self.buckets.batch_size
    }
    fn seed(&self) -> u64 {
        self.buckets.seed
    }
}

impl<B: Backend, M: Batcher<B>> FixedBatches<B, M> {
    /// Items of `lengths` made by `batcher` in the batches of [`fixed_by_length`].
    pub fn by_length(
        batcher: M,
        lengths: &[usize],
        batch_size: usize,
        max_batches: usize,
        device: B::Device,
    ) -> Self {
        Self::of(batcher, fixed_by_length(lengths, batch_size, max_batches), device)
    }
}

/// Training batches of items by length: each pass over the data shuffles the items, sorts
/// them by length within pools of 100 batches, cuts the pools into batches and shuffles the
/// batches. A pass depends only on the seed and its number.
#[derive(Clone)]
pub struct LengthBuckets {
    lengths: Arc<[usize]>,
    batch_size: usize,
    seed: u64,
}

const POOL_BATCHES: usize = 100;

impl LengthBuckets {
    pub fn new(lengths: Arc<[usize]>, batch_size: usize, seed: u64) -> Self {
        Self { lengths, batch_size, seed }
    }

    /// Micro-batches in one pass over the items.
    pub fn per_pass(&self) -> usize {
        let pool = POOL_BATCHES * self.batch_size;
        let full = self.lengths.len() / pool * POOL_BATCHES;
        full + (self.lengths.len() % pool).div_ceil(self.batch_size)
    }

    /// The item indices of every batch of pass `pass`.
    pub fn pass(&self, pass: usize) -> Vec<Vec<usize>> {
        let mut rng =
            StdRng::seed_from_u64(crate::data::windows::mix(self.seed ^ 0xB0C4E7, pass as u64));
        let mut order: Vec<usize> = (0..self.lengths.len()).collect();
        order.shuffle(&mut rng);
        let mut batches: Vec<Vec<usize>> = Vec::with_capacity(self.per_pass());
        for pool in order.chunks_mut(POOL_BATCHES * self.batch_size) {
            pool.sort_by_key(|&i| self.lengths[i]);
            batches.extend(pool.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        batches.shuffle(&mut rng);
        batches
    }

    /// The item indices of micro-batches `first..first + count`, each pass drawn once.
    pub fn indices(&self, first: usize, count: usize) -> Vec<Vec<usize>> {
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
}

/// Every item sorted by length and cut into batches of `batch_size`: validation and
/// evaluation see the same batches every time. With `max_batches > 0`, at most that many,
/// spread over all lengths.
pub fn fixed_by_length(
    lengths: &[usize],
    batch_size: usize,
    max_batches: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let batches: Vec<Vec<usize>> = order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect();
    if max_batches == 0 || batches.len() <= max_batches {
        return batches;
    }
    // Spread over all lengths rather than the shortest items only.
    let step = batches.len() as f64 / max_batches as f64;
    (0..max_batches).map(|i| batches[(i as f64 * step) as usize].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pass_serves_every_item_once_in_its_own_order() {
        let lengths: Arc<[usize]> = (0..1234).map(|i| 3 + i % 11).collect::<Vec<_>>().into();
        let batches = LengthBuckets::new(lengths.clone(), 8, 3);
        let (first, second) = (batches.pass(0), batches.pass(1));
        assert_eq!(first.len(), batches.per_pass());
        let mut seen: Vec<usize> = first.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1234).collect::<Vec<_>>());
        assert_ne!(first, second);
        assert_eq!(first, LengthBuckets::new(lengths, 8, 3).pass(0));
    }

    #[test]
    fn fixed_batches_are_sorted_by_length_and_spread_when_capped() {
        let lengths = [5, 1, 4, 2, 3, 6];
        assert_eq!(fixed_by_length(&lengths, 2, 0), vec![vec![1, 3], vec![4, 2], vec![0, 5]]);
        assert_eq!(fixed_by_length(&lengths, 2, 2), vec![vec![1, 3], vec![4, 2]]);
        assert_eq!(fixed_by_length(&lengths, 1, 3), vec![vec![1], vec![4], vec![0]]);
    }
}
