//! One process at a time on a run: an advisory lock on `<run>/.kiln-lock`, held from the
//! moment a training opens the run until it ends (the system releases it however the process
//! ends). A second trainer, a resume or a start-over of a live run is refused, naming the
//! process that holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};

use super::{RunDir, RunError};

/// The lock of a run, released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Locks `run`, whose folder exists, or says which process holds it.
    pub fn acquire(run: &RunDir) -> Result<Self, RunError> {
        let path = run.lock_file();
        let io = |e| RunError::Write(crate::files::write_error(&path, e));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(busy(run, &mut file)),
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).and_then(|_| file.rewind()).map_err(io)?;
        writeln!(file, "{}", std::process::id()).and_then(|_| file.sync_all()).map_err(io)?;
        Ok(Self { _file: file })
    }

    /// Fails if a process holds `run`'s lock now (for commands that change a run without
    /// training it).
    pub fn check_free(run: &RunDir) -> Result<(), RunError> {
        if run.lock_file().exists() {
            drop(Self::acquire(run)?);
        }
        Ok(())
    }
}

fn busy(run: &RunDir, file: &mut File) -> RunError {
    let mut text = String::new();
    let pid = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
    RunError::Busy { dir: run.root().to_path_buf(), pid }
}
