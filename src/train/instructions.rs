//! Instruction finetuning of a GPT: Alpaca-style records rendered with the run's prompt
//! template, the loss on the response tokens only, the last `data.val_fraction` of the
//! records held out; the finished run answers the held-out instructions in
//! `responses.json`.

use std::sync::Arc;

use anyhow::{bail, Result};
use serde::Serialize;

use super::gpt::{init_gpt, mean_loss, tokenizer_for};
use super::learner::Plan;
use super::seq2seq::held_out;
use super::task::{Loaders, Task, Trained};
use crate::config::RunSpec;
use crate::data::instructions::{encode_examples, read_records};
use crate::data::{ExampleBatches, Examples, FixedExamples, Record};
use crate::distributed::Replica;
use crate::generate::{Conversation, Sampling};
use crate::kernels::{KernelBackend, TrainBackend};
use crate::model::{Gpt, ParamCounts};
use crate::run::load::gpt_spec;
use crate::run::Started;
use crate::tokenizer::{Tokenizer, END_OF_TEXT};

/// Tokens a held-out response may take in `responses.json` (the book's 256).
const RESPONSE_TOKENS: usize = 256;

/// The training and held-out examples, and the held-out records they came from.
pub struct InstructionTask<B: TrainBackend> {
    train: Examples,
    valid: Examples,
    held_out: Vec<Record>,
    /// `<|endoftext|>`: ends every response, pads every batch.
    end: u32,
    _backend: std::marker::PhantomData<fn() -> B>,
}

impl<B: TrainBackend> Task<B> for InstructionTask<B> {
    type Raw = Vec<Record>;
    type Model = Gpt<B>;

    fn read(spec: &RunSpec) -> Result<Vec<Record>> {
        Ok(read_records(&spec.data.path)?)
    }

    /// A new tokenizer (no `model.init_from`) is fitted on the rendered records.
    fn fit_tokenizer(records: &Vec<Record>, spec: &RunSpec) -> Result<Box<dyn Tokenizer>> {
        let template = &spec.data.template;
        let text: Vec<String> = records
            .iter()
            .map(|r| format!("{}{}", template.render(&r.instruction, &r.input), r.output))
            .collect();
        tokenizer_for(spec, &text.join(&format!("\n{END_OF_TEXT}\n")))
    }

    fn encode(
        records: Vec<Record>,
        spec: &RunSpec,
        started: &Started,
        _: &B::Device,
    ) -> Result<Self> {
        let split = split_instructions(spec, started.tokenizer.as_ref(), records)?;
        let InstructionSplit { train, held_out, held_out_records, end } = split;
        Ok(Self {
            train,
            valid: held_out,
            held_out: held_out_records,
            end,
            _backend: std::marker::PhantomData,
        })
    }

    fn describe(&self, spec: &RunSpec) -> String {
        let cut = self.train.truncated + self.valid.truncated;
        let left_out = self.train.too_long + self.valid.too_long;
        let mut text = format!(
            "{} train / {} held-out instructions ({} response tokens)",
            self.train.examples.len(),
            self.valid.examples.len(),
            response_tokens(&self.train)
        );
        let block_size = spec.model.block_size();
        if cut > 0 {
            text += &format!(" | {cut} responses cut to model.block_size = {block_size}");
        }
        if left_out > 0 {
            text += &format!(" | {left_out} records whose prompt fills the block left out");
        }
        text
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
        let (spec, t) = (plan.spec, &plan.spec.training);
        let examples = self.train.examples.clone();
        let batches = ExampleBatches::examples(examples, t.batch_size, self.end, spec.run.seed);
        let train = plan.train_batches(batches, replica, device);
        let examples = self.valid.examples.clone();
        let valid = FixedExamples::<B::InnerBackend>::new(
            examples,
            t.batch_size,
            t.eval_iters,
            self.end,
            device.clone(),
        )
        .skip_when(plan.validation_stop(replica));
        (Arc::new(train), Arc::new(valid))
    }

    /// The mean loss over every held-out response token.
    fn final_val_loss(
        &self,
        model: &Gpt<B::InnerBackend>,
        spec: &RunSpec,
        device: &B::Device,
    ) -> f64 {
        let examples = self.valid.examples.clone();
        let batch = spec.training.batch_size;
        mean_loss(model, FixedExamples::new(examples, batch, 0, self.end, device.clone()).batches())
    }

    /// Tokens of all the passes over the training examples the run makes.
    fn tokens_seen(&self, spec: &RunSpec) -> usize {
        let t = &spec.training;
        let examples = &self.train.examples;
        let micro_batches = t.max_iters * t.grad_accumulation * spec.distributed.replicas();
        let tokens: usize = examples.iter().map(|e| e.len() - 1).sum();
        let passes = micro_batches as f64 * t.batch_size as f64 / examples.len() as f64;
        (tokens as f64 * passes) as usize
    }

    /// The first held-out instructions and the model's responses.
    fn show_samples(
        &self,
        model: &Trained<B, Gpt<B>>,
        tokenizer: &dyn Tokenizer,
        spec: &RunSpec,
        _: usize,
        _: &B::Device,
    ) -> Result<String> {
        Ok(show_responses(&self.responses(model, tokenizer, spec, 3)?))
    }

