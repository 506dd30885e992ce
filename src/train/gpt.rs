//! Training a GPT on a text corpus: the corpus encoded into a token cache, windows drawn at
//! random or sliding starts, next-token loss; and the same data for the commands that look
//! at a config or a run without training it.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use burn::prelude::*;

use super::learner::Plan;
use super::step::lm_loss;
use super::task::{Loaders, Task, Trained};
use crate::config::{
    DataKind, GptSpec, ModelKind, ModelSpec, RunSpec, SamplingMode, TokenizerSpec,
};
use crate::data::{Corpus, FixedWindows, LmBatch, TrainWindows, WindowOrder, WindowStarts};
use crate::distributed::Replica;
use crate::generate::{generate, Sampling, Utf8Stream};
use crate::kernels::{KernelBackend, TrainBackend};
use crate::model::{Gpt, GptConfig, ParamCounts};
use crate::run::load::gpt_spec;
use crate::run::{RunDir, Started};
use crate::tokenizer::{self, FitOptions, Tokenizer};

/// A GPT's encoded corpus, the order training visits its windows in, and the validation
/// windows every evaluation uses.
pub struct GptTask<B: TrainBackend> {
    corpus: Corpus,
    order: WindowOrder,
    val: FixedWindows<B::InnerBackend>,
}

impl<B: TrainBackend> Task<B> for GptTask<B> {
    type Raw = String;
    type Model = Gpt<B>;

    fn read(spec: &RunSpec) -> Result<String> {
        Ok(crate::data::read_text(&spec.data.path)?)
    }

    fn fit_tokenizer(text: &String, spec: &RunSpec) -> Result<Box<dyn Tokenizer>> {
        tokenizer_for(spec, text)
    }

    fn encode(text: String, spec: &RunSpec, started: &Started, device: &B::Device) -> Result<Self> {
        let tokenizer = started.tokenizer.as_ref();
        let data = &spec.data;
        let cache = started.dir.token_cache();
        let block_size = spec.model.block_size();
        let corpus =
            Corpus::prepare(&data.path, &text, tokenizer, &cache, data.val_fraction, block_size)?;
        started.dir.record_token_cache()?;
        let separator = document_separator(spec, tokenizer)?;
        let order = train_order(spec, &corpus, separator)?;
        let val = val_windows(spec, &corpus, separator, device)?;
        Ok(Self { corpus, order, val })
    }

    fn describe(&self, _: &RunSpec) -> String {
        let (train, val) = (self.corpus.train.len(), self.corpus.val.len());
        format!("{train} train / {val} val tokens")
    }

    fn init_model(
        &self,
        spec: &RunSpec,
        resuming: bool,
        device: &B::Device,
    ) -> Result<(Gpt<B>, ParamCounts)> {
        init_gpt(spec, resuming, device)
    }

    fn loaders(&self, plan: &Plan, replica: Replica, device: &B::Device) -> Loaders<B, Gpt<B>> {
        let spec = plan.spec;
        let t = &spec.training;
        let train = TrainWindows::<B>::new(
            self.corpus.train.clone(),
            self.order.clone(),
            t.batch_size,
            spec.model.block_size(),
            plan.first_epoch,
            &plan.epochs,
            device.clone(),
        )
        .with_stop(plan.stop(), t.grad_accumulation)
        .for_replica(replica.rank, replica.world);
        let valid = self.val.clone().skip_when(plan.validation_stop(replica));
        (Arc::new(train), Arc::new(valid))
    }

    fn final_val_loss(&self, model: &Gpt<B::InnerBackend>, _: &RunSpec, _: &B::Device) -> f64 {
        mean_loss(model, self.val.batches())
    }

    fn tokens_seen(&self, spec: &RunSpec) -> usize {
        let t = &spec.training;
        t.max_iters * t.tokens_per_step(spec.model.block_size()) * spec.distributed.replicas()
    }

    fn show_samples(
        &self,
        model: &Trained<B, Gpt<B>>,
        tokenizer: &dyn Tokenizer,
        spec: &RunSpec,
        tokens: usize,
        _: &B::Device,
    ) -> Result<String> {
        print_sample(model, tokenizer, tokens, spec.run.seed)
    }
}

/// A new GPT, or the weights of the run `model.init_from` names (not when `resuming`: the
/// checkpoint's weights replace them), and its parameter counts.
pub(super) fn init_gpt<B: Backend>(
    spec: &RunSpec,
    resuming: bool,
    device: &B::Device,
) -> Result<(Gpt<B>, ParamCounts)> {
    let model: Gpt<B> = match base_run(spec)? {
        Some((run, base)) if !resuming => take_base_model(spec, &run, &base, device)?,
        _ => config(spec)?.init(device),
    };
    let counts = model.param_counts();
    Ok((model, counts))
}

