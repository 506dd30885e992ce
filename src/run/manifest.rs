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
/// The manifest format this kiln writes. Format 1 (checkpoints listed by Learner epoch) is
/// read too, and written back as format 2.
pub const FORMAT: u32 = 2;

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
    /// The complete checkpoints, by step.
    #[serde(default)]
    pub checkpoints: BTreeMap<usize, CheckpointEntry>,
}

/// A complete checkpoint as the manifest knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointEntry {
    /// The Learner epoch it ended.
    pub epoch: usize,
    /// SHA-256 of its `state-stepN.json`, which holds the hashes of its records.
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
        let not_one = |e: serde_json::Error| format!("not a kiln run manifest ({e})");
        let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(not_one)?;
        match value.get("format").and_then(|f| f.as_u64()) {
            Some(1) => upgrade_format_1(&mut value)?,
            Some(f) if f != FORMAT as u64 => {
                return Err(format!("manifest format {f}; this kiln reads formats 1 to {FORMAT}"))
            }
            _ => {}
        }
        let manifest: Self = serde_json::from_value(value).map_err(not_one)?;
        if manifest.kind != KIND {
            return Err(format!("kind {:?}: expected {KIND:?}", manifest.kind));
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

    /// Records the checkpoint at `step`, whose state file is about to be written with this
    /// hash.
    pub(super) fn record_checkpoint(
        &self,
        step: usize,
        epoch: usize,
        state_sha256: String,
    ) -> std::io::Result<()> {
        self.update_manifest(|m| {
            m.checkpoints.insert(step, CheckpointEntry { epoch, state_sha256 });
        })
    }

    /// Drops the checkpoints no longer on disk from the manifest.
    pub(super) fn forget_removed_checkpoints(&self) -> std::io::Result<()> {
        let on_disk = self.checkpoint_steps();
        self.update_manifest(|m| m.checkpoints.retain(|s, _| on_disk.contains(s)))
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

/// A format-1 manifest as format 2: its checkpoints were listed by Learner epoch, and their
/// files named by it (`model-4.mpk`) until a resume renames them
/// (`RunDir::name_checkpoints_by_step`).
fn upgrade_format_1(value: &mut serde_json::Value) -> Result<(), String> {
    let old = value.get("checkpoints").and_then(|c| c.as_object()).cloned().unwrap_or_default();
    let mut by_step = serde_json::Map::new();
    for (epoch, entry) in old {
        let (Ok(epoch), Some(step), Some(hash)) = (
            epoch.parse::<usize>(),
            entry.get("step").and_then(|s| s.as_u64()),
            entry.get("state_sha256").cloned(),
        ) else {
            return Err(format!("checkpoint {epoch:?}: a step and a state_sha256 expected"));
        };
        by_step.insert(step.to_string(), serde_json::json!({"epoch": epoch, "state_sha256": hash}));
    }
    value["checkpoints"] = serde_json::Value::Object(by_step);
    value["format"] = FORMAT.into();
    Ok(())
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
        assert!(err.contains(&format!("format {}", FORMAT + 1)), "{err}");
    }

    #[test]
    fn a_format_1_manifest_reads_with_its_checkpoints_by_step() {
        let hash = "ab".repeat(32);
        let old = serde_json::json!({
            "kind": KIND, "format": 1, "run_id": "0123", "kiln_version": "0.1.0", "created": 1,
            "files": {"config.toml": hash},
            "checkpoints": {"4": {"step": 1000, "state_sha256": hash}},
        });
        let manifest = Manifest::from_bytes(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(manifest.format, FORMAT);
        assert_eq!(manifest.checkpoints[&1000], CheckpointEntry { epoch: 4, state_sha256: hash });
    }
}