    fn finish(&self, model: &Trained<B, Gpt<B>>, started: &Started, spec: &RunSpec) -> Result<()> {
        let tokenizer = started.tokenizer.as_ref();
        write_responses(started, &self.responses(model, tokenizer, spec, self.held_out.len())?)
    }
}

/// An instruction run's records encoded with its tokenizer: the training examples and the
/// held-out ones (the last `data.val_fraction` of the records).
pub struct InstructionSplit {
    pub train: Examples,
    pub held_out: Examples,
    pub held_out_records: Vec<Record>,
    /// `<|endoftext|>`: ends every response, pads every batch.
    pub end: u32,
}

/// Splits and encodes `records` as the run `spec` describes does.
pub fn split_instructions(
    spec: &RunSpec,
    tokenizer: &dyn Tokenizer,
    mut records: Vec<Record>,
) -> Result<InstructionSplit> {
    let end = end_token(spec, tokenizer)?;
    let held_out_records = records.split_off(records.len() - held_out(&spec.data, records.len()));
    let encode = |records: &[Record], split: &str| -> Result<Examples> {
        let (template, block_size) = (&spec.data.template, spec.model.block_size());
        let examples = encode_examples(records, template, tokenizer, end, block_size)?;
        if examples.examples.is_empty() {
            bail!(
                "data.path = {:?}: no {split} record's prompt fits model.block_size = \
                 {block_size} tokens with room for a response; raise model.block_size",
                spec.data.path
            );
        }
        Ok(examples)
    };
    let (train, held_out) = (encode(&records, "training")?, encode(&held_out_records, "held-out")?);
    Ok(InstructionSplit { train, held_out, held_out_records, end })
}

/// The held-out instructions of `responses` with the model's answers, printed; the text for
/// `samples.txt`.
pub(super) fn show_responses(responses: &[Response]) -> String {
    let text: String = responses
        .iter()
        .map(|r| format!("### {}\n{}\n→ {}\n\n", r.instruction, r.input, r.model_response))
        .collect();
    eprintln!("kiln: responses to held-out instructions:\n{text}");
    text
}

/// Writes the run's `responses.json`.
pub(super) fn write_responses(started: &Started, responses: &[Response]) -> Result<()> {
    started.dir.write_responses(&serde_json::to_string_pretty(responses)?)?;
    eprintln!(
        "kiln: responses to {} held-out instructions in {}",
        responses.len(),
        started.dir.responses().display()
    );
    Ok(())
}

/// The token that ends every response and pads every batch: the tokenizer's `<|endoftext|>`.
pub(super) fn end_token(spec: &RunSpec, tokenizer: &dyn Tokenizer) -> Result<u32> {
    if let Some(end) = tokenizer.special_id(END_OF_TEXT) {
        return Ok(end);
    }
    let named = match gpt_spec(spec, "train")?.init_from.as_ref() {
        Some(base) => {
            format!("the tokenizer of model.init_from = {:?}", base.display().to_string())
        }
        None => format!("data.tokenizer = \"{}\"", spec.data.tokenizer),
    };
    bail!(
        "{named}: instruction data needs a tokenizer with {END_OF_TEXT} to end each response (a \
         BPE or tiktoken tokenizer has one)"
    )
}

/// A held-out record with the model's answer, as the book's
/// `instruction-data-with-response.json`.
#[derive(Debug, Serialize)]
pub(super) struct Response<'a> {
    pub instruction: &'a str,
    pub input: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<&'a str>,
    pub model_response: String,
}

impl<B: TrainBackend> InstructionTask<B> {
    /// Greedy responses to the first `count` held-out records.
    fn responses<'a, M: KernelBackend>(
        &'a self,
        model: &Gpt<M>,
        tokenizer: &dyn Tokenizer,
        spec: &RunSpec,
        count: usize,
    ) -> Result<Vec<Response<'a>>> {
        let records = &self.held_out[..count.min(self.held_out.len())];
        let answered =
            answer(model, tokenizer, spec, self.end, records, |r| (&r.instruction, &r.input))?;
        let responses = answered.into_iter().map(|(record, model_response)| Response {
            instruction: &record.instruction,
            input: &record.input,
            output: Some(&record.output),
            chosen: None,
            rejected: None,
            model_response,
        });
        Ok(responses.collect())
    }
}

/// Greedy answers to `records` (the instruction and input `prompt` picks), each a fresh
/// conversation of up to 256 tokens; a record whose prompt fills the model's block (left out
/// of training too) gets none.
pub(super) fn answer<'r, M: KernelBackend, R>(
    model: &Gpt<M>,
    tokenizer: &dyn Tokenizer,
    spec: &RunSpec,
    end: u32,
    records: &'r [R],
    prompt: impl Fn(&R) -> (&str, &str),
) -> Result<Vec<(&'r R, String)>> {
    let max_new_tokens = RESPONSE_TOKENS.min(spec.model.block_size());
    let sampling = Sampling {
        max_new_tokens,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: spec.run.seed,
    };
    let mut answers = Vec::with_capacity(records.len());
    for record in records {
        let (instruction, input) = prompt(record);
        let mut chat = Conversation::new(tokenizer, spec.data.template.clone(), end);
        match chat.reply(model, instruction, input, &sampling, |_| {}) {
            Ok(reply) => answers.push((record, reply.text)),
            Err(crate::generate::ChatError::TooLong { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(answers)
}

fn response_tokens(examples: &Examples) -> usize {
    examples.examples.iter().map(|e| e.response.len()).sum()
}
