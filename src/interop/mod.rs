//! Hugging Face interop: a kiln GPT as `model.safetensors` + GPT-2 `config.json`, and a GPT-2
//! checkpoint in that form read back as kiln parameters.
//!
//! kiln's GPT is laid out like GPT-2, so the mapping is mostly renaming:
//! `blocks.N.…` ↔ `transformer.h.N.…`, LayerNorm `gamma`/`beta` ↔ `weight`/`bias`. Burn's
//! `Linear` stores its weight as `[in, out]`, which is exactly the layout of GPT-2's `Conv1D`,
//! and kiln's `c_attn` is already the fused `[q | k | v]` projection, so no weight is split
//! or transposed, except an untied `lm_head` (a torch `nn.Linear`, stored `[out, in]`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::json;

use crate::config::{Activation, GptSpec, ModelSpec, NormKind, PositionKind, RunSpec};
use crate::files::write_atomic;
use crate::model::ParamValues;

mod import;

pub use import::{read_gpt2, Gpt2Checkpoint};

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

/// The GPT-2 name of a kiln parameter.
fn hf_name(kiln: &str) -> String {
    if kiln.starts_with("lm_head.") {
        return kiln.to_string();
    }
    let name =
        kiln.strip_prefix("blocks.").map_or_else(|| kiln.to_string(), |rest| format!("h.{rest}"));
    let name = match (name.strip_suffix(".gamma"), name.strip_suffix(".beta")) {
        (Some(stem), _) => format!("{stem}.weight"),
        (_, Some(stem)) => format!("{stem}.bias"),
        _ => name,
    };
    format!("transformer.{name}")
}

/// `[rows, cols]` row-major → `[cols, rows]`.
pub(super) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| values[r * cols + c])).collect()
}

/// kiln's parameters under GPT-2's names and layouts. GPT-2 always has biases: a model
/// trained with `model.bias = false` gets zero ones, which computes the same function.
fn to_hf(params: Vec<ParamValues>) -> Vec<ParamValues> {
    let mut out: Vec<ParamValues> = params
        .into_iter()
        .map(|p| match p.shape[..] {
            [d_model, vocab] if p.name == "lm_head.weight" => ParamValues {
                values: transpose(&p.values, d_model, vocab),
                shape: vec![vocab, d_model],
                name: p.name,
            },
            _ => ParamValues { name: hf_name(&p.name), ..p },
        })
        .collect();
    let names: std::collections::HashSet<String> = out.iter().map(|p| p.name.clone()).collect();
    let missing: Vec<ParamValues> = out
        .iter()
        .filter(|p| {
            p.name.starts_with("transformer.")
                && !p.name.contains(".wte.")
                && !p.name.contains(".wpe.")
        })
        .filter_map(|p| {
            let bias = format!("{}.bias", p.name.strip_suffix(".weight")?);
            let width = *p.shape.last()?;
            (!names.contains(&bias)).then(|| ParamValues {
                name: bias,
                shape: vec![width],
                values: vec![0.0; width],
            })
        })
        .collect();
    out.extend(missing);
    out
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

/// Writes `params` of the run `spec` describes to `out/model.safetensors` (with `config.json`
/// for Hugging Face names). `metadata` goes into the safetensors header.
pub fn export(
    params: Vec<ParamValues>,
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
    let params = match names {
        Names::Hf => to_hf(params),
        Names::Kiln => params,
    };
    let bytes: Vec<Vec<u8>> =
        params.iter().map(|p| p.values.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views = params
        .iter()
        .zip(&bytes)
        .map(|(p, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, p.shape.clone(), b)
                .map(|view| (p.name.clone(), view))
                .map_err(|e| file_error(out, format!("tensor {}: {e}", p.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let weights = out.join(WEIGHTS_FILE);
    let data =
        safetensors::serialize(views, Some(metadata)).map_err(|e| file_error(&weights, e))?;
    write_atomic(&weights, &data).map_err(InteropError::Write)?;
    let mut files = vec![weights];
    if let Some(gpt) = gpt {
        let path = out.join(HF_CONFIG_FILE);
        let config = hf_config(gpt, spec.vocab_size(), eot);
        let text = serde_json::to_vec_pretty(&config).map_err(|e| file_error(&path, e))?;
        write_atomic(&path, &text).map_err(InteropError::Write)?;
        files.push(path);
    }
    Ok(Exported { files, tensors: params.len() })
}

#[cfg(test)]
mod tests {
    use super::import::kiln_name;
    use super::*;

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
            assert_eq!(hf_name(kiln), hf);
            let bare = hf.strip_prefix("transformer.").unwrap_or(hf);
            assert_eq!(kiln_name(bare).as_deref(), Some(kiln));
        }
        assert_eq!(kiln_name("score.weight"), None);
    }

    #[test]
    fn missing_biases_are_zero_and_lm_head_is_transposed() {
        let p = |name: &str, shape: Vec<usize>| ParamValues {
            name: name.into(),
            values: (0..shape.iter().product::<usize>()).map(|v| v as f32).collect(),
            shape,
        };
        let hf = to_hf(vec![
            p("blocks.0.mlp.c_fc.weight", vec![2, 3]),
            p("ln_f.gamma", vec![2]),
            p("lm_head.weight", vec![2, 3]),
        ]);
        let find =
            |n: &str| hf.iter().find(|p| p.name == n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(find("transformer.h.0.mlp.c_fc.bias").values, vec![0.0; 3]);
        assert_eq!(find("transformer.ln_f.bias").values, vec![0.0; 2]);
        assert_eq!(find("lm_head.weight").shape, vec![3, 2]);
        assert_eq!(find("lm_head.weight").values, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(hf.len(), 5);
    }
}