/// The finished run `model.init_from` names, with its config.
fn base_run(spec: &RunSpec) -> Result<Option<(RunDir, RunSpec)>> {
    let Some(dir) = gpt_spec(spec, "train")?.init_from.as_ref() else {
        return Ok(None);
    };
    let key = || format!("model.init_from = {:?}", dir.display().to_string());
    let (run, base) = crate::run::open_run(dir).with_context(key)?;
    gpt_spec(&base, "train").with_context(key)?;
    if !run.final_model().is_file() {
        bail!(
            "{}: the run has not finished (no model.mpk); finish it with kiln train --resume, \
             or start from a finished run",
            key()
        );
    }
    Ok(Some((run, base)))
}

/// `data.tokenizer` of a run that starts from `model.init_from`: the base run's tokenizer,
/// named by its file where the base trained one, so that the run's `config.toml` says what
/// it uses. `None` without a base.
pub(super) fn base_tokenizer_spec(spec: &RunSpec) -> Result<Option<TokenizerSpec>> {
    if spec.model.kind() != ModelKind::Gpt {
        return Ok(None);
    }
    let Some((run, base)) = base_run(spec)? else {
        return Ok(None);
    };
    Ok(Some(match base.data.tokenizer {
        TokenizerSpec::BpeTrain { .. } => TokenizerSpec::Bpe(run.tokenizer()),
        named => named,
    }))
}

/// The tokenizer a new GPT run uses: the one of the run it starts from (`model.init_from`),
/// else the one `data.tokenizer` names, fitted on `text` where its kind needs it.
pub(super) fn tokenizer_for(spec: &RunSpec, text: &str) -> Result<Box<dyn Tokenizer>> {
    if let Some((run, base)) = base_run(spec)? {
        return crate::run::run_tokenizer(&run, &base);
    }
    Ok(tokenizer::build(&spec.data.tokenizer, text, FitOptions::of(&spec.data))?)
}

/// The final weights of the base run, in a model of this run's config: its `[model]` must
/// describe the base's network (dropout and the initialisation may differ).
fn take_base_model<B: Backend>(
    spec: &RunSpec,
    run: &RunDir,
    base: &RunSpec,
    device: &B::Device,
) -> Result<Gpt<B>> {
    let (ModelSpec::Gpt(ours), ModelSpec::Gpt(theirs)) = (&spec.model, &base.model) else {
        bail!("model.init_from: the base run is not a GPT");
    };
    // Defaults that depend on other keys spelled out, so that a key left unset and one set
    // to its default compare equal.
    let same_network = |m: &GptSpec| {
        toml::Value::try_from(GptSpec {
            d_ff: Some(m.d_ff()),
            qkv_bias: Some(m.qkv_bias()),
            dropout: 0.0,
            init: Default::default(),
            init_from: None,
            ..m.clone()
        })
    };
    let (ours_t, theirs_t) = (same_network(ours)?, same_network(theirs)?);
    let mut differing: Vec<String> = ours_t
        .as_table()
        .into_iter()
        .flatten()
        .filter(|(key, value)| theirs_t.get(key.as_str()) != Some(*value))
        .map(|(key, value)| {
            let base = theirs_t.get(key.as_str()).map_or("unset".into(), |v| v.to_string());
            format!("model.{key} = {value} (the base has {base})")
        })
        .collect();
    // Keys the user sets first; those derived from them (d_ff, qkv_bias) after.
    differing.sort_by_key(|d| d.starts_with("model.d_ff") || d.starts_with("model.qkv_bias"));
    if !differing.is_empty() {
        bail!(
            "{}: [model] must describe the network of the run model.init_from names ({}, see \
             its {}); only dropout may differ",
            differing.join(", "),
            run.root().display(),
            run.config().display()
        );
    }
    let dropout = GptSpec { dropout: ours.dropout, ..theirs.clone() };
    let base = RunSpec { model: ModelSpec::Gpt(dropout), ..base.clone() };
    let (model, path) = crate::run::load_gpt::<B>(run, &base, None, device)?;
    eprintln!("kiln: starting from the weights of {}", path.display());
    Ok(model)
}

/// The Burn config of a GPT run, its vocabulary resolved.
pub fn config(spec: &RunSpec) -> Result<GptConfig> {
    let gpt: &GptSpec = gpt_spec(spec, "train")?;
    Ok(GptConfig::from_spec(gpt, spec.vocab_size()))
}

/// A config's tokenizer, its corpus encoded in memory (no run directory is touched) and the
/// order training would visit windows in; `model.vocab_size` is resolved in `spec`. For
/// commands that look at or time a config without training it.
pub fn prepare_in_memory(spec: &mut RunSpec) -> Result<(Box<dyn Tokenizer>, Corpus, WindowOrder)> {
    if spec.data.kind == DataKind::Instructions {
        bail!(
            "data.kind = \"instructions\": this command looks at the windows of a text corpus; \
             an instruction run's examples are described when it trains (kiln train)"
        );
    }
    let (text, tokenizer) = fit_tokenizer(spec)?;
    let data = &spec.data;
    let corpus = Corpus::in_memory(
        &data.path,
        &text,
        tokenizer.as_ref(),
        data.val_fraction,
        spec.model.block_size(),
    )?;
    let order = train_order(spec, &corpus, document_separator(spec, tokenizer.as_ref())?)?;
    Ok((tokenizer, corpus, order))
}

