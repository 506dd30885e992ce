//! Run configuration: TOML file, then `KILN_<SECTION>__<KEY>` environment variables, then
//! `--set section.key=value` overrides, deserialized strictly and validated.

mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use validate::{validate, validate_shape};

/// Everything a run needs, as resolved from all layers. Written to `<run>/config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    #[serde(default)]
    pub run: RunSection,
    pub data: DataSection,
    pub model: ModelSection,
    pub training: TrainingSection,
    #[serde(default)]
    pub backend: BackendSection,
    #[serde(default)]
    pub distributed: DistributedSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Directory name under `artifacts_dir`; defaults to the config file's stem.
    #[serde(default)]
    pub name: String,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    #[serde(default = "defaults::artifacts_dir")]
    pub artifacts_dir: PathBuf,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            name: String::new(),
            seed: defaults::seed(),
            artifacts_dir: defaults::artifacts_dir(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// `text`: one corpus for a language model; `parallel`: aligned source/target lines for
    /// a seq2seq model.
    #[serde(default)]
    pub kind: DataKind,
    /// `text`: the UTF-8 corpus, relative to the working directory.
    #[serde(default)]
    pub path: PathBuf,
    /// `parallel`: training sources and targets, one sentence per line, aligned by line
    /// (plain or .gz).
    #[serde(default)]
    pub source: Option<PathBuf>,
    #[serde(default)]
    pub target: Option<PathBuf>,
    /// `parallel`: the validation pair; without one, the last `val_fraction` of the
    /// training pairs is held out.
    #[serde(default)]
    pub valid_source: Option<PathBuf>,
    #[serde(default)]
    pub valid_target: Option<PathBuf>,
    /// `parallel`: the test pair, which `kiln eval --split test` scores.
    #[serde(default)]
    pub test_source: Option<PathBuf>,
    #[serde(default)]
    pub test_target: Option<PathBuf>,
    /// `char`, `tiktoken:gpt2`, `tiktoken:cl100k_base` or `tiktoken:o200k_base`.
    #[serde(default = "defaults::tokenizer")]
    pub tokenizer: String,
    /// Fraction of the token stream (its tail) held out for validation.
    #[serde(default = "defaults::val_fraction")]
    pub val_fraction: f64,
    /// Char tokenizer only: map characters unseen in the corpus to `<unk>` instead of failing.
    #[serde(default)]
    pub allow_unknown: bool,
    /// Word tokenizer only: words seen fewer times than this become `<|unk|>`.
    #[serde(default = "defaults::one")]
    pub min_count: usize,
    /// How training windows are drawn: `random` starts, or a `sliding` window with `stride`.
    #[serde(default)]
    pub sampling: SamplingMode,
    /// Sliding sampling: tokens between window starts; defaults to `model.block_size`.
    #[serde(default)]
    pub stride: Option<usize>,
    /// Keep windows inside one `<|endoftext|>`-separated document (windows that would cross
    /// a separator are dropped).
    #[serde(default)]
    pub respect_documents: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    #[default]
    Text,
    Parallel,
}

/// One split of a parallel corpus: its source and target files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Valid,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Valid => "valid",
            Self::Test => "test",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplingMode {
    /// Windows at uniformly random starts, as nanoGPT's `get_batch`.
    #[default]
    Random,
    /// Every window at a multiple of `stride`, shuffled once per pass, as Raschka's
    /// `GPTDatasetV1`.
    Sliding,
}

impl DataSection {
    pub fn stride(&self, block_size: usize) -> usize {
        self.stride.unwrap_or(block_size)
    }

