//! Checkpoints: Burn records written atomically into `<run>/checkpoints/`, the policy that
//! decides when to take one, the journal that completes them, and verified loading.
//!
//! A checkpoint taken at step `N` is `model-stepN.mpk`, `optim-stepN.mpk`,
//! `scheduler-stepN.mpk` and `state-stepN.json`. Burn's Learner names what it saves by its
//! epoch; the journal knows which step each epoch ended at, and the recorder writes the file
//! under that step. Each record is written to a temporary file, fsynced and renamed. The state
//! file, which holds the SHA-256 of the three records, is written only once all three are on
//! disk; then `latest.json` moves to it and checkpoints beyond the newest `keep` are removed.
//! A checkpoint without a state file, or whose records no longer match their hashes, is not
//! one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::prelude::*;
use burn::record::{
    FileRecorder, FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder, RecorderError,
};
use burn::train::checkpoint::{CheckpointingAction, CheckpointingStrategy};
use burn::train::metric::store::EventStoreClient;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::control::RunControl;
use super::{Manifest, RunDir};
use crate::files::{sha256_file, sha256_hex, write_atomic, AtomicFile};

/// The records of one checkpoint, besides its state file.
pub const RECORDS: [&str; 3] = ["model", "optim", "scheduler"];

/// Version of `state-N.json`; a newer kiln that changes its meaning bumps it.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: not a readable kiln model record ({reason}); is it truncated, or from another model or config?")]
    Load { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("{path}: parameter {name} has shape {file:?} in the file but {config:?} in the run's config; is the checkpoint from another run or model size?")]
    Shape { path: PathBuf, name: String, file: Vec<usize>, config: Vec<usize> },
    #[error("the checkpoint at step {step} is damaged: {file} {problem}")]
    Damaged { step: usize, file: String, problem: String },
    #[error("{0}")]
    NotFound(String),
    #[error("the checkpoint at step {step} of {run} {problem}; it cannot be used with this run")]
    Foreign { run: PathBuf, step: usize, problem: String },
    #[error(transparent)]
    Manifest(#[from] super::ManifestError),
}

/// Named-MessagePack records (Burn's default format, f32), written to a temporary file,
/// fsynced and renamed so a crash never leaves a half-written record under its real name.
///
/// With a journal, Burn's Learner's names are the run's: it asks for
/// `<run>/checkpoint/model-3` (its epoch 3), kiln keeps it at
/// `<run>/checkpoints/model-step750.mpk` (the step epoch 3 ended at), and each written record
/// is reported to the journal. Without one, a path is used as given, with `.mpk`.
#[derive(Debug, Clone, Default)]
pub struct CheckpointRecorder {
    journal: Option<CheckpointJournal>,
}

type Inner = NamedMpkFileRecorder<FullPrecisionSettings>;

impl CheckpointRecorder {
    pub fn for_journal(journal: CheckpointJournal) -> Self {
        Self { journal: Some(journal) }
    }

    fn target(&self, path: &Path) -> Result<PathBuf, RecorderError> {
        let Some(journal) = &self.journal else {
            return Ok(path.with_extension("mpk"));
        };
        let name = path.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
        journal.file_for(name).ok_or_else(|| {
            RecorderError::Unknown(format!(
                "{}: no checkpoint of this run was taken at that Learner epoch",
                path.display()
            ))
        })
    }
}

impl<B: Backend> Recorder<B> for CheckpointRecorder {
    type Settings = FullPrecisionSettings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, path: PathBuf) -> Result<(), RecorderError> {
        // Written here rather than by Burn's file recorder, whose buffered writer drops the
        // error of its last flush: a full disk must fail the save, naming the file.
        let target = self.target(&path)?;
        let failed = |e: &dyn std::error::Error| RecorderError::Unknown(deepest_cause(e));
        let mut file = AtomicFile::create(&target).map_err(|e| failed(&e))?;
        rmp_serde::encode::write_named(&mut file, &item).map_err(|e| failed(&e))?;
        file.commit().map_err(|e| failed(&e))?;
        match &self.journal {
            Some(journal) => journal.record_written(&target).map_err(|e| failed(&e)),
            None => Ok(()),
        }
    }

    fn load_item<I: DeserializeOwned>(&self, path: &mut PathBuf) -> Result<I, RecorderError> {
        let mut target = self.target(path)?;
        Recorder::<B>::load_item(&Inner::new(), &mut target)
    }
}

