//! The run layer: it owns `artifacts/<run>/`. Only this module builds paths inside a run;
//! it creates and resumes runs ([`start`]), writes and verifies checkpoints
//! ([`checkpoint`]), holds the metrics file format ([`metrics`]) and the control a running
//! training shares with its loaders and optimizer ([`control`]), and loads a run's model and
//! tokenizer for the commands that only read it ([`load`]).
//!
//! ```text
//! artifacts/<run>/
//!   kiln-run.json            the manifest: marks the folder as kiln's, hashes of its files
//!   .kiln-lock               locked by the training that has the run open
//!   config.toml              resolved config (what generate/eval/inspect/resume read back)
//!   tokenizer.json           the fitted tokenizer
//!   tokens.bin, tokens.json  the encoded corpus (u16 or u32 little-endian) and its provenance
//!   checkpoints/             model-step<N>.mpk, optim-step<N>.mpk, scheduler-step<N>.mpk,
//!                            state-step<N>.json (seed, hashes; written last), N the step,
//!                            latest.json (the newest complete one),
//!                            set-aside/<time>/ (checkpoints newer than a resume point)
//!   model.mpk                final model record
//!   metrics.jsonl            one JSON object per logged step
//!   summary.json             final figures of the run
//!   experiment.log           Burn's log, without its per-iteration lines
//! ```

pub mod checkpoint;
pub mod control;
pub mod load;
mod lock;
pub mod manifest;
pub mod metrics;
mod outputs;
pub mod start;
mod upgrade;

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::RunSpec;
use crate::data::TokenCache;
use crate::files::{is_temp_name, write_atomic};

pub use checkpoint::{CheckpointError, CheckpointState};
pub use control::RunControl;
pub use load::{
    describe_weights, load_gpt, load_seq2seq, newest_finished_run, open_run, run_of_checkpoint,
    run_tokenizer,
};
pub use lock::RunLock;
pub use manifest::{Manifest, ManifestError};
pub use metrics::{read_metrics, MetricsLine};
pub use outputs::{check_output, OutputError};
pub use start::{Resume, RunError, Started, Summary};

#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory of the run `spec` describes: `<run.artifacts_dir>/<run.name>`.
    pub fn of(spec: &RunSpec) -> Self {
        Self::new(spec.run.artifacts_dir.join(&spec.run.name))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `kiln-run.json`, the run's manifest ([`manifest`]).
    pub fn manifest(&self) -> PathBuf {
        self.root.join("kiln-run.json")
    }
    /// The file a training holds locked ([`RunLock`]).
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(".kiln-lock")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn tokenizer(&self) -> PathBuf {
        self.root.join("tokenizer.json")
    }
    /// `tokens.bin` and its provenance `tokens.json`.
    pub fn token_cache(&self) -> TokenCache {
        TokenCache { tokens: self.root.join("tokens.bin"), meta: self.root.join("tokens.json") }
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// A checkpoint file of `kind` (`model`, `optim`, `scheduler`) taken at `step`.
    pub fn checkpoint_file(&self, kind: &str, step: usize) -> PathBuf {
        self.checkpoints().join(format!("{kind}-step{step}.mpk"))
    }
    /// The state file of the checkpoint taken at `step`, written once its records are whole.
    pub fn checkpoint_state(&self, step: usize) -> PathBuf {
        self.checkpoints().join(format!("state-step{step}.json"))
    }
    pub fn latest_checkpoint(&self) -> PathBuf {
        self.checkpoints().join("latest.json")
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
    /// The text sampled (or the sentences translated) when training finished.
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples.txt")
    }
    /// An instruction run's answers to its held-out instructions.
    pub fn responses(&self) -> PathBuf {
        self.root.join("responses.json")
    }
    /// A self-contained page of the run: config, summary, curves, samples.
    pub fn report(&self) -> PathBuf {
        self.root.join("report.html")
    }
    /// Burn's application log of the training.
    pub fn experiment_log(&self) -> PathBuf {
        self.root.join("experiment.log")
    }
    pub fn loss_plot(&self) -> PathBuf {
        self.root.join("loss.png")
    }
    pub fn lr_plot(&self) -> PathBuf {
        self.root.join("lr.png")
    }
    /// The folder Burn's Learner makes for checkpoints of its own; kiln writes them to
    /// [`RunDir::checkpoints`] and removes it.
    pub fn learner_checkpoints(&self) -> PathBuf {
        self.root.join("checkpoint")
    }
    /// `kiln plot attention`'s picture of `layer` (of one `head`, or all).
    pub fn attention_plot(&self, layer: usize, head: Option<usize>) -> PathBuf {
        let head = head.map(|h| format!("-head{h}")).unwrap_or_default();
        self.root.join(format!("attention-layer{layer}{head}.png"))
    }

    /// Steps at which a complete checkpoint (model, optimizer, scheduler, state) exists,
    /// oldest first.
    pub fn checkpoint_steps(&self) -> Vec<usize> {
        let Ok(entries) = fs::read_dir(self.checkpoints()) else {
            return Vec::new();
        };
        let mut steps: Vec<usize> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("state-step")?.strip_suffix(".json")?.parse().ok()
            })
            .filter(|&step| {
                checkpoint::RECORDS.iter().all(|k| self.checkpoint_file(k, step).is_file())
            })
            .collect();
        steps.sort_unstable();
        steps
    }

    /// Removes the checkpoint taken at `step`. The state file goes first, so a half-deleted
    /// checkpoint is never listed as complete.
    pub fn remove_checkpoint(&self, step: usize) -> std::io::Result<()> {
        remove_if_exists(&self.checkpoint_state(step))?;
        for kind in checkpoint::RECORDS {
            remove_if_exists(&self.checkpoint_file(kind, step))?;
        }
        Ok(())
    }
}

