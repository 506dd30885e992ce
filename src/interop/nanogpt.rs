//! A nanoGPT `ckpt.pt`, as its `train.py` saves it, read without Python: its `model_args`
//! become a `[model]` section and its `model` state dict loads through burn-store's PyTorch
//! reader.
//!
//! nanoGPT's names are GPT-2's (`transformer.h.0.attn.c_attn.weight`), with `_orig_mod.` in
//! front when the model was compiled. Its projections are `nn.Linear` (`[out, in]`), which
//! burn-store's PyTorch adapter transposes into Burn's `[in, out]`; its LayerNorms'
//! `weight`/`bias` are kiln's `gamma`/`beta`; `lm_head.weight` is tied to `wte.weight`, which
//! kiln's tied model reads as its output layer.

use std::path::Path;

use burn::prelude::Backend;
use burn_store::pytorch::PytorchReader;
use burn_store::{ModuleSnapshot, PytorchStore};
use serde::Deserialize;

use super::import::FROM_GPT2;
use super::{file_error, InteropError};
use crate::config::{Activation, GptSpec};
use crate::model::Gpt;

/// The `model_args` nanoGPT saves with every checkpoint.
#[derive(Debug, Deserialize)]
struct ModelArgs {
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    block_size: usize,
    vocab_size: usize,
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default)]
    dropout: f64,
}

fn yes() -> bool {
    true
}

/// The `[model]` section of the network a nanoGPT checkpoint holds.
pub fn read_nanogpt(path: &Path) -> Result<GptSpec, InteropError> {
    let args: ModelArgs = PytorchReader::load_config(path, Some("model_args")).map_err(|e| {
        file_error(path, format!("not a nanoGPT checkpoint (reading its model_args: {e})"))
    })?;
    if args.n_head == 0 || !args.n_embd.is_multiple_of(args.n_head) {
        return Err(InteropError::Config {
            path: path.to_path_buf(),
            key: "model_args.n_head",
            value: args.n_head.to_string(),
            expected: format!("a divisor of n_embd ({})", args.n_embd),
        });
    }
    let mut model = GptSpec::gpt2(args.n_embd, args.n_head, args.n_layer, args.block_size);
    model.vocab_size = Some(args.vocab_size);
    model.bias = args.bias;
    model.dropout = args.dropout;
    // nanoGPT's MLP uses `nn.GELU()`, the exact (erf) form, and always ties its head.
    model.activation = Activation::Gelu;
    model.tie_embeddings = true;
    model.norm_eps = 1e-5;
    Ok(model)
}

/// `model` (built from [`read_nanogpt`]'s section) with the checkpoint's weights.
pub fn load_nanogpt<B: Backend>(mut model: Gpt<B>, path: &Path) -> Result<Gpt<B>, InteropError> {
    let compiled = PytorchStore::from_file(path)
        .with_top_level_key("model")
        .with_key_remapping(r"^_orig_mod\.", "");
    let mut store =
        FROM_GPT2.iter().fold(compiled, |store, (from, to)| store.with_key_remapping(from, *to));
    let result = model.load_from(&mut store).map_err(|e| file_error(path, e))?;
    // The tied head and the causal-mask buffer nanoGPT keeps without flash attention are
    // not parameters of kiln's model; any other tensor is one it has no place for.
    let stray = result
        .unused
        .iter()
        .find(|name| *name != "lm_head.weight" && !name.ends_with(".attn.bias"));
    if let Some(name) = stray {
        return Err(file_error(
            path,
            format!("tensor {name} has no place in the model its model_args describe"),
        ));
    }
    Ok(model)
}