impl<B: Backend> FileRecorder<B> for CheckpointRecorder {
    fn file_extension() -> &'static str {
        "mpk"
    }
}

/// The innermost error's message: the I/O error under an encoder's "invalid value write".
fn deepest_cause(mut e: &dyn std::error::Error) -> String {
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

/// Loads a record of type `R` from `path`, turning Burn's errors into one that names the file.
pub fn load_record<B: Backend, R: Record<B>>(
    path: &Path,
    device: &B::Device,
) -> Result<R, CheckpointError> {
    if !path.is_file() {
        return Err(CheckpointError::NotFound(format!(
            "{}: no such checkpoint file",
            path.display()
        )));
    }
    let load = || Recorder::<B>::load(&CheckpointRecorder::default(), path.to_path_buf(), device);
    let err = |reason: String| CheckpointError::Load { path: path.to_path_buf(), reason };
    // Burn 0.21 panics on some damaged records (a parameter id that does not parse); found by
    // the `checkpoint` fuzz target.
    match catch_quietly(load) {
        Ok(loaded) => loaded.map_err(|e| err(short(&e.to_string()))),
        Err(panic) => Err(err(format!("damaged data: {panic}"))),
    }
}

thread_local! {
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into its message without printing it; panics
/// elsewhere (and on other threads) still reach the previous hook.
pub(super) fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into())
    })
}

/// The first line of a Burn record error, in words where the cause is a common one.
fn short(reason: &str) -> String {
    if reason.contains("UnexpectedEof") {
        return "the file ends early".into();
    }
    let first = reason.split('\n').next().unwrap_or(reason);
    let first = first.split("\\n").next().unwrap_or(first);
    first.chars().take(300).collect()
}

/// `state-N.json`: where in the run a checkpoint was taken and what it must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub version: u32,
    /// The run it belongs to (its manifest's id); empty in runs older than manifests.
    #[serde(default)]
    pub run_id: String,
    pub epoch: usize,
    pub step: usize,
    /// Data windows and dropout masks derive from `(seed, micro-batch index)`, so this and
    /// `step` are the whole RNG state of the run.
    pub seed: u64,
    pub tokens_seen: usize,
    /// Why it was taken: `interval`, `end` or `interrupt`.
    pub reason: String,
    /// SHA-256 of the resolved `config.toml` and of `tokenizer.json` when it was taken.
    pub config_sha256: String,
    pub tokenizer_sha256: String,
    /// SHA-256 of each record file, by file name.
    pub files: BTreeMap<String, String>,
}

