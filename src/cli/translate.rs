//! `kiln translate`

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::backend::ForwardJob;
use crate::config::ModelKind;
use crate::kernels::KernelBackend;
use crate::translate::{translate, Decoding};

#[derive(Debug, Args)]
pub struct TranslateArgs {
    /// Run directory of a seq2seq model, e.g. artifacts/multi30k.
    #[arg(long)]
    run: PathBuf,
    /// Sentences to translate, one output line each.
    sentences: Vec<String>,
    /// A file of sentences, one per line (plain or .gz), instead of arguments.
    #[arg(long, conflicts_with = "sentences")]
    input: Option<PathBuf>,
    /// A checkpoint file of the run instead of its final model.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[command(flatten)]
    decoding: DecodingArgs,
    #[command(flatten)]
    backend: super::BackendArg,
}

/// How outputs are searched for, shared by `translate` and `eval`.
#[derive(Debug, Clone, Args)]
pub struct DecodingArgs {
    /// Beam size; 1 decodes greedily.
    #[arg(long, default_value_t = 5)]
    pub beam: usize,
    /// GNMT length penalty α for beam search (0: none; larger favours longer outputs).
    #[arg(long, default_value_t = 0.6, allow_negative_numbers = true)]
    pub length_penalty: f64,
    /// Outputs stop at this many times the source's tokens, plus 10.
    #[arg(long, default_value_t = 1.5, allow_negative_numbers = true)]
    pub max_len_ratio: f64,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

impl DecodingArgs {
    /// The decoding these flags ask for, with `beam` hypotheses, for a model of `max_len`
    /// positions; flags out of range are errors.
    pub fn decoding(&self, beam: usize, max_len: usize) -> Result<Decoding> {
        if beam == 0 {
            bail!("--beam 0: expected a beam size of at least 1 (1 decodes greedily)");
        }
        if !(self.length_penalty >= 0.0 && self.length_penalty.is_finite()) {
            bail!("--length-penalty {}: expected a number >= 0, such as 0.6", self.length_penalty);
        }
        if !(self.max_len_ratio > 0.0 && self.max_len_ratio.is_finite()) {
            bail!(
                "--max-len-ratio {}: expected a positive number, such as 1.5",
                self.max_len_ratio
            );
        }
        if self.batch_size == 0 {
            bail!("--batch-size 0: expected at least 1 sentence per batch");
        }
        Ok(Decoding {
            beam,
            length_penalty: self.length_penalty,
            max_len_ratio: self.max_len_ratio,
            max_len,
            batch_size: self.batch_size,
        })
    }
}

pub fn run(args: TranslateArgs) -> Result<()> {
    let (run, spec) = crate::run::open_run(&args.run)?;
    if spec.model.kind() != ModelKind::Seq2Seq {
        bail!("{}: a GPT run; translate needs a seq2seq run (model.kind = \"seq2seq\"); use kiln generate for a GPT", args.run.display());
    }
    let sentences = match &args.input {
        Some(path) => crate::data::parallel::read_lines("--input", path)?,
        None if args.sentences.is_empty() => {
            bail!("nothing to translate: give sentences as arguments or --input FILE")
        }
        None => args.sentences.clone(),
    };
    let decoding = args.decoding.decoding(args.decoding.beam, spec.model.block_size())?;
    let backend = args.backend.section(&spec)?;
    let outputs = crate::backend::dispatch(
        &backend,
        Job {
            weights: super::RunWeights { run, spec, checkpoint: args.checkpoint },
            sentences,
            decoding,
        },
    )??;
    let mut out = std::io::stdout().lock();
    for line in outputs {
        writeln!(out, "{line}").context("writing to stdout")?;
    }
    Ok(())
}

struct Job {
    weights: super::RunWeights,
    sentences: Vec<String>,
    decoding: Decoding,
}

impl ForwardJob for Job {
    type Output = Result<Vec<String>>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<Vec<String>> {
        let (model, _, tokenizer) = self.weights.seq2seq::<B>(&device)?;
        let sentences: Vec<&str> = self.sentences.iter().map(String::as_str).collect();
        translate(&model, tokenizer.as_ref(), &sentences, &self.decoding, &device)
    }
}
