//! Model definitions, generic over `B: Backend`.

mod attention;
mod gpt;
mod mlp;

pub use attention::{CausalSelfAttention, LayerCache};
pub use gpt::{Gpt, GptConfig, KvCache, ParamCounts};
pub use mlp::Mlp;

use burn::module::Initializer;

/// GPT-2 / nanoGPT initialisation: N(0, std).
pub(crate) fn normal(std: f64) -> Initializer {
    Initializer::Normal { mean: 0.0, std }
}
