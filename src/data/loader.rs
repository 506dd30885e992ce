//! Burn `DataLoader`s over a token stream: random training windows and fixed validation
//! windows. A window is `block_size + 1` tokens: inputs are the first `block_size`, targets
//! the last `block_size` (the one-token shift).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A batch of windows. `inputs`, `targets`: `[batch, block_size]`.
#[derive(Debug, Clone)]
pub struct LmBatch<B: Backend> {
    pub inputs: Tensor<B, 2, Int>,
    pub targets: Tensor<B, 2, Int>,
}

impl<B: Backend> LmBatch<B> {
    /// The windows of `tokens` starting at `starts`.
    pub fn from_starts(tokens: &[u32], starts: &[usize], block_size: usize, device: &B::Device) -> Self {
        let batch = starts.len();
        let mut inputs = Vec::with_capacity(batch * block_size);
        let mut targets = Vec::with_capacity(batch * block_size);
        for &s in starts {
            inputs.extend(tokens[s..s + block_size].iter().map(|&t| t as i64));
            targets.extend(tokens[s + 1..s + block_size + 1].iter().map(|&t| t as i64));
        }
        let tensor = |v: Vec<i64>| Tensor::from_data(TensorData::new(v, [batch, block_size]), device);
        Self { inputs: tensor(inputs), targets: tensor(targets) }
    }
}

/// Random windows for training, `batches_in_epoch(epoch)` batches per Learner epoch.
///
/// Epoch `e`'s windows depend only on `(seed, e)`, so a run resumed at epoch `e` sees exactly
/// the batches an uninterrupted run would have seen.
#[derive(Clone)]
pub struct RandomWindows<B: Backend> {
    tokens: Arc<[u32]>,
    batch_size: usize,
    block_size: usize,
    seed: u64,
    /// Micro-batches in each epoch, indexed by epoch - 1.
    epoch_lengths: Arc<[usize]>,
    /// The epoch the next `iter()` call serves (1-based); shared by clones.
    next_epoch: Arc<AtomicUsize>,
    device: B::Device,
}

impl<B: Backend> RandomWindows<B> {
    pub fn new(
        tokens: Arc<[u32]>,
        batch_size: usize,
        block_size: usize,
        seed: u64,
        epoch_lengths: Vec<usize>,
        first_epoch: usize,
        device: B::Device,
    ) -> Self {
        Self {
            tokens,
            batch_size,
            block_size,
            seed,
            epoch_lengths: epoch_lengths.into(),
            next_epoch: Arc::new(AtomicUsize::new(first_epoch)),
            device,
        }
    }

    /// The window starts of every batch in `epoch`.
    pub fn epoch_starts(&self, epoch: usize) -> Vec<Vec<usize>> {
        let batches = self.epoch_lengths.get(epoch.wrapping_sub(1)).copied().unwrap_or(0);
        let mut rng = StdRng::seed_from_u64(self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let max_start = self.tokens.len() - self.block_size - 1;
        (0..batches)
            .map(|_| (0..self.batch_size).map(|_| rng.random_range(0..=max_start)).collect())
            .collect()
    }
}

impl<B: Backend> DataLoader<B, LmBatch<B>> for RandomWindows<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<LmBatch<B>> + 'a> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        Box::new(WindowIter::new(self.tokens.clone(), self.epoch_starts(epoch), self.block_size, self.device.clone()))
    }

    fn num_items(&self) -> usize {
        self.epoch_lengths.first().copied().unwrap_or(0) * self.batch_size
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, LmBatch<B>>> {
        Arc::new(Self { device: device.clone(), ..self.clone() })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, LmBatch<B>>> {
        let lengths: Vec<usize> = self.epoch_lengths.iter().map(|&n| n.min(end).saturating_sub(start)).collect();
        Arc::new(Self { epoch_lengths: lengths.into(), ..self.clone() })
    }
}

/// The same `count` validation windows every time, so validation losses are comparable.
#[derive(Clone)]
pub struct FixedWindows<B: Backend> {
    tokens: Arc<[u32]>,
    starts: Arc<[Vec<usize>]>,
    block_size: usize,
    device: B::Device,
}

impl<B: Backend> FixedWindows<B> {
    pub fn new(tokens: Arc<[u32]>, batch_size: usize, block_size: usize, count: usize, seed: u64, device: B::Device) -> Self {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(0x5EED_0F_7A11));
        let max_start = tokens.len() - block_size - 1;
        let starts: Vec<Vec<usize>> = (0..count)
            .map(|_| (0..batch_size).map(|_| rng.random_range(0..=max_start)).collect())
            .collect();
        Self { tokens, starts: starts.into(), block_size, device }
    }

    /// All batches, for evaluation outside the Learner.
    pub fn batches(&self) -> impl Iterator<Item = LmBatch<B>> + '_ {
        self.starts.iter().map(|s| LmBatch::from_starts(&self.tokens, s, self.block_size, &self.device))
    }
}

