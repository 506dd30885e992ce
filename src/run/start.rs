//! Creating a run folder, or resuming the run in it, and what a run writes at its start and
//! end: the tokenizer, the resolved config and `summary.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::{CheckpointError, CheckpointState};
use super::{metrics, RunDir};
use super::{Manifest, RunLock};
use crate::config::{ConfigError, RunSpec};
use crate::files::{io_error, write_atomic};
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
    #[error(
        "{dir} holds files kiln did not make (it has no kiln-run.json); kiln writes runs only \
         into folders of its own: choose another run.name or run.artifacts_dir"
    )]
    NotKilns { dir: PathBuf },
    #[error("{dir} is in use by kiln process {}; wait for it to end, or stop it first",
        pid.map_or("(unknown pid)".to_string(), |p| p.to_string()))]
    Busy { dir: PathBuf, pid: Option<u32> },
    #[error(transparent)]
    Manifest(#[from] super::ManifestError),
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
    /// Writing into the run folder (the error names the file).
    #[error(transparent)]
    Write(std::io::Error),
    #[error("model.vocab_size = {given}: expected at least the tokenizer's vocabulary size ({needed}, {tokenizer})")]
    VocabTooSmall { given: usize, needed: usize, tokenizer: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |reason| RunError::Io { path: path.to_path_buf(), reason }
}

/// A run folder ready to train in, locked for this process.
pub struct Started {
    pub dir: RunDir,
    /// Held until the training ends.
    pub lock: RunLock,
    /// The run's id (its manifest's), which every checkpoint records.
    pub run_id: String,
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
    let (lock, manifest, resume_from) = match mode {
        StartMode::Resume(resume) => {
            let (lock, manifest) = open(&dir)?;
            let state = resume_run(&dir, spec, resume)?;
            (lock, manifest, Some(state))
        }
        StartMode::New | StartMode::Over => {
            let (lock, manifest) = create(&dir, *mode == StartMode::Over)?;
            (lock, manifest, None)
        }
    };
    let tokenizer = match resume_from {
        // The run's own file, left as it is: its hash is what checkpoints refer to.
        Some(_) => tokenizer::load(&dir.tokenizer()).map_err(RunError::from)?,
        None => {
            let tokenizer = fit()?;
            let path = dir.tokenizer();
            tokenizer::save(tokenizer.as_ref(), &path).map_err(RunError::Write)?;
            dir.record_file("tokenizer.json").map_err(RunError::Write)?;
            tokenizer
        }
    };
    resolve_vocab(spec, tokenizer.as_ref())?;
    dir.write_config(spec)?;
    Ok(Started { dir, lock, run_id: manifest.run_id, resume_from, tokenizer })
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
            || !self.checkpoint_steps().is_empty()
    }

    pub fn write_config(&self, spec: &RunSpec) -> Result<(), RunError> {
        let path = self.config();
        write_atomic(&path, spec.to_toml().as_bytes()).map_err(RunError::Write)?;
        self.record_file("config.toml").map_err(RunError::Write)
    }

    pub fn write_summary(&self, summary: &Summary) -> Result<(), RunError> {
        let json = serde_json::to_vec_pretty(summary).expect("a summary serializes");
        write_atomic(&self.summary(), &json).map_err(RunError::Write)
    }

    pub fn write_samples(&self, text: &str) -> Result<(), RunError> {
        write_atomic(&self.samples(), text.as_bytes()).map_err(RunError::Write)
    }

    pub fn write_responses(&self, json: &str) -> Result<(), RunError> {
        write_atomic(&self.responses(), json.as_bytes()).map_err(RunError::Write)
    }

    /// Records the token cache just written (or found) in the manifest.
    pub fn record_token_cache(&self) -> Result<(), RunError> {
        for file in ["tokens.bin", "tokens.json"] {
            self.record_file(file).map_err(RunError::Write)?;
        }
        Ok(())
    }
}

/// A run folder of kiln's, locked and with a new manifest: a new folder, an empty one, or
/// a run of kiln's that has not started training (or, when `over`, whose run is deleted).
/// A non-empty folder kiln did not make is never written into.
fn create(dir: &RunDir, over: bool) -> Result<(RunLock, Manifest), RunError> {
    let root = dir.root();
    let existing = match root.exists() {
        true => Manifest::read(dir)?,
        false => None,
    };
    if existing.is_none() && !is_empty_or_missing(root).map_err(io(root))? {
        return Err(RunError::NotKilns { dir: root.to_path_buf() });
    }
    std::fs::create_dir_all(root).map_err(|e| RunError::Write(io_error("creating", root, e)))?;
    let lock = RunLock::acquire(dir)?;
    if existing.is_some() && dir.holds_run() {
        if !over {
            return Err(RunError::Exists { dir: root.to_path_buf() });
        }
        clear(dir).map_err(io(root))?;
    }
    let checkpoints = dir.checkpoints();
    std::fs::create_dir_all(&checkpoints)
        .map_err(|e| RunError::Write(io_error("creating", &checkpoints, e)))?;
    let manifest = Manifest::new();
    dir.write_manifest(&manifest).map_err(RunError::Write)?;
    Ok((lock, manifest))
}

