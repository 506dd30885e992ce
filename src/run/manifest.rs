//! `kiln-run.json`: what marks a folder as a run kiln made, and what its files must be.
//!
//! kiln writes it when it creates a run, and updates it after every file it writes there:
//! the SHA-256 of the config, the tokenizer, the token cache and the final model, and of
//! each complete checkpoint's state file with its step. Everything kiln loads from a run is
//! checked against it first, so an edited config, a swapped model or a checkpoint copied in
//! from another run is refused by name instead of being trained on or evaluated.
//!
//! kiln never writes into, or deletes, a non-empty folder without a manifest.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::RunDir;
use crate::files::{sha256_file, write_atomic};

/// What `kind` says in every manifest.
const KIND: &str = "kiln-run";
/// The manifest format this kiln reads and writes.
pub const FORMAT: u32 = 1;

/// The manifest of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub kind: String,
    pub format: u32,
    /// Random, made when the run was created; every checkpoint's state file repeats it.
    pub run_id: String,
    /// The kiln that created the run.
    pub kiln_version: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// SHA-256 of the run's files by name (`config.toml`, `tokenizer.json`, `tokens.bin`, …).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The complete checkpoints, by Learner epoch.
    #[serde(default)]
    pub checkpoints: BTreeMap<usize, CheckpointEntry>,
}

/// A complete checkpoint as the manifest knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointEntry {
    pub step: usize,
    /// SHA-256 of its `state-N.json`, which holds the hashes of its records.
    pub state_sha256: String,
}

/// Why a run folder's manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error(
        "{path}: {file} does not match the SHA-256 the run recorded when it wrote it \
         (changed or damaged since); restore the run's own file"
    )]
    Changed { path: String, file: String },
    #[error("{path}: the run recorded no {file}; it was not written by this run")]
    Unknown { path: String, file: String },
}

/// Serialises updates of manifests within the process (checkpoints are completed on Burn's
/// writer threads); the run lock keeps other processes out.
static UPDATES: Mutex<()> = Mutex::new(());

impl Manifest {
    /// A manifest for a run created now.
    pub fn new() -> Self {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let created = now.map_or(0, |d| d.as_secs());
        Self {
            kind: KIND.into(),
            format: FORMAT,
            run_id: random_id(),
            kiln_version: env!("CARGO_PKG_VERSION").into(),
            created,
            files: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
        }
    }

    /// The manifest of `run`, `None` where it has none.
    pub fn read(run: &RunDir) -> Result<Option<Self>, ManifestError> {
        let path = run.manifest();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unreadable(&path, e.to_string())),
        };
        Self::from_bytes(&bytes).map(Some).map_err(|reason| unreadable(&path, reason))
    }

    /// A manifest from its JSON, checked: the right kind and format, a run id.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let manifest: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("not a kiln run manifest ({e})"))?;
        if manifest.kind != KIND {
            return Err(format!("kind {:?}: expected {KIND:?}", manifest.kind));
        }
        if manifest.format != FORMAT {
            return Err(format!(
                "manifest format {}; this kiln reads format {FORMAT}",
                manifest.format
            ));
        }
        let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        let hashes =
            manifest.files.values().chain(manifest.checkpoints.values().map(|c| &c.state_sha256));
        if manifest.run_id.is_empty() || !hashes.clone().all(|h| hex(h)) {
            return Err("a run id and SHA-256 hashes of 64 hex digits expected".into());
        }
        Ok(manifest)
    }

    /// Fails unless `file` (a name in the run folder) still has the hash the run recorded.
    pub fn verify_file(&self, run: &RunDir, file: &str) -> Result<(), ManifestError> {
        let path = run.root().join(file);
        let shown = path.display().to_string();
        let Some(expected) = self.files.get(file) else {
            return Err(ManifestError::Unknown { path: shown, file: file.into() });
        };
        let actual = sha256_file(&path).map_err(|e| unreadable(&path, e.to_string()))?;
        if &actual != expected {
            return Err(ManifestError::Changed { path: shown, file: file.into() });
        }
        Ok(())
    }
}

impl Default for Manifest {
    fn default() -> Self {
        Self::new()
    }
}

impl RunDir {
    /// Writes a new run's manifest.
    pub fn write_manifest(&self, manifest: &Manifest) -> std::io::Result<()> {
        let _guard = UPDATES.lock().unwrap_or_else(|e| e.into_inner());
        let json = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
        write_atomic(&self.manifest(), &json)
    }

    /// Records in the manifest the hash of `file`, just written into the run folder.
    /// Errors name the file.
    pub fn record_file(&self, file: &str) -> std::io::Result<()> {
        let path = self.root().join(file);
        let hash = sha256_file(&path).map_err(|e| reading_error(&path, e))?;
        self.update_manifest(|m| {
            m.files.insert(file.to_string(), hash);
        })
    }

    /// Records checkpoint `epoch`, whose state file is about to be written with this hash.
    pub(super) fn record_checkpoint(
        &self,
        epoch: usize,
        step: usize,
        state_sha256: String,
    ) -> std::io::Result<()> {
        self.update_manifest(|m| {
            m.checkpoints.insert(epoch, CheckpointEntry { step, state_sha256 });
        })
    }

    /// Drops the checkpoints no longer on disk from the manifest.
    pub(super) fn forget_removed_checkpoints(&self) -> std::io::Result<()> {
        let on_disk = self.checkpoint_epochs();
        self.update_manifest(|m| m.checkpoints.retain(|e, _| on_disk.contains(e)))
    }

    fn update_manifest(&self, change: impl FnOnce(&mut Manifest)) -> std::io::Result<()> {
        let _guard = UPDATES.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.manifest();
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let bytes = std::fs::read(&path).map_err(|e| reading_error(&path, e))?;
        let mut manifest = Manifest::from_bytes(&bytes).map_err(invalid)?;
        change(&mut manifest);
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        write_atomic(&path, &json)
    }
}

fn reading_error(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
}

fn unreadable(path: &Path, reason: String) -> ManifestError {
    ManifestError::Unreadable { path: path.display().to_string(), reason }
}

/// 128 random bits as hex.
fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back_and_refuses_what_is_not_one() {
        let manifest = Manifest::new();
        let json = serde_json::to_vec(&manifest).unwrap();
        assert_eq!(Manifest::from_bytes(&json).unwrap(), manifest);
        for bad in [&b"{}"[..], b"[]", b"\xff", br#"{"kind":"other"}"#] {
            assert!(Manifest::from_bytes(bad).is_err());
        }
        let mut wrong = manifest.clone();
        wrong.files.insert("config.toml".into(), "not a hash".into());
        assert!(Manifest::from_bytes(&serde_json::to_vec(&wrong).unwrap()).is_err());
        let mut future = manifest;
        future.format = FORMAT + 1;
        let err = Manifest::from_bytes(&serde_json::to_vec(&future).unwrap()).unwrap_err();
        assert!(err.contains("format 2"), "{err}");
    }
}
