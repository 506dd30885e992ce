//! Decoding many sequences at once through one KV cache, as a server does: a sequence joins
//! the batch as soon as its prompt is read and leaves when it is done, and every step feeds
//! one token of each row through the model together.
//!
//! Each row samples with its own settings and its own seeded RNG, exactly as
//! [`generate`](super::generate) would, so a row's tokens do not depend on its neighbours.

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{sample, Sampling, SamplingError};
use crate::kernels::KernelBackend;
use crate::model::{Gpt, KvCache};

/// The sequences being decoded and their cache, one row each.
pub struct BatchDecoder<'m, B: KernelBackend> {
    model: &'m Gpt<B>,
    cache: KvCache<B>,
    rows: Vec<Row>,
    /// Tokens sampled since it was made.
    sampled: u64,
}

struct Row {
    sampling: Sampling,
    rng: StdRng,
    /// The last token sampled, fed at the next step.
    last: u32,
    sampled: usize,
}

impl<'m, B: KernelBackend> BatchDecoder<'m, B> {
    pub fn new(model: &'m Gpt<B>) -> Self {
        Self { model, cache: model.new_cache(), rows: Vec::new(), sampled: 0 }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Tokens sampled so far, every row's.
    pub fn sampled(&self) -> u64 {
        self.sampled
    }

    /// Reads `prompt`, samples its first token and adds it as the last row. The prompt and
    /// the tokens to sample must fit the model's block together.
    pub fn add(&mut self, prompt: &[u32], sampling: Sampling) -> Result<u32, SamplingError> {
        check_fits(prompt.len(), &sampling, self.model.block_size())?;
        let mut cache = self.model.new_cache();
        let logits = self.model.forward_cached(tokens(prompt, &self.device()), &mut cache);
        let mut rng = StdRng::seed_from_u64(sampling.seed);
        let first = sample(&host_rows(logits), &sampling, &mut rng);
        let batch = std::mem::replace(&mut self.cache, self.model.new_cache());
        self.cache = batch.join(cache);
        self.rows.push(Row { sampling, rng, last: first, sampled: 1 });
        self.sampled += 1;
        Ok(first)
    }

    /// Whether row `row` has sampled all the tokens it asked for.
    pub fn is_full(&self, row: usize) -> bool {
        self.rows.get(row).is_none_or(|r| r.sampled >= r.sampling.max_new_tokens)
    }

    /// Feeds every row's last token and samples the next, in row order. Rows that are
    /// [full](Self::is_full) must have been removed.
    pub fn step(&mut self) -> Vec<u32> {
        if self.rows.is_empty() {
            return Vec::new();
        }
        let last: Vec<u32> = self.rows.iter().map(|r| r.last).collect();
        let input = tokens(&last, &self.device()).reshape([last.len(), 1]);
        let logits = host_rows(self.model.forward_cached(input, &mut self.cache));
        let vocab = logits.len() / self.rows.len();
        self.sampled += self.rows.len() as u64;
        self.rows
            .iter_mut()
            .zip(logits.chunks(vocab))
            .map(|(row, logits)| {
                row.last = sample(logits, &row.sampling, &mut row.rng);
                row.sampled += 1;
                row.last
            })
            .collect()
    }

    /// Keeps the rows for which `keep(row)` is true, in their order.
    pub fn retain(&mut self, keep: impl Fn(usize) -> bool) {
        let kept: Vec<usize> = (0..self.rows.len()).filter(|&r| keep(r)).collect();
        if kept.len() == self.rows.len() {
            return;
        }
        let mut index = 0;
        self.rows.retain(|_| {
            index += 1;
            keep(index - 1)
        });
        let cache = std::mem::replace(&mut self.cache, self.model.new_cache());
        self.cache = cache.retain(&kept);
    }

    fn device(&self) -> B::Device {
        self.model.devices().into_iter().next().unwrap_or_default()
    }
}

/// Refuses a prompt that, with the tokens to sample, does not fit the model's block.
pub fn check_fits(
    prompt: usize,
    sampling: &Sampling,
    block_size: usize,
) -> Result<(), SamplingError> {
    sampling.validate()?;
    if prompt == 0 {
        return Err(SamplingError::EmptyPrompt);
    }
    if prompt + sampling.max_new_tokens > block_size {
        return Err(SamplingError::ContextLength {
            prompt,
            max_new_tokens: sampling.max_new_tokens,
            block_size,
        });
    }
    Ok(())
}

fn tokens<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let data = TensorData::new(ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), [1, ids.len()]);
    Tensor::from_data(data, device)
}

