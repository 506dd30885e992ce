//! Training the encoder-decoder on a parallel corpus: a joint BPE with `<pad>`, `<bos>` and
//! `<eos>` fitted on both sides of the training pairs, pairs bucketed by length, and the
//! same Learner wiring, checkpoints and summary as the GPT.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::{announce, seq2seq_loss, start_run, Fit, Outcome, TrainOptions};
use crate::backend::BackendChoice;
use crate::config::{DataSection, RunSpec, Split};
use crate::data::parallel::{self, encode_pairs, read_pairs, BOS, EOS, PAD};
use crate::data::{FixedPairs, PairBatches, PairTokens, Seq2SeqBatch, Specials, TrainBatches};
use crate::distributed::Replica;
use crate::model::{Seq2Seq, Seq2SeqConfig};
use crate::run_dir::RunDir;
use crate::tokenizer::{bpe, Tokenizer, TokenizerSpec};

/// The model a seq2seq config describes, its vocabulary resolved and `pad` from the tokenizer.
pub fn seq2seq_config(spec: &RunSpec, pad: u32) -> Seq2SeqConfig {
    let m = &spec.model;
    Seq2SeqConfig::new(
        spec.vocab_size(),
        m.d_model,
        m.n_heads,
        m.n_layers,
        m.n_decoder_layers(),
        m.d_ff(),
        m.block_size,
        pad as usize,
    )
    .with_dropout(m.dropout)
    .with_bias(m.bias)
    .with_tie_embeddings(m.tie_embeddings)
    .with_activation(m.activation)
    .with_norm(m.norm)
    .with_norm_first(m.norm_first)
    .with_norm_eps(m.norm_eps)
    .with_positions(m.positions)
    .with_init(m.init)
}

/// One split of a run's parallel corpus: the sentences as written and the pairs that fit
/// the model (both sides at most `model.block_size` tokens).
pub struct PairSplit {
    pub sources: Vec<String>,
    pub targets: Vec<String>,
    pub pairs: Arc<[PairTokens]>,
    /// Pairs left out for being longer than the model's positions.
    pub too_long: usize,
}

/// The text pairs of `split`: its files, or for validation without files, the last
/// `data.val_fraction` of the training pairs. `None` when the config names no such split.
fn text_pairs(data: &DataSection, split: Split) -> Result<Option<Vec<(String, String)>>> {
    if let Some(files) = data.pair_files(split) {
        let mut pairs = read_pairs(files)?;
        if split == Split::Train && data.pair_files(Split::Valid).is_none() {
            pairs.truncate(pairs.len() - held_out(data, pairs.len()));
        }
        return Ok(Some(pairs));
    }
    if split != Split::Valid {
        return Ok(None);
    }
    let Some(files) = data.pair_files(Split::Train) else {
        return Ok(None);
    };
    let mut pairs = read_pairs(files)?;
    let held = held_out(data, pairs.len());
    Ok(Some(pairs.split_off(pairs.len() - held)))
}

/// Pairs held out for validation when no validation files are given: at least one.
fn held_out(data: &DataSection, pairs: usize) -> usize {
    ((pairs as f64 * data.val_fraction).round() as usize).clamp(1, pairs.saturating_sub(1).max(1))
}

/// Encodes `split` of a run's corpus with its tokenizer; `None` when the config has no such
/// split.
pub fn pair_split(
    spec: &RunSpec,
    tokenizer: &dyn Tokenizer,
    split: Split,
) -> Result<Option<PairSplit>> {
    let Some(text) = text_pairs(&spec.data, split)? else {
        return Ok(None);
    };
    encode_split(spec, tokenizer, split, text).map(Some)
}

