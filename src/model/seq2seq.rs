//! The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017).
//!
//! source → embedding · √d_model + positions → dropout
//!        → n_encoder_layers × [self-attention over non-padding keys; feed-forward] → ln_f
//!        = memory
//! target → embedding · √d_model + positions → dropout
//!        → n_decoder_layers × [causal self-attention; cross-attention over the memory;
//!                              feed-forward] → ln_f → output projection → logits
//!
//! Source and target share one vocabulary and one embedding table, which the output
//! projection reuses when tied. Each sublayer is post-norm, as in the paper, or pre-norm
//! (`norm_first`); the attention, feed-forward and norm pieces are the GPT's.

use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear};
use burn::prelude::*;

use super::attention::{linear, CrossAttention, LayerCache, SelfAttention};
use super::norm::Norm;
use super::{normal, Mlp, Sublayers};
use crate::config::{Activation, InitScheme, NormKind, PositionKind, Seq2SeqSpec};
use crate::kernels::KernelBackend;

#[derive(Config, Debug)]
pub struct Seq2SeqConfig {
    /// Joint source/target vocabulary.
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_encoder_layers: usize,
    pub n_decoder_layers: usize,
    pub d_ff: usize,
    /// Longest source or target, in tokens (the size of the position table).
    pub max_len: usize,
    /// The padding token: masked out of attention, never a target.
    pub pad_id: usize,
    #[config(default = 0.1)]
    pub dropout: f64,
    #[config(default = true)]
    pub bias: bool,
    #[config(default = true)]
    pub tie_embeddings: bool,
    #[config(default = "Activation::Relu")]
    pub activation: Activation,
    #[config(default = "NormKind::LayerNorm")]
    pub norm: NormKind,
    #[config(default = false)]
    pub norm_first: bool,
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Learned or sinusoidal (rotary positions are for the GPT only).
    #[config(default = "PositionKind::Sinusoidal")]
    pub positions: PositionKind,
    /// How the linear layers are drawn; embeddings are always N(0, 1/d_model), so that
    /// scaled by √d_model they have unit size, as the paper's tied embeddings.
    #[config(default = "InitScheme::Torch")]
    pub init: InitScheme,
}

#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    ln_1: Norm<B>,
    attn: SelfAttention<B>,
    ln_2: Norm<B>,
    mlp: Mlp<B>,
    norm_first: bool,
}

