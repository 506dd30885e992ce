//! `kiln serve` for the tests: a small run, a server process on a free port, and what the
//! model samples on its own to compare the server's answers with.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use kiln::generate::{generate_until, Sampling};
use kiln::serve::client::{self, Response};
use kiln::train::{train, TrainOptions};
use serde_json::Value;

type B = burn::backend::NdArray<f32>;

/// A small GPT on TinyStories with a byte-level BPE (which has `<|endoftext|>`) and room in
/// its context for the Alpaca template.
pub fn base_run() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let artifacts = tempfile::tempdir().unwrap().keep();
        let sets = [
            "run.name=storyteller", "data.path=data/tinystories_val.txt",
            "data.tokenizer=bpe:train:600", "model.block_size=160", "model.d_model=48",
            "training.batch_size=8", "training.max_iters=40", "training.eval_interval=40",
        ];
        train(super::tiny_spec(&artifacts, &sets), TrainOptions::default()).unwrap();
        artifacts.join("storyteller")
    })
}

/// A `kiln serve` process on a free loopback port, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    pub fn start(run: &Path, flags: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["serve", "--run", run.to_str().unwrap(), "--addr", "127.0.0.1:0"])
            .args(flags)
            .current_dir(super::repo())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("kiln serve ended before it listened").unwrap();
            if let Some(rest) = line.split(" on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep reading stderr so that the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, addr }
    }

    pub fn get(&self, path: &str) -> Response {
        client::request(self.addr, "GET", path, &[], b"").unwrap()
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        let headers = [("Content-Type", "application/json")];
        client::request(self.addr, "POST", path, &headers, body.to_string().as_bytes()).unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the process to end by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    pub fn is_up(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none() && self.get("/health").status == 200
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the run's model samples after `prompt` on its own, through `generate_until`: the
/// text up to `<|endoftext|>` or `max_new_tokens`.
pub fn expected(
    run: &Path,
    prompt: &str,
    max_new_tokens: usize,
    temperature: f64,
    seed: u64,
) -> String {
    let ids = encode(run, &[prompt]);
    expected_after(run, &ids, max_new_tokens, temperature, seed)
}

/// The run's tokens of each text in turn, each encoded on its own (`<|endoftext|>` alone is
/// that token).
pub fn encode(run: &Path, texts: &[&str]) -> Vec<u32> {
    let (dir, spec) = kiln::run::open_run(run).unwrap();
    let tokenizer = kiln::run::run_tokenizer(&dir, &spec).unwrap();
    let end = tokenizer.special_id("<|endoftext|>").unwrap();
    let mut ids = Vec::new();
    for text in texts {
        match *text {
            "<|endoftext|>" => ids.push(end),
            text => ids.extend(tokenizer.encode(text).unwrap()),
        }
    }
    ids
}

/// As [`expected`], after the tokens `ids`.
pub fn expected_after(
    run: &Path,
    ids: &[u32],
    max_new_tokens: usize,
    temperature: f64,
    seed: u64,
) -> String {
    let (dir, spec) = kiln::run::open_run(run).unwrap();
    let tokenizer = kiln::run::run_tokenizer(&dir, &spec).unwrap();
    let (model, _) = kiln::run::load_gpt::<B>(&dir, &spec, None, &Default::default()).unwrap();
    let end = tokenizer.special_id("<|endoftext|>").unwrap();
    let sampling = Sampling { max_new_tokens, temperature, top_k: None, top_p: None, seed };
    let mut decode = tokenizer.stream_decoder(ids);
    let mut bytes = Vec::new();
    generate_until(&model, ids, &sampling, |id| {
        if id == end {
            return ControlFlow::Break(());
        }
        bytes.extend(decode(id));
        ControlFlow::Continue(())
    })
    .unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The text of a stream's chunks, choice by choice, and each choice's finish reason.
pub fn streamed_text(events: &[String], chat: bool) -> (Vec<String>, Vec<Option<String>>) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let (mut texts, mut finishes) = (Vec::new(), Vec::new());
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            if texts.len() <= i {
                texts.resize(i + 1, String::new());
                finishes.resize(i + 1, None);
            }
            let piece = if chat { &choice["delta"]["content"] } else { &choice["text"] };
            texts[i].push_str(piece.as_str().unwrap_or(""));
            if let Some(reason) = choice["finish_reason"].as_str() {
                finishes[i] = Some(reason.to_string());
            }
        }
    }
    (texts, finishes)
}

/// A chat reply in the Alpaca template: the sampled text, cut where the template's next turn
/// would start.
pub fn until_next_turn(sampled: String) -> String {
    let markers = kiln::config::PromptTemplate::Alpaca.turn_markers();
    let cut = markers.iter().filter_map(|m| sampled.find(m.as_str())).min();
    sampled[..cut.unwrap_or(sampled.len())].to_string()
}
