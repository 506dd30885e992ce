//! Training the encoder-decoder on a parallel corpus: a joint BPE with `<pad>`, `<bos>` and
//! `<eos>` fitted on both sides of the training pairs, pairs bucketed by length, and the
//! same Learner wiring, checkpoints and summary as the GPT.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use burn::prelude::*;

use super::learner::Plan;
use super::step::seq2seq_loss;
use super::task::{Loaders, Task};
use crate::config::{DataSection, RunSpec, Split, TokenizerSpec};
use crate::data::parallel::{encode_pairs, read_pairs, BOS, EOS, PAD};
use crate::data::{FixedPairs, PairBatches, PairTokens, Seq2SeqBatch, Specials, TrainBatches};
use crate::distributed::Replica;
use crate::kernels::{KernelBackend, TrainBackend};
use crate::model::{ParamCounts, Seq2Seq, Seq2SeqConfig};
use crate::run::load::seq2seq_spec;
use crate::run::Started;
use crate::tokenizer::{bpe, Tokenizer};

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

/// Items (pairs, records) held out for validation when no validation files are given: at
/// least one, and at least one left to train on.
pub(super) fn held_out(data: &DataSection, pairs: usize) -> usize {
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
    let max_len = spec.model.block_size();
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
    Ok(PairSplit { sources, targets, pairs: fitting.into(), too_long })
}