impl<B: KernelBackend> EncoderLayer<B> {
    /// `[batch, src, d_model]` → `[batch, src, d_model]`.
    fn forward(&self, x: Tensor<B, 3>, padding: &Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        let x =
            self.ln_1.residual(x, self.norm_first, |h| self.attn.forward_bidirectional(h, padding));
        self.ln_2.residual(x, self.norm_first, |h| self.mlp.forward(h))
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    ln_1: Norm<B>,
    attn: SelfAttention<B>,
    ln_2: Norm<B>,
    cross: CrossAttention<B>,
    ln_3: Norm<B>,
    mlp: Mlp<B>,
    norm_first: bool,
}

impl<B: KernelBackend> DecoderLayer<B> {
    /// `[batch, seq, d_model]` → `[batch, seq, d_model]`; with a cache, `x` holds only the
    /// positions after the cached ones.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        memory: &Memory<B>,
        layer: usize,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Tensor<B, 3> {
        let x = self.ln_1.residual(x, self.norm_first, |h| self.attn.forward(h, None, cache, None));
        let x = self.ln_2.residual(x, self.norm_first, |h| {
            self.cross.forward(h, &memory.layers[layer], &memory.padding)
        });
        self.ln_3.residual(x, self.norm_first, |h| self.mlp.forward(h))
    }
}

#[derive(Module, Debug)]
pub struct Seq2Seq<B: Backend> {
    wte: Embedding<B>,
    /// Learned position tables of the source and the target; `None` with sinusoidal ones.
    enc_wpe: Option<Embedding<B>>,
    dec_wpe: Option<Embedding<B>>,
    /// The fixed sinusoidal table, `[max_len, d_model]`: a constant, not a parameter.
    sinusoids: Option<Tensor<B, 2>>,
    dropout: Dropout,
    encoder: Vec<EncoderLayer<B>>,
    enc_ln_f: Norm<B>,
    decoder: Vec<DecoderLayer<B>>,
    dec_ln_f: Norm<B>,
    /// `None` when the output projection shares the embedding's weights.
    lm_head: Option<Linear<B>>,
    max_len: usize,
    pad_id: usize,
}

/// The encoded source as every decoder layer reads it: its cross-attention keys and values,
/// and where the source is padding (`[batch, src]`).
#[derive(Debug, Clone)]
pub struct Memory<B: Backend> {
    layers: Vec<LayerCache<B>>,
    padding: Tensor<B, 2, Bool>,
}

/// Everything incremental decoding carries between steps: the memory and the decoder's
/// self-attention keys and values of the target positions so far.
#[derive(Debug, Clone)]
pub struct DecoderState<B: Backend> {
    memory: Memory<B>,
    layers: Vec<Option<LayerCache<B>>>,
}

impl<B: Backend> DecoderState<B> {
    /// Target positions decoded so far.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |c| c.keys.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state of batch rows `rows`, in that order (beam search keeps its best hypotheses,
    /// and the source each came from).
    pub fn select(self, rows: Tensor<B, 1, Int>) -> Self {
        let take = |c: LayerCache<B>| c.select(rows.clone());
        Self {
            memory: Memory {
                layers: self.memory.layers.into_iter().map(take).collect(),
                padding: self.memory.padding.select(0, rows.clone()),
            },
            layers: self.layers.into_iter().map(|l| l.map(take)).collect(),
        }
    }
}

impl Seq2SeqConfig {
    /// The model a `[model]` section of kind `seq2seq` describes, with the tokenizer's
    /// vocabulary and padding token.
    pub fn from_spec(spec: &Seq2SeqSpec, vocab_size: usize, pad_id: u32) -> Self {
        Self::new(
            vocab_size,
            spec.d_model,
            spec.n_heads,
            spec.n_layers,
            spec.n_decoder_layers(),
            spec.d_ff(),
            spec.block_size,
            pad_id as usize,
        )
        .with_dropout(spec.dropout)
        .with_bias(spec.bias)
        .with_tie_embeddings(spec.tie_embeddings)
        .with_activation(spec.activation)
        .with_norm(spec.norm)
        .with_norm_first(spec.norm_first)
        .with_norm_eps(spec.norm_eps)
        .with_positions(spec.positions)
        .with_init(spec.init)
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Seq2Seq<B> {
        let ln = || Norm::new(self.norm, self.d_model, self.bias, self.norm_eps, device);
        let layers = self.n_encoder_layers + self.n_decoder_layers;
        let sublayers = Sublayers::new(self.init, layers, self.bias, self.dropout, self.activation);
        let (d, heads) = (self.d_model, self.n_heads);
        let encoder = (0..self.n_encoder_layers)
            .map(|_| EncoderLayer {
                ln_1: ln(),
                attn: SelfAttention::new(d, heads, &sublayers, device),
                ln_2: ln(),
                mlp: Mlp::new(d, self.d_ff, &sublayers, device),
                norm_first: self.norm_first,
            })
            .collect();
        let decoder = (0..self.n_decoder_layers)
            .map(|_| DecoderLayer {
                ln_1: ln(),
                attn: SelfAttention::new(d, heads, &sublayers, device),
                ln_2: ln(),
                cross: CrossAttention::new(d, heads, &sublayers, device),
                ln_3: ln(),
                mlp: Mlp::new(d, self.d_ff, &sublayers, device),
                norm_first: self.norm_first,
            })
            .collect();
        let embedding = |n| {
            EmbeddingConfig::new(n, d).with_initializer(normal((d as f64).powf(-0.5))).init(device)
        };
        let learned = self.positions == PositionKind::Learned;
        Seq2Seq {
            wte: embedding(self.vocab_size),
            enc_wpe: learned.then(|| embedding(self.max_len)),
            dec_wpe: learned.then(|| embedding(self.max_len)),
            sinusoids: (self.positions == PositionKind::Sinusoidal)
                .then(|| super::positions::sinusoid_table(self.max_len, d, device)),
            dropout: DropoutConfig::new(self.dropout).init(),
            encoder,
            enc_ln_f: ln(),
            decoder,
            dec_ln_f: ln(),
            lm_head: (!self.tie_embeddings)
                .then(|| linear(d, self.vocab_size, false, sublayers.std, device)),
            max_len: self.max_len,
            pad_id: self.pad_id,
        }
    }
}

impl<B: Backend> Seq2Seq<B> {
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pad_id(&self) -> usize {
        self.pad_id
    }

