//! Burn `DataLoader`s over a token stream: random training windows and fixed validation
//! windows. A window is `block_size + 1` tokens: inputs are the first `block_size`, targets
//! the last `block_size` (the one-token shift).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::windows::{WindowOrder, WindowStarts};

/// A batch of windows. `inputs`, `targets`: `[batch, block_size]`.
#[derive(Debug, Clone)]
pub struct LmBatch<B: Backend> {
    pub inputs: Tensor<B, 2, Int>,
    pub targets: Tensor<B, 2, Int>,
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
        }
    }
}

/// Asked before each optimizer step: true ends the epoch there (SIGINT, divergence).
pub type StopCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// The micro-batches of a run, each a function of its run-wide index alone.
pub trait MicroBatches<B: Backend>: Clone + Send + Sync + 'static {
    type Batch: Send + 'static;
    /// Micro-batches `first..first + count`, in order.
    fn range(
        &self,
        first: usize,
        count: usize,
        device: &B::Device,
    ) -> Box<dyn DataLoaderIterator<Self::Batch>>;
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

impl WindowBatches {
    /// The window starts of micro-batches `first..first + count`.
    fn starts(&self, first: usize, count: usize) -> Vec<Vec<usize>> {
        let starts = self
            .order
            .range(first * self.batch_size, count * self.batch_size);
        starts
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }
}

impl<B: Backend> MicroBatches<B> for WindowBatches {
    type Batch = LmBatch<B>;
    fn range(
        &self,
        first: usize,
        count: usize,
        device: &B::Device,
    ) -> Box<dyn DataLoaderIterator<LmBatch<B>>> {
        Box::new(WindowIter::new(
            self.tokens.clone(),
            self.starts(first, count),
            self.block_size,
            device.clone(),
        ))
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
            WindowBatches {
                tokens,
                order,
                batch_size,
                block_size,
            },
            first_epoch,
            epochs,
            device,
        )
    }

    /// The window starts of every batch in `epoch`.
    pub fn epoch_starts(&self, epoch: usize) -> Vec<Vec<usize>> {
        let (first, batches) = self.epoch(epoch);
        self.source.starts(first, batches)
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
        Self {
            replica: (rank, replicas),
            ..self
        }
    }

    /// Ends an epoch early, at a boundary of `grad_accumulation` micro-batches, once `stop`
    /// says so.
    pub fn with_stop(self, stop: StopCheck, grad_accumulation: usize) -> Self {
        Self {
            stop: Some((stop, grad_accumulation.max(1))),
            ..self
        }
    }

    fn epoch(&self, epoch: usize) -> (usize, usize) {
        epoch
            .checked_sub(self.first_epoch)
            .and_then(|i| self.epochs.get(i))
            .copied()
            .unwrap_or((0, 0))
    }
}

impl<B: Backend, S: MicroBatches<B>> DataLoader<B, S::Batch> for TrainBatches<B, S> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<S::Batch> + 'a> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        let (first, count) = self.epoch(epoch);
        let (rank, replicas) = self.replica;
        let batches = Box::new(Strided {
            batches: self
                .source
                .range(first * replicas, count * replicas, &self.device),
            rank,
            replicas,
        });
        let seed = self.source.seed();
        Box::new(TrainIter::<B, S::Batch> {
            batches,
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

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, S::Batch>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, S::Batch>> {
        let epochs: Vec<(usize, usize)> = self
            .epochs
            .iter()
            .map(|&(first, len)| (first + start, len.min(end).saturating_sub(start)))
            .collect();
        Arc::new(Self {
            epochs: epochs.into(),
            ..self.clone()
        })
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
            if self.served % accumulation == 0 && stop() {
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

/// A replica's share of the run's micro-batches: of every `replicas` in a row, the `rank`-th
/// (all of them for a run on one device). One `range` call serves the whole epoch, so the data
/// order is drawn once per epoch, not once per micro-batch.
struct Strided<T> {
    batches: Box<dyn DataLoaderIterator<T>>,
    rank: usize,
    replicas: usize,
}

impl<T> Iterator for Strided<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        let mut kept = None;
        for i in 0..self.replicas {
            let batch = self.batches.next()?;
            if i == self.rank {
                kept = Some(batch);
            }
        }
        kept
    }
}

impl<T> DataLoaderIterator<T> for Strided<T> {
    fn progress(&self) -> Progress {
        self.batches.progress()
    }
}

/// The backend seed for micro-batch `index` of a run: its own stream, apart from the data's.
fn micro_batch_seed(seed: u64, index: usize) -> u64 {
    super::windows::mix(seed ^ 0xD2_0A_0C_5E_ED, index as u64)
}

/// The same `count` validation windows every time, so validation losses are comparable.
#[derive(Clone)]
pub struct FixedWindows<B: Backend> {
    tokens: Arc<[u32]>,
    starts: Arc<[Vec<usize>]>,
    block_size: usize,
    /// When it says stop, a validation pass yields nothing (the run is ending).
    skip_when: Option<StopCheck>,
    device: B::Device,
}

impl<B: Backend> FixedWindows<B> {
    /// `count` batches of windows drawn at random from `allowed`, the same for a given seed.
    pub fn new(
        tokens: Arc<[u32]>,
        allowed: &WindowStarts,
        batch_size: usize,
        block_size: usize,
        count: usize,
        seed: u64,
        device: B::Device,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(0x5EED_0F_7A11));
        let starts: Vec<Vec<usize>> = (0..count)
            .map(|_| allowed.sample(&mut rng, batch_size))
            .collect();
        Self {
            tokens,
            starts: starts.into(),
            block_size,
            skip_when: None,
            device,
        }
    }

    pub fn skip_when(self, stop: StopCheck) -> Self {
        Self {
            skip_when: Some(stop),
            ..self
        }
    }

    /// Every non-overlapping window of the stream, in order, `batch_size` to a batch (the
    /// last batch may be smaller): the whole split, for a full evaluation.
    pub fn tiling(
        tokens: Arc<[u32]>,
        batch_size: usize,
        block_size: usize,
        device: B::Device,
    ) -> Self {
        let windows: Vec<usize> = (0..tokens.len().saturating_sub(block_size))
            .step_by(block_size)
            .collect();
        let starts: Vec<Vec<usize>> = windows
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect();
        Self {
            tokens,
            starts: starts.into(),
            block_size,
            skip_when: None,
            device,
        }
    }

    /// Number of batches and of predicted tokens.
    pub fn size(&self) -> (usize, usize) {
        (
            self.starts.len(),
            self.starts.iter().map(Vec::len).sum::<usize>() * self.block_size,
        )
    }

    /// All batches, for evaluation outside the Learner.
    pub fn batches(&self) -> impl Iterator<Item = LmBatch<B>> + '_ {
        self.starts
            .iter()
            .map(|s| LmBatch::from_starts(&self.tokens, s, self.block_size, &self.device))
    }
}

