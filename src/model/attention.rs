//! Multi-head attention: self-attention with a fused QKV projection (causal for the GPT and
//! the decoder, bidirectional over non-padding keys for the encoder), optional rotary position
//! embedding of queries and keys, an optional KV cache; and cross-attention of decoder
//! positions over the encoder's output.

use burn::module::Initializer;
use burn::nn::{Dropout, DropoutConfig, Embedding, Linear, LinearConfig, RotaryEncoding};
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::{normal, Sublayers};
use crate::kernels::{KernelBackend, LinearWeights};

/// A linear layer with N(0, std) weights and zero bias, as GPT-2 initialises them, or with
/// PyTorch's default U(±1/√d_in) weights and bias when `std` is `None`.
pub(crate) fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    std: Option<f64>,
    device: &B::Device,
) -> Linear<B> {
    let config = LinearConfig::new(d_in, d_out).with_bias(bias);
    let Some(std) = std else {
        return config.init(device);
    };
    let mut layer = config.with_initializer(normal(std)).init(device);
    if bias {
        layer.bias = Some(Initializer::Zeros.init([d_out], device));
    }
    layer
}

/// `x: [..., d_in]` through `layer` (`d_in → d_out`).
pub(crate) fn project<B: KernelBackend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    <B as KernelBackend>::linear(x, LinearWeights::of(layer))
}

/// Logits of `x: [batch, seq, d_model]`: through `lm_head`, or, tied, through the token
/// embedding `[vocab, d_model]` read as the head's transposed weight.
pub(crate) fn logits<B: KernelBackend>(
    x: Tensor<B, 3>,
    lm_head: Option<&Linear<B>>,
    embedding: &Embedding<B>,
) -> Tensor<B, 3> {
    let tied = || LinearWeights { weight: embedding.weight.val().transpose(), bias: None };
    let layer = lm_head.map_or_else(tied, LinearWeights::of);
    <B as KernelBackend>::linear(x, layer)
}

#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// Query, key and value projections in one matmul: `d_model → 3 * d_model`.
    c_attn: Linear<B>,
    c_proj: Linear<B>,
    resid_dropout: Dropout,
    n_heads: usize,
}

/// A batch of rows of different lengths, left-padded to the longest (sequences decoded
/// together through one KV cache).
#[derive(Debug, Clone)]
pub struct Ragged<B: Backend> {
    /// `[batch, keys]`: true at the padding columns of the keys.
    pub padding: Tensor<B, 2, Bool>,
    /// `[batch, seq]`: where each new position sits in its own row.
    pub positions: Tensor<B, 2, Int>,
}

/// Keys and values of the positions seen so far: `[batch, n_heads, seq, head_dim]` each.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    pub keys: Tensor<B, 4>,
    pub values: Tensor<B, 4>,
}

impl<B: Backend> SelfAttention<B> {
    pub fn new(d_model: usize, n_heads: usize, options: &Sublayers, device: &B::Device) -> Self {
        Self {
            c_attn: linear(d_model, 3 * d_model, options.qkv_bias, options.std, device),
            c_proj: linear(d_model, d_model, options.bias, options.proj_std, device),
            resid_dropout: DropoutConfig::new(options.dropout).init(),
            n_heads,
        }
    }
}

impl<B: KernelBackend> SelfAttention<B> {
    /// The fused projection `qkv: [batch, seq, 3 * d_model]` of positions `start..start + seq`
    /// → queries, keys and values, `[batch, n_heads, seq, head_dim]` each.
    ///
    /// With `rotary` (RoPE), each `(2i, 2i + 1)` pair of a query or key is rotated by an
    /// angle proportional to its position, so `q·k` depends only on how far apart they are.
    /// A ragged batch's rows are rotated by their own `positions` (`[batch, seq]`): a row that
    /// joined a batch later keeps the positions its cached keys were rotated at.
    fn split(
        &self,
        qkv: Tensor<B, 3>,
        rotary: Option<&RotaryEncoding<B>>,
        start: usize,
        positions: Option<&Tensor<B, 2, Int>>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let mut qkv = qkv.chunk(3, 2).into_iter().map(|t| split_heads(t, self.n_heads));
        let (q, k, v) = match (qkv.next(), qkv.next(), qkv.next()) {
            (Some(q), Some(k), Some(v)) => (q, k, v),
            _ => unreachable!("chunk(3) yields three tensors"),
        };
        match (rotary, positions) {
            (Some(rope), None) => (rope.apply(q, start), rope.apply(k, start), v),
            (Some(rope), Some(rows)) => (rotate_rows(rope, q, rows), rotate_rows(rope, k, rows), v),
            (None, _) => (q, k, v),
        }
    }

