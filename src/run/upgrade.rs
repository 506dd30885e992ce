//! Runs made by an older kiln, brought to this one's layout when they are resumed. (Their
//! manifests are read as they are: `manifest.rs` reads format 1.)

use std::path::PathBuf;

use super::checkpoint::{file_name, CheckpointError, CheckpointState, RECORDS};
use super::RunDir;
use crate::files::{sha256_hex, write_atomic};

impl RunDir {
    /// Renames the checkpoints of a run kiln made before it named them by step
    /// (`model-4.mpk`, `state-4.json` → `model-step1000.mpk`, `state-step1000.json`), so that
    /// the run resumes. Records are moved, not rewritten; each state file's list of names and
    /// the manifest's hash of it follow. Returns how many checkpoints were renamed.
    pub(super) fn name_checkpoints_by_step(&self) -> Result<usize, CheckpointError> {
        let Ok(entries) = std::fs::read_dir(self.checkpoints()) else {
            return Ok(0);
        };
        let old_states: Vec<(usize, PathBuf)> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|path| {
                let name = path.file_name()?.to_str()?;
                let epoch = name.strip_prefix("state-")?.strip_suffix(".json")?.parse().ok()?;
                Some((epoch, path))
            })
            .collect();
        for (epoch, path) in &old_states {
            let mut state = CheckpointState::read(path)?;
            let failed = |e: std::io::Error| CheckpointError::State {
                path: path.clone(),
                reason: format!("naming its checkpoint by step: {e}"),
            };
            for kind in RECORDS {
                let old = self.checkpoints().join(format!("{kind}-{epoch}.mpk"));
                let new = self.checkpoint_file(kind, state.step);
                if old.is_file() {
                    std::fs::rename(&old, &new).map_err(failed)?;
                }
                if let Some(hash) = state.files.remove(&file_name(&old)) {
                    state.files.insert(file_name(&new), hash);
                }
            }
            let json = serde_json::to_vec_pretty(&state).expect("checkpoint state serializes");
            if self.manifest().is_file() {
                self.record_checkpoint(state.step, state.epoch, sha256_hex(&json))
                    .map_err(failed)?;
            }
            write_atomic(&self.checkpoint_state(state.step), &json).map_err(failed)?;
            std::fs::remove_file(path).map_err(failed)?;
        }
        Ok(old_states.len())
    }
}