impl CheckpointState {
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let err = |reason: String| CheckpointError::State { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("not a checkpoint state file ({e})")))?;
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == STATE_VERSION as u64 => {}
            Some(v) => {
                return Err(err(format!(
                    "checkpoint format version {v}; this kiln reads version {STATE_VERSION}"
                )))
            }
            None => {
                return Err(err("no \"version\" field: not a kiln checkpoint state file".into()))
            }
        }
        serde_json::from_value(value).map_err(|e| err(format!("not a checkpoint state file ({e})")))
    }

    /// Fails unless the run's `tokenizer.json` is the file this checkpoint was taken with.
    pub fn check_tokenizer(&self, run: &RunDir) -> Result<(), CheckpointError> {
        let path = run.tokenizer();
        let actual = sha256_file(&path)
            .map_err(|e| CheckpointError::State { path: path.clone(), reason: e.to_string() })?;
        if actual != self.tokenizer_sha256 {
            let reason = format!(
                "changed since the checkpoint at step {} was taken, so token ids would mean other \
                 things; restore the run's own tokenizer.json",
                self.step
            );
            return Err(CheckpointError::State { path, reason });
        }
        Ok(())
    }

    /// Reads the checkpoint `run` took at `step` and checks every record against its hash,
    /// and that the run took it (its manifest lists it, with this state file and run id).
    pub fn verify(run: &RunDir, step: usize) -> Result<Self, CheckpointError> {
        let state = Self::verify_copied(run, step)?;
        if let Some(manifest) = Manifest::read(run)? {
            state.belongs_to(run, &manifest)?;
        }
        Ok(state)
    }

    /// As [`CheckpointState::verify`], for a checkpoint process 0 of a data-parallel run took
    /// and another process copied in: its records against its own hashes only.
    pub fn verify_copied(run: &RunDir, step: usize) -> Result<Self, CheckpointError> {
        let path = run.checkpoint_state(step);
        let state = Self::read(&path)?;
        if state.step != step {
            let reason = format!(
                "holds step {} but is named for step {step}: changed since it was written",
                state.step
            );
            return Err(CheckpointError::State { path, reason });
        }
        for kind in RECORDS {
            let path = run.checkpoint_file(kind, step);
            let name = file_name(&path);
            let damaged =
                |problem: String| CheckpointError::Damaged { step, file: name.clone(), problem };
            let expected = state
                .files
                .get(&name)
                .ok_or_else(|| damaged("is not listed in its state file".into()))?;
            let actual =
                sha256_file(&path).map_err(|e| damaged(format!("cannot be read ({e})")))?;
            if &actual != expected {
                return Err(damaged("does not match the SHA-256 recorded when it was written (truncated or changed since)".into()));
            }
        }
        Ok(state)
    }

    /// Fails unless the run's manifest lists this checkpoint with this state file, taken by
    /// this run.
    fn belongs_to(&self, run: &RunDir, manifest: &Manifest) -> Result<(), CheckpointError> {
        let foreign = |problem: String| CheckpointError::Foreign {
            run: run.root().to_path_buf(),
            step: self.step,
            problem,
        };
        if self.run_id != manifest.run_id {
            let theirs = if self.run_id.is_empty() { "none" } else { &self.run_id };
            let ids = format!("run id {theirs}, this run's is {}", manifest.run_id);
            return Err(foreign(format!("was taken by another run ({ids})")));
        }
        let Some(entry) = manifest.checkpoints.get(&self.step) else {
            return Err(foreign("is not one the run recorded in kiln-run.json".into()));
        };
        let path = run.checkpoint_state(self.step);
        let actual = sha256_file(&path).map_err(|e| foreign(format!("cannot be read ({e})")))?;
        if actual != entry.state_sha256 || self.epoch != entry.epoch {
            return Err(foreign(format!(
                "has a state file ({}) changed since it was written",
                path.display()
            )));
        }
        Ok(())
    }
}

/// `latest.json`: the newest complete checkpoint, moved only after it is whole.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    pub epoch: usize,
    pub step: usize,
}

impl Latest {
    pub fn read(run: &RunDir) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(run.latest_checkpoint()).ok()?).ok()
    }
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A checkpoint asked for: its state and the records written so far.
type Pending = (CheckpointState, Vec<String>);

/// Completes checkpoints once all their records are written (see the module comment).
#[derive(Debug, Clone)]
pub struct CheckpointJournal {
    run: RunDir,
    keep: usize,
    /// Checkpoints asked for and not yet complete, by step: their state and the records
    /// written so far.
    pending: Arc<Mutex<HashMap<usize, Pending>>>,
    /// The step each Learner epoch of this training ended at, for the epochs that have (or
    /// are getting) a checkpoint.
    steps: Arc<Mutex<HashMap<usize, usize>>>,
}

impl CheckpointJournal {
    pub fn new(run: RunDir, keep: usize) -> Self {
        Self { run, keep: keep.max(1), pending: Default::default(), steps: Default::default() }
    }

    /// Tells the journal the checkpoint a resumed run starts from, which the Learner loads by
    /// its epoch.
    pub fn resumes_from(&self, state: &CheckpointState) {
        self.steps.lock().expect("journal lock").insert(state.epoch, state.step);
    }

    /// Records that a checkpoint is being written at `state.step`.
    fn expect(&self, state: CheckpointState) {
        self.steps.lock().expect("journal lock").insert(state.epoch, state.step);
        self.pending.lock().expect("journal lock").insert(state.step, (state, Vec::new()));
    }

    /// The run's file for the Learner's record `name` (`model-3`: its epoch 3).
    fn file_for(&self, name: &str) -> Option<PathBuf> {
        let (kind, epoch) = name.rsplit_once('-')?;
        let step = *self.steps.lock().expect("journal lock").get(&epoch.parse().ok()?)?;
        Some(self.run.checkpoint_file(kind, step))
    }

