//! `kiln bench serve`: a run served on a free loopback port, then loaded by streaming
//! clients — one at a time, then many at once — for tokens/s and time to first token.

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::backend::ForwardJob;
use crate::kernels::cpu_name;
use crate::kernels::KernelBackend;
use crate::run::open_run;
use crate::serve::load::{measure, LoadReport, LoadRequest};
use crate::serve::ModelInfo;

#[derive(Debug, Args)]
pub struct ServeBenchArgs {
    /// Run directory (a GPT run); the most recently finished GPT run under artifacts/ when
    /// left out.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// Clients streaming at once in the concurrent phase.
    #[arg(long, default_value_t = 16, value_name = "N")]
    clients: usize,
    /// Requests each concurrent client sends, one after another.
    #[arg(long, default_value_t = 2, value_name = "N")]
    requests: usize,
    /// Tokens each request asks for.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_tokens: usize,
    /// The prompt every request continues.
    #[arg(long, default_value = "Once upon a time", value_name = "TEXT")]
    prompt: String,
    #[command(flatten)]
    backend: crate::cli::BackendArg,
}

pub fn run(args: ServeBenchArgs) -> Result<()> {
    if !(1..=256).contains(&args.clients) || !(1..=1000).contains(&args.requests) {
        bail!("--clients takes 1 to 256 and --requests 1 to 1000");
    }
    let (run, spec) = open_run(&crate::cli::generate::gpt_run_dir(args.run.as_ref())?)?;
    crate::run::load::gpt_spec(&spec, "bench serve")?;
    let info = crate::cli::serve::model_info(&run, &spec, spec.data.template.clone())?;
    let backend = args.backend.section(&spec)?;
    println!(
        "kiln bench serve: `{}` ({} tokens of context) on {} — CPU: {}",
        info.id,
        spec.model.block_size(),
        backend.name,
        cpu_name()
    );
    let request = LoadRequest {
        model: info.id.clone(),
        prompt: args.prompt.clone(),
        max_tokens: args.max_tokens,
    };
    let weights = crate::cli::RunWeights { run, spec, checkpoint: None };
    let job = Bench { weights, info, request, clients: args.clients, requests: args.requests };
    crate::backend::dispatch(&backend, job)?
}

struct Bench {
    weights: crate::cli::RunWeights,
    info: ModelInfo,
    request: LoadRequest,
    clients: usize,
    requests: usize,
}

impl ForwardJob for Bench {
    type Output = Result<()>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<()> {
        let (model, _) = self.weights.gpt::<B>(&device)?;
        let listener = TcpListener::bind("127.0.0.1:0").context("listening on loopback")?;
        let addr = listener.local_addr()?;
        let (done, stop) = tokio::sync::oneshot::channel::<()>();
        let (request, clients, requests) = (self.request, self.clients, self.requests);
        let load = std::thread::spawn(move || {
            // One request first so that neither phase pays for warming up.
            let phases = measure(addr, &request, 1, 1).and_then(|_| {
                let serial = measure(addr, &request, 1, clients)?;
                Ok((serial, measure(addr, &request, clients, requests)?))
            });
            let _ = done.send(());
            phases
        });
        let shutdown = async {
            let _ = stop.await;
        };
        crate::serve::serve(&model, self.info, listener, clients.max(1), shutdown)?;
        let (serial, concurrent) = load
            .join()
            .map_err(|_| anyhow::anyhow!("the load clients panicked"))?
            .context("loading the server")?;
        print_phase("one client at a time", &serial);
        print_phase(&format!("{} concurrent clients", concurrent.clients), &concurrent);
        println!(
            "throughput: ×{:.2} with {} clients; p50 time to first token ×{:.2}",
            concurrent.tokens_per_sec() / serial.tokens_per_sec(),
            concurrent.clients,
            concurrent.first_token_percentile(50.0) / serial.first_token_percentile(50.0)
        );
        Ok(())
    }
}

fn print_phase(name: &str, report: &LoadReport) {
    println!(
        "{name:<24} {:>4} requests {:>7} tokens in {:>6.2} s: {:>8.1} tokens/s, time to first \
         token p50 {:>7.1} ms, p99 {:>7.1} ms",
        report.requests,
        report.tokens,
        report.seconds,
        report.tokens_per_sec(),
        report.first_token_percentile(50.0),
        report.first_token_percentile(99.0)
    );
}
