//! Translation with a trained encoder-decoder: greedy decoding and beam search over batches
//! of sentences, one decoder step per output token through the KV cache, and BLEU.

pub mod bleu;

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::data::parallel::{encode_source, Specials};
use crate::model::{DecoderState, Seq2Seq};
use crate::tokenizer::Tokenizer;

/// How outputs are searched for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoding {
    /// Hypotheses kept per sentence; 1 is greedy decoding.
    pub beam: usize,
    /// GNMT's length penalty α: a finished hypothesis scores `log P / ((5 + len) / 6)^α`, so
    /// larger α favours longer outputs (0: plain log-probability).
    pub length_penalty: f64,
    /// Outputs stop at `max_len_ratio · source tokens + 10` tokens (and the model's positions).
    pub max_len_ratio: f64,
    /// Longest output the model's positions allow, `<bos>` included.
    pub max_len: usize,
    /// Sentences decoded together.
    pub batch_size: usize,
}

impl Decoding {
    pub fn greedy(max_len: usize) -> Self {
        Self {
            beam: 1,
            length_penalty: 0.0,
            max_len_ratio: 1.5,
            max_len,
            batch_size: 64,
        }
    }

    /// Output tokens allowed for a source of `source_len` tokens.
    fn limit(&self, source_len: usize) -> usize {
        ((self.max_len_ratio * source_len as f64).ceil() as usize + 10).min(self.max_len - 1)
    }
}

/// Translates `sentences`, in batches of similar length; outputs come back in input order.
/// A source longer than the model's positions is cut to fit.
pub fn translate<B: Backend>(
    model: &Seq2Seq<B>,
    tokenizer: &dyn Tokenizer,
    sentences: &[&str],
    decoding: &Decoding,
    device: &B::Device,
) -> Result<Vec<String>> {
    let specials = Specials::of(tokenizer)?;
    let mut sources = Vec::with_capacity(sentences.len());
    for (i, sentence) in sentences.iter().enumerate() {
        let mut ids = encode_source(tokenizer, sentence, specials)
            .map_err(|e| anyhow::anyhow!("sentence {}: {e}", i + 1))?;
        if ids.len() > model.max_len() {
            ids.truncate(model.max_len() - 1);
            ids.push(specials.eos);
        }
        sources.push(ids);
    }
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| sources[i].len());
    let mut outputs = vec![String::new(); sources.len()];
    let bar = indicatif::ProgressBar::new(sources.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "kiln: translating {bar:30} {pos}/{len} sentences ({elapsed})",
        )
        .expect("valid progress template"),
    );
    for chunk in order.chunks(decoding.batch_size.max(1)) {
        let batch: Vec<&[u32]> = chunk.iter().map(|&i| sources[i].as_slice()).collect();
        let decoded = match decoding.beam {
            0 | 1 => greedy(model, &batch, specials, decoding, device),
            _ => beam_search(model, &batch, specials, decoding, device),
        };
        for (&i, ids) in chunk.iter().zip(decoded) {
            outputs[i] = tokenizer.decode(&ids).trim().to_string();
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(outputs)
}

/// Encodes a batch of sources (`[batch, src]`, padded) and starts decoding over it.
fn start<B: Backend>(
    model: &Seq2Seq<B>,
    sources: &[&[u32]],
    pad: u32,
    device: &B::Device,
) -> DecoderState<B> {
    let width = sources.iter().map(|s| s.len()).max().unwrap_or(1);
    let ids: Vec<i64> = sources
        .iter()
        .flat_map(|s| {
            s.iter()
                .map(|&t| t as i64)
                .chain(std::iter::repeat(pad as i64))
                .take(width)
        })
        .collect();
    let source =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [sources.len(), width]), device);
    model.start_decoding(model.encode(source))
}

/// `[rows]` → `[rows, 1]` token ids on the device.
fn column<B: Backend>(tokens: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(ids, [tokens.len(), 1]), device)
}

