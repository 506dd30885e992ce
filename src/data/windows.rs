//! Where training windows may start, and the order training visits them.
//!
//! A window is `block_size + 1` tokens. Without documents every start `0, stride, 2·stride, …`
//! whose window fits is allowed. With documents (`respect_documents`), starts are counted from
//! the beginning of each document and a window may end on the document's `<|endoftext|>` but
//! never reaches past it; documents shorter than a window contribute nothing (their tail is
//! dropped, not padded).

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub enum WindowStarts {
    /// `0, stride, 2·stride, …`, `count` of them.
    Strided { stride: usize, count: usize },
    /// Explicit starts (windows inside one document).
    Listed(Arc<[usize]>),
}

impl WindowStarts {
    /// The allowed starts in `tokens` for windows of `block_size + 1` tokens.
    pub fn new(tokens: &[u32], block_size: usize, stride: usize, separator: Option<u32>) -> Self {
        let window = block_size + 1;
        let stride = stride.max(1);
        let Some(separator) = separator else {
            let count =
                if tokens.len() < window { 0 } else { (tokens.len() - window) / stride + 1 };
            return Self::Strided { stride, count };
        };
        let mut starts = Vec::new();
        let mut doc_start = 0;
        for (i, &t) in tokens.iter().enumerate() {
            let doc_end = if t == separator {
                i + 1
            } else if i + 1 == tokens.len() {
                tokens.len()
            } else {
                continue;
            };
            starts.extend((doc_start..).step_by(stride).take_while(|s| s + window <= doc_end));
            doc_start = doc_end;
        }
        Self::Listed(starts.into())
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Strided { count, .. } => *count,
            Self::Listed(starts) => starts.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th start.
    pub fn get(&self, i: usize) -> usize {
        match self {
            Self::Strided { stride, .. } => i * stride,
            Self::Listed(starts) => starts[i],
        }
    }

    /// `count` starts drawn uniformly at random.
    pub fn sample(&self, rng: &mut StdRng, count: usize) -> Vec<usize> {
        (0..count).map(|_| self.get(rng.random_range(0..self.len()))).collect()
    }
}

/// The order in which training draws windows: sample `k` of the run is window `order.at(k)`.
#[derive(Debug, Clone)]
pub enum WindowOrder {
    /// Independent uniform picks (nanoGPT's `get_batch`).
    Random { starts: WindowStarts, seed: u64 },
    /// Passes over every start, each pass shuffled with its own seed.
    Shuffled { starts: WindowStarts, seed: u64 },
}

impl WindowOrder {
    pub fn seed(&self) -> u64 {
        match self {
            Self::Random { seed, .. } | Self::Shuffled { seed, .. } => *seed,
        }
    }

    pub fn starts(&self) -> &WindowStarts {
        match self {
            Self::Random { starts, .. } | Self::Shuffled { starts, .. } => starts,
        }
    }

    /// Starts of samples `first..first + count`; the same every time they are asked for, so a
    /// resumed run sees what an uninterrupted one would have.
    pub fn range(&self, first: usize, count: usize) -> Vec<usize> {
        match self {
            // One RNG stream per block of samples keeps random access cheap.
            Self::Random { starts, seed } => {
                let mut out = Vec::with_capacity(count);
                let mut k = first;
                while k < first + count {
                    let block = k / RANDOM_BLOCK;
                    let mut rng = StdRng::seed_from_u64(mix(*seed, block as u64));
                    let drawn = starts.sample(&mut rng, RANDOM_BLOCK);
                    let from = k % RANDOM_BLOCK;
                    let take = (RANDOM_BLOCK - from).min(first + count - k);
                    out.extend_from_slice(&drawn[from..from + take]);
                    k += take;
                }
                out
            }
            Self::Shuffled { starts, seed } => {
                let n = starts.len();
                let mut out = Vec::with_capacity(count);
                let mut k = first;
                while k < first + count {
                    let pass = k / n;
                    let order = shuffled(n, mix(*seed, pass as u64));
                    let from = k % n;
                    let take = (n - from).min(first + count - k);
                    out.extend(order[from..from + take].iter().map(|&i| starts.get(i)));
                    k += take;
                }
                out
            }
        }
    }
}

const RANDOM_BLOCK: usize = 4096;

/// Seed of the `n`-th stream derived from `seed` (`StdRng::seed_from_u64` scrambles it further).
pub(crate) fn mix(seed: u64, n: u64) -> u64 {
    seed ^ n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_counts_match_the_book_loop() {
        // range(0, len - max_length, stride) in Raschka's GPTDatasetV1.
        let tokens: Vec<u32> = (0..20).collect();
        assert_eq!(WindowStarts::new(&tokens, 4, 1, None).len(), 16);
        assert_eq!(WindowStarts::new(&tokens, 4, 4, None).len(), 4);
        assert_eq!(WindowStarts::new(&tokens, 4, 3, None).get(5), 15);
    }

    #[test]
    fn documents_are_never_crossed() {
        // Documents: [1 2 3 0] [4 5 0] [6 7 8 9 10]
        let tokens = [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 10];
        let starts = WindowStarts::new(&tokens, 2, 1, Some(0));
        let listed: Vec<usize> = (0..starts.len()).map(|i| starts.get(i)).collect();
        assert_eq!(listed, [0, 1, 4, 7, 8, 9]);
    }

    #[test]
    fn shuffled_passes_visit_every_window_once() {
        let starts = WindowStarts::Strided { stride: 2, count: 10 };
        let order = WindowOrder::Shuffled { starts, seed: 3 };
        let mut first_pass = order.range(0, 10);
        assert_ne!(first_pass, (0..10).map(|i| 2 * i).collect::<Vec<_>>());
        first_pass.sort_unstable();
        assert_eq!(first_pass, (0..10).map(|i| 2 * i).collect::<Vec<_>>());
        assert_eq!(order.range(7, 6), [order.range(7, 3), order.range(10, 3)].concat());
        assert_ne!(order.range(10, 10), order.range(0, 10));
    }

    #[test]
    fn random_order_is_reproducible_across_blocks() {
        let order = WindowOrder::Random {
            starts: WindowStarts::Strided { stride: 1, count: 100 },
            seed: 1,
        };
        let whole = order.range(4000, 200);
        assert_eq!(whole[..96], order.range(4000, 96)[..]);
        assert_eq!(whole[96..], order.range(4096, 104)[..]);
    }
}
