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

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use serde_json::json;

use crate::config::{ModelSection, RunSpec};
use crate::model::{Activation, ParamValues};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const HF_CONFIG_FILE: &str = "config.json";

#[derive(Debug, thiserror::Error)]
pub enum InteropError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: {key} = {value}: {expected}")]
    Config {
        path: PathBuf,
        key: &'static str,
        value: String,
        expected: String,
    },
    #[error("{0}: GPT-2 has learned positions, LayerNorm, GELU and pre-norm blocks, so transformers' GPT2LMHeadModel cannot run this model; export it with --names kiln")]
    NotGpt2(String),
}

/// Why a kiln model is not a GPT-2, if it is not.
fn gpt2_mismatch(model: &ModelSection) -> Option<String> {
    use crate::config::spelled;
    use crate::model::{NormKind, PositionKind};
    if model.positions != PositionKind::Learned {
        return Some(format!("model.positions = {}", spelled(&model.positions)));
    }
    if model.norm != NormKind::LayerNorm {
        return Some(format!("model.norm = {}", spelled(&model.norm)));
    }
    if model.activation == Activation::SwiGlu {
        return Some(format!("model.activation = {}", spelled(&model.activation)));
    }
    if !model.norm_first {
        return Some("model.norm_first = false".into());
    }
    None
}

fn file_error(path: &Path, reason: impl ToString) -> InteropError {
    InteropError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
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
    let name = kiln
        .strip_prefix("blocks.")
        .map_or_else(|| kiln.to_string(), |rest| format!("h.{rest}"));
    let name = match (name.strip_suffix(".gamma"), name.strip_suffix(".beta")) {
        (Some(stem), _) => format!("{stem}.weight"),
        (_, Some(stem)) => format!("{stem}.bias"),
        _ => name,
    };
    format!("transformer.{name}")
}

