//! Command-line interface: one file per subcommand. `kiln --config FILE` alone trains.

mod bench;
mod chat;
mod data;
mod eval;
mod export;
mod generate;
mod import;
mod inspect;
mod plot;
mod presets;
mod serve;
mod table;
mod tokenizer;
mod train;
mod translate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{BackendName, BackendSection, Precision, RunSpec};
use crate::kernels::KernelBackend;
use crate::model::{Gpt, Seq2Seq};
use crate::run::RunDir;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version = env!("KILN_VERSION_LINE"),
    about = "Train Transformer language models from scratch on Burn",
    after_help = "Start with `kiln train --data my.txt`, then `kiln generate`; `kiln presets` \
                  lists the built-in configs."
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
    /// Train a model on your text, a preset or a config file (the default command).
    Train(train::TrainArgs),
    /// List the configs built into kiln.
    Presets,
    /// Write a preset out as a config file to edit.
    Init(presets::InitArgs),
    /// Sample text from a trained run.
    Generate(generate::GenerateArgs),
    /// Talk to an instruction-finetuned run: a multi-turn loop, replies streamed.
    Chat(chat::ChatArgs),
    /// Serve a GPT run over HTTP: OpenAI-compatible API and a chat page.
    Serve(serve::ServeArgs),
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
    /// Print a shell completion script: `kiln completions bash > ~/.local/share/bash-completion/completions/kiln`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

/// kiln's command line as clap describes it (for completions and the CLI reference).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the command line and runs it; the exit status is 0 for a command that did its
/// work, 128 + the signal for a training stopped by one (its checkpoint written).
pub fn run() -> Result<ExitCode> {
    // Bare `kiln` shows what it can do, as git and cargo do.
    if std::env::args_os().len() <= 1 {
        command().print_help()?;
        return Ok(ExitCode::SUCCESS);
    }
    let cli = Cli::parse();
    let done = match cli.command {
        Some(Command::Train(args)) => return train::run(args),
        None => return train::run(cli.train),
        Some(Command::Presets) => presets::list(),
        Some(Command::Init(args)) => presets::init(args),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut command(), "kiln", &mut std::io::stdout());
            Ok(())
        }
        Some(Command::Generate(args)) => generate::run(args),
        Some(Command::Chat(args)) => chat::run(args),
        Some(Command::Serve(args)) => serve::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Translate(args)) => translate::run(args),
        Some(Command::Inspect(args)) => inspect::run(args),
        Some(Command::Export(args)) => export::run(args),
        Some(Command::Import(args)) => import::run(args),
        Some(Command::Plot(args)) => plot::run(args),
        Some(Command::Tokenizer(command)) => tokenizer::run(command),
        Some(Command::Data(command)) => data::run(command),
        Some(Command::Bench(command)) => bench::run(command),
    };
    done.map(|()| ExitCode::SUCCESS)
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
    /// Overrides with this one added last (for commands that load a config).
    fn add_to(&self, overrides: &[String]) -> Vec<String> {
        let mut all = overrides.to_vec();
        all.extend(self.backend.as_ref().map(|name| format!("backend.name={name}")));
        all
    }

    /// A run's `[backend]` section with the override applied and checked.
    fn section(&self, spec: &RunSpec) -> Result<BackendSection> {
        let mut section = spec.backend.clone();
        if let Some(name) = &self.backend {
            section.name = BackendName::try_from(name.clone())
                .map_err(|e| anyhow::anyhow!("--backend {name}: {e}"))?;
            if !section.name.compiled_in() {
                anyhow::bail!(
                    "--backend {name}: not compiled into this binary; rebuild with \
                     `cargo build --release --features {}`",
                    section.name.feature()
                );
            }
            if !section.name.precisions().contains(&section.precision) {
                section.precision = Precision::F32;
            }
        }
        Ok(section)
    }
}

/// A run and the weights of it to load: the checkpoint file given, else its final model
/// (else its newest checkpoint).
struct RunWeights {
    run: RunDir,
    spec: RunSpec,
    checkpoint: Option<PathBuf>,
}

impl RunWeights {
    fn gpt<B: KernelBackend>(&self, device: &B::Device) -> Result<(Gpt<B>, PathBuf)> {
        crate::run::load_gpt(&self.run, &self.spec, self.checkpoint.as_deref(), device)
    }

    /// The seq2seq model, and the run's tokenizer with it.
    fn seq2seq<B: KernelBackend>(
        &self,
        device: &B::Device,
    ) -> Result<(Seq2Seq<B>, PathBuf, Box<dyn Tokenizer>)> {
        crate::run::load_seq2seq(&self.run, &self.spec, self.checkpoint.as_deref(), device)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}
