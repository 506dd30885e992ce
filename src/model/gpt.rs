//! GPT: a decoder-only Transformer, as in nanoGPT's `model.py`.
//!
//! tokens → token embedding (+ learned or sinusoidal position embedding) → dropout
//!        → n_layers × [x + attn(ln_1(x)); x + mlp(ln_2(x))]      (pre-norm blocks)
//!                  or [x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))] (post-norm, norm_first = false)
//!        → ln_f → LM head (the token embedding, transposed, when tied) → logits
//!
//! With rotary positions (RoPE) nothing is added to the embeddings: every attention layer
//! rotates its queries and keys instead. `ln_*` are LayerNorm or RMSNorm; the feed-forward
//! network is GELU or SwiGLU.

use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, RotaryEncoding,
    RotaryEncodingConfig,
};
use burn::prelude::*;

use super::attention::{linear, LayerCache, Ragged, SelfAttention};
use super::cache::KvCache;
use super::norm::Norm;
use super::{normal, Mlp, Sublayers};
use crate::config::{Activation, GptSpec, InitScheme, NormKind, PositionKind};
use crate::kernels::KernelBackend;

#[derive(Config, Debug)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub d_ff: usize,
    /// Longest context the model can see (the size of the position table).
    pub block_size: usize,
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Biases on the linear layers and LayerNorms.
    #[config(default = true)]
    pub bias: bool,
    /// Bias on the query/key/value projection (GPT-2: yes; Raschka's GPT: no).
    #[config(default = true)]
    pub qkv_bias: bool,
    #[config(default = true)]
    pub tie_embeddings: bool,
    #[config(default = "Activation::Gelu")]
    pub activation: Activation,
    #[config(default = "NormKind::LayerNorm")]
    pub norm: NormKind,
    /// Normalise each sublayer's input (pre-norm, GPT-2) or the residual sum after it
    /// (post-norm, "Attention Is All You Need").
    #[config(default = true)]
    pub norm_first: bool,
    /// The normalisation's epsilon (GPT-2: 1e-5).
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    #[config(default = "PositionKind::Learned")]
    pub positions: PositionKind,
    /// RoPE's base: pair i of a head turns `theta^(-2i / head_dim)` radians per position.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    #[config(default = "InitScheme::Gpt2")]
    pub init: InitScheme,
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    ln_1: Norm<B>,
    attn: SelfAttention<B>,
    ln_2: Norm<B>,
    mlp: Mlp<B>,
    norm_first: bool,
}

impl<B: KernelBackend> Block<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: Option<&RotaryEncoding<B>>,
        cache: Option<&mut Option<LayerCache<B>>>,
        ragged: Option<&Ragged<B>>,
    ) -> Tensor<B, 3> {
        let x =
            self.ln_1.residual(x, self.norm_first, |h| self.attn.forward(h, rope, cache, ragged));
        self.ln_2.residual(x, self.norm_first, |h| self.mlp.forward(h))
    }

    /// What the attention of this block sees: its input, normalised first in pre-norm blocks.
    fn attention_input(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.norm_first {
            true => self.ln_1.forward(x),
            false => x,
        }
    }
}

#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    wte: Embedding<B>,
    /// Learned position table; `None` with sinusoidal or rotary positions.
    wpe: Option<Embedding<B>>,
    /// The fixed sinusoidal table, `[block_size, d_model]`: a constant, not a parameter.
    sinusoids: Option<Tensor<B, 2>>,
    /// What token embeddings are multiplied by before the sinusoidal table is added: √d_model
    /// for N(0, 0.02) embeddings (as the Transformer paper scales its small ones), so the
    /// tokens are not drowned by the unit-amplitude table; 1 for N(0, 1) embeddings.
    token_scale: f64,
    /// RoPE's rotation angles (constants), shared by every attention layer.
    rope: Option<RotaryEncoding<B>>,
    dropout: Dropout,
    blocks: Vec<Block<B>>,
    ln_f: Norm<B>,
    /// `None` when the head shares the token embedding's weights.
    lm_head: Option<Linear<B>>,
    block_size: usize,
}

/// Parameter counts: everything, and the token + position embedding tables alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    pub total: usize,
    pub embedding: usize,
}

impl GptConfig {
    /// The model a `[model]` section of kind `gpt` describes, with the tokenizer's vocabulary.
    pub fn from_spec(spec: &GptSpec, vocab_size: usize) -> Self {
        Self::new(
            vocab_size,
            spec.d_model,
            spec.n_heads,
            spec.n_layers,
            spec.d_ff(),
            spec.block_size,
        )
        .with_dropout(spec.dropout)
        .with_bias(spec.bias)
        .with_qkv_bias(spec.qkv_bias())
        .with_tie_embeddings(spec.tie_embeddings)
        .with_activation(spec.activation)
        .with_norm(spec.norm)
        .with_norm_first(spec.norm_first)
        .with_norm_eps(spec.norm_eps)
        .with_positions(spec.positions)
        .with_rope_theta(spec.rope_theta)
        .with_init(spec.init)
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Gpt<B> {
        let ln = || Norm::new(self.norm, self.d_model, self.bias, self.norm_eps, device);
        let gpt2 = self.init == InitScheme::Gpt2;
        let sublayers = Sublayers {
            qkv_bias: self.qkv_bias,
            ..Sublayers::new(self.init, self.n_layers, self.bias, self.dropout, self.activation)
        };
        let blocks = (0..self.n_layers)
            .map(|_| Block {
                ln_1: ln(),
                attn: SelfAttention::new(self.d_model, self.n_heads, &sublayers, device),
                ln_2: ln(),
                mlp: Mlp::new(self.d_model, self.d_ff, &sublayers, device),
                norm_first: self.norm_first,
            })
            .collect();
        let embedding = |n| match gpt2 {
            true => {
                EmbeddingConfig::new(n, self.d_model).with_initializer(normal(0.02)).init(device)
            }
            false => EmbeddingConfig::new(n, self.d_model).init(device),
        };
        let positions = self.positions;
        Gpt {
            wte: embedding(self.vocab_size),
            wpe: (positions == PositionKind::Learned).then(|| embedding(self.block_size)),
            sinusoids: (positions == PositionKind::Sinusoidal)
                .then(|| super::positions::sinusoid_table(self.block_size, self.d_model, device)),
            token_scale: if gpt2 { (self.d_model as f64).sqrt() } else { 1.0 },
            rope: (positions == PositionKind::Rope).then(|| {
                RotaryEncodingConfig::new(self.block_size, self.d_model / self.n_heads)
                    .with_theta(self.rope_theta as f32)
                    .init(device)
            }),
            dropout: DropoutConfig::new(self.dropout).init(),
            blocks,
            ln_f: ln(),
            lm_head: (!self.tie_embeddings)
                .then(|| linear(self.d_model, self.vocab_size, false, sublayers.std, device)),
            block_size: self.block_size,
        }
    }
}

impl<B: Backend> Gpt<B> {
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn param_counts(&self) -> ParamCounts {
        ParamCounts {
            total: self.num_params(),
            embedding: self.wte.num_params() + self.wpe.as_ref().map_or(0, |wpe| wpe.num_params()),
        }
    }

    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::empty(self.blocks.len())
    }
}