/// The most likely token at every step, until `<eos>` or the length limit.
pub fn greedy<B: Backend>(
    model: &Seq2Seq<B>,
    sources: &[&[u32]],
    specials: Specials,
    decoding: &Decoding,
    device: &B::Device,
) -> Vec<Vec<u32>> {
    let mut state = start(model, sources, specials.pad, device);
    let limits: Vec<usize> = sources.iter().map(|s| decoding.limit(s.len())).collect();
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); sources.len()];
    let mut done = vec![false; sources.len()];
    let mut last = vec![specials.bos; sources.len()];
    for step in 0..limits.iter().copied().max().unwrap_or(0) {
        let logits = model.decode_step(column(&last, device), &mut state);
        last = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .expect("argmax ids read back")
            .into_iter()
            .map(|t| t as u32)
            .collect();
        for (row, &token) in last.iter().enumerate() {
            if done[row] {
                continue;
            }
            match token == specials.eos || step >= limits[row] {
                true => done[row] = true,
                false => outputs[row].push(token),
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    outputs
}

/// A partial output of beam search: its tokens and their summed log-probability.
#[derive(Debug, Clone)]
struct Hypothesis {
    tokens: Vec<u32>,
    log_prob: f64,
}

/// GNMT's length-normalised score (Wu et al. 2016): `log P / ((5 + len) / 6)^α`.
fn normalised(log_prob: f64, len: usize, alpha: f64) -> f64 {
    log_prob / ((5.0 + len as f64) / 6.0).powf(alpha)
}

/// Beam search: `beam` hypotheses per sentence, each step extending all of them by every
/// token and keeping the best `beam` continuations; one that emits `<eos>` is finished.
/// A sentence is done once it has `beam` finished hypotheses or reaches its length limit;
/// its output is the finished one with the best length-normalised score.
pub fn beam_search<B: Backend>(
    model: &Seq2Seq<B>,
    sources: &[&[u32]],
    specials: Specials,
    decoding: &Decoding,
    device: &B::Device,
) -> Vec<Vec<u32>> {
    let (n, k) = (sources.len(), decoding.beam);
    // Row s·k + b of the decoder batch is hypothesis b of sentence s.
    let rows: Vec<i64> = (0..n as i64)
        .flat_map(|s| std::iter::repeat_n(s, k))
        .collect();
    let mut state = start(model, sources, specials.pad, device)
        .select(Tensor::from_data(TensorData::new(rows, [n * k]), device));
    let limits: Vec<usize> = sources.iter().map(|s| decoding.limit(s.len())).collect();
    // Only the first hypothesis of each sentence is live at the start, so the beam is not
    // filled with k copies of the same continuation.
    let mut live: Vec<Vec<Hypothesis>> = vec![
        vec![Hypothesis {
            tokens: Vec::new(),
            log_prob: 0.0
        }];
        n
    ];
    let mut finished: Vec<Vec<(f64, Vec<u32>)>> = vec![Vec::new(); n];
    let mut done = vec![false; n];

    for step in 0..limits.iter().copied().max().unwrap_or(0) {
        let last: Vec<u32> = (0..n * k)
            .map(|r| {
                live[r / k]
                    .get(r % k)
                    .and_then(|h| h.tokens.last().copied())
                    .unwrap_or(specials.bos)
            })
            .collect();
        let log_probs = log_softmax(model.decode_step(column(&last, device), &mut state), 1); // [n·k, vocab]
        let vocab = log_probs.dims()[1];
        // Each row's running score added to its continuations; rows that hold no live
        // hypothesis get -inf so that nothing is drawn from them.
        let scores: Vec<f32> = (0..n * k)
            .map(|r| {
                live[r / k]
                    .get(r % k)
                    .map_or(f32::NEG_INFINITY, |h| h.log_prob as f32)
            })
            .collect();
        let scores = Tensor::<B, 2>::from_data(TensorData::new(scores, [n * k, 1]), device);
        let (best, index) = (log_probs + scores)
            .reshape([n, k * vocab])
            .topk_with_indices(2 * k, 1);
        let best: Vec<f32> = crate::model::f32_values(best.into_data());
        let index: Vec<i64> = index
            .into_data()
            .convert::<i64>()
            .into_vec()
            .expect("topk indices read back");

        let mut parents: Vec<i64> = Vec::with_capacity(n * k);
        for s in 0..n {
            let mut next: Vec<Hypothesis> = Vec::with_capacity(k);
            let mut from: Vec<usize> = Vec::with_capacity(k);
            if !done[s] {
                for c in 0..2 * k {
                    let (score, flat) = (best[s * 2 * k + c] as f64, index[s * 2 * k + c] as usize);
                    if !score.is_finite() || next.len() == k {
                        break;
                    }
                    let (parent, token) = (flat / vocab, (flat % vocab) as u32);
                    let mut tokens = live[s][parent].tokens.clone();
                    if token == specials.eos {
                        finished[s].push((
                            normalised(score, tokens.len() + 1, decoding.length_penalty),
                            tokens,
                        ));
                        continue;
                    }
                    tokens.push(token);
                    next.push(Hypothesis {
                        tokens,
                        log_prob: score,
                    });
                    from.push(parent);
                }
                if finished[s].len() >= k || step + 1 >= limits[s] || next.is_empty() {
                    done[s] = true;
                    // Out of room: the live hypotheses end here.
                    if finished[s].is_empty() {
                        finished[s].extend(next.iter().map(|h| {
                            (
                                normalised(h.log_prob, h.tokens.len(), decoding.length_penalty),
                                h.tokens.clone(),
                            )
                        }));
                    }
                    next.clear();
                    from.clear();
                }
            }
            // Rows of finished sentences keep decoding something harmless: row s·k.
            parents.extend((0..k).map(|b| (s * k + from.get(b).copied().unwrap_or(0)) as i64));
            live[s] = next;
        }
        if done.iter().all(|&d| d) {
            break;
        }
        state = state.select(Tensor::from_data(TensorData::new(parents, [n * k]), device));
    }
    finished
        .into_iter()
        .zip(live)
        .map(|(ended, live)| {
            let ended = if ended.is_empty() {
                live.into_iter().map(|h| (h.log_prob, h.tokens)).collect()
            } else {
                ended
            };
            ended
                .into_iter()
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, tokens)| tokens)
                .unwrap_or_default()
        })
        .collect()
}
