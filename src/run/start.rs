//! Creating a run folder, or resuming the run in it, and what a run writes at its start and
//! end: the tokenizer, the resolved config and `summary.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::{CheckpointError, CheckpointState};
use super::{metrics, RunDir};
use crate::config::{ConfigError, RunSpec};
use crate::files::write_atomic;
use crate::tokenizer::{self, Tokenizer, TokenizerError};

/// Which checkpoint a resumed run continues from.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// The newest one whose files match their hashes.
    Newest,
    /// The checkpoint one of whose files this is.
    From(PathBuf),
}

/// What to do with the folder a run's config names.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum StartMode {
    /// Start a run; refuse if the folder already holds one.
    #[default]
    New,
    /// Delete the run the folder holds and start again.
    Over,
    Resume(Resume),
}

/// Why a run could not be started or resumed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{dir} already holds a run")]
    Exists { dir: PathBuf },
    #[error("{dir} holds no run to resume; train it from the start first")]
    NothingToResume { dir: PathBuf },
    #[error(
        "the [{section}] section differs from the one {config} was trained with; resume with \
         the same config or choose another run.name"
    )]
    Changed { section: &'static str, config: PathBuf },
    #[error(
        "{dir} already reached training.max_iters = {max_iters} (checkpoint at step {step}); \
         raise training.max_iters to train further"
    )]
    Finished { dir: PathBuf, max_iters: usize, step: usize },
    #[error("{dir} has no complete checkpoint to resume from")]
    NoCheckpoint { dir: PathBuf },
    #[error("{given}: expected a checkpoint file of this run, such as {example}")]
    NotItsCheckpoint { given: PathBuf, example: PathBuf },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: std::io::Error },
    #[error("model.vocab_size = {given}: expected at least the tokenizer's vocabulary size ({needed}, {tokenizer})")]
    VocabTooSmall { given: usize, needed: usize, tokenizer: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |reason| RunError::Io { path: path.to_path_buf(), reason }
}

/// A run folder ready to train in.
pub struct Started {
    pub dir: RunDir,
    /// The checkpoint a resumed run continues from.
    pub resume_from: Option<CheckpointState>,
    pub tokenizer: Box<dyn Tokenizer>,
}

impl Started {
    /// Optimizer steps already done.
    pub fn start_step(&self) -> usize {
        self.resume_from.as_ref().map_or(0, |s| s.step)
    }
}

/// Opens the folder `spec` names as `mode` says; the tokenizer is the run's own when
/// resuming, else `fit`'s, saved. `model.vocab_size` is resolved in `spec` and the resolved
/// config written.
pub fn start(
    spec: &mut RunSpec,
    mode: &StartMode,
    fit: impl FnOnce() -> anyhow::Result<Box<dyn Tokenizer>>,
) -> anyhow::Result<Started> {
    let dir = RunDir::of(spec);
    let resume_from = match mode {
        StartMode::Resume(resume) => Some(resume_run(&dir, spec, resume)?),
        StartMode::New | StartMode::Over => {
            create(&dir, *mode == StartMode::Over)?;
            None
        }
    };
    let tokenizer = match resume_from {
        // The run's own file, left as it is: its hash is what checkpoints refer to.
        Some(_) => tokenizer::load(&dir.tokenizer()).map_err(RunError::from)?,
        None => {
            let tokenizer = fit()?;
            let path = dir.tokenizer();
            tokenizer::save(tokenizer.as_ref(), &path).map_err(io(&path))?;
            tokenizer
        }
    };
    resolve_vocab(spec, tokenizer.as_ref())?;
    dir.write_config(spec)?;
    Ok(Started { dir, resume_from, tokenizer })
}

/// Fills `model.vocab_size` from the tokenizer, or checks that a configured one is big enough.
pub fn resolve_vocab(spec: &mut RunSpec, tokenizer: &dyn Tokenizer) -> Result<(), RunError> {
    let needed = tokenizer.vocab_size();
    match spec.model.vocab_size() {
        Some(given) if given < needed => Err(RunError::VocabTooSmall {
            given,
            needed,
            tokenizer: spec.data.tokenizer.to_string(),
        }),
        Some(_) => Ok(()),
        None => {
            spec.model.set_vocab_size(needed);
            Ok(())
        }
    }
}

impl RunDir {
    /// Whether training has started here: metrics logged, a model or a checkpoint written.
    /// A start that failed on its input (and left only config, tokenizer and tokens) holds
    /// nothing to protect.
    pub fn holds_run(&self) -> bool {
        self.metrics().exists()
            || self.final_model().exists()
            || !self.checkpoint_epochs().is_empty()
    }

    pub fn write_config(&self, spec: &RunSpec) -> Result<(), RunError> {
        let path = self.config();
        write_atomic(&path, spec.to_toml().as_bytes()).map_err(io(&path))
    }

