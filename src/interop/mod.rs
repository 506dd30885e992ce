//! Hugging Face interop: a kiln GPT as `model.safetensors` + GPT-2 `config.json`, a GPT-2
//! checkpoint in that form read back as kiln parameters, and a nanoGPT `ckpt.pt` loaded.
//!
//! kiln's GPT is laid out like GPT-2, so the mapping is mostly renaming:
//! `blocks.N.…` ↔ `transformer.h.N.…`, LayerNorm `gamma`/`beta` ↔ `weight`/`bias`. Burn's
//! `Linear` stores its weight as `[in, out]`, which is exactly the layout of GPT-2's `Conv1D`,
//! and kiln's `c_attn` is already the fused `[q | k | v]` projection, so no weight is split
//! or transposed, except an untied `lm_head` (a torch `nn.Linear`, stored `[out, in]`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::{Backend, Module};
use burn_store::{
    BurnToPyTorchAdapter, ModuleAdapter, ModuleSnapshot, SafetensorsStore, TensorSnapshot,
};
use serde_json::json;

use crate::config::{Activation, GptSpec, InitScheme, ModelSpec, NormKind, PositionKind, RunSpec};
use crate::files::write_atomic;
use crate::model::{Gpt, GptConfig};

mod import;
mod nanogpt;

pub use import::{load_gpt2, read_gpt2, Gpt2Checkpoint};
pub use nanogpt::{load_nanogpt, read_nanogpt};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const HF_CONFIG_FILE: &str = "config.json";

#[derive(Debug, thiserror::Error)]
pub enum InteropError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: {key} = {value}: {expected}")]
    Config { path: PathBuf, key: &'static str, value: String, expected: String },
    #[error("{0}: GPT-2 has learned positions, LayerNorm, GELU and pre-norm blocks, so transformers' GPT2LMHeadModel cannot run this model; export it under kiln's own parameter names")]
    NotGpt2(String),
    /// Writing an output file (the error names it).
    #[error(transparent)]
    Write(std::io::Error),
}

/// Why a kiln model is not a GPT-2, if it is not.
pub fn gpt2_mismatch(model: &ModelSpec) -> Option<String> {
    let ModelSpec::Gpt(model) = model else {
        return Some("model.kind = seq2seq".into());
    };
    if model.positions != PositionKind::Learned {
        return Some(format!("model.positions = {}", model.positions));
    }
    if model.norm != NormKind::LayerNorm {
        return Some(format!("model.norm = {}", model.norm));
    }
    if model.activation == Activation::SwiGlu {
        return Some(format!("model.activation = {}", model.activation));
    }
    if !model.norm_first {
        return Some("model.norm_first = false".into());
    }
    None
}

pub(super) fn file_error(path: &Path, reason: impl ToString) -> InteropError {
    InteropError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Which parameter names an export uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Names {
    /// Hugging Face GPT-2 (`transformer.h.0.attn.c_attn.weight`, …) plus a GPT-2 `config.json`.
    Hf,
    /// kiln's own (`blocks.0.attn.c_attn.weight`, …), as `kiln inspect` lists them.
    Kiln,
}

/// kiln's parameter names → GPT-2's, as regex replacements applied in order.
const TO_GPT2: [(&str, &str); 4] = [
    (r"^blocks\.", "transformer.h."),
    (r"^(wte|wpe|ln_f)\.", "transformer.${1}."),
    (r"\.gamma$", ".weight"),
    (r"\.beta$", ".bias"),
];

/// burn-store's PyTorch layout adapter, for the one `nn.Linear` of GPT-2: its untied head
/// (`[vocab, d_model]` in torch). GPT-2's Conv1D projections already have Burn's `[in, out]`.
#[derive(Clone)]
struct HeadOnly<A>(A);

impl<A: ModuleAdapter + Clone + 'static> ModuleAdapter for HeadOnly<A> {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        match snapshot.full_path() == "lm_head.weight" {
            true => self.0.adapt(snapshot),
            false => snapshot.clone(),
        }
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// `model` as GPT-2 computes it: GPT-2 always has biases, so a model trained with
/// `model.bias = false` gets zero ones, which compute the same function.
fn with_gpt2_biases<B: Backend>(
    model: &Gpt<B>,
    spec: &GptSpec,
    vocab: usize,
) -> Result<Gpt<B>, String> {
    if spec.bias && spec.qkv_bias() {
        return Ok(model.clone());
    }
    let biased = GptSpec { bias: true, qkv_bias: None, init: InitScheme::Gpt2, ..spec.clone() };
    let mut out = GptConfig::from_spec(&biased, vocab).init::<B>(&model.devices()[0]);
    let mut store = SafetensorsStore::from_bytes(None);
    model.save_into(&mut store).map_err(|e| e.to_string())?;
    let mut store = store.allow_partial(true);
    let result = out.load_from(&mut store).map_err(|e| e.to_string())?;
    match result
        .missing
        .iter()
        .find(|(name, _)| !name.ends_with(".bias") && !name.ends_with(".beta"))
    {
        Some((name, _)) => Err(format!("{name} has no value in the trained model")),
        None => Ok(out),
    }
}

