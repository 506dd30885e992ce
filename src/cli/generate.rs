//! `kiln generate`

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::backend::ForwardJob;
use crate::config::ModelKind;
use crate::generate::{generate_until, Sampling, SamplingError, StopStrings, Utf8Stream};
use crate::kernels::KernelBackend;
use crate::model::Gpt;
use crate::run::{describe_weights, newest_finished_run, open_run, run_tokenizer};
use crate::tokenizer::Tokenizer;

const MAX_SAMPLES: usize = 1000;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Run directory; the most recently finished GPT run under artifacts/ when left out.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// A checkpoint file of the run instead of its final model.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Text to continue; `-` reads it from standard input.
    #[arg(long, default_value = "\n", conflicts_with = "prompt_file", value_name = "TEXT")]
    prompt: String,
    /// A file whose text to continue.
    #[arg(long, value_name = "FILE")]
    prompt_file: Option<PathBuf>,
    /// Samples to draw from the prompt (seeds --seed, --seed + 1, …), separated by `---`.
    #[arg(long, default_value_t = 1, value_name = "N")]
    num_samples: usize,
    /// End a sample where this text appears (not printed); repeatable.
    #[arg(long = "stop", value_name = "TEXT")]
    stops: Vec<String>,
    /// Read prompts line by line from the terminal (or stdin) with the model kept loaded;
    /// an empty line or end of input quits.
    #[arg(long, short, conflicts_with_all = ["prompt_file", "num_samples"])]
    interactive: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    backend: super::BackendArg,
}

/// How tokens are sampled (`generate`, `chat`).
#[derive(Debug, Args)]
pub(super) struct SamplingArgs {
    /// Tokens to generate after the prompt.
    #[arg(long, default_value_t = 300, allow_negative_numbers = true, value_name = "N")]
    max_new_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true, value_name = "T")]
    temperature: f64,
    /// Sample only among the k most likely tokens.
    #[arg(long, allow_negative_numbers = true, value_name = "K")]
    top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities add up to p.
    #[arg(long, allow_negative_numbers = true, value_name = "P")]
    top_p: Option<f64>,
    /// Random seed: the same seed, prompt and weights give the same text.
    #[arg(long, default_value_t = 1337, value_name = "S")]
    seed: u64,
}

impl SamplingArgs {
    /// The settings, checked, errors named by their flags.
    pub(super) fn sampling(&self) -> Result<Sampling> {
        let sampling = Sampling {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        };
        sampling.validate().map_err(as_flag)?;
        Ok(sampling)
    }
}

impl GenerateArgs {
    fn prompt_text(&self) -> Result<String> {
        if let Some(file) = &self.prompt_file {
            return std::fs::read_to_string(file)
                .map_err(|e| crate::files::io_error("reading", file, e))
                .with_context(|| "--prompt-file".to_string());
        }
        if self.prompt == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("--prompt -: reading the prompt from standard input")?;
            return Ok(text);
        }
        Ok(self.prompt.clone())
    }
}

/// The run `--run` names, else the newest finished GPT run under `artifacts/`.
pub(super) fn gpt_run_dir(run: Option<&PathBuf>) -> Result<PathBuf> {
    match run {
        Some(dir) => Ok(dir.clone()),
        None => newest_finished_run(std::path::Path::new("artifacts"), ModelKind::Gpt)
            .context("no --run given; train a run first, or pass --run DIR"),
    }
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let (run, spec) = open_run(&gpt_run_dir(args.run.as_ref())?)?;
    crate::run::load::gpt_spec(&spec, "generate")?;
    let sampling = args.sampling.sampling()?;
    if !(1..=MAX_SAMPLES).contains(&args.num_samples) {
        anyhow::bail!(
            "--num-samples {}: expected a number from 1 to {MAX_SAMPLES}",
            args.num_samples
        );
    }
    let estimate = crate::memory::generation(&spec.model, spec.vocab_size(), 1);
    crate::memory::check_generation(estimate, "generating")?;
    let tokenizer = run_tokenizer(&run, &spec)?;
    let prompts = match args.interactive {
        true => Prompts::Interactive,
        false => {
            let text = args.prompt_text()?;
            let ids = tokenizer.encode(&text).map_err(|e| anyhow::anyhow!("--prompt: {e}"))?;
            Prompts::Once { text, ids, samples: args.num_samples }
        }
    };
    let backend = args.backend.section(&spec)?;
    crate::backend::dispatch(
        &backend,
        Job {
            weights: super::RunWeights { run, spec, checkpoint: args.checkpoint },
            prompts,
            sampling,
            stops: args.stops,
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

enum Prompts {
    Once { text: String, ids: Vec<u32>, samples: usize },
    Interactive,
}

struct Job {
    weights: super::RunWeights,
    prompts: Prompts,
    sampling: Sampling,
    stops: Vec<String>,
    tokenizer: Box<dyn Tokenizer>,
}

impl ForwardJob for Job {
    type Output = Result<()>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<()> {
        let (model, path) = self.weights.gpt::<B>(&device)?;
        eprintln!("kiln: sampling {}", describe_weights(&self.weights.run, &path));
        match &self.prompts {
            Prompts::Once { text, ids, samples } => {
                for i in 0..*samples {
                    if i > 0 {
                        println!("---");
                    }
                    let seed = self.sampling.seed.wrapping_add(i as u64);
                    self.sample(&model, text, ids, seed)?;
                }
                Ok(())
            }
            Prompts::Interactive => self.interact(&model),
        }
    }
}

impl Job {
    /// Prints the prompt and one sample after it.
    fn sample<B: KernelBackend>(
        &self,
        model: &Gpt<B>,
        text: &str,
        ids: &[u32],
        seed: u64,
    ) -> Result<()> {
        let mut out = Utf8Stream::stdout();
        out.push(text.as_bytes());
        let mut stops = StopStrings::new(&self.stops);
        let sampling = Sampling { seed, ..self.sampling.clone() };
        let mut stopped = false;
        let mut decode = self.tokenizer.stream_decoder(ids);
        generate_until(model, ids, &sampling, |id| {
            let (ready, flow) = stops.push(&decode(id));
            out.push(ready);
            stopped = flow.is_break();
            flow
        })
        .map_err(as_flag)?;
        if !stopped {
            out.push(stops.rest());
        }
        out.push(b"\n");
        out.finish();
        Ok(())
    }

    /// A prompt loop: each line read is continued; an empty line or end of input ends it.
    fn interact<B: KernelBackend>(&self, model: &Gpt<B>) -> Result<()> {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        for turn in 0u64.. {
            eprint!("> ");
            let _ = std::io::stderr().flush();
            let Some(line) = lines.next().transpose().context("reading a prompt")? else {
                break;
            };
            if line.is_empty() {
                break;
            }
            match self.tokenizer.encode(&line) {
                Ok(ids) => {
                    self.sample(model, &line, &ids, self.sampling.seed.wrapping_add(turn))?
                }
                // A character the model has never seen ends this prompt, not the session.
                Err(e) => eprintln!("kiln: {e}"),
            }
        }
        Ok(())
    }
}