    pub fn write_summary(&self, summary: &Summary) -> Result<(), RunError> {
        let json = serde_json::to_vec_pretty(summary).expect("a summary serializes");
        write_atomic(&self.summary(), &json).map_err(io(&self.summary()))
    }
}

/// An empty run folder, after deleting the run in it when `over`.
fn create(dir: &RunDir, over: bool) -> Result<(), RunError> {
    if dir.holds_run() {
        if !over {
            return Err(RunError::Exists { dir: dir.root().to_path_buf() });
        }
        std::fs::remove_dir_all(dir.root()).map_err(io(dir.root()))?;
    }
    std::fs::create_dir_all(dir.checkpoints()).map_err(io(&dir.checkpoints()))
}

/// The checkpoint to resume from, after checking that `spec` describes the run `dir` holds;
/// half-written files are removed, newer checkpoints set aside, metrics cut back to it.
fn resume_run(dir: &RunDir, spec: &RunSpec, resume: &Resume) -> anyhow::Result<CheckpointState> {
    let root = dir.root().to_path_buf();
    if !dir.holds_run() {
        return Err(RunError::NothingToResume { dir: root }.into());
    }
    let saved = RunSpec::read_resolved(&dir.config()).map_err(RunError::from)?;
    let same = [("model", saved.model.matches(&spec.model)), ("data", saved.data == spec.data)];
    if let Some((section, _)) = same.iter().find(|(_, same)| !same) {
        let config = dir.config();
        return Err(RunError::Changed { section, config }.into());
    }
    if saved.training != spec.training {
        eprintln!(
            "kiln: warning: the [training] section differs from the one the run started with; \
             the resumed run will not match an uninterrupted one"
        );
    }
    let state = match resume {
        Resume::Newest => newest_valid_checkpoint(dir)?,
        Resume::From(path) => checkpoint_at(dir, path)?,
    };
    if state.step >= spec.training.max_iters {
        let (max_iters, step) = (spec.training.max_iters, state.step);
        return Err(RunError::Finished { dir: root, max_iters, step }.into());
    }
    state.check_tokenizer(dir).map_err(RunError::from)?;
    tidy_for_resume(dir, &state)?;
    eprintln!(
        "kiln: resuming {} from step {} (checkpoint {})",
        root.display(),
        state.step,
        state.epoch
    );
    Ok(state)
}

/// Removes half-written files, sets aside checkpoints newer than `state` and cuts the
/// metrics back to its step.
fn tidy_for_resume(dir: &RunDir, state: &CheckpointState) -> Result<(), RunError> {
    let partials = dir.remove_partial_files().map_err(io(dir.root()))?;
    if partials > 0 {
        eprintln!("kiln: removed {partials} half-written file(s) left by an interrupted write");
    }
    let set_aside = dir.set_aside_after(state.epoch).map_err(io(&dir.checkpoints()))?;
    if let Some(moved) = set_aside {
        eprintln!(
            "kiln: checkpoints newer than the resume point were moved to {}",
            moved.display()
        );
    }
    metrics::truncate_metrics(&dir.metrics(), state.step).map_err(io(&dir.metrics()))
}

/// The newest checkpoint whose records match their hashes; damaged newer ones are reported
/// and skipped.
fn newest_valid_checkpoint(dir: &RunDir) -> Result<CheckpointState, RunError> {
    for epoch in dir.checkpoint_epochs().into_iter().rev() {
        match CheckpointState::verify(dir, epoch) {
            Ok(state) => return Ok(state),
            Err(e) => eprintln!("kiln: {e}; trying the one before"),
        }
    }
    Err(RunError::NoCheckpoint { dir: dir.checkpoints() })
}

/// The checkpoint one of whose files `path` is, inside this run.
fn checkpoint_at(dir: &RunDir, path: &Path) -> Result<CheckpointState, RunError> {
    let in_this_run = || {
        let folder = path.parent().and_then(|d| d.canonicalize().ok());
        folder.is_some() && folder == dir.checkpoints().canonicalize().ok()
    };
    match super::checkpoint_epoch(path).filter(|_| in_this_run()) {
        Some(epoch) => Ok(CheckpointState::verify(dir, epoch)?),
        None => {
            let newest = dir.checkpoint_epochs().last().copied().unwrap_or(1);
            Err(RunError::NotItsCheckpoint {
                given: path.to_path_buf(),
                example: dir.checkpoint_state(newest),
            })
        }
    }
}

/// `summary.json`: the final figures of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub final_train_loss: f64,
    pub final_val_loss: f64,
    pub val_perplexity: f64,
    pub params: usize,
    pub params_non_embedding: usize,
    pub steps: usize,
    pub tokens_seen: usize,
    pub wall_seconds: f64,
    pub tokens_per_second: f64,
    pub backend: String,
}