/// The run in `dir`, locked: a folder kiln made, with its manifest.
fn open(dir: &RunDir) -> Result<(RunLock, Manifest), RunError> {
    let root = dir.root().to_path_buf();
    if !root.exists() || !dir.holds_run() {
        return Err(RunError::NothingToResume { dir: root });
    }
    let manifest = Manifest::read(dir)?.ok_or(RunError::NotKilns { dir: root })?;
    let lock = RunLock::acquire(dir)?;
    for file in ["config.toml", "tokenizer.json"] {
        manifest.verify_file(dir, file)?;
    }
    Ok((lock, manifest))
}

fn is_empty_or_missing(path: &Path) -> std::io::Result<bool> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Everything in a run folder but the lock the caller holds.
fn clear(dir: &RunDir) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir.root())? {
        let path = entry?.path();
        match path.is_dir() && !path.is_symlink() {
            true => std::fs::remove_dir_all(&path)?,
            false if path != dir.lock_file() => std::fs::remove_file(&path)?,
            false => {}
        }
    }
    Ok(())
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
    let renamed = dir.name_checkpoints_by_step().map_err(RunError::from)?;
    if renamed > 0 {
        eprintln!(
            "kiln: {renamed} checkpoint(s) named by epoch, as kiln did before, are now named by \
             step (model-stepN.mpk)"
        );
    }
    let state = match resume {
        Resume::Newest => newest_valid_checkpoint(dir, spec)?,
        Resume::From(path) => checkpoint_at(dir, path, spec)?,
    };
    if state.step >= spec.training.max_iters {
        let (max_iters, step) = (spec.training.max_iters, state.step);
        return Err(RunError::Finished { dir: root, max_iters, step }.into());
    }
    state.check_tokenizer(dir).map_err(RunError::from)?;
    tidy_for_resume(dir, &state)?;
    eprintln!("kiln: resuming {} from the checkpoint at step {}", root.display(), state.step);
    Ok(state)
}

/// Removes half-written files, sets aside checkpoints newer than `state` and cuts the
/// metrics back to its step.
fn tidy_for_resume(dir: &RunDir, state: &CheckpointState) -> Result<(), RunError> {
    let partials = dir.remove_partial_files().map_err(io(dir.root()))?;
    if partials > 0 {
        eprintln!("kiln: removed {partials} half-written file(s) left by an interrupted write");
    }
    let set_aside = dir.set_aside_after(state.step).map_err(io(&dir.checkpoints()))?;
    if let Some(moved) = set_aside {
        eprintln!(
            "kiln: checkpoints newer than the resume point were moved to {}",
            moved.display()
        );
    }
    dir.forget_removed_checkpoints().map_err(RunError::Write)?;
    metrics::truncate_metrics(&dir.metrics(), state.step).map_err(RunError::Write)
}

/// The newest checkpoint whose records match their hashes; damaged newer ones are reported
/// and skipped.
fn newest_valid_checkpoint(dir: &RunDir, spec: &RunSpec) -> Result<CheckpointState, RunError> {
    for step in dir.checkpoint_steps().into_iter().rev() {
        match verify(dir, step, spec) {
            Ok(state) => return Ok(state),
            Err(e) => eprintln!("kiln: {e}; trying the one before"),
        }
    }
    Err(RunError::NoCheckpoint { dir: dir.checkpoints() })
}

/// The checkpoint one of whose files `path` is, inside this run.
fn checkpoint_at(dir: &RunDir, path: &Path, spec: &RunSpec) -> Result<CheckpointState, RunError> {
    let in_this_run = || {
        let folder = path.parent().and_then(|d| d.canonicalize().ok());
        folder.is_some() && folder == dir.checkpoints().canonicalize().ok()
    };
    match super::checkpoint_step(path).filter(|_| in_this_run()) {
        Some(step) => Ok(verify(dir, step, spec)?),
        None => {
            let newest = dir.checkpoint_steps().last().copied().unwrap_or(1);
            Err(RunError::NotItsCheckpoint {
                given: path.to_path_buf(),
                example: dir.checkpoint_state(newest),
            })
        }
    }
}

/// The run's checkpoint at `step`, verified; on a process other than 0 of a data-parallel
/// run, whose checkpoint is process 0's copied in, against its own hashes only.
fn verify(dir: &RunDir, step: usize, spec: &RunSpec) -> Result<CheckpointState, CheckpointError> {
    match spec.distributed.process_rank {
        0 => CheckpointState::verify(dir, step),
        _ => CheckpointState::verify_copied(dir, step),
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
    /// The lowest validation loss of the run and the step it was measured at.
    #[serde(default)]
    pub best_val_loss: Option<f64>,
    #[serde(default)]
    pub best_val_step: Option<usize>,
    /// When this training started and ended (UTC, RFC 3339); a resumed run's start is the
    /// resume's.
    #[serde(default)]
    pub started: String,
    #[serde(default)]
    pub ended: String,
    /// The kiln that trained it, and the git commit it was built from (empty outside git).
    #[serde(default)]
    pub kiln_version: String,
    #[serde(default)]
    pub git_commit: String,
}