/// The safetensors bytes of `model` under `names`, with `metadata` in the header.
fn safetensors_bytes<B: Backend>(
    model: &Gpt<B>,
    names: Names,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let mut store =
        SafetensorsStore::from_bytes(None).with_to_adapter(HeadOnly(BurnToPyTorchAdapter));
    if names == Names::Hf {
        for (from, to) in TO_GPT2 {
            store = store.with_key_remapping(from, to);
        }
    }
    for (key, value) in metadata {
        store = store.metadata(key, value);
    }
    model.save_into(&mut store).map_err(|e| e.to_string())?;
    store.get_bytes().map_err(|e| e.to_string())
}

/// GPT-2's `config.json` for a kiln model. `eot` is the `<|endoftext|>` id, when the
/// vocabulary has one.
fn hf_config(model: &GptSpec, vocab_size: usize, eot: Option<u32>) -> serde_json::Value {
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab_size,
        "n_positions": model.block_size,
        "n_embd": model.d_model,
        "n_layer": model.n_layers,
        "n_head": model.n_heads,
        "n_inner": model.d_ff(),
        "activation_function": match model.activation {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_new",
            Activation::Relu => "relu",
            Activation::SwiGlu => unreachable!("export refuses SwiGLU models under GPT-2 names"),
        },
        "layer_norm_epsilon": model.norm_eps,
        "resid_pdrop": model.dropout,
        "embd_pdrop": model.dropout,
        // kiln's attention has no dropout on the attention weights.
        "attn_pdrop": 0.0,
        "scale_attn_weights": true,
        "tie_word_embeddings": model.tie_embeddings,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "dtype": "float32",
    })
}

/// What `export` wrote.
#[derive(Debug)]
pub struct Exported {
    pub files: Vec<PathBuf>,
    pub tensors: usize,
}

/// Writes `model`, of the run `spec` describes, to `out/model.safetensors` (with
/// `config.json` for Hugging Face names), through burn-store. `metadata` goes into the
/// safetensors header.
pub fn export<B: Backend>(
    model: &Gpt<B>,
    spec: &RunSpec,
    names: Names,
    eot: Option<u32>,
    metadata: HashMap<String, String>,
    out: &Path,
) -> Result<Exported, InteropError> {
    let gpt = match (&spec.model, names) {
        (model, Names::Hf) => match (gpt2_mismatch(model), model.as_gpt()) {
            (None, Some(gpt)) => Some(gpt),
            (mismatch, _) => return Err(InteropError::NotGpt2(mismatch.unwrap_or_default())),
        },
        (_, Names::Kiln) => None,
    };
    std::fs::create_dir_all(out)
        .map_err(|e| file_error(out, format!("cannot create the folder: {e}")))?;
    let weights = out.join(WEIGHTS_FILE);
    let bytes = match gpt {
        Some(gpt) => with_gpt2_biases(model, gpt, spec.vocab_size())
            .and_then(|model| safetensors_bytes(&model, names, metadata)),
        None => safetensors_bytes(model, names, metadata),
    }
    .map_err(|e| file_error(&weights, e))?;
    let tensors =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| file_error(&weights, e))?.len();
    write_atomic(&weights, &bytes).map_err(InteropError::Write)?;
    let mut files = vec![weights];
    if let Some(gpt) = gpt {
        let path = out.join(HF_CONFIG_FILE);
        let config = hf_config(gpt, spec.vocab_size(), eot);
        let text = serde_json::to_vec_pretty(&config).map_err(|e| file_error(&path, e))?;
        write_atomic(&path, &text).map_err(InteropError::Write)?;
        files.push(path);
    }
    Ok(Exported { files, tensors })
}

#[cfg(test)]
mod tests {
    use super::import::FROM_GPT2;
    use super::*;

    /// `name` through regex replacements applied in order, as burn-store's remapping does.
    fn remap(name: &str, rules: &[(&str, &str)]) -> String {
        rules.iter().fold(name.to_string(), |name, (from, to)| {
            regex::Regex::new(from).unwrap().replace(&name, *to).into_owned()
        })
    }

    #[test]
    fn names_map_both_ways() {
        for (kiln, hf) in [
            ("wte.weight", "transformer.wte.weight"),
            ("blocks.3.ln_1.gamma", "transformer.h.3.ln_1.weight"),
            ("blocks.3.ln_2.beta", "transformer.h.3.ln_2.bias"),
            ("blocks.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.weight"),
            ("blocks.11.mlp.c_proj.bias", "transformer.h.11.mlp.c_proj.bias"),
            ("ln_f.gamma", "transformer.ln_f.weight"),
            ("lm_head.weight", "lm_head.weight"),
        ] {
            assert_eq!(remap(kiln, &TO_GPT2), hf);
            assert_eq!(remap(hf, &FROM_GPT2), kiln);
            let bare = hf.strip_prefix("transformer.").unwrap_or(hf);
            assert_eq!(remap(bare, &FROM_GPT2), kiln);
        }
    }
}
