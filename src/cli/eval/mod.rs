//! `kiln eval`: loss and perplexity of a GPT on its validation windows; loss, perplexity and
//! BLEU (greedy and beam) of a seq2seq model on its validation or test pairs.

mod instructions;
mod seq2seq;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use crate::backend::ForwardJob;
use crate::config::{DataKind, ModelKind, RunSpec};
use crate::data::{Corpus, DataError, FixedWindows};
use crate::kernels::KernelBackend;
use crate::run::RunDir;
use crate::tokenizer::Tokenizer;
use crate::train::{mean_loss, val_windows};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run directory, e.g. artifacts/small.
    #[arg(long)]
    run: PathBuf,
    /// A checkpoint file of the run instead of its final model.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Evaluate on every non-overlapping window of the val split instead of the
    /// `training.eval_iters` fixed batches that training reports.
    #[arg(long)]
    full: bool,
    /// GPT runs: evaluate on the validation split (the last `data.val_fraction`) of this text
    /// file, encoded with the run's tokenizer, instead of the run's own corpus. A run made by
    /// `kiln import` has no corpus of its own and needs it. Instruction runs: the held-out
    /// records of this file instead of data.path's.
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    #[command(flatten)]
    backend: super::BackendArg,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Seq2seq runs: the split to score, `valid` or `test` (the config's data.test_* files).
    #[arg(long, default_value = "valid")]
    split: String,
    /// Seq2seq runs: write the beam-search translations here, one per line.
    #[arg(long)]
    hypotheses: Option<PathBuf>,
    #[command(flatten)]
    decoding: super::translate::DecodingArgs,
}

#[derive(Debug, Serialize)]
struct EvalResult {
    model: String,
    val_loss: f64,
    val_perplexity: f64,
    batches: usize,
    tokens: usize,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let (run, spec) = crate::run::open_run(&args.run)?;
    if spec.model.kind() == ModelKind::Seq2Seq {
        if let Some(data) = &args.data {
            bail!(
                "--data {}: a seq2seq run is scored on its data.valid_*/test_* files; --data is \
                 for GPT runs",
                data.display()
            );
        }
        return seq2seq::run(args, run, spec);
    }
    if args.split != "valid" {
        bail!(
            "--split {:?}: a GPT run has only its validation split (the tail of data.path)",
            args.split
        );
    }
    if args.hypotheses.is_some() {
        bail!("--hypotheses: a GPT run translates nothing; the flag is for seq2seq runs");
    }
    match spec.data.kind {
        DataKind::Instructions => return instructions::run(args, run, spec),
        DataKind::Preferences => bail!(
            "{}: a preference (DPO) run is scored as it trains: metrics.jsonl holds the reward \
             accuracy and margin of its held-out pairs, and the run's last lines print them",
            run.root().display()
        ),
        DataKind::Text | DataKind::Parallel => {}
    }
    let tokenizer = crate::run::run_tokenizer(&run, &spec)?;
    let corpus = gpt_corpus(&run, &spec, tokenizer.as_ref(), args.data.as_deref())?;
    let backend = args.backend.section(&spec)?;
    let weights = super::RunWeights { run, spec, checkpoint: args.checkpoint };
    let job = Job { weights, tokenizer, corpus, full: args.full };
    let result = crate::backend::dispatch(&backend, job)??;
    result.print(args.json)
}

impl EvalResult {
    fn print(&self, json: bool) -> Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else {
            println!("model:          {}", self.model);
            println!("val loss:       {:.4}", self.val_loss);
            println!("val perplexity: {:.3}", self.val_perplexity);
            println!("evaluated on:   {} batches, {} tokens", self.batches, self.tokens);
        }
        Ok(())
    }
}

/// The token stream whose validation split is scored: `--data`, else the run's token file.
fn gpt_corpus(
    run: &RunDir,
    spec: &RunSpec,
    tokenizer: &dyn Tokenizer,
    data: Option<&Path>,
) -> Result<Corpus> {
    let (val_fraction, block_size) = (spec.data.val_fraction, spec.model.block_size());
    let Some(path) = data else {
        let cache = run.token_cache();
        if !cache.meta.is_file() {
            bail!(
                "{}: the run has no encoded corpus ({} is missing; a run made by `kiln import` \
                 has none); pass --data FILE to score the validation split of a text file",
                run.root().display(),
                cache.meta.display()
            );
        }
        if let Some(manifest) = crate::run::Manifest::read(run)? {
            for file in ["tokens.bin", "tokens.json"] {
                manifest.verify_file(run, file)?;
            }
        }
        return Ok(Corpus::from_cache(&cache, val_fraction, block_size, spec.vocab_size())?);
    };
    // The data errors name `data.path`, which is not what the user gave here.
    let named = |e: DataError| match e {
        DataError::Source { reason, .. } => anyhow::anyhow!("--data {}: {reason}", path.display()),
        other => anyhow::anyhow!("--data {}: {other}", path.display()),
    };
    let text = crate::data::read_text(path).map_err(named)?;
    Corpus::in_memory(path, &text, tokenizer, val_fraction, block_size).map_err(named)
}

struct Job {
    weights: super::RunWeights,
    tokenizer: Box<dyn Tokenizer>,
    corpus: Corpus,
    full: bool,
}

impl ForwardJob for Job {
    type Output = Result<EvalResult>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<EvalResult> {
        let (model, path) = self.weights.gpt::<B>(&device)?;
        let spec = &self.weights.spec;
        let separator = crate::train::document_separator(spec, self.tokenizer.as_ref())?;
        let windows = if self.full {
            let (t, m) = (&spec.training, &spec.model);
            FixedWindows::tiling(
                self.corpus.val.clone(),
                t.batch_size,
                m.block_size(),
                device.clone(),
            )
        } else {
            val_windows::<B>(spec, &self.corpus, separator, &device)?
        };
        let val_loss = mean_loss(&model, windows.batches());
        let (batches, tokens) = windows.size();
        Ok(EvalResult {
            model: path.display().to_string(),
            val_loss,
            val_perplexity: val_loss.exp(),
            batches,
            tokens,
        })
    }
}