impl<B: KernelBackend> Gpt<B> {
    /// `tokens: [batch, seq]` → logits `[batch, seq, vocab]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let hidden = self.hidden(tokens, 0, None);
        self.head(hidden)
    }

    /// Feeds `tokens: [batch, seq]` that follow the cached positions and returns the logits
    /// of the last one, `[batch, vocab]`. The caller keeps `cache.len() + seq <= block_size`
    /// (and `batch` equal to the cache's rows once it holds any).
    pub fn forward_cached(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        let [batch, seq] = tokens.dims();
        let hidden = self.hidden(tokens, cache.len(), Some(cache));
        let [_, _, d_model] = hidden.dims();
        let last = hidden.slice([0..batch, seq - 1..seq, 0..d_model]);
        self.head(last).squeeze_dim(1)
    }

    /// Embeddings and blocks: `[batch, seq]` → `[batch, seq, d_model]` for positions
    /// `offset..offset + seq`.
    fn hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        offset: usize,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [_, seq] = tokens.dims();
        assert!(
            offset + seq <= self.block_size,
            "positions {offset}..{} exceed block_size {}",
            offset + seq,
            self.block_size
        );
        let device = tokens.device();
        let positions = cache.as_ref().and_then(|c| c.positions(seq, &device));
        let mut x = self.dropout.forward(self.embed(tokens, offset, positions.clone()));
        let rope = self.rope.as_ref();
        match cache {
            Some(cache) => {
                let ragged = match (cache.key_padding(seq, &device), positions) {
                    (Some(padding), Some(positions)) => Some(Ragged { padding, positions }),
                    _ => None,
                };
                for (block, slot) in self.blocks.iter().zip(cache.layers.iter_mut()) {
                    x = block.forward(x, rope, Some(slot), ragged.as_ref());
                }
            }
            None => {
                for block in &self.blocks {
                    x = block.forward(x, rope, None, None);
                }
            }
        }
        self.ln_f.forward(x)
    }

    /// Token plus position embeddings: `[batch, seq]` → `[batch, seq, d_model]` for positions
    /// `offset..offset + seq`, or per row `positions: [batch, seq]` (rotary positions are
    /// applied later, inside attention).
    fn embed(
        &self,
        tokens: Tensor<B, 2, Int>,
        offset: usize,
        positions: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let x = self.wte.forward(tokens);
        if let Some(wpe) = &self.wpe {
            let positions = positions.unwrap_or_else(|| {
                Tensor::arange(offset as i64..(offset + seq) as i64, &device).unsqueeze::<2>()
            });
            return x + wpe.forward(positions);
        }
        let Some(table) = &self.sinusoids else {
            return x;
        };
        let d_model = table.dims()[1];
        let added = match positions {
            Some(ids) => {
                table.clone().select(0, ids.reshape([batch * seq])).reshape([batch, seq, d_model])
            }
            None => table.clone().slice([offset..offset + seq, 0..d_model]).unsqueeze::<3>(),
        };
        x * self.token_scale + added
    }

    /// Attention weights of every head of `layer` for one sequence of `tokens`:
    /// `[n_heads][query][key]`, each row a softmax over the keys up to the query.
    pub fn attention_weights(
        &self,
        tokens: &[u32],
        layer: usize,
        device: &B::Device,
    ) -> Vec<Vec<Vec<f32>>> {
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let tokens = Tensor::<B, 1, Int>::from_ints(ids.as_slice(), device).unsqueeze::<2>();
        let mut x = self.embed(tokens, 0, None);
        let rope = self.rope.as_ref();
        for block in &self.blocks[..layer] {
            x = block.forward(x, rope, None, None);
        }
        let block = &self.blocks[layer];
        let weights = block.attn.weights(block.attention_input(x), rope); // [1, n_heads, seq, seq]
        let [_, heads, seq, _] = weights.dims();
        let values = super::f32_values(weights.into_data());
        (0..heads)
            .map(|h| {
                (0..seq)
                    .map(|q| values[(h * seq + q) * seq..(h * seq + q + 1) * seq].to_vec())
                    .collect()
            })
            .collect()
    }

    /// `[batch, seq, d_model]` → logits `[batch, seq, vocab]`.
    fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        super::attention::logits(x, self.lm_head.as_ref(), &self.wte)
    }
}
