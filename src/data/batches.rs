//! Batches given as lists of indices into shared data — window starts into a token stream,
//! pair indices into a split — made on a device as they are served.

use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::prelude::*;

use super::loader::StopCheck;

/// What a list of indices becomes: a batch of windows, or of sentence pairs.
pub trait Batcher<B: Backend>: Clone + Send + Sync + 'static {
    type Batch: Send;
    fn batch(&self, indices: &[usize], device: &B::Device) -> Self::Batch;
}

/// Index batches served one at a time.
pub struct IndexIter<B: Backend, M> {
    batcher: M,
    batches: std::vec::IntoIter<Vec<usize>>,
    device: B::Device,
    done: usize,
    total: usize,
}

impl<B: Backend, M: Batcher<B>> IndexIter<B, M> {
    pub fn new(batcher: M, batches: Vec<Vec<usize>>, device: B::Device) -> Self {
        let total = batches.iter().map(Vec::len).sum();
        Self { batcher, batches: batches.into_iter(), device, done: 0, total }
    }
}

impl<B: Backend, M: Batcher<B>> Iterator for IndexIter<B, M> {
    type Item = M::Batch;
    fn next(&mut self) -> Option<M::Batch> {
        let indices = self.batches.next()?;
        self.done += indices.len();
        Some(self.batcher.batch(&indices, &self.device))
    }
}

impl<B: Backend, M: Batcher<B>> DataLoaderIterator<M::Batch> for IndexIter<B, M> {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.total)
    }
}

/// The same batches at every pass, so that validation losses are comparable.
#[derive(Clone)]
pub struct FixedBatches<B: Backend, M> {
    pub(super) batcher: M,
    pub(super) batches: Arc<[Vec<usize>]>,
    /// When it says stop, a pass yields nothing (the run is ending).
    skip_when: Option<StopCheck>,
    device: B::Device,
}

impl<B: Backend, M: Batcher<B>> FixedBatches<B, M> {
    pub fn of(batcher: M, batches: Vec<Vec<usize>>, device: B::Device) -> Self {
        Self { batcher, batches: batches.into(), skip_when: None, device }
    }

    pub fn skip_when(self, stop: StopCheck) -> Self {
        Self { skip_when: Some(stop), ..self }
    }

    /// All batches, for evaluation outside the Learner.
    pub fn batches(&self) -> IndexIter<B, M> {
        IndexIter::new(self.batcher.clone(), self.batches.to_vec(), self.device.clone())
    }
}

impl<B: Backend, M: Batcher<B>> DataLoader<B, M::Batch> for FixedBatches<B, M> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<M::Batch> + 'a> {
        let skip = self.skip_when.as_ref().is_some_and(|stop| stop());
        let batches = if skip { Vec::new() } else { self.batches.to_vec() };
        Box::new(IndexIter::new(self.batcher.clone(), batches, self.device.clone()))
    }

    fn num_items(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, M::Batch>> {
        Arc::new(Self { device: device.clone(), ..self.clone() })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, M::Batch>> {
        let end = end.min(self.batches.len());
        let batches: Vec<Vec<usize>> = self.batches[start.min(end)..end].to_vec();
        Arc::new(Self { batches: batches.into(), ..self.clone() })
    }
}
