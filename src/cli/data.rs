//! `kiln data show`: the first training batches as ids and as text, and corpus statistics.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::table::{escape, Table};
use crate::config::SamplingMode;
use crate::data::Corpus;
use crate::tokenizer::Tokenizer;
use crate::train::prepare_in_memory;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// The first training batches (input next to target) and, with --stats, corpus figures.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A run config, e.g. configs/verdict-word.toml.
    #[arg(long)]
    config: PathBuf,
    /// Override a config value: --set data.stride=1 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// How many batches to print.
    #[arg(long, default_value_t = 2)]
    batches: usize,
    /// Print corpus statistics instead of batches.
    #[arg(long)]
    stats: bool,
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Show(args) => show(args),
    }
}

/// More rows than anyone reads in a terminal; bounds the table before it is built.
const MAX_BATCHES: usize = 1000;

fn show(args: ShowArgs) -> Result<()> {
    if args.batches == 0 || args.batches > MAX_BATCHES {
        anyhow::bail!("--batches {}: expected a number from 1 to {MAX_BATCHES}", args.batches);
    }
    let mut spec = crate::config::load(&args.config, &args.overrides)?;
    crate::run::load::gpt_spec(&spec, "data show")?;
    let (tokenizer, corpus, order) = prepare_in_memory(&mut spec)?;
    if args.stats {
        print_stats(&spec, &corpus, tokenizer.as_ref(), order.starts().len());
        return Ok(());
    }

    let (batch, block) = (spec.training.batch_size, spec.model.block_size());
    let starts = order.range(0, args.batches * batch);
    let window = |s: usize| &corpus.train[s..s + block + 1];
    let ids = |t: &[u32]| t.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    let text = |t: &[u32]| escape(&tokenizer.decode(t));
    let mut table = Table::new(&[
        "batch", "row", "start", "input ids", "target ids", "input text", "target text",
    ]);
    for (i, &s) in starts.iter().enumerate() {
        let w = window(s);
        let (input, target) = (&w[..block], &w[1..]);
        table.row(vec![
            (i / batch + 1).to_string(),
            (i % batch).to_string(),
            s.to_string(),
            ids(input),
            ids(target),
            text(input),
            text(target),
        ]);
    }
    table.print();
    Ok(())
}

fn print_stats(
    spec: &crate::config::RunSpec,
    corpus: &Corpus,
    tokenizer: &dyn Tokenizer,
    windows: usize,
) {
    let tokens = corpus.train.len() + corpus.val.len();
    let mut used = vec![false; tokenizer.vocab_size()];
    for &t in corpus.train.iter().chain(corpus.val.iter()) {
        if let Some(slot) = used.get_mut(t as usize) {
            *slot = true;
        }
    }
    let used = used.iter().filter(|&&u| u).count();
    let batch = spec.training.batch_size * spec.training.grad_accumulation;
    let (sampling, per_epoch) = match spec.data.sampling {
        SamplingMode::Random => ("random", format!("{windows} possible starts, drawn at random")),
        SamplingMode::Sliding => (
            "sliding",
            format!(
                "{windows} (stride {}), {} optimizer steps per pass",
                spec.data.stride(spec.model.block_size()),
                windows.div_ceil(batch)
            ),
        ),
    };
    let mut table = Table::new(&["figure", "value"]);
    let rows = [
        ("corpus", spec.data.path.display().to_string()),
        ("bytes", corpus.source_bytes.to_string()),
        ("tokenizer", spec.data.tokenizer.to_string()),
        ("tokens", format!("{tokens} ({} train, {} val)", corpus.train.len(), corpus.val.len())),
        ("bytes per token", format!("{:.3}", corpus.source_bytes as f64 / tokens.max(1) as f64)),
        ("vocabulary", tokenizer.vocab_size().to_string()),
        (
            "vocabulary used",
            format!("{used} ({:.1}%)", 100.0 * used as f64 / tokenizer.vocab_size().max(1) as f64),
        ),
        ("sampling", sampling.to_string()),
        ("respect documents", spec.data.respect_documents.to_string()),
        ("windows per epoch", per_epoch),
        ("window", format!("{} tokens (block_size + 1)", spec.model.block_size() + 1)),
    ];
    for (k, v) in rows {
        table.row(vec![k.to_string(), v]);
    }
    table.print();
}
