//! Parallel corpora for translation: aligned source/target lines (plain or gzip), encoded
//! with a joint tokenizer, bucketed by length into padded batches.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::loader::{MicroBatches, StopCheck};
use crate::tokenizer::Tokenizer;

/// The special tokens of a translation vocabulary.
pub const PAD: &str = "<pad>";
pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";

#[derive(Debug, thiserror::Error)]
pub enum ParallelError {
    #[error("{key} = {path:?}: {reason}")]
    File {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("{source_key} = {source_path:?} has {sources} lines but {target_key} = {target_path:?} has {targets}: expected one target line per source line")]
    Misaligned {
        source_key: &'static str,
        source_path: String,
        sources: usize,
        target_key: &'static str,
        target_path: String,
        targets: usize,
    },
    #[error("the tokenizer has no {0} token; a translation vocabulary needs <pad>, <bos> and <eos> (data.tokenizer = \"bpe:train:<vocab size>\" adds them)")]
    MissingSpecial(&'static str),
    #[error("{key}: line {line} cannot be encoded: {reason}")]
    Encode {
        key: &'static str,
        line: usize,
        reason: String,
    },
}

/// The lines of a text file, gunzipped when its name ends in `.gz`, without line ends.
pub fn read_lines(key: &'static str, path: &Path) -> Result<Vec<String>, ParallelError> {
    let err = |reason: String| ParallelError::File {
        key,
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    let read = match path.extension().is_some_and(|e| e == "gz") {
        true => flate2::read::MultiGzDecoder::new(file).read_to_end(&mut bytes),
        false => std::io::BufReader::new(file).read_to_end(&mut bytes),
    };
    read.map_err(|e| err(format!("cannot read it: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        err(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    if lines.is_empty() {
        return Err(err("the file is empty".into()));
    }
    Ok(lines)
}

/// The aligned (source, target) lines of two files.
pub fn read_pairs(
    files: [(&'static str, &Path); 2],
) -> Result<Vec<(String, String)>, ParallelError> {
    let [(source_key, source_path), (target_key, target_path)] = files;
    let (sources, targets) = (
        read_lines(source_key, source_path)?,
        read_lines(target_key, target_path)?,
    );
    if sources.len() != targets.len() {
        return Err(ParallelError::Misaligned {
            source_key,
            source_path: source_path.display().to_string(),
            sources: sources.len(),
            target_key,
            target_path: target_path.display().to_string(),
            targets: targets.len(),
        });
    }
    Ok(sources.into_iter().zip(targets).collect())
}

/// The ids of `<pad>`, `<bos>` and `<eos>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specials {
    pub pad: u32,
    pub bos: u32,
    pub eos: u32,
}

impl Specials {
    pub fn of(tokenizer: &dyn Tokenizer) -> Result<Self, ParallelError> {
        let id = |token: &'static str| {
            tokenizer
                .special_id(token)
                .ok_or(ParallelError::MissingSpecial(token))
        };
        Ok(Self {
            pad: id(PAD)?,
            bos: id(BOS)?,
            eos: id(EOS)?,
        })
    }
}

/// One encoded pair: `source` ends with `<eos>`; `target` is `<bos> … <eos>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairTokens {
    pub source: Vec<u32>,
    pub target: Vec<u32>,
}

impl PairTokens {
    /// Tokens of the longer side, which bound the positions the model needs.
    pub fn len(&self) -> usize {
        self.source.len().max(self.target.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A source sentence as the encoder reads it: its tokens then `<eos>`.
pub fn encode_source(
    tokenizer: &dyn Tokenizer,
    text: &str,
    specials: Specials,
) -> Result<Vec<u32>, String> {
    let mut ids = tokenizer.encode(text).map_err(|e| e.to_string())?;
    ids.push(specials.eos);
    Ok(ids)
}

/// Encodes `pairs`; keys name the files in errors.
pub fn encode_pairs(
    tokenizer: &dyn Tokenizer,
    specials: Specials,
    pairs: &[(String, String)],
    keys: [&'static str; 2],
) -> Result<Vec<PairTokens>, ParallelError> {
    let style =
        indicatif::ProgressStyle::with_template("kiln: encoding {msg} {bar:30} {pos}/{len} pairs")
            .expect("valid progress template");
    let bar = indicatif::ProgressBar::new(pairs.len() as u64)
        .with_style(style)
        .with_message(keys[0]);
    let encoded = pairs
        .iter()
        .enumerate()
        .map(|(i, (source, target))| {
            bar.inc(1);
            let source = encode_source(tokenizer, source, specials).map_err(|reason| {
                ParallelError::Encode {
                    key: keys[0],
                    line: i + 1,
                    reason,
                }
            })?;
            let mut ids = vec![specials.bos];
            ids.extend(
                tokenizer
                    .encode(target)
                    .map_err(|e| ParallelError::Encode {
                        key: keys[1],
                        line: i + 1,
                        reason: e.to_string(),
                    })?,
            );
            ids.push(specials.eos);
            Ok(PairTokens {
                source,
                target: ids,
            })
        })
        .collect();
    bar.finish_and_clear();
    encoded
}

/// A batch of padded pairs. `source: [batch, src]`; `target_in` (`<bos> …`) and
/// `target_out` (`… <eos>`): `[batch, tgt]`, the target shifted by one.
#[derive(Debug, Clone)]
pub struct Seq2SeqBatch<B: Backend> {
    pub source: Tensor<B, 2, Int>,
    pub target_in: Tensor<B, 2, Int>,
    pub target_out: Tensor<B, 2, Int>,
    /// Target tokens that are not padding: what the loss averages over.
    pub target_tokens: usize,
    /// The label smoothing the loss applies: the configured one in training, 0 in validation.
    pub label_smoothing: f64,
}

impl<B: Backend> Seq2SeqBatch<B> {
    pub fn new(pairs: &[&PairTokens], pad: u32, device: &B::Device) -> Self {
        let src = pairs.iter().map(|p| p.source.len()).max().unwrap_or(1);
        let tgt = pairs.iter().map(|p| p.target.len() - 1).max().unwrap_or(1);
        let padded = |ids: &[u32], len: usize| {
            ids.iter()
                .map(|&t| t as i64)
                .chain(std::iter::repeat(pad as i64))
                .take(len)
                .collect::<Vec<_>>()
        };
        let tensor = |rows: Vec<Vec<i64>>, len: usize| {
            Tensor::from_data(TensorData::new(rows.concat(), [pairs.len(), len]), device)
        };
        let source = pairs.iter().map(|p| padded(&p.source, src)).collect();
        let target_in = pairs
            .iter()
            .map(|p| padded(&p.target[..p.target.len() - 1], tgt))
            .collect();
        let target_out = pairs.iter().map(|p| padded(&p.target[1..], tgt)).collect();
        Self {
            source: tensor(source, src),
            target_in: tensor(target_in, tgt),
            target_out: tensor(target_out, tgt),
            target_tokens: pairs.iter().map(|p| p.target.len() - 1).sum(),
            label_smoothing: 0.0,
        }
    }
}

/// Pairs of similar length, so batches hold little padding: each pass over the data
/// shuffles the pairs, sorts them by length within pools of 100 batches, cuts the pools into
/// batches and shuffles the batches. A pass depends only on the seed and its number.
#[derive(Clone)]
pub struct PairBatches {
    pairs: Arc<[PairTokens]>,
    batch_size: usize,
    pad: u32,
    seed: u64,
    label_smoothing: f64,
}

const POOL_BATCHES: usize = 100;

impl PairBatches {
    pub fn new(pairs: Arc<[PairTokens]>, batch_size: usize, pad: u32, seed: u64) -> Self {
        Self {
            pairs,
            batch_size,
            pad,
            seed,
            label_smoothing: 0.0,
        }
    }

    pub fn with_label_smoothing(self, label_smoothing: f64) -> Self {
        Self {
            label_smoothing,
            ..self
        }
    }

    /// Micro-batches in one pass over the pairs.
    pub fn per_pass(&self) -> usize {
        let pool = POOL_BATCHES * self.batch_size;
        let full = self.pairs.len() / pool * POOL_BATCHES;
        full + (self.pairs.len() % pool).div_ceil(self.batch_size)
    }

    /// The pair indices of every batch of pass `pass`.
    pub fn pass(&self, pass: usize) -> Vec<Vec<usize>> {
        let mut rng = StdRng::seed_from_u64(super::windows::mix(self.seed ^ 0xB0C4E7, pass as u64));
        let mut order: Vec<usize> = (0..self.pairs.len()).collect();
        order.shuffle(&mut rng);
        let mut batches: Vec<Vec<usize>> = Vec::with_capacity(self.per_pass());
        for pool in order.chunks_mut(POOL_BATCHES * self.batch_size) {
            pool.sort_by_key(|&i| self.pairs[i].len());
            batches.extend(pool.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        batches.shuffle(&mut rng);
        batches
    }
}

impl<B: Backend> MicroBatches<B> for PairBatches {
    type Batch = Seq2SeqBatch<B>;
    fn range(
        &self,
        first: usize,
        count: usize,
        device: &B::Device,
    ) -> Box<dyn DataLoaderIterator<Seq2SeqBatch<B>>> {
        let per_pass = self.per_pass().max(1);
        let mut pass_cache: Option<(usize, Vec<Vec<usize>>)> = None;
        let indices: Vec<Vec<usize>> = (first..first + count)
            .map(|index| {
                let pass = index / per_pass;
                if pass_cache.as_ref().is_none_or(|(p, _)| *p != pass) {
                    pass_cache = Some((pass, self.pass(pass)));
                }
                pass_cache
                    .as_ref()
                    .map(|(_, batches)| batches[index % per_pass].clone())
                    .unwrap_or_default()
            })
            .collect();
        let mut batches = PairIter::new(self.pairs.clone(), indices, self.pad, device.clone());
        batches.label_smoothing = self.label_smoothing;
        Box::new(batches)
    }
    fn batch_size(&self) -> usize {
        self.batch_size
    }
    fn seed(&self) -> u64 {
        self.seed
    }
}

/// Every pair of a split, sorted by length and cut into batches: validation and evaluation
/// see the same batches every time.
#[derive(Clone)]
pub struct FixedPairs<B: Backend> {
    pairs: Arc<[PairTokens]>,
    batches: Arc<[Vec<usize>]>,
    pad: u32,
    skip_when: Option<StopCheck>,
    device: B::Device,
}

impl<B: Backend> FixedPairs<B> {
    /// At most `max_batches` batches (0: all) of `batch_size` pairs.
    pub fn new(
        pairs: Arc<[PairTokens]>,
        batch_size: usize,
        max_batches: usize,
        pad: u32,
        device: B::Device,
    ) -> Self {
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by_key(|&i| pairs[i].len());
        let mut batches: Vec<Vec<usize>> = order
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect();
        if max_batches > 0 && batches.len() > max_batches {
            // Spread over all lengths rather than the shortest sentences only.
            let step = batches.len() as f64 / max_batches as f64;
            batches = (0..max_batches)
                .map(|i| batches[(i as f64 * step) as usize].clone())
                .collect();
        }
        Self {
            pairs,
            batches: batches.into(),
            pad,
            skip_when: None,
            device,
        }
    }

    pub fn skip_when(self, stop: StopCheck) -> Self {
        Self {
            skip_when: Some(stop),
            ..self
        }
    }

    /// All batches, for evaluation outside the Learner.
    pub fn batches(&self) -> PairIter<B> {
        PairIter::new(
            self.pairs.clone(),
            self.batches.to_vec(),
            self.pad,
            self.device.clone(),
        )
    }
}

impl<B: Backend> DataLoader<B, Seq2SeqBatch<B>> for FixedPairs<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<Seq2SeqBatch<B>> + 'a> {
        let skip = self.skip_when.as_ref().is_some_and(|stop| stop());
        let batches = if skip {
            Vec::new()
        } else {
            self.batches.to_vec()
        };
        Box::new(PairIter::new(
            self.pairs.clone(),
            batches,
            self.pad,
            self.device.clone(),
        ))
    }

    fn num_items(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, Seq2SeqBatch<B>>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, Seq2SeqBatch<B>>> {
        let end = end.min(self.batches.len());
        let batches: Vec<Vec<usize>> = self.batches[start.min(end)..end].to_vec();
        Arc::new(Self {
            batches: batches.into(),
            ..self.clone()
        })
    }
}

/// Batches of pairs given by index.
pub struct PairIter<B: Backend> {
    pairs: Arc<[PairTokens]>,
    batches: std::vec::IntoIter<Vec<usize>>,
    pad: u32,
    device: B::Device,
    label_smoothing: f64,
    done: usize,
    total: usize,
}

impl<B: Backend> PairIter<B> {
    fn new(
        pairs: Arc<[PairTokens]>,
        batches: Vec<Vec<usize>>,
        pad: u32,
        device: B::Device,
    ) -> Self {
        let total = batches.iter().map(Vec::len).sum();
        Self {
            pairs,
            batches: batches.into_iter(),
            pad,
            device,
            label_smoothing: 0.0,
            done: 0,
            total,
        }
    }
}

impl<B: Backend> Iterator for PairIter<B> {
    type Item = Seq2SeqBatch<B>;
    fn next(&mut self) -> Option<Seq2SeqBatch<B>> {
        let indices = self.batches.next()?;
        self.done += indices.len();
        let pairs: Vec<&PairTokens> = indices.iter().map(|&i| &self.pairs[i]).collect();
        Some(Seq2SeqBatch {
            label_smoothing: self.label_smoothing,
            ..Seq2SeqBatch::new(&pairs, self.pad, &self.device)
        })
    }
}

impl<B: Backend> DataLoaderIterator<Seq2SeqBatch<B>> for PairIter<B> {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::NdArray<f32>;

    fn pairs(n: usize) -> Arc<[PairTokens]> {
        (0..n)
            .map(|i| PairTokens {
                source: vec![5; 1 + i % 7],
                target: vec![1; 2 + i % 5],
            })
            .collect::<Vec<_>>()
            .into()
    }

    #[test]
    fn batches_pad_and_shift_the_target() {
        let a = PairTokens {
            source: vec![7, 8, 2],
            target: vec![1, 9, 2],
        };
        let b = PairTokens {
            source: vec![7, 2],
            target: vec![1, 9, 9, 2],
        };
        let batch = Seq2SeqBatch::<B>::new(&[&a, &b], 0, &Default::default());
        assert_eq!(
            batch.source.into_data().to_vec::<i64>().unwrap(),
            vec![7, 8, 2, 7, 2, 0]
        );
        assert_eq!(
            batch.target_in.into_data().to_vec::<i64>().unwrap(),
            vec![1, 9, 0, 1, 9, 9]
        );
        assert_eq!(
            batch.target_out.into_data().to_vec::<i64>().unwrap(),
            vec![9, 2, 0, 9, 9, 2]
        );
        assert_eq!(batch.target_tokens, 5);
    }

    #[test]
    fn every_pass_serves_every_pair_once_in_its_own_order() {
        let batches = PairBatches::new(pairs(1234), 8, 0, 3);
        let (first, second) = (batches.pass(0), batches.pass(1));
        assert_eq!(first.len(), batches.per_pass());
        let mut seen: Vec<usize> = first.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1234).collect::<Vec<_>>());
        assert_ne!(first, second);
        assert_eq!(first, PairBatches::new(pairs(1234), 8, 0, 3).pass(0));
    }
}
