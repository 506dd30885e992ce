//! Autoregressive sampling from a GPT with a KV cache: greedy, temperature, top-k, top-p.
//!
//! Logits are read back to the host and sampled there with a seeded RNG, so the same seed
//! gives the same text on every backend.

mod batch;
mod chat;

pub use batch::{check_fits, BatchDecoder};
pub use chat::{ChatError, Conversation, Reply};

use std::io::Write;
use std::ops::ControlFlow;

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::kernels::KernelBackend;
use crate::model::Gpt;

/// A sampling setting out of range, by its name in [`Sampling`].
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error("max_new_tokens = {0}: expected a number from 1 to {MAX_NEW_TOKENS}")]
    MaxNewTokens(usize),
    #[error("temperature = {0}: expected a finite number >= 0 (0 means greedy)")]
    Temperature(f64),
    #[error("top_k = 0: expected at least 1 (leave it out to sample from the whole vocabulary)")]
    TopK,
    #[error("top_p = {0}: expected a number in (0, 1]")]
    TopP(f64),
    #[error("the prompt is empty: give at least one token of text")]
    EmptyPrompt,
    #[error(
        "{prompt} tokens of prompt and {max_new_tokens} to generate are more than the model's \
         context of {block_size} tokens"
    )]
    ContextLength { prompt: usize, max_new_tokens: usize, block_size: usize },
}

impl SamplingError {
    /// The setting it is about, as [`Sampling`] names it.
    pub fn setting(&self) -> &'static str {
        match self {
            Self::MaxNewTokens(_) => "max_new_tokens",
            Self::Temperature(_) => "temperature",
            Self::TopK => "top_k",
            Self::TopP(_) => "top_p",
            Self::EmptyPrompt => "prompt",
            Self::ContextLength { .. } => "max_new_tokens",
        }
    }
}

pub const MAX_NEW_TOKENS: usize = 1_000_000;

