//! `kiln serve`

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use super::chat::run_template;
use super::generate::gpt_run_dir;
use crate::backend::ForwardJob;
use crate::kernels::KernelBackend;
use crate::run::{describe_weights, open_run, run_tokenizer};
use crate::serve::ModelInfo;
use crate::tokenizer::END_OF_TEXT;

const MAX_BATCH: usize = 256;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Run directory (a GPT run); the most recently finished GPT run under artifacts/ when
    /// left out. Its name is the model id clients pass.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// A checkpoint file of the run instead of its final model.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Address and port to listen on; loopback by default (0.0.0.0:8080 opens it to the
    /// network); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    addr: String,
    /// Prompt template of chat requests: alpaca, phi3 or a text with {instruction};
    /// defaults to the one the run was finetuned with.
    #[arg(long, value_name = "TEMPLATE")]
    template: Option<String>,
    /// Most sequences decoded together; requests beyond it wait for a free row.
    #[arg(long, default_value_t = 32, value_name = "N")]
    max_batch: usize,
    #[command(flatten)]
    backend: super::BackendArg,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if !(1..=MAX_BATCH).contains(&args.max_batch) {
        anyhow::bail!("--max-batch {}: expected a number from 1 to {MAX_BATCH}", args.max_batch);
    }
    let (run, spec) = open_run(&gpt_run_dir(args.run.as_ref())?)?;
    crate::run::load::gpt_spec(&spec, "serve")?;
    let template = run_template(&run, &spec, args.template.as_deref())?;
    let estimate = crate::memory::generation(&spec.model, spec.vocab_size(), args.max_batch);
    crate::memory::check_generation(estimate, "serving")?;
    let info = model_info(&run, &spec, template)?;
    let listener = bind(&args.addr)?;
    let backend = args.backend.section(&spec)?;
    let weights = super::RunWeights { run, spec, checkpoint: args.checkpoint };
    crate::backend::dispatch(
        &backend,
        Serve { weights, info, listener, max_batch: args.max_batch },
    )?
}

/// What the HTTP side knows of a run's model: its id (the folder's name), tokenizer,
/// template and context.
pub(super) fn model_info(
    run: &crate::run::RunDir,
    spec: &crate::config::RunSpec,
    template: crate::config::PromptTemplate,
) -> Result<ModelInfo> {
    let tokenizer: Arc<dyn crate::tokenizer::Tokenizer> = run_tokenizer(run, spec)?.into();
    Ok(ModelInfo {
        id: model_id(run.root()),
        created: now(),
        end: tokenizer.special_id(END_OF_TEXT),
        tokenizer,
        template,
        block_size: spec.model.block_size(),
    })
}

fn bind(addr: &str) -> Result<TcpListener> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| anyhow::anyhow!("--addr {addr}: expected HOST:PORT, e.g. 127.0.0.1:8080"))?;
    TcpListener::bind(parsed).with_context(|| format!("--addr {addr}: cannot listen there"))
}

/// The run folder's name, the model id clients pass.
fn model_id(root: &std::path::Path) -> String {
    let full = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    full.file_name().map_or_else(|| "kiln".to_string(), |n| n.to_string_lossy().into_owned())
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

struct Serve {
    weights: super::RunWeights,
    info: ModelInfo,
    listener: TcpListener,
    max_batch: usize,
}

impl ForwardJob for Serve {
    type Output = Result<()>;
    fn run<B: KernelBackend>(self, device: B::Device) -> Result<()> {
        let (model, path) = self.weights.gpt::<B>(&device)?;
        let addr = self.listener.local_addr().context("reading the address listened on")?;
        eprintln!(
            "kiln: serving {} as model `{}` on http://{addr} (API at http://{addr}/v1; Ctrl-C \
             stops)",
            describe_weights(&self.weights.run, &path),
            self.info.id
        );
        ignore_sigpipe();
        crate::serve::serve(&model, self.info, self.listener, self.max_batch, stop_signal())
            .context("serving HTTP")?;
        eprintln!("kiln: stopped");
        Ok(())
    }
}

/// Ctrl-C (SIGINT) or SIGTERM, as service managers send it: the server stops taking
/// connections and ends once the replies in flight are sent.
async fn stop_signal() {
    let ctrl_c = std::pin::pin!(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            let term = std::pin::pin!(term.recv());
            futures_util::future::select(ctrl_c, term).await;
            eprintln!("kiln: stopping once the replies in flight are sent");
            return;
        }
    }
    ctrl_c.await;
    eprintln!("kiln: stopping once the replies in flight are sent");
}

/// A client that hangs up mid-reply must not end the server: writes to its socket fail with
/// an error instead of the SIGPIPE that kiln otherwise keeps (see main.rs).
fn ignore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: sets the disposition of one signal to "ignore"; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}