fn host_rows<B: Backend>(logits: Tensor<B, 2>) -> Vec<f32> {
    logits.into_data().convert::<f32>().to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PositionKind;
    use crate::generate::generate;
    use crate::model::GptConfig;

    type B = burn::backend::NdArray<f32>;

    fn sampling(max_new_tokens: usize, temperature: f64, seed: u64) -> Sampling {
        Sampling { max_new_tokens, temperature, top_k: None, top_p: Some(0.9), seed }
    }

    /// Rows that join and leave at different steps sample what each would alone, with every
    /// kind of position embedding.
    #[test]
    fn a_batch_samples_what_each_sequence_would_alone() {
        let prompts: [&[u32]; 4] = [&[1, 2, 3, 4, 5, 6, 7], &[9], &[3, 3, 8, 1], &[5, 4]];
        for positions in [PositionKind::Learned, PositionKind::Sinusoidal, PositionKind::Rope] {
            let model = GptConfig::new(16, 32, 4, 2, 64, 24)
                .with_positions(positions)
                .init::<B>(&Default::default());
            let settings: Vec<Sampling> = (0..4)
                .map(|i| sampling(5 + 3 * i, if i % 2 == 0 { 0.0 } else { 1.0 }, i as u64))
                .collect();
            let alone: Vec<Vec<u32>> = prompts
                .iter()
                .zip(&settings)
                .map(|(p, s)| generate(&model, p, s, |_| {}).unwrap())
                .collect();
            let mut decoder = BatchDecoder::new(&model);
            let mut ids: Vec<usize> = Vec::new();
            let mut out: Vec<Vec<u32>> = vec![Vec::new(); 4];
            // One sequence joins before each of the first four steps.
            for step in 0.. {
                if step < 4 {
                    let first = decoder.add(prompts[step], settings[step].clone()).unwrap();
                    out[step].push(first);
                    ids.push(step);
                }
                let full: Vec<bool> = (0..ids.len()).map(|r| decoder.is_full(r)).collect();
                decoder.retain(|r| !full[r]);
                ids = ids.into_iter().zip(&full).filter(|(_, f)| !**f).map(|(i, _)| i).collect();
                if decoder.is_empty() {
                    break;
                }
                for (&id, token) in ids.iter().zip(decoder.step()) {
                    out[id].push(token);
                }
            }
            assert_eq!(out, alone, "{positions:?}");
        }
    }

    /// The logits of a short row that joined a longer one, one step later, are the row's
    /// own: its left padding changes neither its positions nor what it attends to.
    #[test]
    fn a_joined_rows_logits_are_its_own() {
        let device = Default::default();
        for positions in [PositionKind::Learned, PositionKind::Sinusoidal, PositionKind::Rope] {
            let model =
                GptConfig::new(16, 32, 4, 2, 64, 24).with_positions(positions).init::<B>(&device);
            let prefill = |prompt: &[u32]| {
                let mut cache = model.new_cache();
                model.forward_cached(tokens(prompt, &device), &mut cache);
                cache
            };
            let (long, short) = (prefill(&[1, 2, 3, 4, 5, 6]), prefill(&[9, 3]));
            let mut batch = long.join(short);
            let next = tokens(&[7, 8], &device).reshape([2, 1]);
            let together = host_rows(model.forward_cached(next, &mut batch));
            let mut alone = prefill(&[9, 3]);
            let own = host_rows(model.forward_cached(tokens(&[8], &device), &mut alone));
            let diff = own.iter().zip(&together[16..]).map(|(a, b)| (a - b).abs());
            let diff = diff.fold(0.0, f32::max);
            assert!(diff < 1e-5, "{positions:?}: the joined row's logits differ by {diff}");
        }
    }

    #[test]
    fn a_prompt_and_its_tokens_must_fit_the_block() {
        let model = GptConfig::new(16, 16, 2, 1, 32, 8).init::<B>(&Default::default());
        let mut decoder = BatchDecoder::new(&model);
        let err = decoder.add(&[1; 5], sampling(4, 1.0, 0)).unwrap_err();
        assert!(err.to_string().contains("5 tokens of prompt"), "{err}");
        assert!(decoder.add(&[1; 5], sampling(3, 1.0, 0)).is_ok());
        assert!(matches!(decoder.add(&[], sampling(3, 1.0, 0)), Err(SamplingError::EmptyPrompt)));
    }
}