    /// The (source, target) files of a split of a parallel corpus, with the keys they come
    /// from; `None` where the config names none.
    pub fn pair_files(&self, split: Split) -> Option<[(&'static str, &Path); 2]> {
        let (source, target, keys) = match split {
            Split::Train => (&self.source, &self.target, ["data.source", "data.target"]),
            Split::Valid => (
                &self.valid_source,
                &self.valid_target,
                ["data.valid_source", "data.valid_target"],
            ),
            Split::Test => (
                &self.test_source,
                &self.test_target,
                ["data.test_source", "data.test_target"],
            ),
        };
        Some([(keys[0], source.as_deref()?), (keys[1], target.as_deref()?)])
    }

    pub fn fit_options(&self) -> crate::tokenizer::FitOptions {
        crate::tokenizer::FitOptions {
            allow_unknown: self.allow_unknown,
            min_count: self.min_count,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A decoder-only language model.
    Gpt,
    /// An encoder-decoder translation model, trained on `data.kind = "parallel"`.
    Seq2Seq,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    #[serde(default = "defaults::model_kind")]
    pub kind: ModelKind,
    /// Filled in from the tokenizer; may be set larger (e.g. padded to a multiple of 64).
    #[serde(default)]
    pub vocab_size: Option<usize>,
    pub d_model: usize,
    pub n_heads: usize,
    /// GPT blocks; for seq2seq, encoder layers.
    pub n_layers: usize,
    /// Seq2seq decoder layers; defaults to `n_layers`.
    #[serde(default)]
    pub n_decoder_layers: Option<usize>,
    /// Feed-forward width; defaults to 4 * d_model.
    #[serde(default)]
    pub d_ff: Option<usize>,
    pub block_size: usize,
    #[serde(default)]
    pub dropout: f64,
    /// Biases on the linear layers and LayerNorms.
    #[serde(default = "defaults::yes")]
    pub bias: bool,
    /// Bias on the query/key/value projection; defaults to `bias`.
    #[serde(default)]
    pub qkv_bias: Option<bool>,
    #[serde(default = "defaults::yes")]
    pub tie_embeddings: bool,
    /// Feed-forward network: `gelu` (exact), `gelu_tanh` (GPT-2's approximation), `relu` or `swiglu`.
    #[serde(default)]
    pub activation: crate::model::Activation,
    /// `layernorm` or `rmsnorm`.
    #[serde(default)]
    pub norm: crate::model::NormKind,
    /// Pre-norm blocks (`true`, GPT-2) or post-norm (`false`, the original Transformer).
    #[serde(default = "defaults::yes")]
    pub norm_first: bool,
    /// The normalisation's epsilon.
    #[serde(default = "defaults::norm_eps")]
    pub norm_eps: f64,
    /// `learned`, `sinusoidal` or `rope`.
    #[serde(default)]
    pub positions: crate::model::PositionKind,
    /// RoPE's base θ.
    #[serde(default = "defaults::rope_theta")]
    pub rope_theta: f64,
    /// How new weights are drawn: `gpt2` or `torch` (PyTorch's defaults).
    #[serde(default)]
    pub init: crate::model::InitScheme,
}

impl ModelSection {
    pub const DEFAULT_ROPE_THETA: f64 = 10000.0;

    pub fn d_ff(&self) -> usize {
        self.d_ff.unwrap_or(4 * self.d_model)
    }

    pub fn n_decoder_layers(&self) -> usize {
        self.n_decoder_layers.unwrap_or(self.n_layers)
    }

    pub fn qkv_bias(&self) -> bool {
        self.qkv_bias.unwrap_or(self.bias)
    }

    /// One line for people: the architecture choices as the config spells them.
    pub fn describe(&self) -> String {
        let layers = match self.kind {
            ModelKind::Gpt => format!("gpt, {} layers", self.n_layers),
            ModelKind::Seq2Seq => format!(
                "seq2seq, {}+{} layers",
                self.n_layers,
                self.n_decoder_layers()
            ),
        };
        format!(
            "{layers}, vocab {}, d_model {}, {} heads, d_ff {}, block {}, dropout {}, bias {} (qkv {}), tied {}, {} {}, {}, {} positions, {} init",
            self.vocab_size.map_or("?".into(), |v| v.to_string()),
            self.d_model,
            self.n_heads,
            self.d_ff(),
            self.block_size,
            self.dropout,
            self.bias,
            self.qkv_bias(),
            self.tie_embeddings,
            if self.norm_first { "pre-norm" } else { "post-norm" },
            spelled(&self.norm),
            spelled(&self.activation),
            spelled(&self.positions),
            spelled(&self.init),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    pub batch_size: usize,
    /// Optimizer steps (each one `grad_accumulation` micro-batches).
    pub max_iters: usize,
    pub learning_rate: f64,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default)]
    pub warmup_iters: usize,
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "defaults::beta1")]
    pub beta1: f64,
    #[serde(default = "defaults::beta2")]
    pub beta2: f64,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f64,
    #[serde(default = "defaults::one")]
    pub grad_accumulation: usize,
    /// Steps between validations; the Learner's epoch.
    pub eval_interval: usize,
    pub eval_iters: usize,
    /// Steps between checkpoints; a multiple of `eval_interval`. Defaults to `eval_interval`.
    #[serde(default)]
    pub checkpoint_interval: Option<usize>,
    /// How many checkpoints to keep on disk (the newest ones).
    #[serde(default = "defaults::keep_checkpoints")]
    pub keep_checkpoints: usize,
    /// The learning-rate shape after warmup: `cosine` (down to `min_lr` at `max_iters`) or
    /// `noam` (∝ 1/√step, "Attention Is All You Need").
    #[serde(default)]
    pub schedule: crate::train::ScheduleKind,
    /// Seq2seq: the probability mass ε spread over the whole vocabulary in the training
    /// targets (0.1 in the paper); validation losses are unsmoothed.
    #[serde(default)]
    pub label_smoothing: f64,
}

impl TrainingSection {
    pub fn checkpoint_interval(&self) -> usize {
        self.checkpoint_interval.unwrap_or(self.eval_interval)
    }