    /// Parameters in all, and in the embedding tables.
    pub fn param_counts(&self) -> super::ParamCounts {
        let tables = [Some(&self.wte), self.enc_wpe.as_ref(), self.dec_wpe.as_ref()];
        super::ParamCounts {
            total: self.num_params(),
            embedding: tables.iter().flatten().map(|t| t.num_params()).sum(),
        }
    }
}

impl<B: KernelBackend> Seq2Seq<B> {
    /// Teacher forcing: `source: [batch, src]`, `target_in: [batch, tgt]` (the target shifted
    /// right, starting with `<bos>`) → logits `[batch, tgt, vocab]` of the next target token.
    pub fn forward(&self, source: Tensor<B, 2, Int>, target_in: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let memory = self.encode(source);
        let mut x = self.dropout.forward(self.embed(target_in, self.dec_wpe.as_ref(), 0));
        for (i, layer) in self.decoder.iter().enumerate() {
            x = layer.forward(x, &memory, i, None);
        }
        self.head(self.dec_ln_f.forward(x))
    }

    /// `source: [batch, src]` → the memory the decoder attends over.
    pub fn encode(&self, source: Tensor<B, 2, Int>) -> Memory<B> {
        let padding = source.clone().equal_elem(self.pad_id as i64);
        let mut x = self.dropout.forward(self.embed(source, self.enc_wpe.as_ref(), 0));
        for layer in &self.encoder {
            x = layer.forward(x, &padding);
        }
        let hidden = self.enc_ln_f.forward(x);
        let layers = self.decoder.iter().map(|layer| layer.cross.memory(hidden.clone())).collect();
        Memory { layers, padding }
    }

    /// A decoding state over `memory` with no target position yet.
    pub fn start_decoding(&self, memory: Memory<B>) -> DecoderState<B> {
        DecoderState { memory, layers: vec![None; self.decoder.len()] }
    }

    /// Feeds one target token per row, `tokens: [batch, 1]`, at the next position and returns
    /// the logits of the token after it, `[batch, vocab]`. The caller keeps positions below
    /// `max_len`.
    pub fn decode_step(
        &self,
        tokens: Tensor<B, 2, Int>,
        state: &mut DecoderState<B>,
    ) -> Tensor<B, 2> {
        let position = state.len();
        assert!(
            position < self.max_len,
            "target position {position} exceeds max_len {}",
            self.max_len
        );
        let mut x = self.embed(tokens, self.dec_wpe.as_ref(), position);
        for (i, (layer, slot)) in self.decoder.iter().zip(state.layers.iter_mut()).enumerate() {
            x = layer.forward(x, &state.memory, i, Some(slot));
        }
        self.head(self.dec_ln_f.forward(x)).squeeze_dim(1)
    }

    /// Scaled token embeddings plus positions `offset..offset + seq`: `[batch, seq]` →
    /// `[batch, seq, d_model]`.
    fn embed(
        &self,
        tokens: Tensor<B, 2, Int>,
        learned: Option<&Embedding<B>>,
        offset: usize,
    ) -> Tensor<B, 3> {
        let [_, seq] = tokens.dims();
        assert!(
            offset + seq <= self.max_len,
            "positions {offset}..{} exceed max_len {}",
            offset + seq,
            self.max_len
        );
        let device = tokens.device();
        let d_model = self.wte.weight.dims()[1];
        let x = self.wte.forward(tokens) * (d_model as f64).sqrt();
        match (learned, &self.sinusoids) {
            (Some(table), _) => {
                let positions =
                    Tensor::arange(offset as i64..(offset + seq) as i64, &device).unsqueeze::<2>();
                x + table.forward(positions)
            }
            (None, Some(table)) => {
                x + table.clone().slice([offset..offset + seq, 0..d_model]).unsqueeze::<3>()
            }
            (None, None) => unreachable!("a seq2seq model has learned or sinusoidal positions"),
        }
    }

    /// `[batch, seq, d_model]` → logits `[batch, seq, vocab]`.
    fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        super::attention::logits(x, self.lm_head.as_ref(), &self.wte)
    }
}
