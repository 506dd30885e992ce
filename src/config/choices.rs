//! Every choice a config makes by name, as an enum that serde reads and writes by the name
//! the config file spells. A wrong name is refused with the list of right ones.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A config choice's spellings, the one table serde reads and writes through
/// (`#[serde(try_from = "String", into = "String")]`); a wrong one gets an error that lists
/// them all (serde's own would name the Rust enum instead).
macro_rules! config_choice {
    ($ty:ident { $($name:literal => $variant:ident),+ $(,)? }) => {
        impl $ty {
            /// Every spelling the config accepts.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The name a config file uses.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.as_str().to_string()
            }
        }

        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                match value.as_str() {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(format!("expected one of: {}", Self::NAMES.join(", "))),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModelKind {
    /// A decoder-only language model.
    Gpt,
    /// An encoder-decoder translation model, trained on `data.kind = "parallel"`.
    Seq2Seq,
}

config_choice!(ModelKind { "gpt" => Gpt, "seq2seq" => Seq2Seq });

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataKind {
    /// One corpus for a language model.
    #[default]
    Text,
    /// Aligned source/target lines for a seq2seq model.
    Parallel,
    /// Alpaca-style instruction records (JSON or JSONL) for finetuning a GPT.
    Instructions,
    /// Instructions with a chosen and a rejected response, for preference tuning (DPO).
    Preferences,
}

config_choice!(DataKind {
    "text" => Text,
    "parallel" => Parallel,
    "instructions" => Instructions,
    "preferences" => Preferences,
});

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SamplingMode {
    /// Windows at uniformly random starts, as nanoGPT's `get_batch`.
    #[default]
    Random,
    /// Every window at a multiple of `stride`, shuffled once per pass, as Raschka's
    /// `GPTDatasetV1`.
    Sliding,
}

config_choice!(SamplingMode { "random" => Random, "sliding" => Sliding });

/// The nonlinearity between the two projections of the feed-forward network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Activation {
    /// `x · Φ(x)` with the exact Gaussian CDF (PyTorch's `nn.GELU()`).
    #[default]
    Gelu,
    /// GELU's tanh approximation, which GPT-2 was trained with (`gelu_new` in transformers).
    GeluTanh,
    /// `max(0, x)`, the original Transformer's.
    Relu,
    /// A SiLU-gated linear unit: a third projection, `c_gate`, whose SiLU scales `c_fc`'s
    /// output element-wise. Usually run with `d_ff` ≈ 8/3 · d_model to keep the parameter
    /// count of a 4 · d_model GELU network.
    SwiGlu,
}

config_choice!(Activation { "gelu" => Gelu, "gelu_tanh" => GeluTanh, "relu" => Relu, "swiglu" => SwiGlu });

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) · gamma + beta` over the features (GPT-2).
    #[default]
    LayerNorm,
    /// `x / sqrt(mean(x²) + eps) · gamma`: no centring, no bias (LLaMA, CS336).
    RmsNorm,
}

config_choice!(NormKind { "layernorm" => LayerNorm, "rmsnorm" => RmsNorm });

/// How a model knows where a token is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PositionKind {
    /// A trained `[block_size, d_model]` table added to the token embeddings (GPT-2).
    #[default]
    Learned,
    /// The fixed sinusoidal table of "Attention Is All You Need"; nothing to train.
    Sinusoidal,
    /// RoPE (Su et al. 2021): queries and keys rotated by position inside attention.
    Rope,
}

config_choice!(PositionKind { "learned" => Learned, "sinusoidal" => Sinusoidal, "rope" => Rope });

/// How a new model's weights are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum InitScheme {
    /// GPT-2 / nanoGPT: weights N(0, 0.02), residual projections N(0, 0.02/√(2·n_layers)),
    /// zero biases.
    #[default]
    Gpt2,
    /// PyTorch's defaults, which a course model gets when it does not initialise its own:
    /// linear weights and biases U(±1/√fan_in), embeddings N(0, 1). Burn's defaults are the same.
    Torch,
}

config_choice!(InitScheme { "gpt2" => Gpt2, "torch" => Torch });

/// What the learning rate does after warmup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ScheduleKind {
    /// Half a cosine from `learning_rate` down to `min_lr` at `max_iters`, then `min_lr`.
    #[default]
    Cosine,
    /// `learning_rate · √(warmup / step)`: the paper's `d_model^-0.5 · min(step^-0.5,
    /// step · warmup^-1.5)` with its peak, reached at the end of warmup, named `learning_rate`.
    Noam,
}

config_choice!(ScheduleKind { "cosine" => Cosine, "noam" => Noam });

/// The backends kiln knows. Whether one is in this binary is [`BackendName::compiled_in`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BackendName {
    /// Pure-Rust CPU backend (burn-ndarray).
    Ndarray,
    /// Burn's newer pure-Rust CPU backend (burn-flex).
    Flex,
    /// wgpu: Vulkan, Metal or DX12 GPUs (or Mesa's lavapipe on a CPU).
    Wgpu,
    /// libtorch on its CPU device.
    TchCpu,
    /// libtorch on a CUDA device.
    Cuda,
}

config_choice!(BackendName {
    "ndarray" => Ndarray, "flex" => Flex, "wgpu" => Wgpu, "tch-cpu" => TchCpu, "cuda" => Cuda
});

