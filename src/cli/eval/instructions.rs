//! `kiln eval` of an instruction run: the loss on the responses of its held-out records.

use anyhow::{anyhow, Result};

use super::{EvalArgs, EvalResult};
use crate::backend::ForwardJob;
use crate::config::RunSpec;
use crate::data::instructions::read_records;
use crate::data::{DataError, FixedExamples};
use crate::kernels::KernelBackend;
use crate::run::RunDir;
use crate::train::{mean_loss, split_instructions, InstructionSplit};

pub(super) fn run(args: EvalArgs, run: RunDir, spec: RunSpec) -> Result<()> {
    let records = match &args.data {
        None => read_records(&spec.data.path)?,
        // The data errors name `data.path`, which is not what the user gave here.
        Some(path) => read_records(path).map_err(|e| match e {
            DataError::Source { reason, .. } => anyhow!("--data {}: {reason}", path.display()),
            other => anyhow!("--data {}: {other}", path.display()),
        })?,
    };
    let tokenizer = crate::run::run_tokenizer(&run, &spec)?;
    let split = split_instructions(&spec, tokenizer.as_ref(), records)?;
    let backend = args.backend.section(&spec)?;
    let weights = super::super::RunWeights { run, spec, checkpoint: args.checkpoint };
    let result = crate::backend::dispatch(&backend, Job { weights, split })??;
    result.print(args.json)
}

struct Job {
    weights: super::super::RunWeights,
    split: InstructionSplit,
}

impl ForwardJob for Job {
    type Output = Result<EvalResult>;
    /// Every held-out example, the loss over its response tokens.
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<EvalResult> {
        let (model, path) = self.weights.gpt::<B>(&device)?;
        let batch_size = self.weights.spec.training.batch_size;
        let (examples, end) = (self.split.held_out.examples, self.split.end);
        let tokens = examples.iter().map(|e| e.response.len()).sum();
        let batches = FixedExamples::<B>::new(examples, batch_size, 0, end, device);
        let val_loss = mean_loss(&model, batches.batches());
        Ok(EvalResult {
            model: path.display().to_string(),
            val_loss,
            val_perplexity: val_loss.exp(),
            batches: batches.batches().count(),
            tokens,
        })
    }
}
