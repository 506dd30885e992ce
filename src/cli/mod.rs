//! Command-line interface: one file per subcommand. `kiln --config FILE` alone trains.

mod bench;
mod bench_generate;
mod bench_tokenizer;
mod data;
mod eval;
mod export;
mod generate;
mod import;
mod inspect;
mod plot;
mod table;
mod tokenizer;
mod train;
mod translate;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::RunSpec;
use crate::run_dir::RunDir;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "Train Transformer language models from scratch on Burn"
)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand kiln trains: `kiln --config configs/small.toml`.
    #[command(flatten)]
    train: train::TrainArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model from a TOML config (the default command).
    Train(train::TrainArgs),
    /// Sample text from a trained run.
    Generate(generate::GenerateArgs),
    /// Validation loss and perplexity of a run or one of its checkpoints; BLEU of a seq2seq run.
    Eval(eval::EvalArgs),
    /// Translate sentences with a trained seq2seq run (greedy or beam search).
    Translate(translate::TranslateArgs),
    /// Parameters, shapes, sizes, config, step and metrics of a run or checkpoint file.
    Inspect(inspect::InspectArgs),
    /// Write a run's model as safetensors that Hugging Face transformers loads.
    Export(export::ExportArgs),
    /// Make a kiln run from a GPT-2 checkpoint in Hugging Face form.
    Import(import::ImportArgs),
    /// Loss and learning-rate curves, attention maps, positional encodings (PNG).
    Plot(plot::PlotArgs),
    /// Look at tokenizers.
    #[command(subcommand)]
    Tokenizer(tokenizer::TokenizerCommand),
    /// Look at the data pipeline: batches and corpus statistics.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Parses the command line and runs it.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Train(args)) => train::run(args),
        Some(Command::Generate(args)) => generate::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Translate(args)) => translate::run(args),
        Some(Command::Inspect(args)) => inspect::run(args),
        Some(Command::Export(args)) => export::run(args),
        Some(Command::Import(args)) => import::run(args),
        Some(Command::Plot(args)) => plot::run(args),
        Some(Command::Tokenizer(command)) => tokenizer::run(command),
        Some(Command::Data(command)) => data::run(command),
        Some(Command::Bench(command)) => bench::run(command),
        None => train::run(cli.train),
    }
}

/// `--backend NAME`: the backend to run on instead of the one the config or run names (e.g.
/// generate on the CPU from a run trained on a GPU).
#[derive(Debug, clap::Args)]
struct BackendArg {
    /// Backend to run on (ndarray, flex, wgpu, tch-cpu, cuda); overrides `[backend] name`.
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,
}

impl BackendArg {
    /// `--set` overrides with this one added last (for commands that load a config).
    fn add_to(&self, overrides: &[String]) -> Vec<String> {
        let mut all = overrides.to_vec();
        all.extend(
            self.backend
                .as_ref()
                .map(|name| format!("backend.name={name}")),
        );
        all
    }

    /// A run's `[backend]` section with the override applied and checked.
    fn section(&self, spec: &RunSpec) -> Result<crate::config::BackendSection> {
        let mut section = spec.backend.clone();
        if let Some(name) = &self.backend {
            section.name = name.clone();
        }
        crate::backend::BackendChoice::from_section(&section)?;
        Ok(section)
    }
}

/// Commands built for the GPT refuse a seq2seq config or run, pointing to those that take it.
fn require_gpt(spec: &RunSpec, command: &str) -> Result<()> {
    if spec.model.kind == crate::config::ModelKind::Seq2Seq {
        anyhow::bail!(
            "kiln {command} works on GPT models, and this one is model.kind = \"seq2seq\"; \
             for an encoder-decoder use kiln train, translate, eval or inspect"
        );
    }
    Ok(())
}

/// A run directory and its resolved config.
fn open_run(dir: &Path) -> Result<(RunDir, RunSpec)> {
    let run = RunDir::new(dir);
    if !run.config().is_file() {
        anyhow::bail!(
            "{}: not a kiln run directory (no config.toml); pass a directory under artifacts/",
            dir.display()
        );
    }
    let spec = RunSpec::read_resolved(&run.config())?;
    Ok((run, spec))
}

/// For a checkpoint file inside a run (`<run>/model.mpk`, `<run>/checkpoints/model-N.mpk`),
/// the run directory it belongs to.
fn run_of_checkpoint(file: &Path) -> Result<PathBuf> {
    let parent = file.parent().unwrap_or(Path::new("."));
    let dir = if parent.file_name().is_some_and(|n| n == "checkpoints") {
        parent.parent().unwrap_or(parent)
    } else {
        parent
    };
    if !dir.join("config.toml").is_file() {
        anyhow::bail!(
            "{}: cannot find the run it belongs to (expected config.toml in {})",
            file.display(),
            dir.display()
        );
    }
    Ok(dir.to_path_buf())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}