/// `[rows, cols]` row-major → `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
        .collect()
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
            _ => ParamValues {
                name: hf_name(&p.name),
                ..p
            },
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
fn hf_config(model: &ModelSection, vocab_size: usize, eot: Option<u32>) -> serde_json::Value {
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
    if let Some(mismatch) = gpt2_mismatch(&spec.model).filter(|_| names == Names::Hf) {
        return Err(InteropError::NotGpt2(mismatch));
    }
    std::fs::create_dir_all(out)
        .map_err(|e| file_error(out, format!("cannot create the folder: {e}")))?;
    let params = match names {
        Names::Hf => to_hf(params),
        Names::Kiln => params,
    };
    let bytes: Vec<Vec<u8>> = params
        .iter()
        .map(|p| p.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
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
    crate::run_dir::write_atomic(&weights, &data).map_err(|e| file_error(&weights, e))?;
    let mut files = vec![weights];
    if names == Names::Hf {
        let path = out.join(HF_CONFIG_FILE);
        let config = hf_config(&spec.model, spec.vocab_size(), eot);
        let text = serde_json::to_vec_pretty(&config).map_err(|e| file_error(&path, e))?;
        crate::run_dir::write_atomic(&path, &text).map_err(|e| file_error(&path, e))?;
        files.push(path);
    }
    Ok(Exported {
        files,
        tensors: params.len(),
    })
}

/// The fields of a GPT-2 `config.json` kiln reads; the rest (tokenizer ids, task heads) do
/// not change the network.
#[derive(Debug, Deserialize)]
struct Gpt2Config {
    model_type: Option<String>,
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_inner: Option<usize>,
    #[serde(default = "gelu_new")]
    activation_function: String,
    #[serde(default = "layer_norm_epsilon")]
    layer_norm_epsilon: f64,
    #[serde(default)]
    resid_pdrop: f64,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    #[serde(default = "yes")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    add_cross_attention: bool,
}

fn gelu_new() -> String {
    "gelu_new".into()
}
fn layer_norm_epsilon() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

/// A GPT-2 checkpoint read from a Hugging Face folder.
#[derive(Debug)]
pub struct Gpt2Checkpoint {
    /// The model section of a kiln config that describes the same network.
    pub model: ModelSection,
    /// Tensors by kiln parameter name, in kiln's layout.
    pub params: HashMap<String, ParamValues>,
    /// The safetensors file they came from.
    pub weights: PathBuf,
}

/// Reads `dir/config.json` (GPT-2) and `dir/model.safetensors`.
pub fn read_gpt2(dir: &Path) -> Result<Gpt2Checkpoint, InteropError> {
    let config_path = dir.join(HF_CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| file_error(&config_path, e))?;
    let config: Gpt2Config = serde_json::from_str(&text)
        .map_err(|e| file_error(&config_path, format!("not a GPT-2 config: {e}")))?;
    let model = model_section(&config, &config_path)?;
    let weights = dir.join(WEIGHTS_FILE);
    let params = read_safetensors(&weights)?;
    Ok(Gpt2Checkpoint {
        params: from_hf(params, &weights)?,
        model,
        weights,
    })
}

fn model_section(c: &Gpt2Config, path: &Path) -> Result<ModelSection, InteropError> {
    let unsupported = |key, value: String, expected: &str| InteropError::Config {
        path: path.to_path_buf(),
        key,
        value,
        expected: expected.to_string(),
    };
    if let Some(kind) = c.model_type.as_deref().filter(|t| *t != "gpt2") {
        return Err(unsupported(
            "model_type",
            format!("{kind:?}"),
            "\"gpt2\": kiln imports GPT-2 checkpoints only",
        ));
    }
    let activation = match c.activation_function.as_str() {
        "gelu" => Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        other => {
            return Err(unsupported(
                "activation_function",
                format!("{other:?}"),
                "\"gelu\", \"gelu_new\" or \"relu\"",
            ))
        }
    };
    if !c.scale_attn_weights || c.scale_attn_by_inverse_layer_idx {
        return Err(unsupported(
            "scale_attn_weights",
            format!("{} (scale_attn_by_inverse_layer_idx {})", c.scale_attn_weights, c.scale_attn_by_inverse_layer_idx),
            "true with scale_attn_by_inverse_layer_idx false (attention scaled by 1/sqrt(head_dim), as kiln does)",
        ));
    }
    if c.add_cross_attention {
        return Err(unsupported(
            "add_cross_attention",
            "true".into(),
            "false (a decoder-only GPT-2)",
        ));
    }
    if c.n_head == 0 || !c.n_embd.is_multiple_of(c.n_head) {
        return Err(unsupported(
            "n_head",
            c.n_head.to_string(),
            &format!("a divisor of n_embd ({})", c.n_embd),
        ));
    }
    Ok(ModelSection {
        kind: crate::config::ModelKind::Gpt,
        vocab_size: Some(c.vocab_size),
        d_model: c.n_embd,
        n_heads: c.n_head,
        n_layers: c.n_layer,
        n_decoder_layers: None,
        d_ff: Some(c.n_inner.unwrap_or(4 * c.n_embd)),
        block_size: c.n_positions,
        dropout: c.resid_pdrop,
        bias: true,
        qkv_bias: None,
        tie_embeddings: c.tie_word_embeddings,
        activation,
        norm: crate::model::NormKind::LayerNorm,
        norm_first: true,
        norm_eps: c.layer_norm_epsilon,
        positions: crate::model::PositionKind::Learned,
        rope_theta: crate::config::ModelSection::DEFAULT_ROPE_THETA,
        init: crate::model::InitScheme::Gpt2,
    })
}

/// Every tensor of a safetensors file as f32 (F32, F16, BF16 and F64 are read).
fn read_safetensors(path: &Path) -> Result<Vec<ParamValues>, InteropError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| file_error(path, format!("not a safetensors file: {e}")))?;
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values: Vec<f32> =
                match view.dtype() {
                    Dtype::F32 => data
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                    Dtype::F16 => data
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    Dtype::BF16 => data
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                    Dtype::F64 => data
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes(std::array::from_fn(|i| b[i])) as f32)
                        .collect(),
                    other => return Err(file_error(
                        path,
                        format!(
                            "tensor {name} has dtype {other:?}; kiln reads F32, F16, BF16 and F64"
                        ),
                    )),
                };
            Ok(ParamValues {
                name,
                shape: view.shape().to_vec(),
                values,
            })
        })
        .collect()
}