fn encode_split(
    spec: &RunSpec,
    tokenizer: &dyn Tokenizer,
    split: Split,
    text: Vec<(String, String)>,
) -> Result<PairSplit> {
    let specials = Specials::of(tokenizer)?;
    let keys = match spec.data.pair_files(split) {
        Some([(source, _), (target, _)]) => [source, target],
        None => ["data.source", "data.target"],
    };
    let max_len = spec.model.block_size;
    let encoded = encode_pairs(tokenizer, specials, &text, keys)?;
    let fitting: Vec<PairTokens> = encoded.into_iter().filter(|p| p.len() <= max_len).collect();
    let too_long = text.len() - fitting.len();
    if fitting.is_empty() {
        bail!(
            "no {} pair fits model.block_size = {max_len} tokens (with <bos>/<eos>); raise it or check {} and {}",
            split.name(),
            keys[0],
            keys[1]
        );
    }
    let (sources, targets) = text.into_iter().unzip();
    Ok(PairSplit {
        sources,
        targets,
        pairs: fitting.into(),
        too_long,
    })
}

/// A joint vocabulary for both languages: `bpe:train:N` fits a byte-level BPE on every
/// training source and target with `<pad>`, `<bos>` and `<eos>` as its specials;
/// `bpe:<file>` loads one that has them.
fn fit_joint_bpe(data: &DataSection, train: &[(String, String)]) -> Result<Box<dyn Tokenizer>> {
    let tokenizer: Box<dyn Tokenizer> = match TokenizerSpec::parse(&data.tokenizer)? {
        TokenizerSpec::BpeTrain { vocab_size } => {
            let mut text = String::with_capacity(train.iter().map(|(s, t)| s.len() + t.len() + 2).sum());
            for (source, target) in train {
                for line in [source, target] {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            let options = bpe::train::BpeTrainOptions { vocab_size, specials: [PAD, BOS, EOS].map(String::from).to_vec(), progress: true };
            Box::new(bpe::train::train_on_text(&text, &options)?)
        }
        TokenizerSpec::Bpe(path) => crate::tokenizer::load(&path)?,
        _ => bail!(
            "data.tokenizer = {:?}: expected \"bpe:train:<vocab size>\" or \"bpe:<tokenizer.json>\" for parallel data",
            data.tokenizer
        ),
    };
    Specials::of(tokenizer.as_ref())?;
    Ok(tokenizer)
}

/// A seq2seq config's joint tokenizer, fitted in memory, with `model.vocab_size` resolved in
/// `spec`: all the model needs to be built from a config without a run.
pub fn fit_seq2seq_tokenizer(spec: &mut RunSpec) -> Result<Specials> {
    let train = text_pairs(&spec.data, Split::Train)?
        .context("a parallel config names its training files")?;
    let tokenizer = fit_joint_bpe(&spec.data, &train)?;
    super::resolve_vocab(spec, tokenizer.as_ref())?;
    Ok(Specials::of(tokenizer.as_ref())?)
}

pub(super) fn run<B: AutodiffBackend>(
    mut spec: RunSpec,
    options: TrainOptions,
    device: B::Device,
    backend: BackendChoice,
) -> Result<Outcome> {
    let train_text = text_pairs(&spec.data, Split::Train)?
        .context("data.source and data.target: expected the training files of a parallel corpus")?;
    let valid_text = text_pairs(&spec.data, Split::Valid)?
        .context("data.source and data.target: expected the training files of a parallel corpus")?;
    let data = spec.data.clone();
    let started = start_run::<B>(&mut spec, &options, &device, || {
        fit_joint_bpe(&data, &train_text)
    })?;
    let (run, tokenizer) = (&started.run, started.tokenizer.as_ref());
    let specials = Specials::of(tokenizer)?;
    let train = encode_split(&spec, tokenizer, Split::Train, train_text)?;
    let valid = encode_split(&spec, tokenizer, Split::Valid, valid_text)?;

    let t = spec.training.clone();
    let model: Seq2Seq<B> = seq2seq_config(&spec, specials.pad).init(&device);
    let counts = model.param_counts();
    let target_tokens: usize = train.pairs.iter().map(|p| p.target.len() - 1).sum();
    let left_out = match train.too_long + valid.too_long {
        0 => String::new(),
        n => format!(
            " | {n} pairs longer than model.block_size = {} left out",
            spec.model.block_size
        ),
    };
    let data = format!(
        "{} train pairs ({target_tokens} target tokens) / {} val pairs{left_out}",
        train.pairs.len(),
        valid.pairs.len()
    );
    announce(run, &backend, counts, &data)?;

    let plan = Fit::plan(&spec, run, started.resume_from.as_ref())?;
    let batches = PairBatches::new(
        train.pairs.clone(),
        t.batch_size,
        specials.pad,
        spec.run.seed,
    )
    .with_label_smoothing(t.label_smoothing);
    let passes = (t.max_iters * t.grad_accumulation) as f64 / batches.per_pass().max(1) as f64;
    let train_loader =
        TrainBatches::<B, _>::of(batches, plan.first_epoch, &plan.epochs, device.clone())
            .with_stop(plan.stop(), t.grad_accumulation);
    let valid_loader = FixedPairs::<B::InnerBackend>::new(
        valid.pairs.clone(),
        t.batch_size,
        t.eval_iters,
        specials.pad,
        device.clone(),
    )
    .skip_when(plan.stop());
    let Some((model, wall_seconds)) = plan.launch(
        Replica::SOLE,
        None,
        model,
        Arc::new(train_loader),
        Arc::new(valid_loader),
    )?
    else {
        return Ok(Outcome::Interrupted {
            step: plan.control.steps(),
        });
    };

    let final_val_loss = seq2seq_mean_loss(
        &model,
        FixedPairs::new(
            valid.pairs.clone(),
            t.batch_size,
            0,
            specials.pad,
            device.clone(),
        )
        .batches(),
    );
    let tokens_seen = (target_tokens as f64 * passes) as usize;
    let summary = plan.finish(final_val_loss, counts, wall_seconds, tokens_seen, &backend)?;
    if options.sample_tokens > 0 {
        print_translations(&model, tokenizer, &valid, &device)?;
    }
    Ok(Outcome::Finished(summary))
}

/// Mean per-token loss (unsmoothed) of `model` over `batches`, weighted by target tokens.
pub fn seq2seq_mean_loss<B: Backend>(
    model: &Seq2Seq<B>,
    batches: impl Iterator<Item = Seq2SeqBatch<B>>,
) -> f64 {
    let (sum, n) = batches.fold((0.0, 0usize), |(sum, n), batch| {
        let tokens = batch.target_tokens;
        let batch = Seq2SeqBatch {
            label_smoothing: 0.0,
            ..batch
        };
        (
            sum + seq2seq_loss(model, &batch).into_scalar().elem::<f64>() * tokens as f64,
            n + tokens,
        )
    });
    sum / n.max(1) as f64
}

/// A few validation sentences translated greedily, with their references.
fn print_translations<B: Backend>(
    model: &Seq2Seq<B>,
    tokenizer: &dyn Tokenizer,
    valid: &PairSplit,
    device: &B::Device,
) -> Result<()> {
    let sources: Vec<&str> = valid.sources.iter().take(3).map(String::as_str).collect();
    let decoding = crate::translate::Decoding::greedy(model.max_len());
    let outputs = crate::translate::translate(model, tokenizer, &sources, &decoding, device)?;
    eprintln!("kiln: validation sentences, translated greedily:");
    for ((source, output), reference) in sources.iter().zip(outputs).zip(&valid.targets) {
        eprintln!("  {source}\n  → {output}\n  ({reference})");
    }
    Ok(())
}

/// The model of a seq2seq run: a given checkpoint file, else the final model, else the
/// newest checkpoint. Returns the model and the file it came from.
pub fn load_seq2seq<B: Backend>(
    run: &RunDir,
    spec: &RunSpec,
    tokenizer: &dyn Tokenizer,
    file: Option<&Path>,
    device: &B::Device,
) -> Result<(Seq2Seq<B>, PathBuf)> {
    let specials = parallel::Specials::of(tokenizer)?;
    super::load_weights(
        run,
        seq2seq_config(spec, specials.pad).init(device),
        file,
        device,
    )
}
