//! `kiln train`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::{ConfigError, ConfigSource, DataKind, Preset, RunSpec, DEFAULT_FOR_DATA};
use crate::run::start::{Resume, StartMode};
use crate::run::{RunDir, RunError};
use crate::train::{train, Outcome, TrainOptions};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Your text to train on (UTF-8); the run is named after it: my.txt → artifacts/my.
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// A config built into kiln (`kiln presets` lists them); `small` when only --data is given.
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    preset: Option<String>,
    /// A TOML config file, e.g. one `kiln init` wrote.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override a config value: --set training.learning_rate=3e-4 (repeatable; applied after
    /// the file and KILN_<SECTION>__<KEY> environment variables).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    #[command(flatten)]
    backend: super::BackendArg,
    /// Continue the run from its newest valid checkpoint, or from the checkpoint file given
    /// (artifacts/<run>/checkpoints/state-step1000.json or any file of that checkpoint).
    #[arg(long, value_name = "CHECKPOINT")]
    resume: Option<Option<PathBuf>>,
    /// Delete an existing run with the same name and start over.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Tokens of sample text printed after training (0 for none).
    #[arg(long, default_value_t = 200, value_name = "N")]
    sample_tokens: usize,
}

impl TrainArgs {
    /// The config to start from: the file, the preset, or the default preset for --data.
    fn source(&self) -> Result<ConfigSource> {
        Ok(match (&self.config, &self.preset, &self.data) {
            (Some(file), _, _) => ConfigSource::File(file.clone()),
            (None, Some(name), _) => ConfigSource::Preset(Preset::find(name)?),
            (None, None, Some(_)) => ConfigSource::Preset(Preset::find(DEFAULT_FOR_DATA)?),
            (None, None, None) => anyhow::bail!(
                "nothing to train: give your text with --data FILE, a preset with --preset NAME \
                 (`kiln presets` lists them), or a config file with --config FILE"
            ),
        })
    }

    /// The overrides, after `data.path` and `run.name` from --data (so that --set and
    /// `KILN_RUN__NAME` still name the run).
    fn overrides(&self) -> Result<Vec<String>> {
        let mut all = Vec::new();
        if let Some(data) = &self.data {
            let text = data.to_str().with_context(|| {
                format!("--data {}: the path is not valid UTF-8", data.display())
            })?;
            all.push(format!("data.path={}", toml::Value::from(text)));
            let named = self.overrides.iter().any(|o| o.trim_start().starts_with("run.name"))
                || std::env::var_os("KILN_RUN__NAME").is_some();
            if !named {
                all.push(format!("run.name={}", toml::Value::from(run_name_for(data)?)));
            }
        }
        all.extend(self.backend.add_to(&self.overrides));
        Ok(all)
    }
}

/// `notes/my.txt` → `my`.
fn run_name_for(data: &Path) -> Result<String> {
    data.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty() && !s.starts_with('.'))
        .with_context(|| {
            format!(
                "--data {}: cannot name a run after it; add --set run.name=NAME",
                data.display()
            )
        })
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let source = args.source()?;
    if let (ConfigSource::Preset(preset), Some(_)) = (&source, &args.data) {
        if RunSpec::from_toml(preset.text, preset.name)?.data.kind != DataKind::Text {
            anyhow::bail!(
                "--data: preset {} trains on a parallel corpus (data.source, data.target); \
                 --data is for text, e.g. with --preset small",
                preset.name
            );
        }
    }
    let spec = crate::config::load_source(&source, &args.overrides()?).map_err(|e| {
        // A preset's own corpus is in kiln's repository, not next to an installed kiln.
        match (&source, &e) {
            (ConfigSource::Preset(_), ConfigError::Invalid { key: "data.path", .. }) => {
                anyhow::anyhow!("{e}; train {source} on your own text with --data FILE")
            }
            _ => e.into(),
        }
    })?;
    let start = match (args.resume, args.force) {
        (Some(path), _) => StartMode::Resume(path.map_or(Resume::Newest, Resume::From)),
        (None, true) => StartMode::Over,
        (None, false) => StartMode::New,
    };
    let options = TrainOptions { start, sample_tokens: args.sample_tokens };
    let run = RunDir::of(&spec);
    match train(spec.clone(), options).map_err(with_flags)? {
        Outcome::Finished(_) => {
            // Only process 0 writes the run, so only it has weights to export and curves to plot.
            if crate::distributed::Processes::current().rank == 0 {
                // The run's config as written, with what training resolved (the vocabulary).
                let (run, spec) = crate::run::open_run(run.root())?;
                if spec.model.as_gpt().is_some() {
                    match super::export::into_run(&run, &spec) {
                        Ok(files) => eprintln!("kiln: weights for other tools: {}", shown(&files)),
                        Err(e) => eprintln!("kiln: warning: no model.safetensors: {e:#}"),
                    }
                }
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

fn shown(files: &[PathBuf]) -> String {
    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
}
