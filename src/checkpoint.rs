//! Checkpoint files: Burn records written atomically into `<run>/checkpoints/`, the policy
//! that decides when to take one and which to keep, and loading with clear errors.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::record::{FileRecorder, FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder, RecorderError};
use burn::train::checkpoint::{CheckpointingAction, CheckpointingStrategy};
use burn::train::metric::store::EventStoreClient;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::run_dir::{commit_temp, temp_sibling, write_atomic, RunDir};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: not a readable kiln model record ({reason}); is it truncated, or from another model or config?")]
    Load { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("{0}")]
    NotFound(String),
}

/// Named-MessagePack records (Burn's default format, f32), written to a temporary file,
/// fsynced and renamed so a crash never leaves a half-written checkpoint under its real name.
///
/// With a directory, files are placed there by name: Burn's Learner asks for
/// `<run>/checkpoint/model-3`, kiln keeps it at `<run>/checkpoints/model-3.mpk`.
#[derive(Debug, Clone, Default)]
pub struct CheckpointRecorder {
    dir: Option<PathBuf>,
}

type Inner = NamedMpkFileRecorder<FullPrecisionSettings>;

impl CheckpointRecorder {
    pub fn into_dir(dir: PathBuf) -> Self {
        Self { dir: Some(dir) }
    }

    fn target(&self, path: &Path) -> PathBuf {
        let path = match (&self.dir, path.file_name()) {
            (Some(dir), Some(name)) => dir.join(name),
            _ => path.to_path_buf(),
        };
        path.with_extension("mpk")
    }
}

impl<B: Backend> Recorder<B> for CheckpointRecorder {
    type Settings = FullPrecisionSettings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, path: PathBuf) -> Result<(), RecorderError> {
        let target = self.target(&path);
        let tmp = temp_sibling(&target);
        Recorder::<B>::save_item(&Inner::new(), item, tmp.clone())?;
        // The inner recorder appends its extension to the temporary name.
        commit_temp(&tmp.with_extension("mpk"), &target).map_err(|e| RecorderError::Unknown(e.to_string()))
    }

    fn load_item<I: DeserializeOwned>(&self, path: &mut PathBuf) -> Result<I, RecorderError> {
        let mut target = self.target(path);
        Recorder::<B>::load_item(&Inner::new(), &mut target)
    }
}

impl<B: Backend> FileRecorder<B> for CheckpointRecorder {
    fn file_extension() -> &'static str {
        "mpk"
    }
}

/// Loads a record of type `R` from `path`, turning Burn's errors into one that names the file.
pub fn load_record<B: Backend, R: Record<B>>(path: &Path, device: &B::Device) -> Result<R, CheckpointError> {
    if !path.is_file() {
        return Err(CheckpointError::NotFound(format!("{}: no such checkpoint file", path.display())));
    }
    Recorder::<B>::load(&CheckpointRecorder::default(), path.to_path_buf(), device)
        .map_err(|e| CheckpointError::Load { path: path.to_path_buf(), reason: short(&e.to_string()) })
}

fn short(reason: &str) -> String {
    reason.lines().next().unwrap_or(reason).chars().take(300).collect()
}

/// What a checkpoint records beyond the Burn records: where in the run it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub epoch: usize,
    pub step: usize,
    /// The data sampler derives each epoch's windows from `(seed, epoch)`, so this and
    /// `epoch` are its whole RNG state.
    pub seed: u64,
    pub tokens_seen: usize,
}

impl CheckpointState {
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let err = |reason: String| CheckpointError::State { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))
    }
}

/// Takes a checkpoint every `every_epochs` epochs and after the last one; keeps the newest
/// `keep` complete checkpoints, never deleting the last complete one before the new one is
/// on disk.
pub struct CheckpointPolicy {
    pub run: RunDir,
    pub every_epochs: usize,
    pub last_epoch: usize,
    pub keep: usize,
    pub eval_interval: usize,
    pub max_iters: usize,
    pub tokens_per_step: usize,
    pub seed: u64,
}

impl CheckpointingStrategy for CheckpointPolicy {
    fn checkpointing(&mut self, epoch: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        if epoch % self.every_epochs != 0 && epoch != self.last_epoch {
            return Vec::new();
        }
        let complete = self.run.checkpoint_epochs();
        let keep_old = self.keep.saturating_sub(1).max(1);
        for &old in complete.iter().filter(|&&e| e != epoch).rev().skip(keep_old) {
            if let Err(e) = self.run.remove_checkpoint(old) {
                log::warn!("cannot remove old checkpoint {old}: {e}");
            }
        }
        let step = (epoch * self.eval_interval).min(self.max_iters);
        let state =
            CheckpointState { epoch, step, seed: self.seed, tokens_seen: step * self.tokens_per_step };
        let json = serde_json::to_vec_pretty(&state).expect("checkpoint state serializes");
        if let Err(e) = write_atomic(&self.run.checkpoint_state(epoch), &json) {
            log::error!("cannot write checkpoint state for epoch {epoch}: {e}");
            return Vec::new();
        }
        vec![CheckpointingAction::Save]
    }
}