impl BackendName {
    /// The Cargo feature that compiles it in.
    pub fn feature(self) -> &'static str {
        match self {
            Self::Ndarray => "ndarray",
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::TchCpu => "tch",
            Self::Cuda => "cuda",
        }
    }

    pub fn compiled_in(self) -> bool {
        match self {
            Self::Ndarray => cfg!(feature = "ndarray"),
            Self::Flex => cfg!(feature = "flex"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::TchCpu => cfg!(feature = "tch"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The float precisions it trains in.
    pub fn precisions(self) -> &'static [Precision] {
        match self {
            Self::TchCpu | Self::Cuda => &[Precision::F32, Precision::F16, Precision::Bf16],
            Self::Ndarray | Self::Flex | Self::Wgpu => &[Precision::F32],
        }
    }

    /// The backend of a config that names none: libtorch's CUDA device when compiled in,
    /// else the first CPU backend compiled in.
    pub fn default_for_build() -> Self {
        [Self::Cuda, Self::Ndarray, Self::Flex, Self::TchCpu, Self::Wgpu]
            .into_iter()
            .find(|b| b.compiled_in())
            .unwrap_or(Self::Ndarray)
    }

    /// A backend that needs no GPU, for work such as reading records.
    pub fn cpu_for_build() -> Self {
        [Self::Ndarray, Self::Flex, Self::TchCpu, Self::Wgpu]
            .into_iter()
            .find(|b| b.compiled_in())
            .unwrap_or(Self::Ndarray)
    }

    /// Every backend compiled into this binary.
    pub fn compiled() -> Vec<Self> {
        [Self::Ndarray, Self::Flex, Self::Wgpu, Self::TchCpu, Self::Cuda]
            .into_iter()
            .filter(|b| b.compiled_in())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

config_choice!(Precision { "f32" => F32, "f16" => F16, "bf16" => Bf16 });

/// The tiktoken encodings kiln ships.
pub const TIKTOKEN_ENCODINGS: &[&str] = &["gpt2", "cl100k_base", "o200k_base"];

/// What `data.tokenizer` asks for: `char`, `word`, `tiktoken:<encoding>`,
/// `bpe:<tokenizer.json>` or `bpe:train:<vocab size>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TokenizerSpec {
    Char,
    Word,
    /// One of [`TIKTOKEN_ENCODINGS`].
    Tiktoken(String),
    /// A byte-level BPE `tokenizer.json` (kiln's or Hugging Face's).
    Bpe(PathBuf),
    /// Byte-level BPE trained on the run's corpus to this vocabulary size.
    BpeTrain {
        vocab_size: usize,
    },
}

impl TokenizerSpec {
    pub fn parse(spec: &str) -> Result<Self, String> {
        match spec.split_once(':') {
            None if spec == "char" => Ok(Self::Char),
            None if spec == "word" => Ok(Self::Word),
            Some(("tiktoken", enc)) if TIKTOKEN_ENCODINGS.contains(&enc) => {
                Ok(Self::Tiktoken(enc.into()))
            }
            Some(("bpe", rest)) => match rest.split_once(':') {
                Some(("train", n)) => match n.parse::<usize>() {
                    Ok(vocab_size) if vocab_size > 256 => Ok(Self::BpeTrain { vocab_size }),
                    _ => Err(format!(
                        "expected \"bpe:train:<vocab size>\" with a vocab size above 256 \
                         (bytes + <|endoftext|>), not {n:?}"
                    )),
                },
                _ if !rest.is_empty() => Ok(Self::Bpe(rest.into())),
                _ => Err("expected \"bpe:<path to tokenizer.json>\" or \"bpe:train:<vocab size>\""
                    .into()),
            },
            _ => Err(format!(
                "expected \"char\", \"word\", \"tiktoken:<encoding>\" with encoding one of {}, \
                 \"bpe:<tokenizer.json>\" or \"bpe:train:<vocab size>\"",
                TIKTOKEN_ENCODINGS.join(", ")
            )),
        }
    }

    /// A BPE with the `<pad>`, `<bos>` and `<eos>` a parallel corpus needs can come from it.
    pub fn is_bpe(&self) -> bool {
        matches!(self, Self::Bpe(_) | Self::BpeTrain { .. })
    }
}

impl fmt::Display for TokenizerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Char => f.write_str("char"),
            Self::Word => f.write_str("word"),
            Self::Tiktoken(encoding) => write!(f, "tiktoken:{encoding}"),
            Self::Bpe(path) => write!(f, "bpe:{}", path.display()),
            Self::BpeTrain { vocab_size } => write!(f, "bpe:train:{vocab_size}"),
        }
    }
}

impl From<TokenizerSpec> for String {
    fn from(spec: TokenizerSpec) -> String {
        spec.to_string()
    }
}

impl TryFrom<String> for TokenizerSpec {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_specs_parse_and_print_back() {
        for given in ["char", "word", "tiktoken:gpt2", "bpe:a/t.json", "bpe:train:10000"] {
            assert_eq!(TokenizerSpec::parse(given).unwrap().to_string(), given);
        }
        assert!(TokenizerSpec::parse("tiktoken:nope").is_err());
        assert!(TokenizerSpec::parse("bytes").is_err());
        let err = TokenizerSpec::parse("bpe:train:ten").unwrap_err();
        assert!(err.contains("\"ten\""), "{err}");
    }

    #[test]
    fn a_wrong_name_lists_the_right_ones() {
        let err = Activation::try_from("gelux".to_string()).unwrap_err();
        assert!(err.contains("gelu, gelu_tanh, relu, swiglu"), "{err}");
    }
}