    /// The attention weights, for looking at: `x: [batch, seq, d_model]` →
    /// `softmax(q·kᵀ / √head_dim)` with the causal mask, `[batch, n_heads, seq, seq]`.
    pub fn weights(&self, x: Tensor<B, 3>, rotary: Option<&RotaryEncoding<B>>) -> Tensor<B, 4> {
        let device = x.device();
        let (q, k, _) = self.split(project(&self.c_attn, x), rotary, 0, None);
        let [batch, heads, seq, head_dim] = q.dims();
        let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
        let ahead = ahead_mask::<B>(seq, seq, &device)
            .reshape([1, 1, seq, seq])
            .expand([batch, heads, seq, seq]);
        let scores = scores.mask_fill(ahead, f32::NEG_INFINITY);
        burn::tensor::activation::softmax(scores, 3)
    }

    /// `x: [batch, seq, d_model]` → `[batch, seq, d_model]`.
    ///
    /// With a cache, `x` holds only the new positions; their keys and values are appended and
    /// the queries attend to everything cached. The causal mask is aligned to the last query,
    /// so one code path serves training, prefill and one-token decoding. A `ragged` batch
    /// masks the key columns its left-padded rows do not have.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rotary: Option<&RotaryEncoding<B>>,
        cache: Option<&mut Option<LayerCache<B>>>,
        ragged: Option<&Ragged<B>>,
    ) -> Tensor<B, 3> {
        let qkv = project(&self.c_attn, x);
        let y = match (rotary, cache, ragged) {
            (None, None, None) => B::causal_self_attention(qkv, self.n_heads),
            (rotary, cache, ragged) => self.attend(qkv, rotary, cache, ragged),
        };
        self.resid_dropout.forward(project(&self.c_proj, y))
    }

    /// Causal attention of `qkv` with rotary positions or a cache: `[batch, seq, d_model]`.
    fn attend(
        &self,
        qkv: Tensor<B, 3>,
        rotary: Option<&RotaryEncoding<B>>,
        cache: Option<&mut Option<LayerCache<B>>>,
        ragged: Option<&Ragged<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = qkv.dims();
        let device = qkv.device();
        let start =
            cache.as_ref().and_then(|slot| slot.as_ref()).map_or(0, |past| past.keys.dims()[2]);
        let positions = ragged.map(|rows| &rows.positions);
        let (q, mut k, mut v) = self.split(qkv, rotary, start, positions);
        let padding = ragged.map(|rows| &rows.padding);
        if let Some(slot) = cache {
            if let Some(past) = slot.take() {
                k = Tensor::cat(vec![past.keys, k], 2);
                v = Tensor::cat(vec![past.values, v], 2);
            }
            *slot = Some(LayerCache { keys: k.clone(), values: v.clone() });
        }
        let shape = [batch, self.n_heads, seq, k.dims()[2]];
        let (mask, is_causal) = causal_mask(shape, padding.is_some(), &device);
        let bias = match (mask.map(as_bias), padding.map(|p| key_padding_bias(p, shape))) {
            (Some(ahead), Some(padding)) => Some(ahead + padding),
            (ahead, padding) => ahead.or(padding),
        };
        let options = AttentionModuleOptions { is_causal, ..Default::default() };
        merge_heads(attention(q, k, v, None, bias, options))
    }

    /// The encoder's attention: `x: [batch, seq, d_model]` → `[batch, seq, d_model]`, every
    /// position attending to every position that is not padding (`padding: [batch, seq]`,
    /// true at padding).
    pub fn forward_bidirectional(
        &self,
        x: Tensor<B, 3>,
        padding: &Tensor<B, 2, Bool>,
    ) -> Tensor<B, 3> {
        let (q, k, v) = self.split(project(&self.c_attn, x), None, 0, None);
        let bias = key_padding_bias(padding, q.dims());
        let y = attention(q, k, v, None, Some(bias), AttentionModuleOptions::default());
        self.resid_dropout.forward(project(&self.c_proj, merge_heads(y)))
    }
}

