//! Translation with a trained encoder-decoder: greedy decoding and beam search over batches
//! of sentences, one decoder step per output token through the KV cache, and BLEU.

pub mod bleu;

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::data::parallel::{encode_source, Specials};
use crate::kernels::KernelBackend;
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
        Self { beam: 1, length_penalty: 0.0, max_len_ratio: 1.5, max_len, batch_size: 64 }
    }

    /// Output tokens allowed for a source of `source_len` tokens.
    fn limit(&self, source_len: usize) -> usize {
        ((self.max_len_ratio * source_len as f64).ceil() as usize + 10).min(self.max_len - 1)
    }
}

/// Translates `sentences`, in batches of similar length; outputs come back in input order.
/// A source longer than the model's positions is cut to fit.
pub fn translate<B: KernelBackend>(
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
        let translator = Translator { model, specials, device };
        let decoded = match decoding.beam {
            0 | 1 => translator.greedy(&batch, decoding),
            _ => translator.beam_search(&batch, decoding),
        };
        for (&i, ids) in chunk.iter().zip(decoded) {
            outputs[i] = tokenizer.decode(&ids).trim().to_string();
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(outputs)
}

/// A seq2seq model decoding batches of token sources on a device.
pub struct Translator<'a, B: KernelBackend> {
    pub model: &'a Seq2Seq<B>,
    pub specials: Specials,
    pub device: &'a B::Device,
}

impl<B: KernelBackend> Translator<'_, B> {
    /// The most likely token at every step, until `<eos>` or the length limit.
    pub fn greedy(&self, sources: &[&[u32]], decoding: &Decoding) -> Vec<Vec<u32>> {
        let (model, specials, device) = (self.model, self.specials, self.device);
        let mut state = self.start(sources);
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

    /// Beam search: `beam` hypotheses per sentence, each step extending all of them by every
    /// token and keeping the best `beam` continuations; one that emits `<eos>` is finished.
    /// A sentence is done once it has `beam` finished hypotheses or reaches its length limit;
    /// its output is the finished one with the best length-normalised score.
    pub fn beam_search(&self, sources: &[&[u32]], decoding: &Decoding) -> Vec<Vec<u32>> {
        let (model, specials, device) = (self.model, self.specials, self.device);
        let (n, k) = (sources.len(), decoding.beam);
        // Row s·k + b of the decoder batch is hypothesis b of sentence s.
        let rows: Vec<i64> = (0..n as i64).flat_map(|s| std::iter::repeat_n(s, k)).collect();
        let mut state =
            self.start(sources).select(Tensor::from_data(TensorData::new(rows, [n * k]), device));
        let mut beams = Beams::new(sources, decoding, specials);
        for step in 0..beams.limits.iter().copied().max().unwrap_or(0) {
            let last = column(&beams.last_tokens(), device);
            let log_probs = log_softmax(model.decode_step(last, &mut state), 1); // [n·k, vocab]
            let vocab = log_probs.dims()[1];
            let scores =
                Tensor::<B, 2>::from_data(TensorData::new(beams.scores(), [n * k, 1]), device);
            let (best, index) =
                (log_probs + scores).reshape([n, k * vocab]).topk_with_indices(2 * k, 1);
            let best: Vec<f32> = crate::model::f32_values(best.into_data());
            let index: Vec<i64> =
                index.into_data().convert::<i64>().into_vec().expect("topk indices read back");
            let (best, index) = (&best, &index);
            let candidates = |s: usize| {
                (0..2 * k).map(move |c| (best[s * 2 * k + c] as f64, index[s * 2 * k + c] as usize))
            };
            let parents: Vec<i64> =
                (0..n).flat_map(|s| beams.advance(s, step, candidates(s), vocab)).collect();
            if beams.done.iter().all(|&d| d) {
                break;
            }
            state = state.select(Tensor::from_data(TensorData::new(parents, [n * k]), device));
        }
        beams.outputs()
    }

    /// Encodes a batch of sources (`[batch, src]`, padded) and starts decoding over it.
    fn start(&self, sources: &[&[u32]]) -> DecoderState<B> {
        let (model, pad, device) = (self.model, self.specials.pad, self.device);
        let width = sources.iter().map(|s| s.len()).max().unwrap_or(1);
        let ids: Vec<i64> = sources
            .iter()
            .flat_map(|s| {
                s.iter().map(|&t| t as i64).chain(std::iter::repeat(pad as i64)).take(width)
            })
            .collect();
        let source =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [sources.len(), width]), device);
        model.start_decoding(model.encode(source))
    }
}