/// A joint vocabulary for both languages: `bpe:train:N` fits a byte-level BPE on every
/// training source and target with `<pad>`, `<bos>` and `<eos>` as its specials;
/// `bpe:<file>` loads one that has them.
fn fit_joint_bpe(data: &DataSection, train: &[(String, String)]) -> Result<Box<dyn Tokenizer>> {
    let tokenizer: Box<dyn Tokenizer> = match &data.tokenizer {
        TokenizerSpec::BpeTrain { vocab_size } => {
            let size = train.iter().map(|(s, t)| s.len() + t.len() + 2).sum();
            let mut text = String::with_capacity(size);
            for (source, target) in train {
                for line in [source, target] {
                    text.push_str(line);
                    text.push('\n');
                }
            }
            let options = bpe::train::BpeTrainOptions {
                vocab_size: *vocab_size,
                specials: [PAD, BOS, EOS].map(String::from).to_vec(),
                progress: true,
            };
            Box::new(bpe::train::train_on_text(&text, &options)?)
        }
        TokenizerSpec::Bpe(path) => crate::tokenizer::load(path)?,
        other => bail!(
            "data.tokenizer = \"{other}\": expected \"bpe:train:<vocab size>\" or \
             \"bpe:<tokenizer.json>\" for parallel data"
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
    crate::run::start::resolve_vocab(spec, tokenizer.as_ref())?;
    Ok(Specials::of(tokenizer.as_ref())?)
}

/// An encoder-decoder's training and validation pairs, encoded with the run's tokenizer.
pub struct Seq2SeqTask<B: TrainBackend> {
    train: PairSplit,
    valid: PairSplit,
    specials: Specials,
    device: B::Device,
}

/// The training and validation pairs as read.
pub struct TextPairs {
    train: Vec<(String, String)>,
    valid: Vec<(String, String)>,
}

impl<B: TrainBackend> Task<B> for Seq2SeqTask<B> {
    type Raw = TextPairs;
    type Model = Seq2Seq<B>;

    fn read(spec: &RunSpec) -> Result<TextPairs> {
        let files = "data.source and data.target: expected the training files of a parallel corpus";
        let train = text_pairs(&spec.data, Split::Train)?.context(files)?;
        let valid = text_pairs(&spec.data, Split::Valid)?.context(files)?;
        Ok(TextPairs { train, valid })
    }

    fn fit_tokenizer(raw: &TextPairs, spec: &RunSpec) -> Result<Box<dyn Tokenizer>> {
        fit_joint_bpe(&spec.data, &raw.train)
    }

    fn encode(
        raw: TextPairs,
        spec: &RunSpec,
        started: &Started,
        device: &B::Device,
    ) -> Result<Self> {
        let tokenizer = started.tokenizer.as_ref();
        Ok(Self {
            train: encode_split(spec, tokenizer, Split::Train, raw.train)?,
            valid: encode_split(spec, tokenizer, Split::Valid, raw.valid)?,
            specials: Specials::of(tokenizer)?,
            device: device.clone(),
        })
    }

    fn describe(&self, spec: &RunSpec) -> String {
        let left_out = match self.train.too_long + self.valid.too_long {
            0 => String::new(),
            n => format!(
                " | {n} pairs longer than model.block_size = {} left out",
                spec.model.block_size()
            ),
        };
        format!(
            "{} train pairs ({} target tokens) / {} val pairs{left_out}",
            self.train.pairs.len(),
            self.target_tokens(),
            self.valid.pairs.len()
        )
    }

    fn init_model(
        &self,
        spec: &RunSpec,
        _resuming: bool,
        device: &B::Device,
    ) -> Result<(Seq2Seq<B>, ParamCounts)> {
        let config =
            Seq2SeqConfig::from_spec(seq2seq_spec(spec)?, spec.vocab_size(), self.specials.pad);
        let model: Seq2Seq<B> = config.init(device);
        let counts = model.param_counts();
        Ok((model, counts))
    }

    fn loaders(&self, plan: &Plan, _: Replica, device: &B::Device) -> Loaders<B, Seq2Seq<B>> {
        let spec = plan.spec;
        let (t, pad) = (&spec.training, self.specials.pad);
        let batches =
            PairBatches::pairs(self.train.pairs.clone(), t.batch_size, pad, spec.run.seed)
                .with_label_smoothing(t.label_smoothing);
        let train =
            TrainBatches::<B, _>::of(batches, plan.first_epoch, &plan.epochs, device.clone())
                .with_stop(plan.stop(), t.grad_accumulation);
        let pairs = self.valid.pairs.clone();
        let valid = FixedPairs::<B::InnerBackend>::new(
            pairs,
            t.batch_size,
            t.eval_iters,
            pad,
            device.clone(),
        )
        .skip_when(plan.stop());
        (Arc::new(train), Arc::new(valid))
    }

    fn final_val_loss(
        &self,
        model: &Seq2Seq<B::InnerBackend>,
        spec: &RunSpec,
        device: &B::Device,
    ) -> f64 {
        let (pairs, pad) = (self.valid.pairs.clone(), self.specials.pad);
        let all = FixedPairs::new(pairs, spec.training.batch_size, 0, pad, device.clone());
        seq2seq_mean_loss(model, all.batches())
    }

    /// Target tokens of all the passes over the training pairs the run makes.
    fn tokens_seen(&self, spec: &RunSpec) -> usize {
        let t = &spec.training;
        let batches = PairBatches::pairs(
            self.train.pairs.clone(),
            t.batch_size,
            self.specials.pad,
            spec.run.seed,
        );
        let passes = (t.max_iters * t.grad_accumulation) as f64 / batches.per_pass().max(1) as f64;
        (self.target_tokens() as f64 * passes) as usize
    }

    fn show_samples(
        &self,
        model: &Seq2Seq<B::InnerBackend>,
        tokenizer: &dyn Tokenizer,
        _: &RunSpec,
        _: usize,
        _: &B::Device,
    ) -> Result<String> {
        print_translations(model, tokenizer, &self.valid, &self.device)
    }
}

impl<B: TrainBackend> Seq2SeqTask<B> {
    fn target_tokens(&self) -> usize {
        self.train.pairs.iter().map(|p| p.target.len() - 1).sum()
    }
}

/// Mean per-token loss (unsmoothed) of `model` over `batches`, weighted by target tokens.
pub fn seq2seq_mean_loss<B: KernelBackend>(
    model: &Seq2Seq<B>,
    batches: impl Iterator<Item = Seq2SeqBatch<B>>,
) -> f64 {
    let (sum, n) = batches.fold((0.0, 0usize), |(sum, n), batch| {
        let tokens = batch.target_tokens;
        let batch = Seq2SeqBatch { label_smoothing: 0.0, ..batch };
        (sum + seq2seq_loss(model, &batch).into_scalar().elem::<f64>() * tokens as f64, n + tokens)
    });
    sum / n.max(1) as f64
}

/// A few validation sentences translated greedily, with their references.
fn print_translations<B: KernelBackend>(
    model: &Seq2Seq<B>,
    tokenizer: &dyn Tokenizer,
    valid: &PairSplit,
    device: &B::Device,
) -> Result<String> {
    let sources: Vec<&str> = valid.sources.iter().take(3).map(String::as_str).collect();
    let decoding = crate::translate::Decoding::greedy(model.max_len());
    let outputs = crate::translate::translate(model, tokenizer, &sources, &decoding, device)?;
    eprintln!("kiln: validation sentences, translated greedily:");
    let mut shown = String::new();
    for ((source, output), reference) in sources.iter().zip(outputs).zip(&valid.targets) {
        let text = format!("{source}\n→ {output}\n({reference})\n");
        eprint!("{}", text.lines().map(|l| format!("  {l}\n")).collect::<String>());
        shown.push_str(&text);
    }
    Ok(shown)
}
