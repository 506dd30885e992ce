//! Training byte-level BPE (Sennrich et al.; GPT-2's byte-level variant).
//!
//! 1. Count pre-tokens, in parallel over chunks of text cut at safe points. Special tokens
//!    are cut out first, so no merge spans them.
//! 2. Each distinct pre-token is a word of byte ids with its count. Count adjacent pairs,
//!    weighted by word count, and remember which words hold each pair.
//! 3. Repeatedly merge the most frequent pair — on a tie, the lexicographically greatest
//!    pair of byte strings, as the CS336 reference does — into a new token. Only the words
//!    that hold the pair are rewritten, and only the pair counts they change are updated.
//!    A max-heap finds the next pair; an entry whose count has fallen since it was pushed is
//!    pushed again with the current count when it reaches the top (lazy updates keep the
//!    heap small: only new pairs are pushed during a merge).

use std::fs::File;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use rustc_hash::FxHashMap;

mod merge;

use super::pretokenize::{self, pre_tokens, Segment, SpecialMatcher, TextBlocks};
use super::BpeTokenizer;
use merge::merge;

#[derive(Debug, Clone)]
pub struct BpeTrainOptions {
    /// Total vocabulary: 256 bytes + specials + merges.
    pub vocab_size: usize,
    /// Special tokens, given ids 256, 257, … in this order.
    pub specials: Vec<String>,
    /// Show progress bars.
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BpeTrainError {
    #[error("vocab size {vocab_size} is too small: a byte-level BPE needs at least 256 byte tokens + {specials} special token(s) = {min}")]
    VocabTooSmall { vocab_size: usize, specials: usize, min: usize },
    #[error("special token #{index} is empty or repeated: {token:?}")]
    BadSpecial { index: usize, token: String },
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("special tokens: {0}")]
    Specials(String),
    #[error("no text to train on: {what} has no text outside special tokens")]
    EmptyCorpus { what: String },
}

/// Trains on text in memory.
pub fn train_on_text(text: &str, options: &BpeTrainOptions) -> Result<BpeTokenizer, BpeTrainError> {
    let matcher = check_options(options)?;
    let mut counts = PreTokenCounts::default();
    counts.add(text, &matcher);
    merge(counts, options, "the corpus")
}

/// Trains on the concatenation of files, read in blocks (never whole).
pub fn train_on_files(
    paths: &[PathBuf],
    options: &BpeTrainOptions,
) -> Result<BpeTokenizer, BpeTrainError> {
    let matcher = check_options(options)?;
    let sizes: Vec<u64> = paths
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).map_err(|e| input_err(p, e.to_string())))
        .collect::<Result<_, _>>()?;
    let bar = bar(
        options.progress,
        sizes.iter().sum(),
        "counting pre-tokens {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    );
    let mut counts = PreTokenCounts::default();
    for path in paths {
        let file = File::open(path).map_err(|e| input_err(path, e.to_string()))?;
        let mut blocks = TextBlocks::new(file, 16 << 20);
        loop {
            let block = blocks.next_block().map_err(|e| input_err(path, e.to_string()))?;
            let Some(text) = block else { break };
            counts.add(&text, &matcher);
            bar.inc(text.len() as u64);
        }
    }
    bar.finish_and_clear();
    let what = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    merge(counts, options, &what)
}

fn input_err(path: &Path, reason: String) -> BpeTrainError {
    BpeTrainError::Input { path: path.into(), reason }
}

/// Checks the options; returns the matcher of their special tokens.
fn check_options(options: &BpeTrainOptions) -> Result<SpecialMatcher, BpeTrainError> {
    for (index, token) in options.specials.iter().enumerate() {
        if token.is_empty() || options.specials[..index].contains(token) {
            return Err(BpeTrainError::BadSpecial { index, token: token.clone() });
        }
    }
    let min = 256 + options.specials.len();
    if options.vocab_size < min {
        return Err(BpeTrainError::VocabTooSmall {
            vocab_size: options.vocab_size,
            specials: options.specials.len(),
            min,
        });
    }
    SpecialMatcher::new(&options.specials).map_err(BpeTrainError::Specials)
}

fn bar(show: bool, len: u64, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    ProgressBar::new(len)
        .with_style(ProgressStyle::with_template(template).expect("valid progress template"))
}

/// How often each distinct pre-token occurs.
#[derive(Default)]
struct PreTokenCounts {
    pub(super) counts: FxHashMap<Box<str>, u64>,
}

