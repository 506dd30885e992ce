//! `experiment.log`: Burn's application log of a run, without the line Burn's training loop
//! writes for every iteration (a 2,000-step run made 2,000 lines of "Iteration N" that hid
//! the warnings). kiln's own progress goes to the terminal and `metrics.jsonl`.

use std::path::PathBuf;

use burn::train::ApplicationLoggerInstaller;
use tracing_core::{Level, LevelFilter};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;
use tracing_subscriber::Layer;

/// Installs the file log of a run at `path`.
pub struct RunLog {
    path: PathBuf,
}

impl RunLog {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

/// Whether an event at `level` from `module` belongs in the log: warnings and errors always;
/// information, except the training loop's per-iteration lines and wgpu's chatter.
fn kept(module: &str, level: &Level) -> bool {
    let chatty = module.starts_with("burn_train::learner::supervised::strategies")
        || module.starts_with("wgpu");
    *level <= Level::WARN || !chatty
}

impl ApplicationLoggerInstaller for RunLog {
    fn install(&self) -> Result<(), String> {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return Err(format!("{}: not a file path for the log", self.path.display()));
        };
        let writer = tracing_appender::rolling::never(dir, name);
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(writer)
            .with_filter(LevelFilter::INFO)
            .with_filter(filter_fn(|m| kept(m.module_path().unwrap_or(""), m.level())));
        tracing_subscriber::registry()
            .with(layer)
            .try_init()
            .map_err(|e| format!("cannot install the log {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::kept;
    use tracing_core::Level;

    #[test]
    fn iteration_lines_are_dropped_and_warnings_kept() {
        let epoch = "burn_train::learner::supervised::strategies::single::epoch";
        assert!(!kept(epoch, &Level::INFO));
        assert!(kept(epoch, &Level::WARN));
        assert!(kept("burn_train::checkpoint", &Level::INFO));
        assert!(!kept("wgpu_core::device", &Level::INFO));
    }
}
