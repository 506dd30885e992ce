//! The validation windows of a token stream: the same batches at every evaluation, so that
//! validation losses are comparable.

use std::sync::Arc;

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::batches::FixedBatches;
use super::loader::Windows;
use super::windows::WindowStarts;

/// The same validation windows every time.
pub type FixedWindows<B> = FixedBatches<B, Windows>;

impl<B: Backend> FixedBatches<B, Windows> {
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
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(0x005E_ED0F_7A11));
        let starts = (0..count).map(|_| allowed.sample(&mut rng, batch_size)).collect();
        Self::of(Windows { tokens, block_size }, starts, device)
    }

    /// Every non-overlapping window of the stream, in order, `batch_size` to a batch (the
    /// last batch may be smaller): the whole split, for a full evaluation.
    pub fn tiling(
        tokens: Arc<[u32]>,
        batch_size: usize,
        block_size: usize,
        device: B::Device,
    ) -> Self {
        let windows: Vec<usize> =
            (0..tokens.len().saturating_sub(block_size)).step_by(block_size).collect();
        let starts = windows.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect();
        Self::of(Windows { tokens, block_size }, starts, device)
    }

    /// Number of batches and of predicted tokens.
    pub fn size(&self) -> (usize, usize) {
        let windows: usize = self.batches.iter().map(Vec::len).sum();
        (self.batches.len(), windows * self.batcher.block_size)
    }
}
