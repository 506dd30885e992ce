//! Burn `DataLoader`s over a token stream for training: windows drawn in the run's order,
//! resumable at any micro-batch (the validation windows are [`super::validation`]'s). A window is `block_size + 1` tokens: inputs are the first `block_size`, targets
//! the last `block_size` (the one-token shift).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::prelude::*;

use super::batches::{Batcher, IndexIter};
use super::windows::WindowOrder;

/// A batch of next-token examples. `inputs`, `targets`: `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct LmBatch<B: Backend> {
    pub inputs: Tensor<B, 2, Int>,
    pub targets: Tensor<B, 2, Int>,
    /// `[batch, seq]`: 1 where the loss counts a target, 0 where it skips one (an
    /// instruction's prompt, padding); `None` counts every target.
    pub loss_mask: Option<Tensor<B, 2>>,
    /// Targets the loss counts.
    pub loss_tokens: usize,
    pub objective: Objective<B>,
}

impl<B: Backend> LmBatch<B> {
    /// What the batch's loss is a mean over, its weight in a mean over batches: targets, or
    /// for DPO pairs.
    pub fn loss_weight(&self) -> usize {
        match self.objective {
            Objective::NextToken => self.loss_tokens,
            Objective::Preference { .. } => self.inputs.dims()[0] / 2,
        }
    }
}

/// What a batch's loss is.
#[derive(Debug, Clone)]
pub enum Objective<B: Backend> {
    /// The mean cross-entropy of the targets the loss mask counts.
    NextToken,
    /// DPO: the first half of the rows are preferred responses, the second half dispreferred
    /// responses to the same prompts; `reference` (`[rows]`) is the frozen reference model's
    /// mean log-probability of each row's response, `beta` the strength of the KL penalty.
    Preference { beta: f64, reference: Tensor<B, 1> },
}

impl<B: Backend> LmBatch<B> {
    /// The windows of `tokens` starting at `starts`.
    pub fn from_starts(
        tokens: &[u32],
        starts: &[usize],
        block_size: usize,
        device: &B::Device,
    ) -> Self {
        let batch = starts.len();
        let mut inputs = Vec::with_capacity(batch * block_size);
        let mut targets = Vec::with_capacity(batch * block_size);
        for &s in starts {
            inputs.extend(tokens[s..s + block_size].iter().map(|&t| t as i64));
            targets.extend(tokens[s + 1..s + block_size + 1].iter().map(|&t| t as i64));
        }
        let tensor =
            |v: Vec<i64>| Tensor::from_data(TensorData::new(v, [batch, block_size]), device);
        Self {
            inputs: tensor(inputs),
            targets: tensor(targets),
            loss_mask: None,
            loss_tokens: batch * block_size,
            objective: Objective::NextToken,
        }
    }
}

/// Windows of `block_size + 1` tokens of a stream, by their starts.
#[derive(Clone)]
pub struct Windows {
    pub tokens: Arc<[u32]>,
    pub block_size: usize,
}

impl<B: Backend> Batcher<B> for Windows {
    type Batch = LmBatch<B>;
    fn batch(&self, starts: &[usize], device: &B::Device) -> LmBatch<B> {
        LmBatch::from_starts(&self.tokens, starts, self.block_size, device)
    }
}

/// Asked before each optimizer step: true ends the epoch there (SIGINT, divergence).
pub type StopCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// The micro-batches of a run, each a function of its run-wide index alone.
pub trait MicroBatches<B: Backend>: Clone + Send + Sync + 'static {
    /// What makes a batch of the indices.
    type Batcher: Batcher<B, Batch: 'static>;
    fn batcher(&self) -> Self::Batcher;
    /// The indices of micro-batches `first..first + count`, in order.
    fn indices(&self, first: usize, count: usize) -> Vec<Vec<usize>>;
    /// Items (windows, sentence pairs) in a micro-batch.
    fn batch_size(&self) -> usize;
    /// The seed the data order is drawn from; the backend's dropout seeds derive from it.
    fn seed(&self) -> u64;
}

