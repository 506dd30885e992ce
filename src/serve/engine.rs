//! The thread that owns the model: it takes requests from the HTTP handlers, decodes all
//! of them together through one KV cache ([`BatchDecoder`]) and sends each its text as it is
//! sampled.
//!
//! A request joins the batch between two steps, as soon as there is a free row, and leaves
//! when it ends (end token, stop string, `max_tokens`) or when its client has gone.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::generate::{BatchDecoder, Sampling, StopStrings, Utf8Stream};
use crate::kernels::KernelBackend;
use crate::model::Gpt;
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// A request the handlers checked: its prompt and one sampling per choice.
pub struct Job {
    pub prompt: Vec<u32>,
    /// One per choice (`n`), in choice order.
    pub choices: Vec<Sampling>,
    pub stops: Vec<String>,
    /// The token that ends a reply (`<|endoftext|>`), if the tokenizer has one.
    pub end: Option<u32>,
    pub events: UnboundedSender<Event>,
}

/// What the engine tells a request's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Text of choice `choice`, in whole UTF-8 characters.
    Text { choice: usize, text: String },
    /// Choice `choice` ended after `tokens` sampled tokens.
    Done { choice: usize, finish: Finish, tokens: usize },
    /// The request could not be decoded (it was checked, so this is not expected).
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The end token or a stop string.
    Stop,
    /// `max_tokens` sampled.
    Length,
}

impl Finish {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What the engine is doing, for `GET /health`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sequences being decoded now.
    pub decoding: AtomicUsize,
    /// Choices waiting for a free row.
    pub waiting: AtomicUsize,
    /// The most sequences decoded in one step so far.
    pub largest_batch: AtomicUsize,
    /// Tokens sampled since the server started.
    pub tokens: AtomicU64,
}

impl Stats {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "decoding": self.decoding.load(Ordering::Relaxed),
            "waiting": self.waiting.load(Ordering::Relaxed),
            "largest_batch": self.largest_batch.load(Ordering::Relaxed),
            "tokens_sampled": self.tokens.load(Ordering::Relaxed),
        })
    }

    fn record(&self, rows: usize, waiting: usize, sampled: u64) {
        self.decoding.store(rows, Ordering::Relaxed);
        self.waiting.store(waiting, Ordering::Relaxed);
        self.largest_batch.fetch_max(rows, Ordering::Relaxed);
        self.tokens.store(sampled, Ordering::Relaxed);
    }
}

/// A choice waiting for a row.
struct Waiting {
    job: Arc<Job>,
    choice: usize,
}

/// A choice being decoded: what turns its tokens into text and where the text goes.
struct Active<'t> {
    job: Arc<Job>,
    choice: usize,
    decode: StreamDecoder<'t>,
    stops: StopStrings,
    text: Utf8Stream<Vec<u8>>,
    tokens: usize,
}

/// Serves jobs until every sender of `jobs` is gone, with at most `max_rows` sequences
/// decoded at once.
pub fn run<B: KernelBackend>(
    model: &Gpt<B>,
    tokenizer: &dyn Tokenizer,
    jobs: Receiver<Job>,
    max_rows: usize,
    stats: &Stats,
) {
    let mut decoder = BatchDecoder::new(model);
    let mut rows: Vec<Active> = Vec::new();
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    loop {
        if !receive(&jobs, &mut waiting, rows.is_empty()) {
            return;
        }
        while rows.len() < max_rows {
            let Some(next) = waiting.pop_front() else { break };
            if let Some(row) = admit(&mut decoder, tokenizer, next) {
                rows.push(row);
            }
        }
        let ended: Vec<bool> = rows.iter().map(|r| r.job.events.is_closed()).collect();
        drop_rows(&mut decoder, &mut rows, &ended);
        let next = decoder.step();
        stats.record(rows.len(), waiting.len(), decoder.sampled());
        let ended: Vec<bool> = rows
            .iter_mut()
            .zip(next)
            .enumerate()
            .map(|(i, (row, token))| row.push(token, decoder.is_full(i)).is_break())
            .collect();
        drop_rows(&mut decoder, &mut rows, &ended);
    }
}

/// Moves the jobs that arrived into `waiting`, blocking for one when `idle`. False once
/// the handlers are gone and nothing is left to do.
fn receive(jobs: &Receiver<Job>, waiting: &mut VecDeque<Waiting>, idle: bool) -> bool {
    let queue = |waiting: &mut VecDeque<Waiting>, job: Job| {
        let job = Arc::new(job);
        waiting.extend((0..job.choices.len()).map(|choice| Waiting { job: job.clone(), choice }));
    };
    if idle && waiting.is_empty() {
        match jobs.recv() {
            Ok(job) => queue(waiting, job),
            Err(_) => return false,
        }
    }
    loop {
        match jobs.try_recv() {
            Ok(job) => queue(waiting, job),
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => return !(idle && waiting.is_empty()),
        }
    }
}

/// Reads a waiting choice's prompt into a new row and handles its first token; `None` when
/// it ended there.
fn admit<'t, B: KernelBackend>(
    decoder: &mut BatchDecoder<B>,
    tokenizer: &'t dyn Tokenizer,
    Waiting { job, choice }: Waiting,
) -> Option<Active<'t>> {
    if job.events.is_closed() {
        return None;
    }
    let first = match decoder.add(&job.prompt, job.choices[choice].clone()) {
        Ok(first) => first,
        Err(e) => {
            let _ = job.events.send(Event::Failed(e.to_string()));
            return None;
        }
    };
    let mut row = Active {
        decode: tokenizer.stream_decoder(&job.prompt),
        stops: StopStrings::new(&job.stops),
        text: Utf8Stream::new(Vec::new()),
        tokens: 0,
        job,
        choice,
    };
    let last = decoder.len() - 1;
    match row.push(first, decoder.is_full(last)) {
        ControlFlow::Continue(()) => Some(row),
        ControlFlow::Break(()) => {
            decoder.retain(|r| r != last);
            None
        }
    }
}

fn drop_rows<B: KernelBackend>(
    decoder: &mut BatchDecoder<B>,
    rows: &mut Vec<Active>,
    ended: &[bool],
) {
    if !ended.contains(&true) {
        return;
    }
    decoder.retain(|r| !ended[r]);
    let mut index = 0;
    rows.retain(|_| {
        index += 1;
        !ended[index - 1]
    });
}

impl Active<'_> {
    /// Handles a sampled token; breaks when the choice has ended (or its client is gone).
    fn push(&mut self, token: u32, full: bool) -> ControlFlow<()> {
        self.tokens += 1;
        if Some(token) == self.job.end {
            return self.finish(Finish::Stop, true);
        }
        let (ready, flow) = self.stops.push(&(self.decode)(token));
        self.text.push(ready);
        if flow.is_break() {
            return self.finish(Finish::Stop, false);
        }
        if full {
            return self.finish(Finish::Length, true);
        }
        self.send_text()
    }

    fn finish(&mut self, finish: Finish, release_held: bool) -> ControlFlow<()> {
        if release_held {
            let rest = self.stops.rest().to_vec();
            self.text.push(&rest);
        }
        self.text.flush_incomplete();
        let _ = self.send_text();
        let done = Event::Done { choice: self.choice, finish, tokens: self.tokens };
        let _ = self.job.events.send(done);
        ControlFlow::Break(())
    }

    fn send_text(&mut self) -> ControlFlow<()> {
        let text = self.text.take();
        if text.is_empty() {
            return ControlFlow::Continue(());
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        match self.job.events.send(Event::Text { choice: self.choice, text }) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
}
