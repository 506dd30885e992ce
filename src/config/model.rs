//! The `[model]` section: one struct per model kind, each with the defaults of the paper it
//! follows (GPT-2 for `gpt`, "Attention Is All You Need" for `seq2seq`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::choices::{Activation, InitScheme, ModelKind, NormKind, PositionKind};

/// A decoder-only Transformer (`kind = "gpt"`), GPT-2's choices by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptSpec {
    /// Filled in from the tokenizer; may be set larger (e.g. padded to a multiple of 64).
    #[serde(default)]
    pub vocab_size: Option<usize>,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    /// Feed-forward width; defaults to 4 * d_model.
    #[serde(default)]
    pub d_ff: Option<usize>,
    /// Longest context the model sees.
    pub block_size: usize,
    #[serde(default)]
    pub dropout: f64,
    /// Biases on the linear layers and LayerNorms.
    #[serde(default = "yes")]
    pub bias: bool,
    /// Bias on the query/key/value projection; defaults to `bias`.
    #[serde(default)]
    pub qkv_bias: Option<bool>,
    #[serde(default = "yes")]
    pub tie_embeddings: bool,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default)]
    pub norm: NormKind,
    /// Pre-norm blocks (`true`, GPT-2) or post-norm (`false`).
    #[serde(default = "yes")]
    pub norm_first: bool,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub positions: PositionKind,
    /// RoPE's base θ.
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub init: InitScheme,
    /// A finished run whose final weights a new run starts from, keeping its tokenizer
    /// (finetuning); the rest of `[model]` must describe that run's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

/// An encoder-decoder Transformer (`kind = "seq2seq"`), the original paper's choices by
/// default: post-norm layers, ReLU, sinusoidal positions, PyTorch's initialisation,
/// dropout 0.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seq2SeqSpec {
    #[serde(default)]
    pub vocab_size: Option<usize>,
    pub d_model: usize,
    pub n_heads: usize,
    /// Encoder layers.
    pub n_layers: usize,
    /// Decoder layers; defaults to `n_layers`.
    #[serde(default)]
    pub n_decoder_layers: Option<usize>,
    #[serde(default)]
    pub d_ff: Option<usize>,
    /// Longest source or target, in tokens.
    pub block_size: usize,
    #[serde(default = "seq2seq_dropout")]
    pub dropout: f64,
    #[serde(default = "yes")]
    pub bias: bool,
    /// The decoder's output projection shares the (joint) embedding's weights.
    #[serde(default = "yes")]
    pub tie_embeddings: bool,
    #[serde(default = "relu")]
    pub activation: Activation,
    #[serde(default)]
    pub norm: NormKind,
    #[serde(default)]
    pub norm_first: bool,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    /// `sinusoidal` or `learned`.
    #[serde(default = "sinusoidal")]
    pub positions: PositionKind,
    #[serde(default = "torch_init")]
    pub init: InitScheme,
}

fn yes() -> bool {
    true
}
fn norm_eps() -> f64 {
    1e-5
}
fn rope_theta() -> f64 {
    GptSpec::DEFAULT_ROPE_THETA
}
fn seq2seq_dropout() -> f64 {
    0.1
}
fn relu() -> Activation {
    Activation::Relu
}
fn sinusoidal() -> PositionKind {
    PositionKind::Sinusoidal
}
fn torch_init() -> InitScheme {
    InitScheme::Torch
}

impl GptSpec {
    pub const DEFAULT_ROPE_THETA: f64 = 10000.0;

    /// GPT-2's shape and choices at the given size (vocabulary from the tokenizer).
    pub fn gpt2(d_model: usize, n_heads: usize, n_layers: usize, block_size: usize) -> Self {
        Self {
            vocab_size: None,
            d_model,
            n_heads,
            n_layers,
            d_ff: None,
            block_size,
            dropout: 0.0,
            bias: true,
            qkv_bias: None,
            tie_embeddings: true,
            activation: Activation::default(),
            norm: NormKind::default(),
            norm_first: true,
            norm_eps: norm_eps(),
            positions: PositionKind::default(),
            rope_theta: rope_theta(),
            init: InitScheme::default(),
            init_from: None,
        }
    }

    pub fn d_ff(&self) -> usize {
        self.d_ff.unwrap_or(4 * self.d_model)
    }

    pub fn qkv_bias(&self) -> bool {
        self.qkv_bias.unwrap_or(self.bias)
    }
}

impl Seq2SeqSpec {
    pub fn d_ff(&self) -> usize {
        self.d_ff.unwrap_or(4 * self.d_model)
    }

