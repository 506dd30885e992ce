//! Where each process of a data-parallel run works. Process 0 owns the run folder the config
//! names, exactly as a run of one process does; every other process works in a scratch
//! folder of its own under the temporary directory, so that it writes nothing where process
//! 0 writes, even when the processes share a filesystem. A resumed run's other processes
//! copy process 0's checkpoint into theirs from the run folder at the same path (a shared
//! filesystem, or a copy of the run on their machine).

use anyhow::{Context, Result};

use crate::config::RunSpec;
use crate::run::start::{Resume, StartMode, Started};
use crate::run::RunDir;
use crate::tokenizer::Tokenizer;

/// Opens this process's run folder: process 0 first, which then tells the others the step it
/// resumes from. The scratch folder of any other process is removed when its guard drops.
pub fn start_run(
    spec: &mut RunSpec,
    mode: &StartMode,
    fit: impl FnOnce() -> Result<Box<dyn Tokenizer>>,
) -> Result<(Started, Option<tempfile::TempDir>)> {
    let rank = spec.distributed.process_rank;
    if rank == 0 {
        let started = crate::run::start::start(spec, mode, fit)?;
        let step = started.resume_from.as_ref().map(|state| state.step);
        super::mpi::broadcast_bytes(serde_json::to_vec(&step)?);
        return Ok((started, None));
    }
    let step: Option<usize> = serde_json::from_slice(&super::mpi::broadcast_bytes(vec![]))
        .context("reading the step process 0 resumes from")?;
    let scratch = tempfile::Builder::new()
        .prefix(&format!("kiln-process{rank}-"))
        .tempdir()
        .context("making this process's scratch folder under the temporary directory")?;
    let shared = RunDir::of(spec);
    spec.run.artifacts_dir = scratch.path().to_path_buf();
    let mode = match step {
        Some(step) => {
            copy_checkpoint(&shared, &RunDir::of(spec), step).with_context(|| {
                format!(
                    "process {rank} resumes from process 0's checkpoint at step {step} in {}: \
                     every process must see the run there (a shared filesystem, or a copy)",
                    shared.root().display()
                )
            })?;
            StartMode::Resume(Resume::Newest)
        }
        None => StartMode::New,
    };
    Ok((crate::run::start::start(spec, &mode, fit)?, Some(scratch)))
}

/// The files a resume reads, of the checkpoint at `step`, from `from` into `to`.
fn copy_checkpoint(from: &RunDir, to: &RunDir, step: usize) -> Result<()> {
    std::fs::create_dir_all(to.checkpoints())?;
    let mut files = vec![from.manifest(), from.config(), from.tokenizer()];
    files.push(from.checkpoint_state(step));
    files.extend(crate::run::checkpoint::RECORDS.map(|kind| from.checkpoint_file(kind, step)));
    for file in files {
        let relative = file.strip_prefix(from.root()).context("a file outside the run")?;
        std::fs::copy(&file, to.root().join(relative))
            .with_context(|| format!("copying {}", file.display()))?;
    }
    Ok(())
}
