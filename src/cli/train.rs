//! `kiln train`

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::train::{train, Outcome, Resume, TrainOptions};

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

pub fn run(args: TrainArgs) -> Result<()> {
    let Some(config) = args.config else {
        anyhow::bail!(
            "no config given: run `kiln --config configs/small.toml` (see `kiln --help`)"
        );
    };
    let spec = crate::config::load(&config, &args.backend.add_to(&args.overrides))?;
    let resume = args
        .resume
        .map(|path| path.map_or(Resume::Newest, Resume::From));
    let options = TrainOptions {
        resume,
        force: args.force,
        sample_tokens: args.sample_tokens,
    };
    let run = crate::run_dir::RunDir::of(&spec);
    // Only node 0 writes metrics, so only node 0 has curves to plot.
    if let (Outcome::Finished(_), 0) = (train(spec.clone(), options)?, spec.distributed.node_rank) {
        super::plot::after_training(&run, &spec);
    }
    Ok(())
}
