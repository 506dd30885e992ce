//! A GPT-2 checkpoint in Hugging Face form read back as kiln parameters and a `[model]`
//! section that describes the same network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::prelude::Backend;
use burn::tensor::DType;
use burn_store::{
    ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, SafetensorsStore,
    TensorSnapshot,
};
use serde::Deserialize;

use super::{file_error, HeadOnly, InteropError, HF_CONFIG_FILE, WEIGHTS_FILE};
use crate::config::{Activation, GptSpec};
use crate::model::Gpt;

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
    /// The safetensors file of its weights, which [`load_gpt2`] reads.
    pub weights: PathBuf,
}

/// Reads `dir/config.json` (GPT-2) and checks it against the tensors of
/// `dir/model.safetensors`.
pub fn read_gpt2(dir: &Path) -> Result<Gpt2Checkpoint, InteropError> {
    let config_path = dir.join(HF_CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| file_error(&config_path, e))?;
    let config: Gpt2Config = serde_json::from_str(&text)
        .map_err(|e| file_error(&config_path, format!("not a GPT-2 config: {e}")))?;
    let model = model_section(&config, &config_path)?;
    let weights = dir.join(WEIGHTS_FILE);
    check_sizes(&model, &tensor_shapes(&weights)?, &weights)?;
    Ok(Gpt2Checkpoint { model, weights })
}

/// `model` (built from [`read_gpt2`]'s section) with the checkpoint's weights.
pub fn load_gpt2<B: Backend>(mut model: Gpt<B>, weights: &Path) -> Result<Gpt<B>, InteropError> {
    let result = model.load_from(&mut gpt2_store(weights)).map_err(|e| file_error(weights, e))?;
    // Attention-mask buffers that old files carry are not parameters.
    let stray = result
        .unused
        .iter()
        .find(|name| !name.ends_with(".attn.bias") && !name.ends_with(".attn.masked_bias"));
    match stray {
        Some(name) => Err(file_error(weights, format!("tensor {name}: not a GPT-2 parameter"))),
        None => Ok(model),
    }
}

/// burn-store's reader of a GPT-2 safetensors file under kiln's names. Both
/// `transformer.h.0…` (GPT2LMHeadModel) and `h.0…` (GPT2Model, as the original `gpt2` files
/// are) are accepted; F16, BF16 and F64 tensors become F32.
fn gpt2_store(weights: &Path) -> SafetensorsStore {
    let store = FROM_GPT2.iter().fold(SafetensorsStore::from_file(weights), |store, (from, to)| {
        store.with_key_remapping(from, *to)
    });
    store.with_from_adapter(HeadOnly(PyTorchToBurnAdapter).chain(ToF32))
}

/// GPT-2's parameter names (with or without `transformer.`) → kiln's, as regex replacements
/// applied in order.
pub(super) const FROM_GPT2: [(&str, &str); 4] = [
    (r"^transformer\.", ""),
    (r"^h\.", "blocks."),
    (r"(^|\.)(ln_1|ln_2|ln_f)\.weight$", "${1}${2}.gamma"),
    (r"(^|\.)(ln_1|ln_2|ln_f)\.bias$", "${1}${2}.beta"),
];

/// The shape of every tensor of the file, by kiln name; nothing is loaded.
fn tensor_shapes(weights: &Path) -> Result<HashMap<String, Vec<usize>>, InteropError> {
    if !weights.is_file() {
        return Err(file_error(weights, "no such file"));
    }
    let mut store = gpt2_store(weights);
    let snapshots = store
        .get_all_snapshots()
        .map_err(|e| file_error(weights, format!("not a safetensors file: {e}")))?;
    Ok(snapshots.iter().map(|(name, s)| (name.clone(), s.shape.to_vec())).collect())
}

/// F16, BF16 and F64 tensors as the F32 kiln's models hold.
#[derive(Clone)]
struct ToF32;

impl ModuleAdapter for ToF32 {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        if !matches!(snapshot.dtype, DType::F16 | DType::BF16 | DType::F64) {
            return snapshot.clone();
        }
        let data = snapshot.clone_data_fn();
        TensorSnapshot::from_closure(
            Rc::new(move || Ok(data()?.convert::<f32>())),
            DType::F32,
            snapshot.shape.clone(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Refuses a config.json whose sizes its weights do not have, before a model of those
/// sizes is built: the file's tensors bound what an import allocates.
fn check_sizes(
    model: &GptSpec,
    shapes: &HashMap<String, Vec<usize>>,
    path: &Path,
) -> Result<(), InteropError> {
    let (d, vocab) = (model.d_model, model.vocab_size.unwrap_or(0));
    let expected = [
        ("wte.weight", vec![vocab, d], "vocab_size and n_embd"),
        ("wpe.weight", vec![model.block_size, d], "n_positions and n_embd"),
        ("blocks.0.mlp.c_fc.weight", vec![d, model.d_ff()], "n_embd and n_inner"),
    ];
    for (name, shape, keys) in expected {
        let found = shapes.get(name);
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
    let layers = shapes
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