/// Decoder positions attending over the encoder's output (the "memory"): queries from `x`,
/// keys and values from the memory, padding of the source masked out.
#[derive(Module, Debug)]
pub struct CrossAttention<B: Backend> {
    c_q: Linear<B>,
    /// Key and value projections of the memory in one matmul: `d_model → 2 * d_model`.
    c_kv: Linear<B>,
    c_proj: Linear<B>,
    resid_dropout: Dropout,
    n_heads: usize,
}

impl<B: Backend> CrossAttention<B> {
    pub fn new(d_model: usize, n_heads: usize, options: &Sublayers, device: &B::Device) -> Self {
        Self {
            c_q: linear(d_model, d_model, options.qkv_bias, options.std, device),
            c_kv: linear(d_model, 2 * d_model, options.qkv_bias, options.std, device),
            c_proj: linear(d_model, d_model, options.bias, options.proj_std, device),
            resid_dropout: DropoutConfig::new(options.dropout).init(),
            n_heads,
        }
    }
}

impl<B: KernelBackend> CrossAttention<B> {
    /// Keys and values of `memory: [batch, src, d_model]`, computed once per source and
    /// reused for every decoding step.
    pub fn memory(&self, memory: Tensor<B, 3>) -> LayerCache<B> {
        let mut kv = project(&self.c_kv, memory)
            .chunk(2, 2)
            .into_iter()
            .map(|t| split_heads(t, self.n_heads));
        match (kv.next(), kv.next()) {
            (Some(keys), Some(values)) => LayerCache { keys, values },
            _ => unreachable!("chunk(2) yields two tensors"),
        }
    }

    /// `x: [batch, seq, d_model]` over `memory` (from [`Self::memory`]) with
    /// `source_padding: [batch, src]` → `[batch, seq, d_model]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        memory: &LayerCache<B>,
        source_padding: &Tensor<B, 2, Bool>,
    ) -> Tensor<B, 3> {
        let q = split_heads(project(&self.c_q, x), self.n_heads);
        let bias = key_padding_bias(source_padding, q.dims());
        let (k, v) = (memory.keys.clone(), memory.values.clone());
        let y = attention(q, k, v, None, Some(bias), AttentionModuleOptions::default());
        self.resid_dropout.forward(project(&self.c_proj, merge_heads(y)))
    }
}

impl<B: Backend> LayerCache<B> {
    /// The cache of the batch rows `rows` (beam search keeps the surviving hypotheses).
    pub fn select(self, rows: Tensor<B, 1, Int>) -> Self {
        Self { keys: self.keys.select(0, rows.clone()), values: self.values.select(0, rows) }
    }
}

/// `[batch, seq, n_heads * head_dim]` → `[batch, n_heads, seq, head_dim]`.
fn split_heads<B: Backend>(t: Tensor<B, 3>, n_heads: usize) -> Tensor<B, 4> {
    let [batch, seq, d_model] = t.dims();
    t.reshape([batch, seq, n_heads, d_model / n_heads]).swap_dims(1, 2)
}