impl<B: Backend> DataLoader<B, LmBatch<B>> for FixedWindows<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<LmBatch<B>> + 'a> {
        Box::new(WindowIter::new(self.tokens.clone(), self.starts.to_vec(), self.block_size, self.device.clone()))
    }

    fn num_items(&self) -> usize {
        self.starts.iter().map(Vec::len).sum()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, LmBatch<B>>> {
        Arc::new(Self { device: device.clone(), ..self.clone() })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, LmBatch<B>>> {
        let end = end.min(self.starts.len());
        let starts: Vec<Vec<usize>> = self.starts[start.min(end)..end].to_vec();
        Arc::new(Self { starts: starts.into(), ..self.clone() })
    }
}

struct WindowIter<B: Backend> {
    tokens: Arc<[u32]>,
    starts: std::vec::IntoIter<Vec<usize>>,
    block_size: usize,
    device: B::Device,
    done: usize,
    total: usize,
}

impl<B: Backend> WindowIter<B> {
    fn new(tokens: Arc<[u32]>, starts: Vec<Vec<usize>>, block_size: usize, device: B::Device) -> Self {
        let total = starts.iter().map(Vec::len).sum();
        Self { tokens, starts: starts.into_iter(), block_size, device, done: 0, total }
    }
}

impl<B: Backend> Iterator for WindowIter<B> {
    type Item = LmBatch<B>;
    fn next(&mut self) -> Option<LmBatch<B>> {
        let starts = self.starts.next()?;
        self.done += starts.len();
        Some(LmBatch::from_starts(&self.tokens, &starts, self.block_size, &self.device))
    }
}

impl<B: Backend> DataLoaderIterator<LmBatch<B>> for WindowIter<B> {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::NdArray<f32>;

    fn tokens() -> Arc<[u32]> {
        (0..100u32).collect::<Vec<_>>().into()
    }

    #[test]
    fn targets_are_inputs_shifted_by_one() {
        let batch = LmBatch::<B>::from_starts(&tokens(), &[5, 40], 4, &Default::default());
        assert_eq!(batch.inputs.dims(), [2, 4]);
        let inputs = batch.inputs.into_data().to_vec::<i64>().unwrap();
        let targets = batch.targets.into_data().to_vec::<i64>().unwrap();
        assert_eq!(inputs, vec![5, 6, 7, 8, 40, 41, 42, 43]);
        assert_eq!(targets, vec![6, 7, 8, 9, 41, 42, 43, 44]);
    }

    #[test]
    fn epochs_are_reproducible_and_distinct() {
        let loader = RandomWindows::<B>::new(tokens(), 3, 8, 7, vec![2, 2, 1], 1, Default::default());
        let resumed = RandomWindows::<B>::new(tokens(), 3, 8, 7, vec![2, 2, 1], 2, Default::default());
        assert_eq!(loader.epoch_starts(2), resumed.epoch_starts(2));
        assert_ne!(loader.epoch_starts(1), loader.epoch_starts(2));
        assert_eq!(loader.epoch_starts(3).len(), 1);
        let first: Vec<_> = DataLoader::iter(&loader).collect();
        assert_eq!(first.len(), 2);
        assert!(loader.epoch_starts(1).iter().flatten().all(|&s| s + 8 < 100));
    }
}
