//! Where a command may write a file the user names (`--out`, `--hypotheses`): never onto a
//! file the command reads, and never onto a file of a run (its config, tokenizer, weights,
//! checkpoints or manifest), which would break the run without a trace.

use std::path::Path;

use super::RunDir;
use crate::files::same_file;

/// Why writing `out` (given as `flag`) would destroy something, if it would.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{flag} {out}: is the file {input} this command reads; writing it would destroy it, choose another {flag}")]
    IsInput { flag: &'static str, out: String, input: String },
    #[error("{flag} {out}: is a file of the kiln run {run}; writing it would break the run, choose another {flag}")]
    InRun { flag: &'static str, out: String, run: String },
}

/// Refuses an output path that is one of `inputs` or a file a run keeps.
pub fn check_output<'a>(
    flag: &'static str,
    out: &Path,
    inputs: impl IntoIterator<Item = &'a Path>,
) -> Result<(), OutputError> {
    let shown = || out.display().to_string();
    if let Some(input) = inputs.into_iter().find(|input| same_file(input, out)) {
        return Err(OutputError::IsInput {
            flag,
            out: shown(),
            input: input.display().to_string(),
        });
    }
    match run_keeping(out) {
        Some(run) => Err(OutputError::InRun { flag, out: shown(), run: run.display().to_string() }),
        None => Ok(()),
    }
}

/// The run folder that keeps the existing file `out`: one of the files its manifest
/// records, the manifest or lock itself, or anything under its `checkpoints/`.
fn run_keeping(out: &Path) -> Option<std::path::PathBuf> {
    let out = out.canonicalize().ok()?;
    let name = out.file_name()?.to_str()?.to_string();
    let parent = out.parent()?;
    for (dir, kept) in [(parent, None), (parent.parent()?, Some("checkpoints"))] {
        let run = RunDir::new(dir);
        if !run.manifest().is_file() {
            continue;
        }
        let recorded = || {
            super::Manifest::read(&run).ok().flatten().is_some_and(|m| m.files.contains_key(&name))
        };
        let own = match kept {
            Some(sub) => parent.file_name().is_some_and(|n| n == sub),
            None => [run.manifest(), run.lock_file(), run.config()].contains(&out) || recorded(),
        };
        if own {
            return Some(dir.to_path_buf());
        }
    }
    None
}