    pub fn n_decoder_layers(&self) -> usize {
        self.n_decoder_layers.unwrap_or(self.n_layers)
    }
}

/// The `[model]` section, by its `kind` (`gpt` when absent).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    Gpt(GptSpec),
    Seq2Seq(Seq2SeqSpec),
}

/// What both model kinds have, for code that does not care which it holds.
macro_rules! either {
    ($self:expr, $spec:ident => $value:expr) => {
        match $self {
            ModelSpec::Gpt($spec) => $value,
            ModelSpec::Seq2Seq($spec) => $value,
        }
    };
}

impl ModelSpec {
    pub fn kind(&self) -> ModelKind {
        match self {
            Self::Gpt(_) => ModelKind::Gpt,
            Self::Seq2Seq(_) => ModelKind::Seq2Seq,
        }
    }

    pub fn block_size(&self) -> usize {
        either!(self, m => m.block_size)
    }
    pub fn d_model(&self) -> usize {
        either!(self, m => m.d_model)
    }
    pub fn n_heads(&self) -> usize {
        either!(self, m => m.n_heads)
    }
    pub fn n_layers(&self) -> usize {
        either!(self, m => m.n_layers)
    }
    pub fn d_ff(&self) -> usize {
        either!(self, m => m.d_ff())
    }
    pub fn tie_embeddings(&self) -> bool {
        either!(self, m => m.tie_embeddings)
    }
    pub fn positions(&self) -> PositionKind {
        either!(self, m => m.positions)
    }
    /// `None` until the tokenizer is known (or the config sets one).
    pub fn vocab_size(&self) -> Option<usize> {
        either!(self, m => m.vocab_size)
    }
    pub fn set_vocab_size(&mut self, vocab_size: usize) {
        either!(self, m => m.vocab_size = Some(vocab_size))
    }

    pub fn as_gpt(&self) -> Option<&GptSpec> {
        match self {
            Self::Gpt(gpt) => Some(gpt),
            Self::Seq2Seq(_) => None,
        }
    }

    /// Whether `other` describes the same model: the same values once every default is
    /// spelled out (an unset vocab_size matches any).
    pub fn matches(&self, other: &ModelSpec) -> bool {
        let mut theirs = other.spelled_out();
        if let (None, Some(v)) = (theirs.vocab_size(), self.vocab_size()) {
            theirs.set_vocab_size(v);
        }
        self.spelled_out() == theirs
    }

    /// The same model with the defaults that depend on other keys written in.
    fn spelled_out(&self) -> ModelSpec {
        match self.clone() {
            Self::Gpt(mut m) => {
                (m.d_ff, m.qkv_bias) = (Some(m.d_ff()), Some(m.qkv_bias()));
                Self::Gpt(m)
            }
            Self::Seq2Seq(mut m) => {
                (m.d_ff, m.n_decoder_layers) = (Some(m.d_ff()), Some(m.n_decoder_layers()));
                Self::Seq2Seq(m)
            }
        }
    }

    /// One line for people: the architecture choices as the config spells them.
    pub fn describe(&self) -> String {
        let vocab = self.vocab_size().map_or("?".into(), |v| v.to_string());
        let (layers, bias) = match self {
            Self::Gpt(m) => (
                format!("gpt, {} layers", m.n_layers),
                format!("bias {} (qkv {})", m.bias, m.qkv_bias()),
            ),
            Self::Seq2Seq(m) => (
                format!("seq2seq, {}+{} layers", m.n_layers, m.n_decoder_layers()),
                format!("bias {}", m.bias),
            ),
        };
        let (dropout, norm_first, norm, activation, init) = either!(self, m =>
            (m.dropout, m.norm_first, m.norm, m.activation, m.init));
        format!(
            "{layers}, vocab {vocab}, d_model {}, {} heads, d_ff {}, block {}, dropout {dropout}, \
             {bias}, tied {}, {} {norm}, {activation}, {} positions, {init} init",
            self.d_model(),
            self.n_heads(),
            self.d_ff(),
            self.block_size(),
            self.tie_embeddings(),
            if norm_first { "pre-norm" } else { "post-norm" },
            self.positions(),
        )
    }
}

/// Written with its `kind` first, then the fields of its kind.
impl Serialize for ModelSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tagged<'a, T> {
            kind: ModelKind,
            #[serde(flatten)]
            spec: &'a T,
        }
        match self {
            Self::Gpt(spec) => Tagged { kind: ModelKind::Gpt, spec }.serialize(serializer),
            Self::Seq2Seq(spec) => Tagged { kind: ModelKind::Seq2Seq, spec }.serialize(serializer),
        }
    }
}