/// `[batch, n_heads, seq, head_dim]` → `[batch, seq, n_heads * head_dim]`.
fn merge_heads<B: Backend>(y: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = y.dims();
    y.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// `padding: [batch, keys]` (true at padding) → the attention bias of `queries` queries,
/// `[batch, n_heads, queries, keys]`: -inf where a key is padding, else 0.
/// `x: [batch, heads, seq, head_dim]` rotated as [`RotaryEncoding::apply`] does, each row
/// `b` by the angles of its own `positions[b]` (`[batch, seq]`) rather than of one shared
/// start: the same products and sums, so a row comes out as it would alone.
fn rotate_rows<B: Backend>(
    rope: &RotaryEncoding<B>,
    x: Tensor<B, 4>,
    positions: &Tensor<B, 2, Int>,
) -> Tensor<B, 4> {
    let [batch, heads, seq, head_dim] = x.dims();
    let device = x.device();
    // (re, im) → (re, im, -im, re): each pair's terms of the 2-D rotation [[cos, -sin], [sin, cos]].
    let signs = Tensor::<B, 2>::from_floats([[1.0, 0.0, 0.0, 1.0], [0.0, -1.0, 1.0, 0.0]], &device);
    let angles = rope
        .freq_complex
        .clone()
        .select(0, positions.clone().reshape([batch * seq]))
        .reshape([batch, 1, seq, head_dim, 2]);
    let terms = x
        .reshape([batch * heads, seq, head_dim / 2, 2])
        .matmul(signs.unsqueeze())
        .reshape([batch, heads, seq, head_dim, 2]);
    (terms * angles).sum_dim(4).reshape([batch, heads, seq, head_dim])
}

fn key_padding_bias<B: Backend>(
    padding: &Tensor<B, 2, Bool>,
    [batch, heads, queries, _]: [usize; 4],
) -> Tensor<B, 4> {
    let keys = padding.dims()[1];
    let bias = Tensor::<B, 2>::zeros([batch, keys], &padding.device())
        .mask_fill(padding.clone(), f32::NEG_INFINITY);
    bias.reshape([batch, 1, 1, keys]).expand([batch, heads, queries, keys])
}

/// A mask (true where attention is not allowed) as an additive bias: -inf there, else 0.
///
/// Masks go to `attention` as a bias because backends disagree on what a boolean mask means:
/// burn-tch 0.21 hands it to PyTorch's `scaled_dot_product_attention`, for which true means
/// "may attend", the opposite of Burn's contract, while a bias means the same everywhere.
fn as_bias<B: Backend>(mask: Tensor<B, 4, Bool>) -> Tensor<B, 4> {
    Tensor::zeros(mask.dims(), &mask.device()).mask_fill(mask, f32::NEG_INFINITY)
}

/// How `seq` queries, the last ones of `keys` positions, are kept from attending ahead.
///
/// Without cached positions the queries and keys line up and the backend's causal flag
/// does it. With a cache they do not, and backends disagree on where the causal flag aligns
/// (libtorch's top-left, Burn's fallback bottom-right), so an explicit mask is built; one
/// query (the usual decoding step) sees every key and needs none. With a padding bias the
/// flag cannot be used either (libtorch takes a bias or the flag, not both).
fn causal_mask<B: Backend>(
    shape: [usize; 4],
    with_bias: bool,
    device: &B::Device,
) -> (Option<Tensor<B, 4, Bool>>, bool) {
    let [_, _, seq, keys] = shape;
    let past = keys - seq;
    if past == 0 && !with_bias {
        return (None, true);
    }
    if seq == 1 {
        return (None, false);
    }
    (Some(ahead_mask::<B>(seq, keys, device).reshape([1, 1, seq, keys]).expand(shape)), false)
}

/// `[seq, keys]`, true where key j lies after the position of query i, the last `seq` of
/// `keys` positions (query i sits at `keys - seq + i`).
fn ahead_mask<B: Backend>(seq: usize, keys: usize, device: &B::Device) -> Tensor<B, 2, Bool> {
    let past = (keys - seq) as i64;
    let rows =
        Tensor::<B, 1, Int>::arange(0..seq as i64, device).reshape([seq, 1]).add_scalar(past);
    let cols = Tensor::<B, 1, Int>::arange(0..keys as i64, device).reshape([1, keys]);
    cols.expand([seq, keys]).greater(rows.expand([seq, keys]))
}