/// GPT-2 tensors under kiln's names. Both `transformer.h.0…` (GPT2LMHeadModel) and `h.0…`
/// (GPT2Model, as the original `gpt2` files are) are accepted; attention-mask buffers that old
/// files carry (`attn.bias`, `attn.masked_bias`) are not parameters and are skipped.
fn from_hf(
    params: Vec<ParamValues>,
    path: &Path,
) -> Result<HashMap<String, ParamValues>, InteropError> {
    let mut out = HashMap::new();
    for p in params {
        let bare = p
            .name
            .strip_prefix("transformer.")
            .unwrap_or(&p.name)
            .to_string();
        if bare.ends_with(".attn.bias") || bare.ends_with(".attn.masked_bias") {
            continue;
        }
        let kiln = kiln_name(&bare)
            .ok_or_else(|| file_error(path, format!("tensor {}: not a GPT-2 parameter", p.name)))?;
        let p = match p.shape[..] {
            [vocab, d_model] if kiln == "lm_head.weight" => ParamValues {
                values: transpose(&p.values, vocab, d_model),
                shape: vec![d_model, vocab],
                name: kiln.clone(),
            },
            _ => ParamValues {
                name: kiln.clone(),
                ..p
            },
        };
        out.insert(kiln, p);
    }
    Ok(out)
}

/// The kiln name of a GPT-2 parameter given without its `transformer.` prefix.
fn kiln_name(bare: &str) -> Option<String> {
    if bare == "lm_head.weight" || bare == "wte.weight" || bare == "wpe.weight" {
        return Some(bare.to_string());
    }
    let name = match bare.strip_prefix("h.") {
        Some(rest) => format!("blocks.{rest}"),
        None if bare.starts_with("ln_f.") => bare.to_string(),
        None => return None,
    };
    let is_norm = name.starts_with("ln_f.") || name.contains(".ln_1.") || name.contains(".ln_2.");
    Some(
        match (
            is_norm,
            name.strip_suffix(".weight"),
            name.strip_suffix(".bias"),
        ) {
            (true, Some(stem), _) => format!("{stem}.gamma"),
            (true, _, Some(stem)) => format!("{stem}.beta"),
            _ => name,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (kiln, hf) in [
            ("wte.weight", "transformer.wte.weight"),
            ("blocks.3.ln_1.gamma", "transformer.h.3.ln_1.weight"),
            ("blocks.3.ln_2.beta", "transformer.h.3.ln_2.bias"),
            (
                "blocks.0.attn.c_attn.weight",
                "transformer.h.0.attn.c_attn.weight",
            ),
            (
                "blocks.11.mlp.c_proj.bias",
                "transformer.h.11.mlp.c_proj.bias",
            ),
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
            values: (0..shape.iter().product::<usize>())
                .map(|v| v as f32)
                .collect(),
            shape,
        };
        let hf = to_hf(vec![
            p("blocks.0.mlp.c_fc.weight", vec![2, 3]),
            p("ln_f.gamma", vec![2]),
            p("lm_head.weight", vec![2, 3]),
        ]);
        let find = |n: &str| {
            hf.iter()
                .find(|p| p.name == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert_eq!(find("transformer.h.0.mlp.c_fc.bias").values, vec![0.0; 3]);
        assert_eq!(find("transformer.ln_f.bias").values, vec![0.0; 2]);
        assert_eq!(find("lm_head.weight").shape, vec![3, 2]);
        assert_eq!(
            find("lm_head.weight").values,
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        assert_eq!(hf.len(), 5);
    }
}
