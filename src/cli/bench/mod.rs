//! `kiln bench`: benchmarks that print figures — training steps, generation with the KV
//! cache, serving, the BPE tokenizer, and the gradient exchange between processes.

mod allreduce;
mod common;
mod generate;
mod serve;
mod tokenizer;
mod train;

use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// ms per training step, tokens/s, model FLOP/s and peak memory for a config.
    Train(train::TrainBenchArgs),
    /// Generation speed with the KV cache: first-token latency, ms/token, tokens/s, peak memory.
    Generate(generate::GenerateBenchArgs),
    /// A run served on loopback under streaming clients: tokens/s and time to first token,
    /// one client at a time against many at once.
    Serve(serve::ServeBenchArgs),
    /// BPE training time, peak memory and encode MB/s, against Hugging Face tokenizers and tiktoken-rs.
    Tokenizer(tokenizer::TokenizerBenchArgs),
    /// Under mpirun: seconds per mean of a gradient-sized vector over the processes.
    Allreduce(allreduce::AllreduceBenchArgs),
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Train(args) => train::run(args),
        BenchCommand::Generate(args) => generate::run(args),
        BenchCommand::Serve(args) => serve::run(args),
        BenchCommand::Tokenizer(args) => tokenizer::run(args),
        BenchCommand::Allreduce(args) => allreduce::run(args),
    }
}