    /// Tokens consumed per optimizer step.
    pub fn tokens_per_step(&self, block_size: usize) -> usize {
        self.batch_size * self.grad_accumulation * block_size
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    /// `ndarray`, `wgpu`, `tch-cpu` or `cuda`; defaults to cuda when compiled in, else ndarray.
    #[serde(default = "defaults::backend")]
    pub name: String,
    /// GPU index for wgpu and cuda.
    #[serde(default)]
    pub device: usize,
    /// Float precision: `f32`, or `f16` / `bf16` where the backend runs them (libtorch).
    #[serde(default = "defaults::precision")]
    pub precision: String,
}

impl Default for BackendSection {
    fn default() -> Self {
        Self {
            name: defaults::backend(),
            device: 0,
            precision: defaults::precision(),
        }
    }
}

/// Data-parallel training: one replica of the model per local device and node; see
/// [`crate::distributed`]. The defaults are one device on one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedSection {
    /// Local device indices of the chosen backend, one replica each (empty: `backend.device`).
    #[serde(default)]
    pub devices: Vec<usize>,
    /// Machines taking part.
    #[serde(default = "defaults::one")]
    pub nodes: usize,
    /// This machine, `0..nodes`; node 0 listens at `coordinator` and writes the run.
    #[serde(default)]
    pub node_rank: usize,
    /// `host:port` of node 0, where the other nodes send their gradients (needed when
    /// `nodes > 1`; node 0 listens on exactly this address).
    #[serde(default)]
    pub coordinator: String,
    /// Seconds a replica waits for the others (at start and at each gradient exchange)
    /// before it gives up with an error.
    #[serde(default = "defaults::distributed_timeout")]
    pub timeout_secs: u64,
}

impl Default for DistributedSection {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            nodes: 1,
            node_rank: 0,
            coordinator: String::new(),
            timeout_secs: defaults::distributed_timeout(),
        }
    }
}

impl DistributedSection {
    /// Replicas on this machine.
    pub fn local_replicas(&self) -> usize {
        self.devices.len().max(1)
    }

    /// Replicas in the whole run: each takes `batch_size × grad_accumulation` windows a step.
    pub fn replicas(&self) -> usize {
        self.local_replicas() * self.nodes
    }
}

/// A config value as a config file spells it (`rmsnorm`, `swiglu`).
pub(crate) fn spelled<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

mod defaults {
    use std::path::PathBuf;

    pub fn seed() -> u64 {
        1337
    }
    pub fn artifacts_dir() -> PathBuf {
        PathBuf::from("artifacts")
    }
    pub fn tokenizer() -> String {
        "char".into()
    }
    pub fn val_fraction() -> f64 {
        0.1
    }
    pub fn model_kind() -> super::ModelKind {
        super::ModelKind::Gpt
    }
    pub fn yes() -> bool {
        true
    }
    pub fn norm_eps() -> f64 {
        1e-5
    }
    pub fn rope_theta() -> f64 {
        super::ModelSection::DEFAULT_ROPE_THETA
    }
    pub fn weight_decay() -> f64 {
        0.1
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.95
    }
    pub fn grad_clip() -> f64 {
        1.0
    }
    pub fn one() -> usize {
        1
    }
    pub fn keep_checkpoints() -> usize {
        3
    }
    pub fn backend() -> String {
        crate::backend::DEFAULT.to_string()
    }
    pub fn precision() -> String {
        "f32".into()
    }
    pub fn distributed_timeout() -> u64 {
        300
    }
}

/// Errors a user can cause through a config file, the environment or `--set`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Not marked as a `source`: the message already holds it, and `{:#}` would repeat it.
    #[error("cannot read config {file}: {reason}")]
    Load {
        file: PathBuf,
        reason: ::config::ConfigError,
    },
    #[error("--set {given:?}: expected section.key=value, e.g. --set training.learning_rate=3e-4")]
    BadOverride { given: String },
    #[error("{key} = {value}: expected {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: String,
    },
    #[error("cannot write {path}: {reason}")]
    Write {
        path: PathBuf,
        reason: std::io::Error,
    },
}

