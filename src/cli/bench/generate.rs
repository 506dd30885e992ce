//! `kiln bench generate`: time greedy decoding through the KV cache with a config's model
//! (fresh random weights: speed does not depend on what the weights are).
//!
//! The prompt is the start of the config's corpus. FLOPs follow nanoGPT's convention: 2·N per
//! token for the weights (N without the position table) plus 4·L·d·t for attending over `t`
//! cached positions.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::common::{allocator, describe_rss, peak_rss_mb, BenchConfig};
use crate::backend::ForwardJob;
use crate::config::RunSpec;
use crate::generate::{generate, Sampling};
use crate::kernels::KernelBackend;
use crate::model::Gpt;
use crate::train::{fit_tokenizer, gpt_config};

#[derive(Debug, Args)]
pub struct GenerateBenchArgs {
    #[command(flatten)]
    config: BenchConfig,
    /// Prompt length in tokens, taken from the start of the corpus.
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    /// Tokens generated (greedy) after the prompt.
    #[arg(long, default_value_t = 500)]
    max_new_tokens: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct GenerateBench {
    backend: String,
    params: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    /// Prompt forward pass and the first token.
    first_token_ms: f64,
    /// Each later token: one cached decoder step and its sampling.
    ms_per_token: f64,
    tokens_per_sec: f64,
    flops_per_sec: f64,
    peak_rss_mb: Option<f64>,
    allocator: String,
}

pub fn run(args: GenerateBenchArgs) -> Result<()> {
    let mut spec = args.config.load("bench generate")?;
    let (text, tokenizer) = fit_tokenizer(&mut spec)?;
    let estimate = crate::memory::generation(&spec.model, spec.vocab_size(), 1);
    crate::memory::check_generation(estimate, "generating")?;
    let block = spec.model.block_size();
    if args.prompt_tokens == 0 || args.prompt_tokens + args.max_new_tokens > block {
        bail!(
            "--prompt-tokens {} + --max-new-tokens {}: expected at least one prompt token and at most model.block_size = {block} in all, so that every step uses the cache",
            args.prompt_tokens,
            args.max_new_tokens
        );
    }
    let head = text.char_indices().nth(64 * args.prompt_tokens).map_or(text.len(), |(i, _)| i);
    let prompt: Vec<u32> =
        tokenizer.encode(&text[..head])?.into_iter().take(args.prompt_tokens).collect();
    if prompt.len() < args.prompt_tokens {
        bail!(
            "--prompt-tokens {}: {} holds only {} tokens",
            args.prompt_tokens,
            spec.data.path.display(),
            prompt.len()
        );
    }
    let sampling = Sampling {
        max_new_tokens: args.max_new_tokens,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: spec.run.seed,
    };
    let backend = spec.backend.clone();
    let result = crate::backend::dispatch(&backend, Job { spec, prompt, sampling })??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!("backend:        {}", result.backend);
        println!("model:          {} params", result.params);
        println!(
            "tokens:         {} prompt + {} generated (greedy, KV cache)",
            result.prompt_tokens, result.new_tokens
        );
        println!("first token:    {:.1} ms", result.first_token_ms);
        println!("ms/token:       {:.2}", result.ms_per_token);
        println!("tokens/s:       {:.1}", result.tokens_per_sec);
        println!("model FLOP/s:   {:.3} GFLOP/s", result.flops_per_sec / 1e9);
        println!("peak RSS:       {}", describe_rss(result.peak_rss_mb));
        println!("allocator:      {}", result.allocator);
    }
    Ok(())
}

struct Job {
    spec: RunSpec,
    prompt: Vec<u32>,
    sampling: Sampling,
}

impl ForwardJob for Job {
    type Output = Result<GenerateBench>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<GenerateBench> {
        B::seed(&device, self.spec.run.seed);
        let model: Gpt<B> = gpt_config(&self.spec)?.init(&device);
        // Untimed: first-use allocations and kernel compilation.
        let warm_up = Sampling { max_new_tokens: 4, ..self.sampling.clone() };
        generate(&model, &self.prompt, &warm_up, |_| {}).map_err(crate::cli::generate::as_flag)?;

        let started = Instant::now();
        let mut first_token = None;
        let generated = generate(&model, &self.prompt, &self.sampling, |_| {
            first_token.get_or_insert_with(|| started.elapsed());
        })
        .map_err(crate::cli::generate::as_flag)?;
        let total = started.elapsed().as_secs_f64();
        let first = first_token.map_or(total, |t| t.as_secs_f64());

        let m = &self.spec.model;
        let counts = model.param_counts();
        let weight_flops = 2.0 * (counts.total - m.block_size() * m.d_model()) as f64;
        let attention_flops: f64 = (self.prompt.len()..self.prompt.len() + generated.len())
            .map(|t| 4.0 * (m.n_layers() * m.d_model() * t) as f64)
            .sum();
        let flops = weight_flops * (self.prompt.len() + generated.len()) as f64 + attention_flops;
        Ok(GenerateBench {
            backend: self.spec.backend.describe(),
            params: counts.total,
            prompt_tokens: self.prompt.len(),
            new_tokens: generated.len(),
            first_token_ms: 1000.0 * first,
            ms_per_token: 1000.0 * (total - first) / (generated.len().max(2) - 1) as f64,
            tokens_per_sec: generated.len() as f64 / total,
            flops_per_sec: flops / total,
            peak_rss_mb: peak_rss_mb(),
            allocator: allocator(),
        })
    }
}