/// `[rows]` → `[rows, 1]` token ids on the device.
fn column<B: Backend>(tokens: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(ids, [tokens.len(), 1]), device)
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

/// The hypotheses of beam search, per sentence.
struct Beams {
    k: usize,
    specials: Specials,
    length_penalty: f64,
    limits: Vec<usize>,
    live: Vec<Vec<Hypothesis>>,
    /// Ended hypotheses with their normalised scores.
    finished: Vec<Vec<(f64, Vec<u32>)>>,
    done: Vec<bool>,
}

impl Beams {
    /// Only the first hypothesis of each sentence is live at the start, so the beam is not
    /// filled with k copies of the same continuation.
    fn new(sources: &[&[u32]], decoding: &Decoding, specials: Specials) -> Self {
        let n = sources.len();
        let empty = Hypothesis { tokens: Vec::new(), log_prob: 0.0 };
        Self {
            k: decoding.beam,
            specials,
            length_penalty: decoding.length_penalty,
            limits: sources.iter().map(|s| decoding.limit(s.len())).collect(),
            live: vec![vec![empty]; n],
            finished: vec![Vec::new(); n],
            done: vec![false; n],
        }
    }

    /// The last token of every row's hypothesis (`<bos>` for rows without one).
    fn last_tokens(&self) -> Vec<u32> {
        let k = self.k;
        (0..self.live.len() * k)
            .map(|r| {
                let hypothesis = self.live[r / k].get(r % k);
                hypothesis.and_then(|h| h.tokens.last().copied()).unwrap_or(self.specials.bos)
            })
            .collect()
    }

    /// Each row's running score, to add to its continuations; rows that hold no live
    /// hypothesis get -inf so that nothing is drawn from them.
    fn scores(&self) -> Vec<f32> {
        let k = self.k;
        (0..self.live.len() * k)
            .map(|r| {
                let hypothesis = self.live[r / k].get(r % k);
                hypothesis.map_or(f32::NEG_INFINITY, |h| h.log_prob as f32)
            })
            .collect()
    }

    fn normalised(&self, log_prob: f64, len: usize) -> f64 {
        normalised(log_prob, len, self.length_penalty)
    }

    /// Sentence `s` after `step` from its best `candidates` (score, row·vocab + token);
    /// returns the decoder rows its `k` rows continue from.
    fn advance(
        &mut self,
        s: usize,
        step: usize,
        candidates: impl Iterator<Item = (f64, usize)>,
        vocab: usize,
    ) -> Vec<i64> {
        let k = self.k;
        let (mut next, mut from) = (Vec::with_capacity(k), Vec::with_capacity(k));
        if !self.done[s] {
            for (score, flat) in candidates {
                if !score.is_finite() || next.len() == k {
                    break;
                }
                let (parent, token) = (flat / vocab, (flat % vocab) as u32);
                let mut tokens = self.live[s][parent].tokens.clone();
                if token == self.specials.eos {
                    let score = self.normalised(score, tokens.len() + 1);
                    self.finished[s].push((score, tokens));
                    continue;
                }
                tokens.push(token);
                next.push(Hypothesis { tokens, log_prob: score });
                from.push(parent);
            }
            let out_of_room = step + 1 >= self.limits[s] || next.is_empty();
            if self.finished[s].len() >= k || out_of_room {
                self.done[s] = true;
                // Out of room: the live hypotheses end here.
                if self.finished[s].is_empty() {
                    let ended: Vec<_> = next
                        .iter()
                        .map(|h| (self.normalised(h.log_prob, h.tokens.len()), h.tokens.clone()))
                        .collect();
                    self.finished[s].extend(ended);
                }
                next.clear();
                from.clear();
            }
        }
        self.live[s] = next;
        // Rows of finished sentences keep decoding something harmless: row s·k.
        (0..k).map(|b| (s * k + from.get(b).copied().unwrap_or(0)) as i64).collect()
    }

    /// Each sentence's best finished hypothesis (or best live one, where none finished).
    fn outputs(self) -> Vec<Vec<u32>> {
        self.finished
            .into_iter()
            .zip(self.live)
            .map(|(ended, live)| {
                let ended = match ended.is_empty() {
                    true => live.into_iter().map(|h| (h.log_prob, h.tokens)).collect(),
                    false => ended,
                };
                ended
                    .into_iter()
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, tokens)| tokens)
                    .unwrap_or_default()
            })
            .collect()
    }
}