/// The step of a checkpoint file name (`model-step250.mpk`, `state-step250.json`).
pub fn checkpoint_step(path: &Path) -> Option<usize> {
    let stem = path.file_stem()?.to_str()?;
    let (kind, step) = stem.rsplit_once("-step")?;
    (kind == "state" || checkpoint::RECORDS.contains(&kind)).then_some(())?;
    step.parse().ok()
}

impl RunDir {
    /// Moves every checkpoint file of a step after `step` into `checkpoints/set-aside/<unix
    /// time>/`, so a run resumed from `step` cannot mix its new files with them. Returns the
    /// folder when something was moved.
    pub fn set_aside_after(&self, step: usize) -> std::io::Result<Option<PathBuf>> {
        let newer: Vec<PathBuf> = fs::read_dir(self.checkpoints())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && checkpoint_step(p).is_some_and(|s| s > step))
            .collect();
        if newer.is_empty() {
            return Ok(None);
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let dir = self.checkpoints().join("set-aside").join(secs.to_string());
        fs::create_dir_all(&dir)?;
        for path in newer {
            fs::rename(&path, dir.join(path.file_name().expect("a file")))?;
        }
        Ok(Some(dir))
    }

    /// Removes temporary files a killed writer left in the run and its checkpoints folder.
    pub fn remove_partial_files(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for dir in [self.root().to_path_buf(), self.checkpoints()] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                if path.file_name().and_then(|n| n.to_str()).is_some_and(is_temp_name) {
                    remove_if_exists(&path)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Fails unless the run folder can be written and its disk has `bytes` free.
    pub fn check_room(&self, bytes: u64, what: &str) -> Result<(), String> {
        let probe = self.root().join(".kiln-write-test");
        write_atomic(&probe, b"kiln").and_then(|_| fs::remove_file(&probe)).map_err(|e| {
            format!(
                "{}: cannot write into the run folder ({e}); choose a writable run.artifacts_dir",
                self.root().display()
            )
        })?;
        let free = fs4::available_space(self.root())
            .map_err(|e| format!("{}: cannot read free space ({e})", self.root().display()))?;
        if free < bytes {
            return Err(format!(
                "{}: {} free on this disk, but {what} needs {}; free some space or set run.artifacts_dir to another disk",
                self.root().display(),
                human_bytes(free),
                human_bytes(bytes)
            ));
        }
        Ok(())
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} kB", b as f64 / 1024.0),
    }
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