#[derive(Debug, Clone)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl Sampling {
    pub fn validate(&self) -> Result<(), SamplingError> {
        if self.max_new_tokens == 0 || self.max_new_tokens > MAX_NEW_TOKENS {
            return Err(SamplingError::MaxNewTokens(self.max_new_tokens));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if self.top_k == Some(0) {
            return Err(SamplingError::TopK);
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(SamplingError::TopP(p));
        }
        Ok(())
    }
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token` as each one is chosen.
/// A prompt longer than the model's block size is cropped from the left; once the context
/// is full, every step sees the last `block_size` tokens, as in nanoGPT.
pub fn generate<B: KernelBackend>(
    model: &Gpt<B>,
    prompt: &[u32],
    sampling: &Sampling,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>, SamplingError> {
    generate_until(model, prompt, sampling, |id| {
        on_token(id);
        ControlFlow::Continue(())
    })
}

/// As [`generate`], stopping early when `on_token` breaks (a stop string was produced).
pub fn generate_until<B: KernelBackend>(
    model: &Gpt<B>,
    prompt: &[u32],
    sampling: &Sampling,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Vec<u32>, SamplingError> {
    sampling.validate()?;
    if prompt.is_empty() {
        return Err(SamplingError::EmptyPrompt);
    }
    let block_size = model.block_size();
    let device = model.devices().into_iter().next().unwrap_or_default();
    let tensor = |ids: &[u32]| {
        let data =
            TensorData::new(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, ids.len()]);
        Tensor::<B, 2, Int>::from_data(data, &device)
    };

    let mut context: Vec<u32> = prompt[prompt.len().saturating_sub(block_size)..].to_vec();
    let mut cache = model.new_cache();
    let mut logits = model.forward_cached(tensor(&context), &mut cache);
    let mut rng = StdRng::seed_from_u64(sampling.seed);
    let mut generated = Vec::with_capacity(sampling.max_new_tokens);
    for i in 0..sampling.max_new_tokens {
        let row: Vec<f32> = logits.into_data().convert::<f32>().to_vec().unwrap_or_default();
        let next = sample(&row, sampling, &mut rng);
        generated.push(next);
        context.push(next);
        if on_token(next).is_break() || i + 1 == sampling.max_new_tokens {
            break;
        }
        logits = if cache.len() < block_size {
            model.forward_cached(tensor(&[next]), &mut cache)
        } else {
            // The position table is full: slide the window and recompute it.
            cache = model.new_cache();
            model.forward_cached(tensor(&context[context.len() - block_size..]), &mut cache)
        };
    }
    Ok(generated)
}

/// Picks a token id from one row of logits.
pub fn sample(logits: &[f32], sampling: &Sampling, rng: &mut impl Rng) -> u32 {
    if sampling.temperature == 0.0 {
        return argmax(logits);
    }
    // (id, logit / temperature), most likely first.
    let mut candidates: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l as f64 / sampling.temperature))
        .collect();
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(k) = sampling.top_k {
        candidates.truncate(k);
    }
    let max = candidates[0].1;
    let mut probs: Vec<f64> = candidates.iter().map(|&(_, l)| (l - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(top_p) = sampling.top_p {
        // Smallest prefix whose probability mass reaches top_p (always at least one token).
        let mut mass = 0.0;
        let keep = probs
            .iter()
            .take_while(|&&p| {
                let before = mass;
                mass += p;
                before < top_p
            })
            .count();
        probs.truncate(keep.max(1));
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut draw: f64 = rng.random();
    for (i, p) in probs.iter().enumerate() {
        if draw < *p {
            return candidates[i].0;
        }
        draw -= p;
    }
    candidates[probs.len() - 1].0
}

fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &l)| if l > best.1 { (i, l) } else { best })
        .0 as u32
}

/// Prints bytes as they come, holding back an incomplete UTF-8 character until its last byte.
pub struct Utf8Stream<W: Write> {
    out: W,
    pending: Vec<u8>,
}

impl Utf8Stream<std::io::Stdout> {
    pub fn stdout() -> Self {
        Self { out: std::io::stdout(), pending: Vec::new() }
    }
}

impl<W: Write> Utf8Stream<W> {
    pub fn new(out: W) -> Self {
        Self { out, pending: Vec::new() }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            // An error with no length is an incomplete character at the end: wait for more.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let ready: Vec<u8> = self.pending.drain(..valid).collect();
        let _ = self.out.write_all(String::from_utf8_lossy(&ready).as_bytes());
        let _ = self.out.flush();
    }

    pub fn finish(mut self) -> W {
        let rest = std::mem::take(&mut self.pending);
        let _ = self.out.write_all(String::from_utf8_lossy(&rest).as_bytes());
        let _ = self.out.flush();
        self.out
    }
}

impl Utf8Stream<Vec<u8>> {
    /// The text written so far, taken out.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Writes out an incomplete character held back (as U+FFFD): the text has ended.
    pub fn flush_incomplete(&mut self) {
        let rest = std::mem::take(&mut self.pending);
        self.out.extend_from_slice(String::from_utf8_lossy(&rest).as_bytes());
    }
}

/// Holds generated text back until it cannot be the start of a stop string, and ends it
/// before the first stop string (which is not printed).
#[derive(Debug, Default)]
pub struct StopStrings {
    stops: Vec<Vec<u8>>,
    text: Vec<u8>,
    /// How much of `text` has been handed out.
    released: usize,
}

impl StopStrings {
    pub fn new(stops: &[String]) -> Self {
        let stops = stops.iter().filter(|s| !s.is_empty()).map(|s| s.as_bytes().to_vec());
        Self { stops: stops.collect(), ..Self::default() }
    }

    /// Adds the bytes of a token; returns the bytes that are safe to print, and whether a
    /// stop string has ended the text.
    pub fn push(&mut self, bytes: &[u8]) -> (&[u8], ControlFlow<()>) {
        let longest = self.stops.iter().map(Vec::len).max().unwrap_or(0);
        // A stop string that ends in the new bytes starts after what was already released.
        let from = self.released;
        self.text.extend_from_slice(bytes);
        let found = self
            .stops
            .iter()
            .filter_map(|stop| find(&self.text[from..], stop).map(|at| from + at))
            .min();
        let (end, flow) = match found {
            Some(at) => (at, ControlFlow::Break(())),
            None => (
                self.text.len().saturating_sub(longest.saturating_sub(1)),
                ControlFlow::Continue(()),
            ),
        };
        let start = self.released;
        self.released = end.max(start);
        (&self.text[start..self.released], flow)
    }

    /// The text held back when generation ended without a stop string.
    pub fn rest(&mut self) -> &[u8] {
        let start = self.released;
        self.released = self.text.len();
        &self.text[start..]
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> Sampling {
        Sampling { max_new_tokens: 1, temperature, top_k, top_p, seed: 0 }
    }

    #[test]
    fn greedy_top_k_and_top_p_restrict_the_choice() {
        let logits = [0.0, 3.0, 1.0, 2.9];
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(sample(&logits, &sampling(0.0, None, None), &mut rng), 1);
        for _ in 0..50 {
            assert_eq!(sample(&logits, &sampling(1.0, Some(1), None), &mut rng), 1);
            let id = sample(&logits, &sampling(1.0, None, Some(0.6)), &mut rng);
            assert!(id == 1 || id == 3, "{id}");
        }
    }

    #[test]
    fn bad_settings_are_rejected_with_the_setting_name() {
        assert!(sampling(-1.0, None, None)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature ="));
        assert!(sampling(1.0, None, Some(1.5))
            .validate()
            .unwrap_err()
            .to_string()
            .contains("top_p ="));
        assert!(sampling(1.0, Some(0), None)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("top_k ="));
        let zero = Sampling { max_new_tokens: 0, ..sampling(1.0, None, None) };
        assert!(zero.validate().unwrap_err().to_string().contains("max_new_tokens ="));
    }

    #[test]
    fn stop_strings_end_the_text_before_them_across_token_boundaries() {
        let run = |stops: &[&str], tokens: &[&str]| {
            let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
            let mut filter = StopStrings::new(&stops);
            let mut printed = Vec::new();
            for token in tokens {
                let (ready, flow) = filter.push(token.as_bytes());
                printed.extend_from_slice(ready);
                if flow.is_break() {
                    return (String::from_utf8(printed).unwrap(), true);
                }
            }
            printed.extend_from_slice(filter.rest());
            (String::from_utf8(printed).unwrap(), false)
        };
        assert_eq!(run(&["\n\n"], &["Hello", "\n", "\nmore"]), ("Hello".into(), true));
        assert_eq!(run(&["END", "\n"], &["a", "bE", "N", "D", "x"]), ("ab".into(), true));
        assert_eq!(run(&["END"], &["a", "bEN", "x"]), ("abENx".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["x"], &["x"]), ("".into(), true));
    }

    #[test]
    fn utf8_stream_waits_for_whole_characters() {
        let mut stream = Utf8Stream::new(Vec::new());
        let e_acute = "é".as_bytes();
        stream.push(&e_acute[..1]);
        stream.push(&e_acute[1..]);
        stream.push(b"!");
        assert_eq!(stream.finish(), "é!".as_bytes());
    }
}