/// Micro-batches of `S`, served in Learner epochs.
///
/// Epoch `first_epoch + i` serves `epochs[i] = (first, count)`: micro-batches
/// `first..first + count` of the run. A micro-batch's contents, and the dropout masks of its
/// step (the backend is reseeded from `(seed, index)` before each one), depend only on its
/// index, so a run resumed at any step sees exactly what an uninterrupted run would have.
#[derive(Clone)]
pub struct TrainBatches<B: Backend, S> {
    source: S,
    first_epoch: usize,
    epochs: Arc<[(usize, usize)]>,
    /// The epoch the next `iter()` call serves; shared by clones.
    next_epoch: Arc<AtomicUsize>,
    stop: Option<(StopCheck, usize)>,
    /// `(rank, replicas)`: this replica serves run micro-batches `i · replicas + rank`.
    replica: (usize, usize),
    device: B::Device,
}

/// Training windows of a token stream in `order`.
pub type TrainWindows<B> = TrainBatches<B, WindowBatches>;

/// The windows of micro-batch `i`: entries `i * batch_size..` of a [`WindowOrder`].
#[derive(Clone)]
pub struct WindowBatches {
    tokens: Arc<[u32]>,
    order: WindowOrder,
    batch_size: usize,
    block_size: usize,
}

impl<B: Backend> MicroBatches<B> for WindowBatches {
    type Batcher = Windows;
    fn batcher(&self) -> Windows {
        Windows { tokens: self.tokens.clone(), block_size: self.block_size }
    }
    /// The window starts of micro-batches `first..first + count`.
    fn indices(&self, first: usize, count: usize) -> Vec<Vec<usize>> {
        let starts = self.order.range(first * self.batch_size, count * self.batch_size);
        starts.chunks(self.batch_size).map(<[usize]>::to_vec).collect()
    }
    fn batch_size(&self) -> usize {
        self.batch_size
    }
    fn seed(&self) -> u64 {
        self.order.seed()
    }
}

impl<B: Backend> TrainWindows<B> {
    pub fn new(
        tokens: Arc<[u32]>,
        order: WindowOrder,
        batch_size: usize,
        block_size: usize,
        first_epoch: usize,
        epochs: &[(usize, usize)],
        device: B::Device,
    ) -> Self {
        TrainBatches::of(
            WindowBatches { tokens, order, batch_size, block_size },
            first_epoch,
            epochs,
            device,
        )
    }

    /// The window starts of every batch in `epoch`.
    pub fn epoch_starts(&self, epoch: usize) -> Vec<Vec<usize>> {
        let (first, batches) = self.epoch(epoch);
        MicroBatches::<B>::indices(&self.source, first, batches)
    }
}

impl<B: Backend, S: MicroBatches<B>> TrainBatches<B, S> {
    pub fn of(source: S, first_epoch: usize, epochs: &[(usize, usize)], device: B::Device) -> Self {
        Self {
            source,
            first_epoch,
            epochs: epochs.into(),
            next_epoch: Arc::new(AtomicUsize::new(first_epoch)),
            stop: None,
            replica: (0, 1),
            device,
        }
    }

    /// Serves replica `rank`'s share of a data-parallel run of `replicas`: its micro-batch
    /// `i` is the run's micro-batch `i · replicas + rank`, so replicas never see the same data
    /// and together see what a single device with a `replicas` times larger batch would.
    pub fn for_replica(self, rank: usize, replicas: usize) -> Self {
        Self { replica: (rank, replicas), ..self }
    }

    /// Ends an epoch early, at a boundary of `grad_accumulation` micro-batches, once `stop`
    /// says so.
    pub fn with_stop(self, stop: StopCheck, grad_accumulation: usize) -> Self {
        Self { stop: Some((stop, grad_accumulation.max(1))), ..self }
    }

    fn epoch(&self, epoch: usize) -> (usize, usize) {
        epoch
            .checked_sub(self.first_epoch)
            .and_then(|i| self.epochs.get(i))
            .copied()
            .unwrap_or((0, 0))
    }
}

/// The batches a [`MicroBatches`] makes.
type BatchOf<B, S> = <<S as MicroBatches<B>>::Batcher as Batcher<B>>::Batch;

