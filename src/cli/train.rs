//! `kiln train`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::run::start::{Resume, StartMode};
use crate::run::{RunDir, RunError};
use crate::train::{train, Outcome, TrainOptions};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// TOML config file, e.g. configs/small.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override a config value: --set training.learning_rate=3e-4 (repeatable; applied after
    /// the file and KILN_<SECTION>__<KEY> environment variables).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    #[command(flatten)]
    backend: super::BackendArg,
    /// Continue the run from its newest valid checkpoint, or from the checkpoint file given
    /// (artifacts/<run>/checkpoints/state-3.json or any file of that checkpoint).
    #[arg(long, value_name = "CHECKPOINT")]
    resume: Option<Option<PathBuf>>,
    /// Delete an existing run with the same name and start over.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Tokens of sample text printed after training (0 for none).
    #[arg(long, default_value_t = 200)]
    sample_tokens: usize,
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let Some(config) = args.config else {
        anyhow::bail!(
            "no config given: run `kiln --config configs/small.toml` (see `kiln --help`)"
        );
    };
    let spec = crate::config::load(&config, &args.backend.add_to(&args.overrides))?;
    let start = match (args.resume, args.force) {
        (Some(path), _) => StartMode::Resume(path.map_or(Resume::Newest, Resume::From)),
        (None, true) => StartMode::Over,
        (None, false) => StartMode::New,
    };
    let options = TrainOptions { start, sample_tokens: args.sample_tokens };
    let run = RunDir::of(&spec);
    match train(spec.clone(), options).map_err(with_flags)? {
        Outcome::Finished(_) => {
            // Only node 0 writes metrics, so only node 0 has curves to plot.
            if spec.distributed.node_rank == 0 {
                super::plot::after_training(&run, &spec);
            }
            Ok(ExitCode::SUCCESS)
        }
        // 130 after SIGINT, 143 after SIGTERM, as shells report a process the signal ended.
        Outcome::Interrupted { .. } => {
            let signal = crate::run::control::interrupting_signal().unwrap_or(2);
            Ok(ExitCode::from((128 + signal).clamp(0, 255) as u8))
        }
    }
}

/// A run folder's refusal with the flags that get past it.
fn with_flags(error: anyhow::Error) -> anyhow::Error {
    let hint = match error.downcast_ref::<RunError>() {
        Some(RunError::Exists { .. }) => "pass --resume to continue it, --force to delete it and \
             start over, or --set run.name=<new name>"
            .to_string(),
        Some(RunError::NothingToResume { .. } | RunError::NoCheckpoint { .. }) => {
            "train without --resume (add --force to start over)".to_string()
        }
        Some(RunError::Finished { max_iters, .. }) => {
            format!("e.g. --resume --set training.max_iters={}", 2 * max_iters)
        }
        Some(RunError::NotItsCheckpoint { .. }) => return anyhow::anyhow!("--resume {error}"),
        _ => return error,
    };
    anyhow::anyhow!("{error}; {hint}")
}
