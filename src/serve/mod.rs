//! `kiln serve`: a GPT run behind an OpenAI-compatible HTTP API and a page to talk to it.
//!
//! The model lives on one thread, the engine (`engine.rs`), which decodes every request in
//! flight together through one KV cache. The HTTP side (`http.rs`, on a small tokio runtime)
//! reads and checks requests (`request.rs`), hands them to the engine and writes its text
//! back as OpenAI's bodies (`response.rs`), whole or as server-sent events. A refusal is a
//! 4xx with OpenAI's error body (`error.rs`).

pub mod client;
mod engine;
mod error;
mod http;
pub mod load;
mod request;
mod response;

pub use engine::{Event, Finish, Job, Stats};
pub use error::ApiError;
pub use http::{ModelInfo, MAX_BODY};

use std::future::Future;
use std::net::TcpListener;

use crate::kernels::KernelBackend;
use crate::model::Gpt;

/// Serves `model` on `listener` until `shutdown` completes and the requests in flight are
/// answered, decoding at most `max_batch` sequences at once.
pub fn serve<B: KernelBackend>(
    model: &Gpt<B>,
    info: ModelInfo,
    listener: TcpListener,
    max_batch: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kiln-http")
        .enable_all()
        .build()?;
    listener.set_nonblocking(true)?;
    let (jobs, queue) = std::sync::mpsc::channel();
    let tokenizer = info.tokenizer.clone();
    let stats = std::sync::Arc::new(Stats::default());
    let app = http::router(info, jobs, stats.clone());
    let server = std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        })
    });
    engine::run(model, tokenizer.as_ref(), queue, max_batch, &stats);
    server.join().unwrap_or_else(|_| Err(std::io::Error::other("the HTTP server panicked")))
}