impl<B: Backend, S: MicroBatches<B>> DataLoader<B, BatchOf<B, S>> for TrainBatches<B, S> {
    /// A replica's share of the epoch: of every `replicas` micro-batches in a row, the
    /// `rank`-th (all of them for a run on one device).
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<BatchOf<B, S>> + 'a> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        let (first, count) = self.epoch(epoch);
        let (rank, replicas) = self.replica;
        let all = self.source.indices(first * replicas, count * replicas);
        let mine = all.into_iter().skip(rank).step_by(replicas).collect();
        let batches = IndexIter::new(self.source.batcher(), mine, self.device.clone());
        let seed = self.source.seed();
        Box::new(TrainIter::<B, BatchOf<B, S>> {
            batches: Box::new(batches),
            device: self.device.clone(),
            first,
            served: 0,
            seed,
            replica: self.replica,
            stop: self.stop.clone(),
        })
    }

    fn num_items(&self) -> usize {
        self.epochs.first().map_or(0, |&(_, len)| len) * self.source.batch_size()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, BatchOf<B, S>>> {
        Arc::new(Self { device: device.clone(), ..self.clone() })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, BatchOf<B, S>>> {
        let epochs: Vec<(usize, usize)> = self
            .epochs
            .iter()
            .map(|&(first, len)| (first + start, len.min(end).saturating_sub(start)))
            .collect();
        Arc::new(Self { epochs: epochs.into(), ..self.clone() })
    }
}

/// One training epoch: reseeds the backend before each micro-batch and stops early on request.
struct TrainIter<B: Backend, T> {
    batches: Box<dyn DataLoaderIterator<T>>,
    device: B::Device,
    /// Run-wide index of the epoch's first micro-batch.
    first: usize,
    served: usize,
    seed: u64,
    replica: (usize, usize),
    stop: Option<(StopCheck, usize)>,
}

impl<B: Backend, T> Iterator for TrainIter<B, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if let Some((stop, accumulation)) = &self.stop {
            if self.served.is_multiple_of(*accumulation) && stop() {
                return None;
            }
        }
        let batch = self.batches.next()?;
        let (rank, replicas) = self.replica;
        B::seed(
            &self.device,
            micro_batch_seed(self.seed, (self.first + self.served) * replicas + rank),
        );
        self.served += 1;
        Some(batch)
    }
}

impl<B: Backend, T> DataLoaderIterator<T> for TrainIter<B, T> {
    fn progress(&self) -> Progress {
        self.batches.progress()
    }
}

/// The backend seed for micro-batch `index` of a run: its own stream, apart from the data's.
fn micro_batch_seed(seed: u64, index: usize) -> u64 {
    super::windows::mix(seed ^ 0xD2_0A_0C_5E_ED, index as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::WindowStarts;
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
        let order =
            WindowOrder::Random { starts: WindowStarts::new(&tokens(), 8, 1, None), seed: 7 };
        let loader = TrainWindows::<B>::new(
            tokens(),
            order.clone(),
            3,
            8,
            1,
            &[(0, 2), (2, 2), (4, 1)],
            Default::default(),
        );
        // Resumed after micro-batch 3, in the middle of epoch 2: its epoch 3 holds the rest.
        let resumed =
            TrainWindows::<B>::new(tokens(), order, 3, 8, 3, &[(3, 1), (4, 1)], Default::default());
        assert_eq!(loader.epoch_starts(2)[1..], resumed.epoch_starts(3)[..]);
        assert_eq!(loader.epoch_starts(3), resumed.epoch_starts(4));
        assert_ne!(loader.epoch_starts(1), loader.epoch_starts(2));
        assert_eq!(loader.epoch_starts(3).len(), 1);
        let first: Vec<_> = DataLoader::iter(&loader).collect();
        assert_eq!(first.len(), 2);
        assert!(loader.epoch_starts(1).iter().flatten().all(|&s| s + 8 < 100));
    }

    #[test]
    fn replicas_split_a_larger_batch_between_them() {
        let order =
            WindowOrder::Random { starts: WindowStarts::new(&tokens(), 8, 1, None), seed: 7 };
        let single =
            TrainWindows::<B>::new(tokens(), order.clone(), 4, 8, 1, &[(0, 3)], Default::default());
        let replica = |rank| {
            let loader = TrainWindows::<B>::new(
                tokens(),
                order.clone(),
                2,
                8,
                1,
                &[(0, 3)],
                Default::default(),
            )
            .for_replica(rank, 2);
            DataLoader::iter(&loader)
                .map(|b: LmBatch<B>| b.inputs.into_data().to_vec::<i64>().unwrap())
                .collect::<Vec<_>>()
        };
        let (zero, one) = (replica(0), replica(1));
        let doubled: Vec<Vec<i64>> = DataLoader::iter(&single)
            .map(|b: LmBatch<B>| b.inputs.into_data().to_vec::<i64>().unwrap())
            .collect();
        assert_eq!(doubled.len(), 3);
        for step in 0..3 {
            assert_eq!(
                doubled[step],
                [zero[step].clone(), one[step].clone()].concat(),
                "step {step}"
            );
        }
    }
}
