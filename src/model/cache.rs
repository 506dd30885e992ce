//! The KV cache of incremental decoding, for one sequence or for a batch of sequences of
//! different lengths (a server decoding many requests at once).
//!
//! A batch keeps its rows left-padded to the longest: row `r` starts with `padding[r]`
//! columns of zero keys and values that attention masks out. Rotary positions need nothing
//! more (a query–key score depends only on how far apart they are); learned and sinusoidal
//! positions are counted from each row's first real column.

use burn::prelude::*;

use super::attention::LayerCache;

/// Per-layer keys and values of the positions seen so far, `[rows, n_heads, columns, head_dim]`.
pub struct KvCache<B: Backend> {
    pub(super) layers: Vec<Option<LayerCache<B>>>,
    /// Padding columns at the start of each row; empty when no row has any.
    padding: Vec<usize>,
}

impl<B: Backend> KvCache<B> {
    pub(super) fn empty(n_layers: usize) -> Self {
        Self { layers: vec![None; n_layers], padding: Vec::new() }
    }

    /// Number of positions cached (columns, padding included).
    pub fn len(&self) -> usize {
        self.first().map_or(0, |c| c.keys.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of sequences cached.
    pub fn rows(&self) -> usize {
        self.first().map_or(0, |c| c.keys.dims()[0])
    }

    /// The positions of each row that are its own (not padding).
    pub fn row_len(&self, row: usize) -> usize {
        self.len() - self.padding.get(row).copied().unwrap_or(0)
    }

    fn first(&self) -> Option<&LayerCache<B>> {
        self.layers.first().and_then(|l| l.as_ref())
    }

    /// The rows of `self` followed by the rows of `other`, the shorter left-padded.
    pub fn join(self, other: Self) -> Self {
        if self.rows() == 0 {
            return other;
        }
        if other.rows() == 0 {
            return self;
        }
        let columns = self.len().max(other.len());
        let mut padding = self.padded_to(columns);
        padding.extend(other.padded_to(columns));
        let layers = self
            .layers
            .into_iter()
            .zip(other.layers)
            .map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Some(LayerCache {
                    keys: Tensor::cat(
                        vec![pad_left(a.keys, columns), pad_left(b.keys, columns)],
                        0,
                    ),
                    values: Tensor::cat(
                        vec![pad_left(a.values, columns), pad_left(b.values, columns)],
                        0,
                    ),
                }),
                (a, b) => a.or(b),
            })
            .collect();
        Self::with_padding(layers, padding)
    }

    /// Keeps the rows `keep` (in that order), dropping the columns that became padding in
    /// every row.
    pub fn retain(self, keep: &[usize]) -> Self {
        if keep.is_empty() {
            return Self::empty(self.layers.len());
        }
        let padding: Vec<usize> =
            keep.iter().map(|&r| self.padding.get(r).copied().unwrap_or(0)).collect();
        let trim = padding.iter().copied().min().unwrap_or(0);
        let columns = self.len();
        let layers = self
            .layers
            .into_iter()
            .map(|layer| {
                layer.map(|c| {
                    let rows = Tensor::<B, 1, Int>::from_ints(
                        keep.iter().map(|&r| r as i64).collect::<Vec<_>>().as_slice(),
                        &c.keys.device(),
                    );
                    let c = c.select(rows);
                    LayerCache {
                        keys: c.keys.narrow(2, trim, columns - trim),
                        values: c.values.narrow(2, trim, columns - trim),
                    }
                })
            })
            .collect();
        Self::with_padding(layers, padding.into_iter().map(|p| p - trim).collect())
    }

    fn with_padding(layers: Vec<Option<LayerCache<B>>>, padding: Vec<usize>) -> Self {
        let padding = if padding.iter().all(|&p| p == 0) { Vec::new() } else { padding };
        Self { layers, padding }
    }

    /// Each row's padding once the cache is widened to `columns`.
    fn padded_to(&self, columns: usize) -> Vec<usize> {
        let extra = columns - self.len();
        (0..self.rows()).map(|r| self.padding.get(r).copied().unwrap_or(0) + extra).collect()
    }

    /// Positions of `seq` new tokens per row, `[rows, seq]`, when rows are padded.
    pub(super) fn positions(&self, seq: usize, device: &B::Device) -> Option<Tensor<B, 2, Int>> {
        if self.padding.is_empty() {
            return None;
        }
        let start = self.len();
        let ids: Vec<i64> = self
            .padding
            .iter()
            .flat_map(|&p| (start - p..start - p + seq).map(|i| i as i64))
            .collect();
        Some(Tensor::from_data(TensorData::new(ids, [self.padding.len(), seq]), device))
    }

    /// `[rows, columns + seq]`, true at the padding columns, when rows are padded.
    pub(super) fn key_padding(&self, seq: usize, device: &B::Device) -> Option<Tensor<B, 2, Bool>> {
        if self.padding.is_empty() {
            return None;
        }
        let keys = self.len() + seq;
        let mask: Vec<bool> =
            self.padding.iter().flat_map(|&p| (0..keys).map(move |k| k < p)).collect();
        Some(Tensor::from_data(TensorData::new(mask, [self.padding.len(), keys]), device))
    }
}

/// `[rows, heads, len, head_dim]` → `[rows, heads, columns, head_dim]` with zeros in front.
fn pad_left<B: Backend>(t: Tensor<B, 4>, columns: usize) -> Tensor<B, 4> {
    let [rows, heads, len, head_dim] = t.dims();
    if len == columns {
        return t;
    }
    let zeros = Tensor::zeros([rows, heads, columns - len, head_dim], &t.device());
    Tensor::cat(vec![zeros, t], 2)
}
