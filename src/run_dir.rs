//! The layout of `artifacts/<run>/`. Only this module builds paths inside a run.
//!
//! ```text
//! artifacts/<run>/
//!   config.toml              resolved config (what generate/eval/inspect/resume read back)
//!   tokenizer.json           the fitted tokenizer
//!   tokens.bin, tokens.json  the encoded corpus (u16 or u32 little-endian) and its provenance
//!   checkpoints/             model-<epoch>.mpk, optim-<epoch>.mpk, scheduler-<epoch>.mpk,
//!                            state-<epoch>.json (step, seed, metrics at that point)
//!   model.mpk                final model record
//!   metrics.jsonl            one JSON object per logged step
//!   summary.json             final figures of the run
//!   experiment.log           Burn's log
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn tokenizer(&self) -> PathBuf {
        self.root.join("tokenizer.json")
    }
    pub fn tokens(&self) -> PathBuf {
        self.root.join("tokens.bin")
    }
    pub fn tokens_meta(&self) -> PathBuf {
        self.root.join("tokens.json")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// A checkpoint file of `kind` (`model`, `optim`, `scheduler`) taken after `epoch`.
    pub fn checkpoint_file(&self, kind: &str, epoch: usize) -> PathBuf {
        self.checkpoints().join(format!("{kind}-{epoch}.mpk"))
    }
    pub fn checkpoint_state(&self, epoch: usize) -> PathBuf {
        self.checkpoints().join(format!("state-{epoch}.json"))
    }
    /// The model file written at the end of training (same format as a checkpoint).
    pub fn final_model(&self) -> PathBuf {
        self.root.join("model.mpk")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    /// Epochs for which a complete checkpoint (model, optimizer, scheduler, state) exists,
    /// oldest first.
    pub fn checkpoint_epochs(&self) -> Vec<usize> {
        let Ok(entries) = fs::read_dir(self.checkpoints()) else { return Vec::new() };
        let mut epochs: Vec<usize> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("state-")?.strip_suffix(".json")?.parse().ok()
            })
            .filter(|&epoch| {
                ["model", "optim", "scheduler"].iter().all(|k| self.checkpoint_file(k, epoch).is_file())
            })
            .collect();
        epochs.sort_unstable();
        epochs
    }

    /// Removes the checkpoint taken after `epoch`. The state file goes first, so a
    /// half-deleted checkpoint is never listed as complete.
    pub fn remove_checkpoint(&self, epoch: usize) -> std::io::Result<()> {
        remove_if_exists(&self.checkpoint_state(epoch))?;
        for kind in ["model", "optim", "scheduler"] {
            remove_if_exists(&self.checkpoint_file(kind, epoch))?;
        }
        Ok(())
    }
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one:
/// temporary file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_sibling(path);
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    commit_temp(&tmp, path)
}

/// A file written in pieces that appears at its path only when complete: it is written to a
/// temporary sibling and renamed by [`AtomicFile::commit`]; dropped uncommitted, it is removed.
pub struct AtomicFile {
    writer: Option<std::io::BufWriter<fs::File>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl AtomicFile {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let tmp = temp_sibling(path);
        let writer = std::io::BufWriter::new(fs::File::create(&tmp)?);
        Ok(Self { writer: Some(writer), tmp, path: path.to_path_buf() })
    }

    pub fn commit(mut self) -> std::io::Result<()> {
        let writer = self.writer.take().expect("an AtomicFile commits once");
        writer.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        commit_temp(&self.tmp, &self.path)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.as_mut().expect("not yet committed").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().expect("not yet committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A hidden file next to `path` to write into before [`commit_temp`]. It has no extension
/// of its own, so writers that set one (Burn's recorders) keep it recognisable.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{}-partial", name.replace('.', "_")))
}

/// Fsyncs `tmp`, renames it onto `path` and fsyncs the directory.
pub fn commit_temp(tmp: &Path, path: &Path) -> std::io::Result<()> {
    fs::File::open(tmp)?.sync_all()?;
    fs::rename(tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