impl PreTokenCounts {
    /// Counts the pre-tokens of `text` on all threads.
    fn add(&mut self, text: &str, specials: &SpecialMatcher) {
        let chunks = pretokenize::chunks(text, 256 << 10);
        let local = chunks
            .par_iter()
            .fold(FxHashMap::<&str, u64>::default, |mut counts, chunk| {
                for segment in specials.segments(chunk) {
                    if let Segment::Text(text) = segment {
                        for piece in pre_tokens(text) {
                            *counts.entry(piece).or_default() += 1;
                        }
                    }
                }
                counts
            })
            .reduce(FxHashMap::default, |mut a, mut b| {
                if a.len() < b.len() {
                    std::mem::swap(&mut a, &mut b);
                }
                for (piece, n) in b {
                    *a.entry(piece).or_default() += n;
                }
                a
            });
        for (piece, n) in local {
            match self.counts.get_mut(piece) {
                Some(count) => *count += n,
                None => {
                    self.counts.insert(piece.into(), n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;

    fn options(vocab_size: usize) -> BpeTrainOptions {
        BpeTrainOptions { vocab_size, specials: vec!["<|endoftext|>".into()], progress: false }
    }

    /// The textbook algorithm: recount every pair before every merge.
    fn naive_merges(text: &str, specials: &[String], n_merges: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let matcher = SpecialMatcher::new(specials).unwrap();
        let mut words: FxHashMap<Vec<Vec<u8>>, u64> = FxHashMap::default();
        for segment in matcher.segments(text) {
            if let Segment::Text(t) = segment {
                for piece in pre_tokens(t) {
                    *words.entry(piece.bytes().map(|b| vec![b]).collect()).or_default() += 1;
                }
            }
        }
        let mut merges = Vec::new();
        for _ in 0..n_merges {
            let mut pairs: FxHashMap<(Vec<u8>, Vec<u8>), u64> = FxHashMap::default();
            for (word, n) in &words {
                for p in word.windows(2) {
                    *pairs.entry((p[0].clone(), p[1].clone())).or_default() += n;
                }
            }
            let Some((best, _)) = pairs.into_iter().max_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)))
            else {
                break;
            };
            words = words
                .into_iter()
                .map(|(word, n)| {
                    let mut out: Vec<Vec<u8>> = Vec::new();
                    let mut i = 0;
                    while i < word.len() {
                        if i + 1 < word.len() && (&word[i], &word[i + 1]) == (&best.0, &best.1) {
                            out.push([&best.0[..], &best.1[..]].concat());
                            i += 2;
                        } else {
                            out.push(word[i].clone());
                            i += 1;
                        }
                    }
                    (out, n)
                })
                .fold(FxHashMap::default(), |mut acc, (w, n)| {
                    *acc.entry(w).or_default() += n;
                    acc
                });
            merges.push(best);
        }
        merges
    }

    #[test]
    fn incremental_training_equals_the_naive_recount() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/the-verdict.txt"))
                .unwrap();
        let text = format!("{}<|endoftext|>aaaa aaa  baaa\n\n{}", &text[..6000], &text[6000..9000]);
        let opts = options(256 + 1 + 150);
        let fast = train_on_text(&text, &opts).unwrap();
        let fast: Vec<(Vec<u8>, Vec<u8>)> = fast
            .merges()
            .iter()
            .map(|m| {
                (
                    fast.token_bytes(m.left).unwrap().to_vec(),
                    fast.token_bytes(m.right).unwrap().to_vec(),
                )
            })
            .collect();
        assert_eq!(fast, naive_merges(&text, &opts.specials, 150));
    }

    #[test]
    fn layout_is_bytes_then_specials_then_merges() {
        let tok =
            train_on_text("low lower lowest<|endoftext|>newer newest", &options(270)).unwrap();
        assert_eq!(tok.token_bytes(97), Some(&b"a"[..]));
        assert_eq!(tok.special_id("<|endoftext|>"), Some(256));
        assert_eq!(tok.merges()[0].merged, 257);
        assert!(tok.vocab_size() <= 270);
        let ids = tok.encode("lowest<|endoftext|>").unwrap();
        assert_eq!(ids.last(), Some(&256));
        assert!(ids.len() < 7, "{ids:?}");
    }

    #[test]
    fn bad_options_and_inputs_are_named() {
        let err = train_on_text("abc", &options(200)).unwrap_err().to_string();
        assert!(err.contains("vocab size 200") && err.contains("257"), "{err}");
        let err = train_on_text("<|endoftext|>", &options(300)).unwrap_err().to_string();
        assert!(err.contains("no text to train on"), "{err}");
        let err =
            train_on_files(&["no/such/file.txt".into()], &options(300)).unwrap_err().to_string();
        assert!(err.contains("no/such/file.txt"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("bin.dat");
        std::fs::write(&binary, [b'a', b'b', 0xFF, 0xFE]).unwrap();
        let err = train_on_files(&[binary], &options(300)).unwrap_err().to_string();
        assert!(err.contains("bin.dat") && err.contains("offset 2"), "{err}");
    }
}
