//! The two Transformers, written like the papers: GPT (decoder-only) and the encoder-decoder
//! of "Attention Is All You Need", from attention, feed-forward, norm and position pieces.
//!
//! The structs are generic over `B: Backend`; their forward passes over
//! [`B: KernelBackend`](crate::kernels::KernelBackend), whose methods are the only place a
//! backend's own fast paths enter. Each model's Burn config is built from its config section
//! in one place ([`GptConfig::from_spec`], [`Seq2SeqConfig::from_spec`]).

mod attention;
mod cache;
mod gpt;
mod mlp;
mod norm;
mod params;
mod positions;
mod seq2seq;

pub use attention::{CrossAttention, LayerCache, SelfAttention};
pub use cache::KvCache;
pub use gpt::{Gpt, GptConfig, GptRecord, ParamCounts};
pub use mlp::Mlp;
pub use norm::Norm;
pub use params::{f32_values, named_params, param_values, NamedParam, ParamValues};
pub use positions::sinusoidal_positions;
pub use seq2seq::{DecoderState, Memory, Seq2Seq, Seq2SeqConfig, Seq2SeqRecord};

use burn::module::Initializer;

use crate::config::{Activation, InitScheme};

/// GPT-2 / nanoGPT initialisation: N(0, std).
pub(crate) fn normal(std: f64) -> Initializer {
    Initializer::Normal { mean: 0.0, std }
}

/// How the attention and feed-forward sublayers of a model are built besides their widths.
#[derive(Debug, Clone, Copy)]
pub struct Sublayers {
    /// Biases on the output and feed-forward projections.
    pub bias: bool,
    /// Biases on the query, key and value projections.
    pub qkv_bias: bool,
    pub dropout: f64,
    pub activation: Activation,
    /// Init std of the projections, the output ones scaled down for deep residual stacks;
    /// `None` for PyTorch's defaults.
    pub std: Option<f64>,
    pub proj_std: Option<f64>,
}

impl Sublayers {
    /// With `init`: GPT-2's draws projections from N(0, 0.02) and the output projections from
    /// N(0, 0.02/√(2·layers)), one per residual add; PyTorch's leaves them to Burn's defaults.
    pub fn new(
        init: InitScheme,
        layers: usize,
        bias: bool,
        dropout: f64,
        activation: Activation,
    ) -> Self {
        let gpt2 = init == InitScheme::Gpt2;
        Self {
            bias,
            qkv_bias: bias,
            dropout,
            activation,
            std: gpt2.then_some(0.02),
            proj_std: gpt2.then(|| 0.02 / ((2 * layers) as f64).sqrt()),
        }
    }
}
