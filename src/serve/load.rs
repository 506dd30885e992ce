//! A load test of a running server: clients that each send streaming completions one after
//! another, timed from the request to its first text (time to first token) and to its end.

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::{json, Value};

use super::client;

/// What one phase of a load test measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub clients: usize,
    pub requests: usize,
    /// Completion tokens of every request (the usage the server reported).
    pub tokens: usize,
    pub seconds: f64,
    /// Time to first token of each request, in milliseconds.
    pub first_token_ms: Vec<f64>,
}

impl LoadReport {
    pub fn tokens_per_sec(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }

    /// The `p`-th percentile (0–100) of the times to first token, nearest rank.
    pub fn first_token_percentile(&self, p: f64) -> f64 {
        let mut sorted = self.first_token_ms.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }
}

/// What every request of a load test asks for.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub model: String,
    pub prompt: String,
    pub max_tokens: usize,
}

/// `clients` threads at once, each sending `requests` streaming completions in turn.
pub fn measure(
    addr: SocketAddr,
    request: &LoadRequest,
    clients: usize,
    requests: usize,
) -> std::io::Result<LoadReport> {
    let start = Instant::now();
    let results: Vec<std::io::Result<Vec<(f64, usize)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                scope.spawn(move || {
                    (0..requests)
                        .map(|i| one(addr, request, (client * requests + i) as u64))
                        .collect::<std::io::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(std::io::Error::other("a client panicked"))))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut report =
        LoadReport { clients, requests: 0, tokens: 0, seconds, first_token_ms: Vec::new() };
    for result in results {
        for (first_token_ms, tokens) in result? {
            report.requests += 1;
            report.tokens += tokens;
            report.first_token_ms.push(first_token_ms);
        }
    }
    Ok(report)
}

/// One streamed completion: (ms to its first text, completion tokens).
fn one(addr: SocketAddr, request: &LoadRequest, seed: u64) -> std::io::Result<(f64, usize)> {
    let body = json!({
        "model": request.model, "prompt": request.prompt, "max_tokens": request.max_tokens,
        "temperature": 1.0, "seed": seed, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let start = Instant::now();
    let (mut first, mut tokens) = (None, 0);
    let response = client::stream(addr, "/v1/completions", &body, |data| {
        let Ok(chunk) = serde_json::from_str::<Value>(data) else { return };
        let text = chunk["choices"][0]["text"].as_str().unwrap_or("");
        if first.is_none() && !text.is_empty() {
            first = Some(start.elapsed().as_secs_f64() * 1e3);
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = n as usize;
        }
    })?;
    if response.status != 200 {
        return Err(std::io::Error::other(format!(
            "the server answered {}: {}",
            response.status,
            response.text()
        )));
    }
    Ok((first.unwrap_or(start.elapsed().as_secs_f64() * 1e3), tokens))
}
