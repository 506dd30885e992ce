//! `kiln generate`

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::backend::ForwardJob;
use crate::generate::{generate, Sampling, SamplingError, Utf8Stream};
use crate::kernels::KernelBackend;
use crate::run::{open_run, run_tokenizer};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Run directory, e.g. artifacts/small.
    #[arg(long)]
    run: PathBuf,
    /// A checkpoint file of the run instead of its final model.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Text to continue.
    #[arg(long, default_value = "\n")]
    prompt: String,
    #[arg(long, default_value_t = 300, allow_negative_numbers = true)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f64,
    /// Sample only among the k most likely tokens.
    #[arg(long, allow_negative_numbers = true)]
    top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities add up to p.
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    #[command(flatten)]
    backend: super::BackendArg,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let (run, spec) = open_run(&args.run)?;
    crate::run::load::gpt_spec(&spec, "generate")?;
    let sampling = Sampling {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    sampling.validate().map_err(as_flag)?;
    let estimate = crate::memory::generation(&spec.model, spec.vocab_size(), 1);
    crate::memory::check_generation(estimate, "generating")?;
    let tokenizer = run_tokenizer(&run, &spec)?;
    let prompt = tokenizer.encode(&args.prompt).map_err(|e| anyhow::anyhow!("--prompt: {e}"))?;
    let backend = args.backend.section(&spec)?;
    crate::backend::dispatch(
        &backend,
        Job {
            weights: super::RunWeights { run, spec, checkpoint: args.checkpoint },
            prompt,
            prompt_text: args.prompt,
            sampling,
            tokenizer,
        },
    )?
}

/// A sampling error named by the flag that set it.
pub(super) fn as_flag(error: SamplingError) -> anyhow::Error {
    let message = error.to_string();
    match message.split_once(" = ") {
        Some((setting, rest)) => {
            anyhow::anyhow!("--{} {rest}", setting.replace('_', "-"))
        }
        None => anyhow::anyhow!("{message} (--prompt)"),
    }
}

struct Job {
    weights: super::RunWeights,
    prompt: Vec<u32>,
    prompt_text: String,
    sampling: Sampling,
    tokenizer: Box<dyn Tokenizer>,
}

impl ForwardJob for Job {
    type Output = Result<()>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<()> {
        let (model, _) = self.weights.gpt::<B>(&device)?;
        let mut out = Utf8Stream::stdout();
        out.push(self.prompt_text.as_bytes());
        generate(&model, &self.prompt, &self.sampling, |id| {
            out.push(&self.tokenizer.decode_next(id))
        })
        .map_err(as_flag)?;
        out.push(b"\n");
        out.finish();
        Ok(())
    }
}