impl<B: Backend> DataLoader<B, LmBatch<B>> for FixedWindows<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<LmBatch<B>> + 'a> {
        let skip = self.skip_when.as_ref().is_some_and(|stop| stop());
        let starts = if skip {
            Vec::new()
        } else {
            self.starts.to_vec()
        };
        Box::new(WindowIter::new(
            self.tokens.clone(),
            starts,
            self.block_size,
            self.device.clone(),
        ))
    }

    fn num_items(&self) -> usize {
        self.starts.iter().map(Vec::len).sum()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, LmBatch<B>>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, LmBatch<B>>> {
        let end = end.min(self.starts.len());
        let starts: Vec<Vec<usize>> = self.starts[start.min(end)..end].to_vec();
        Arc::new(Self {
            starts: starts.into(),
            ..self.clone()
        })
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
    fn new(
        tokens: Arc<[u32]>,
        starts: Vec<Vec<usize>>,
        block_size: usize,
        device: B::Device,
    ) -> Self {
        let total = starts.iter().map(Vec::len).sum();
        Self {
            tokens,
            starts: starts.into_iter(),
            block_size,
            device,
            done: 0,
            total,
        }
    }
}

impl<B: Backend> Iterator for WindowIter<B> {
    type Item = LmBatch<B>;
    fn next(&mut self) -> Option<LmBatch<B>> {
        let starts = self.starts.next()?;
        self.done += starts.len();
        Some(LmBatch::from_starts(
            &self.tokens,
            &starts,
            self.block_size,
            &self.device,
        ))
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
        let order = WindowOrder::Random {
            starts: WindowStarts::new(&tokens(), 8, 1, None),
            seed: 7,
        };
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
        let resumed = TrainWindows::<B>::new(
            tokens(),
            order,
            3,
            8,
            3,
            &[(3, 1), (4, 1)],
            Default::default(),
        );
        assert_eq!(loader.epoch_starts(2)[1..], resumed.epoch_starts(3)[..]);
        assert_eq!(loader.epoch_starts(3), resumed.epoch_starts(4));
        assert_ne!(loader.epoch_starts(1), loader.epoch_starts(2));
        assert_eq!(loader.epoch_starts(3).len(), 1);
        let first: Vec<_> = DataLoader::iter(&loader).collect();
        assert_eq!(first.len(), 2);
        assert!(loader
            .epoch_starts(1)
            .iter()
            .flatten()
            .all(|&s| s + 8 < 100));
    }

    #[test]
    fn replicas_split_a_larger_batch_between_them() {
        let order = WindowOrder::Random {
            starts: WindowStarts::new(&tokens(), 8, 1, None),
            seed: 7,
        };
        let single = TrainWindows::<B>::new(
            tokens(),
            order.clone(),
            4,
            8,
            1,
            &[(0, 3)],
            Default::default(),
        );
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