/// Reads `file`, layers the environment and the `--set` overrides on top, and validates.
pub fn load(file: &Path, overrides: &[String]) -> Result<RunSpec, ConfigError> {
    load_with_env(file, overrides, std::env::vars())
}

/// As [`load`], with the environment given explicitly (tests use this).
pub fn load_with_env(
    file: &Path,
    overrides: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<RunSpec, ConfigError> {
    let load_err = |reason| ConfigError::Load {
        file: file.to_path_buf(),
        reason,
    };
    if !file.is_file() {
        return Err(load_err(::config::ConfigError::Message(
            "file not found".into(),
        )));
    }
    // Only `KILN_<SECTION>__<KEY>` names a setting: other `KILN_` variables (the set-up
    // script's `KILN_VENV`, a test harness's seed) belong to other tools.
    let env_map: ::config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| {
            k.strip_prefix("KILN_")
                .is_some_and(|key| key.contains("__"))
        })
        .collect();
    let mut builder = ::config::Config::builder()
        .add_source(::config::File::from(file).format(::config::FileFormat::Toml))
        .add_source(
            ::config::Environment::with_prefix("KILN")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env_map)),
        );
    for given in overrides {
        let (key, value) = parse_override(given)?;
        builder = builder.set_override(key, value).map_err(load_err)?;
    }
    let mut spec: RunSpec = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(load_err)?;
    if spec.run.name.is_empty() {
        spec.run.name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    validate(&spec)?;
    Ok(spec)
}

/// `section.key=value` → (`section.key`, typed value). Numbers and booleans are parsed so
/// that they deserialize into numeric and boolean fields.
fn parse_override(given: &str) -> Result<(String, ::config::Value), ConfigError> {
    let bad = || ConfigError::BadOverride {
        given: given.to_string(),
    };
    let (key, raw) = given.split_once('=').ok_or_else(bad)?;
    let key = key.trim();
    if !key.contains('.') || key.starts_with('.') || key.ends_with('.') {
        return Err(bad());
    }
    let raw = raw.trim();
    let value = match raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(items) => items
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(scalar)
            .collect::<Vec<_>>()
            .into(),
        None => scalar(raw),
    };
    Ok((key.to_string(), value))
}

/// A `--set` value that is not a list: an integer, float, boolean or string.
fn scalar(raw: &str) -> ::config::Value {
    if let Ok(i) = raw.parse::<i64>() {
        i.into()
    } else if let Ok(f) = raw.parse::<f64>() {
        f.into()
    } else if let Ok(b) = raw.parse::<bool>() {
        b.into()
    } else {
        raw.trim_matches('"').to_string().into()
    }
}

impl RunSpec {
    /// Reads a resolved config written by a previous run (no layering, still validated
    /// apart from the data file, which a finished run no longer needs).
    pub fn read_resolved(path: &Path) -> Result<Self, ConfigError> {
        let load_err = |msg: String| ConfigError::Load {
            file: path.to_path_buf(),
            reason: ::config::ConfigError::Message(msg),
        };
        let text = std::fs::read_to_string(path).map_err(|e| load_err(e.to_string()))?;
        let spec: RunSpec = toml::from_str(&text).map_err(|e| load_err(e.to_string()))?;
        validate::validate_shape(&spec)?;
        Ok(spec)
    }

    pub fn write_resolved(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self).expect("RunSpec always serializes to TOML");
        crate::run_dir::write_atomic(path, text.as_bytes()).map_err(|reason| ConfigError::Write {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Whether `other` describes the same model (an unset vocab_size matches any).
    pub fn model_matches(&self, other: &RunSpec) -> bool {
        let mut theirs = other.model.clone();
        if theirs.vocab_size.is_none() {
            theirs.vocab_size = self.model.vocab_size;
        }
        self.model == theirs
    }

    pub fn vocab_size(&self) -> usize {
        self.model
            .vocab_size
            .expect("vocab_size is resolved from the tokenizer before use")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_values_are_typed() {
        let (k, v) = parse_override("training.learning_rate=3e-4").unwrap();
        assert_eq!(k, "training.learning_rate");
        assert_eq!(v.into_float().unwrap(), 3e-4);
        let (_, v) = parse_override("model.bias=false").unwrap();
        assert!(!v.into_bool().unwrap());
        assert!(parse_override("learning_rate=1").is_err());
        assert!(parse_override("training.learning_rate").is_err());
        let (_, v) = parse_override("distributed.devices=[0, 1]").unwrap();
        let items: Vec<i64> = v
            .into_array()
            .unwrap()
            .into_iter()
            .map(|i| i.into_int().unwrap())
            .collect();
        assert_eq!(items, [0, 1]);
    }
}
