//! `kiln eval` of a seq2seq run: teacher-forced loss and perplexity, then sacreBLEU of greedy
//! and beam-search translations against the references.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::EvalArgs;
use crate::backend::ForwardJob;
use crate::config::{RunSpec, Split};
use crate::data::parallel::Specials;
use crate::data::FixedPairs;
use crate::kernels::KernelBackend;
use crate::run::RunDir;
use crate::translate::bleu::{corpus_bleu, Bleu, Smoothing};
use crate::translate::{translate, Decoding};

#[derive(Debug, Serialize)]
struct Seq2SeqEval {
    model: String,
    split: String,
    loss: f64,
    perplexity: f64,
    /// Pairs the loss is over (those that fit the model's positions) and their target tokens.
    pairs: usize,
    tokens: usize,
    sentences: usize,
    bleu_greedy: f64,
    bleu_beam: f64,
    beam: usize,
    /// sacreBLEU's one-line summaries.
    greedy: String,
    beam_search: String,
}

pub(super) fn run(args: EvalArgs, run: RunDir, spec: RunSpec) -> Result<()> {
    if args.full {
        bail!("--full: a seq2seq eval always scores every pair of the split; leave the flag out");
    }
    let split = match args.split.as_str() {
        "valid" => Split::Valid,
        "test" => Split::Test,
        other => bail!("--split {other:?}: expected valid or test"),
    };
    if split == Split::Test && spec.data.pair_files(Split::Test).is_none() {
        bail!(
            "--split test: {} names no test files (data.test_source and data.test_target)",
            run.config().display()
        );
    }
    if let Some(out) = &args.hypotheses {
        let reads = [Split::Train, Split::Valid, Split::Test]
            .into_iter()
            .filter_map(|s| spec.data.pair_files(s))
            .flat_map(|pair| pair.into_iter().map(|(_, path)| path.to_path_buf()))
            .collect::<Vec<_>>();
        crate::run::check_output("--hypotheses", out, reads.iter().map(|p| p.as_path()))?;
    }
    let greedy = args.decoding.decoding(1, spec.model.block_size())?;
    let beam = args.decoding.decoding(args.decoding.beam, spec.model.block_size())?;
    let backend = args.backend.section(&spec)?;
    let job = Job {
        weights: super::super::RunWeights { run, spec, checkpoint: args.checkpoint },
        split,
        greedy,
        beam,
        hypotheses: args.hypotheses,
    };
    let result = crate::backend::dispatch(&backend, job)??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    println!("model:        {}", result.model);
    println!(
        "split:        {} ({} sentences; loss over the {} pairs that fit, {} target tokens)",
        result.split, result.sentences, result.pairs, result.tokens
    );
    println!("loss:         {:.4}", result.loss);
    println!("perplexity:   {:.3}", result.perplexity);
    println!("greedy:       {}", result.greedy);
    println!("beam {:<2}:      {}", result.beam, result.beam_search);
    Ok(())
}

struct Job {
    weights: super::super::RunWeights,
    split: Split,
    greedy: Decoding,
    beam: Decoding,
    hypotheses: Option<PathBuf>,
}

impl ForwardJob for Job {
    type Output = Result<Seq2SeqEval>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<Seq2SeqEval> {
        let (model, path, tokenizer) = self.weights.seq2seq::<B>(&device)?;
        let spec = &self.weights.spec;
        let data = crate::train::pair_split(spec, tokenizer.as_ref(), self.split)?
            .context("the config names no such split")?;
        let pad = Specials::of(tokenizer.as_ref())?.pad;
        let batches =
            FixedPairs::new(data.pairs.clone(), spec.training.batch_size, 0, pad, device.clone());
        let loss = crate::train::seq2seq_mean_loss(&model, batches.batches());

        let sources: Vec<&str> = data.sources.iter().map(String::as_str).collect();
        let score = |decoding: &Decoding| -> Result<(Bleu, Vec<String>)> {
            let outputs = translate(&model, tokenizer.as_ref(), &sources, decoding, &device)?;
            Ok((corpus_bleu(&outputs, &data.targets, Smoothing::Exp), outputs))
        };
        let (greedy, _) = score(&self.greedy)?;
        let (beam, outputs) = score(&self.beam)?;
        if let Some(path) = &self.hypotheses {
            let text: String = outputs.iter().map(|line| format!("{line}\n")).collect();
            crate::files::write_atomic(path, text.as_bytes())?;
        }
        Ok(Seq2SeqEval {
            model: path.display().to_string(),
            split: self.split.name().to_string(),
            loss,
            perplexity: loss.exp(),
            pairs: data.pairs.len(),
            tokens: data.pairs.iter().map(|p| p.target.len() - 1).sum(),
            sentences: sources.len(),
            bleu_greedy: greedy.score,
            bleu_beam: beam.score,
            beam: self.beam.beam,
            greedy: greedy.to_string(),
            beam_search: beam.to_string(),
        })
    }
}