    /// Called by the recorder after `path` (`<kind>-step<N>.mpk`) is on disk.
    fn record_written(&self, path: &Path) -> std::io::Result<()> {
        let Some(step) = super::checkpoint_step(path) else {
            return Ok(());
        };
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let kind = stem.rsplit_once("-step").map_or(stem, |(kind, _)| kind);
        // Held while completing, so only one of the three writer threads does it.
        let mut pending = self.pending.lock().expect("journal lock");
        let Some((_, written)) = pending.get_mut(&step) else {
            return Ok(());
        };
        written.push(kind.to_string());
        if !RECORDS.iter().all(|k| written.iter().any(|w| w == k)) {
            return Ok(());
        }
        let Some((mut state, _)) = pending.remove(&step) else {
            return Ok(());
        };
        for kind in RECORDS {
            let path = self.run.checkpoint_file(kind, step);
            state.files.insert(file_name(&path), sha256_file(&path)?);
        }
        let json = serde_json::to_vec_pretty(&state).expect("checkpoint state serializes");
        // The manifest first: a state file it does not list would be refused as another run's.
        self.run.record_checkpoint(step, state.epoch, sha256_hex(&json))?;
        write_atomic(&self.run.checkpoint_state(step), &json)?;
        let latest = Latest { epoch: state.epoch, step };
        write_atomic(&self.run.latest_checkpoint(), &serde_json::to_vec(&latest)?)?;
        self.prune(step)?;
        self.run.forget_removed_checkpoints()
    }

    /// Removes all but the newest `keep` complete checkpoints; `newest` always stays.
    fn prune(&self, newest: usize) -> std::io::Result<()> {
        let complete = self.run.checkpoint_steps();
        for &old in complete.iter().filter(|&&s| s != newest).rev().skip(self.keep - 1) {
            self.run.remove_checkpoint(old)?;
        }
        Ok(())
    }
}

/// What every checkpoint of a run records besides its position.
#[derive(Debug, Clone)]
pub struct RunIdentity {
    pub run_id: String,
    pub seed: u64,
    pub tokens_per_step: usize,
    pub config_sha256: String,
    pub tokenizer_sha256: String,
}

/// Takes a checkpoint every `interval` steps, at the last step and when the run is
/// interrupted; never after a divergence. Stops the Learner once the run should stop.
pub struct CheckpointPolicy {
    pub journal: CheckpointJournal,
    pub control: Arc<RunControl>,
    pub identity: RunIdentity,
    pub interval: usize,
    pub max_iters: usize,
    /// The step of the checkpoint the run started from, or of the last one taken.
    pub last_saved: Option<usize>,
}

/// What replicas other than the first of a data-parallel run do at an epoch's end: no
/// checkpoint, but leave the Learner when the replicas agreed to stop.
pub struct NoCheckpoints {
    pub control: Arc<RunControl>,
}

impl CheckpointingStrategy for NoCheckpoints {
    fn checkpointing(&mut self, _: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        if self.control.should_stop() {
            self.control.stop_learner();
        }
        Vec::new()
    }
}

impl CheckpointingStrategy for CheckpointPolicy {
    fn checkpointing(&mut self, epoch: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        let control = &self.control;
        if control.should_stop() {
            control.stop_learner();
        }
        let step = control.steps();
        let reason = if control.divergence().is_some()
            || control.failure().is_some()
            || self.last_saved == Some(step)
        {
            return Vec::new();
        } else if step >= self.max_iters {
            "end"
        } else if control.interrupted() || control.stop_agreed() {
            "interrupt"
        } else if step.is_multiple_of(self.interval) {
            "interval"
        } else {
            return Vec::new();
        };
        let id = &self.identity;
        self.journal.expect(CheckpointState {
            version: STATE_VERSION,
            run_id: id.run_id.clone(),
            epoch,
            step,
            seed: id.seed,
            tokens_seen: step * id.tokens_per_step,
            reason: reason.into(),
            config_sha256: id.config_sha256.clone(),
            tokenizer_sha256: id.tokenizer_sha256.clone(),
            files: BTreeMap::new(),
        });
        self.last_saved = Some(step);
        vec![CheckpointingAction::Save]
    }
}
