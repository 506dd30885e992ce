//! Run configuration: a TOML file, then `KILN_<SECTION>__<KEY>` environment variables, then
//! `section.key=value` overrides, read into typed sections and validated once.
//!
//! This module is the bottom of kiln: it imports nothing else of the crate. Every choice is
//! an enum ([`choices`]), every model kind has its own section with its own defaults
//! ([`model`]), and a value of the wrong type is refused with its key, never converted.

pub mod choices;
mod layers;
pub mod model;
mod presets;
mod template;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use choices::{
    Activation, BackendName, DataKind, InitScheme, ModelKind, NormKind, PositionKind, Precision,
    SamplingMode, ScheduleKind, TokenizerSpec, TIKTOKEN_ENCODINGS,
};
pub use layers::{load, load_source, load_with_env};
pub use model::{GptSpec, ModelSpec, Seq2SeqSpec};
pub use presets::{ConfigSource, Preset, DEFAULT_FOR_DATA, PRESETS};
pub use template::PromptTemplate;
pub use validate::{validate, validate_shape};

/// Everything a run needs, as resolved from all layers. Written to `<run>/config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSpec {
    pub run: RunSection,
    pub data: DataSection,
    pub model: ModelSpec,
    pub training: TrainingSection,
    pub backend: BackendSection,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// `format` is accepted as another name for it.
    #[serde(default, alias = "format")]
    pub kind: DataKind,
    /// `text`: the UTF-8 corpus, relative to the working directory; `instructions`: the
    /// records, a JSON array or JSON Lines.
    #[serde(default)]
    pub path: PathBuf,
    /// `instructions`: the prompt each record is rendered with.
    #[serde(default)]
    pub template: PromptTemplate,
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
    #[serde(default = "defaults::tokenizer")]
    pub tokenizer: TokenizerSpec,
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

impl DataSection {
    pub fn stride(&self, block_size: usize) -> usize {
        self.stride.unwrap_or(block_size)
    }

    /// The (source, target) files of a split of a parallel corpus, with the keys they come
    /// from; `None` where the config names none.
    pub fn pair_files(&self, split: Split) -> Option<[(&'static str, &Path); 2]> {
        let (source, target, keys) = match split {
            Split::Train => (&self.source, &self.target, ["data.source", "data.target"]),
            Split::Valid => {
                (&self.valid_source, &self.valid_target, ["data.valid_source", "data.valid_target"])
            }
            Split::Test => {
                (&self.test_source, &self.test_target, ["data.test_source", "data.test_target"])
            }
        };
        Some([(keys[0], source.as_deref()?), (keys[1], target.as_deref()?)])
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
    /// The learning-rate shape after warmup.
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// Seq2seq: the probability mass ε spread over the whole vocabulary in the training
    /// targets (0.1 in the paper); validation losses are unsmoothed.
    #[serde(default)]
    pub label_smoothing: f64,
    /// DPO (`data.kind = "preferences"`): β, how far the tuned model may move from the
    /// reference model (0.1 in the paper and the book).
    #[serde(default = "defaults::dpo_beta")]
    pub dpo_beta: f64,
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
    /// Defaults to cuda when compiled in, else the first CPU backend compiled in.
    #[serde(default = "BackendName::default_for_build")]
    pub name: BackendName,
    /// GPU index for wgpu and cuda.
    #[serde(default)]
    pub device: usize,
    /// Float precision: `f32`, or `f16` / `bf16` where the backend runs them (libtorch).
    #[serde(default)]
    pub precision: Precision,
}

impl Default for BackendSection {
    fn default() -> Self {
        Self { name: BackendName::default_for_build(), device: 0, precision: Precision::F32 }
    }
}

impl BackendSection {
    /// `ndarray`, `tch-cpu bf16`, `cuda:1 f16`…
    pub fn describe(&self) -> String {
        let mut s = self.name.to_string();
        if matches!(self.name, BackendName::Wgpu | BackendName::Cuda) && self.device > 0 {
            s += &format!(":{}", self.device);
        }
        if self.precision != Precision::F32 {
            s += &format!(" {}", self.precision);
        }
        s
    }
}

/// Data-parallel training: one replica of the model per local device of each process that
/// an MPI launcher (`mpirun`, `srun`) started. The defaults are one device in one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedSection {
    /// Local device indices of the chosen backend, one replica each (empty: `backend.device`,
    /// moved on by the process's local rank when the launcher runs several per machine).
    #[serde(default)]
    pub devices: Vec<usize>,
    /// Seconds a replica waits for the others at each gradient exchange before it gives up
    /// with an error.
    #[serde(default = "defaults::distributed_timeout")]
    pub timeout_secs: u64,
    /// Processes in the run, as the launcher says: never read from or written to a file.
    #[serde(skip, default = "defaults::one")]
    pub processes: usize,
    /// This process, `0..processes`; process 0 writes the run.
    #[serde(skip)]
    pub process_rank: usize,
}

impl Default for DistributedSection {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            timeout_secs: defaults::distributed_timeout(),
            processes: 1,
            process_rank: 0,
        }
    }
}

impl DistributedSection {
    /// Replicas in this process.
    pub fn local_replicas(&self) -> usize {
        self.devices.len().max(1)
    }

    /// Replicas in the whole run: each takes `batch_size × grad_accumulation` windows a step.
    pub fn replicas(&self) -> usize {
        self.local_replicas() * self.processes
    }
}

mod defaults {
    use std::path::PathBuf;

    pub fn seed() -> u64 {
        1337
    }
    pub fn artifacts_dir() -> PathBuf {
        PathBuf::from("artifacts")
    }
    pub fn tokenizer() -> super::TokenizerSpec {
        super::TokenizerSpec::Char
    }
    pub fn val_fraction() -> f64 {
        0.1
    }
    pub fn dpo_beta() -> f64 {
        0.1
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
    pub fn distributed_timeout() -> u64 {
        300
    }
}

/// Errors a user can cause through a config file, the environment or an override.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {file}: {reason}")]
    Load { file: PathBuf, reason: String },
    #[error("override {given:?}: expected section.key=value, e.g. training.learning_rate=3e-4")]
    BadOverride { given: String },
    /// A value serde could not read as its key's type, or a key no section has.
    #[error("{key}{value}: {reason} (in {origin})")]
    Field { origin: String, key: String, value: String, reason: String },
    #[error("{key} = {value}: expected {expected}")]
    Invalid { key: &'static str, value: String, expected: String },
}

impl RunSpec {
    /// Reads a resolved config written by a previous run (no layering, still validated
    /// apart from the data file, which a finished run no longer needs).
    pub fn read_resolved(path: &Path) -> Result<Self, ConfigError> {
        let spec = layers::read_resolved(path)?;
        validate::validate_shape(&spec)?;
        Ok(spec)
    }

    /// A config from TOML text, taken as written (no environment, no overrides);
    /// `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        layers::from_text(text, origin)
    }

    /// The resolved config as `config.toml` holds it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RunSpec always serializes to TOML")
    }

    /// The vocabulary size, once resolved from the tokenizer.
    pub fn vocab_size(&self) -> usize {
        self.model.vocab_size().expect("vocab_size is resolved from the tokenizer before use")
    }
}