/// A config's corpus and its tokenizer, fitted in memory, with `model.vocab_size` resolved
/// in `spec`: all a model needs to be built from a config without a run.
pub fn fit_tokenizer(spec: &mut RunSpec) -> Result<(String, Box<dyn Tokenizer>)> {
    let text = crate::data::read_text(&spec.data.path)?;
    let tokenizer = tokenizer_for(spec, &text)?;
    crate::run::start::resolve_vocab(spec, tokenizer.as_ref())?;
    Ok((text, tokenizer))
}

/// The `<|endoftext|>` id that windows must not cross when `data.respect_documents` is set.
pub fn document_separator(spec: &RunSpec, tokenizer: &dyn Tokenizer) -> Result<Option<u32>> {
    if !spec.data.respect_documents {
        return Ok(None);
    }
    match tokenizer.special_id(tokenizer::END_OF_TEXT) {
        Some(id) => Ok(Some(id)),
        None => bail!(
            "data.respect_documents = true: the tokenizer \"{}\" has no {} token to split \
             documents on; use the word or a tiktoken tokenizer, or set respect_documents = false",
            spec.data.tokenizer,
            tokenizer::END_OF_TEXT
        ),
    }
}

/// Allowed window starts in one split, an error when none fits.
fn split_starts(
    spec: &RunSpec,
    tokens: &[u32],
    stride: usize,
    separator: Option<u32>,
    split: &'static str,
) -> Result<WindowStarts> {
    let block_size = spec.model.block_size();
    let starts = WindowStarts::new(tokens, block_size, stride, separator);
    if starts.is_empty() {
        bail!(
            "data.respect_documents = true: no window of model.block_size + 1 = {} tokens fits \
             inside one document of the {split} split of {:?}; lower model.block_size or set \
             respect_documents = false",
            block_size + 1,
            spec.data.path
        );
    }
    Ok(starts)
}

/// The order in which training visits windows of the train split (`data.sampling`).
pub fn train_order(spec: &RunSpec, corpus: &Corpus, separator: Option<u32>) -> Result<WindowOrder> {
    let seed = spec.run.seed;
    let stride = match spec.data.sampling {
        SamplingMode::Random => 1,
        SamplingMode::Sliding => spec.data.stride(spec.model.block_size()),
    };
    let starts = split_starts(spec, &corpus.train, stride, separator, "training")?;
    Ok(match spec.data.sampling {
        SamplingMode::Random => WindowOrder::Random { starts, seed },
        SamplingMode::Sliding => WindowOrder::Shuffled { starts, seed },
    })
}

/// Validation windows of a run: the same batches during training, `eval` and the summary.
pub fn val_windows<B: Backend>(
    spec: &RunSpec,
    corpus: &Corpus,
    separator: Option<u32>,
    device: &B::Device,
) -> Result<FixedWindows<B>> {
    let t = &spec.training;
    let allowed = split_starts(spec, &corpus.val, 1, separator, "validation")?;
    let (batch, block) = (t.batch_size, spec.model.block_size());
    Ok(FixedWindows::new(
        corpus.val.clone(),
        &allowed,
        batch,
        block,
        t.eval_iters,
        spec.run.seed,
        device.clone(),
    ))
}

/// Mean loss of `model` over `batches` (each batch weighs by what its loss is a mean over).
pub fn mean_loss<B: KernelBackend>(
    model: &Gpt<B>,
    batches: impl Iterator<Item = LmBatch<B>>,
) -> f64 {
    let (sum, n) = batches.fold((0.0, 0usize), |(sum, n), batch| {
        let weight = batch.loss_weight();
        let loss = lm_loss(model, &batch).into_scalar().elem::<f64>();
        (sum + loss * weight as f64, n + weight)
    });
    sum / n.max(1) as f64
}

fn print_sample<B: KernelBackend>(
    model: &Gpt<B>,
    tokenizer: &dyn Tokenizer,
    tokens: usize,
    seed: u64,
) -> Result<String> {
    // A newline where the tokenizer has one (char, BPE), else the document separator.
    let prompt = match tokenizer.encode("\n") {
        Ok(ids) if !ids.is_empty() => ids,
        _ => vec![tokenizer.special_id(tokenizer::END_OF_TEXT).unwrap_or(0)],
    };
    let sampling =
        Sampling { max_new_tokens: tokens, temperature: 0.8, top_k: Some(200), top_p: None, seed };
    eprintln!("kiln: sample ({tokens} tokens, temperature 0.8, top-k 200):");
    let mut out = Utf8Stream::stdout();
    let mut shown = Vec::new();
    let mut decode = tokenizer.stream_decoder(&prompt);
    generate(model, &prompt, &sampling, |id| {
        let bytes = decode(id);
        shown.extend_from_slice(&bytes);
        out.push(&bytes)
    })?;
    out.push(b"\n");
    out.finish();
    Ok(String::from_utf8_lossy(&shown).into_owned())
}
