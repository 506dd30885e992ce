//! A GPT-2 checkpoint in Hugging Face form read back as kiln parameters and a `[model]`
//! section that describes the same network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use super::{file_error, transpose, InteropError, HF_CONFIG_FILE, WEIGHTS_FILE};
use crate::config::{Activation, GptSpec};
use crate::model::ParamValues;

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
    pub model: GptSpec,
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
    let params = from_hf(read_safetensors(&weights)?, &weights)?;
    check_sizes(&model, &params, &weights)?;
    Ok(Gpt2Checkpoint { params, model, weights })
}

/// Refuses a config.json whose sizes its weights do not have, before a model of those
/// sizes is built: the file's tensors bound what an import allocates.
fn check_sizes(
    model: &GptSpec,
    params: &HashMap<String, ParamValues>,
    path: &Path,
) -> Result<(), InteropError> {
    let (d, vocab) = (model.d_model, model.vocab_size.unwrap_or(0));
    let expected = [
        ("wte.weight", vec![vocab, d], "vocab_size and n_embd"),
        ("wpe.weight", vec![model.block_size, d], "n_positions and n_embd"),
        ("blocks.0.mlp.c_fc.weight", vec![d, model.d_ff()], "n_embd and n_inner"),
    ];
    for (name, shape, keys) in expected {
        let found = params.get(name).map(|p| &p.shape);
        if found != Some(&shape) {
            let found = found.map_or("missing".into(), |s| format!("{s:?}"));
            return Err(file_error(
                path,
                format!(
                    "tensor {name} is {found}, but config.json's {keys} make it {shape:?}; \
                     the config.json is not the one of these weights"
                ),
            ));
        }
    }
    let layers = params
        .keys()
        .filter_map(|n| n.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |last| last + 1);
    if layers != model.n_layers {
        return Err(file_error(
            path,
            format!(
                "the weights have {layers} layers, but config.json says n_layer = {}",
                model.n_layers
            ),
        ));
    }
    Ok(())
}

fn model_section(c: &Gpt2Config, path: &Path) -> Result<GptSpec, InteropError> {
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
    let mut model = GptSpec::gpt2(c.n_embd, c.n_head, c.n_layer, c.n_positions);
    model.vocab_size = Some(c.vocab_size);
    model.d_ff = Some(c.n_inner.unwrap_or(4 * c.n_embd));
    model.dropout = c.resid_pdrop;
    model.tie_embeddings = c.tie_word_embeddings;
    model.activation = activation;
    model.norm_eps = c.layer_norm_epsilon;
    Ok(model)
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
            let values: Vec<f32> = match view.dtype() {
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
                other => {
                    return Err(file_error(
                        path,
                        format!(
                            "tensor {name} has dtype {other:?}; kiln reads F32, F16, BF16 and F64"
                        ),
                    ))
                }
            };
            Ok(ParamValues { name, shape: view.shape().to_vec(), values })
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
        let bare = p.name.strip_prefix("transformer.").unwrap_or(&p.name).to_string();
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
            _ => ParamValues { name: kiln.clone(), ..p },
        };
        out.insert(kiln, p);
    }
    Ok(out)
}

/// The kiln name of a GPT-2 parameter given without its `transformer.` prefix.
pub(super) fn kiln_name(bare: &str) -> Option<String> {
    if bare == "lm_head.weight" || bare == "wte.weight" || bare == "wpe.weight" {
        return Some(bare.to_string());
    }
    let name = match bare.strip_prefix("h.") {
        Some(rest) => format!("blocks.{rest}"),
        None if bare.starts_with("ln_f.") => bare.to_string(),
        None => return None,
    };
    let is_norm = name.starts_with("ln_f.") || name.contains(".ln_1.") || name.contains(".ln_2.");
    Some(match (is_norm, name.strip_suffix(".weight"), name.strip_suffix(".bias")) {
        (true, Some(stem), _) => format!("{stem}.gamma"),
        (true, _, Some(stem)) => format!("{stem}.beta"),
        _ => name,
    })
}
