//! Step 3 of BPE training: repeatedly merge the most frequent pair into a new token.

use std::collections::BinaryHeap;
use std::rc::Rc;

use rustc_hash::{FxHashMap, FxHashSet};

use super::{bar, BpeTrainError, BpeTrainOptions, PreTokenCounts};
use crate::tokenizer::bpe::{BpeTokenizer, Merge};

struct Word {
    ids: Vec<u32>,
    count: u64,
}

type Pair = (u32, u32);

/// A heap entry: the most frequent pair first, then the greatest (left bytes, right bytes).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    count: u64,
    left: Rc<[u8]>,
    right: Rc<[u8]>,
    pair: Pair,
}

/// The merge loop of step 3.
pub(super) fn merge(
    counts: PreTokenCounts,
    options: &BpeTrainOptions,
    what: &str,
) -> Result<BpeTokenizer, BpeTrainError> {
    let words: Vec<Word> = counts
        .counts
        .into_iter()
        .map(|(piece, count)| Word { ids: piece.bytes().map(u32::from).collect(), count })
        .collect();
    if words.is_empty() {
        return Err(BpeTrainError::EmptyCorpus { what: what.to_string() });
    }
    let mut merger = Merger::new(words, &options.specials);
    let target = options.vocab_size - merger.tokens.len();
    let bar = bar(options.progress, target as u64, "merges {bar:40} {pos}/{len} eta {eta}");
    while merger.tokens.len() < options.vocab_size {
        let Some(top) = merger.most_frequent() else {
            break;
        };
        if merger.apply(top) {
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let tokens = merger.tokens.iter().map(|t| t.to_vec()).collect();
    let specials =
        options.specials.iter().enumerate().map(|(i, s)| (s.clone(), 256 + i as u32)).collect();
    BpeTokenizer::new(tokens, merger.merges, specials, false)
        .map_err(|reason| BpeTrainError::Input { path: what.into(), reason })
}

/// The state of the merge loop: the words as ids, the tokens so far, and every pair's count
/// and the words that hold it, with a heap of candidates by count.
struct Merger {
    words: Vec<Word>,
    tokens: Vec<Rc<[u8]>>,
    ids_of_merged: FxHashMap<Rc<[u8]>, u32>,
    merges: Vec<Merge>,
    pair_counts: FxHashMap<Pair, u64>,
    pair_words: FxHashMap<Pair, FxHashSet<u32>>,
    heap: BinaryHeap<Candidate>,
}

impl Merger {
    fn new(words: Vec<Word>, specials: &[String]) -> Self {
        let mut tokens: Vec<Rc<[u8]>> = (0..=255u8).map(|b| Rc::from(&[b][..])).collect();
        tokens.extend(specials.iter().map(|s| Rc::from(s.as_bytes())));
        let mut pair_counts: FxHashMap<Pair, u64> = FxHashMap::default();
        let mut pair_words: FxHashMap<Pair, FxHashSet<u32>> = FxHashMap::default();
        for (w, word) in words.iter().enumerate() {
            for pair in word.ids.windows(2).map(|p| (p[0], p[1])) {
                *pair_counts.entry(pair).or_default() += word.count;
                pair_words.entry(pair).or_default().insert(w as u32);
            }
        }
        let mut merger = Self {
            words,
            tokens,
            ids_of_merged: FxHashMap::default(),
            merges: Vec::new(),
            pair_counts,
            pair_words,
            heap: BinaryHeap::new(),
        };
        merger.heap = merger
            .pair_counts
            .iter()
            .map(|(&pair, &count)| merger.candidate(pair, count))
            .collect();
        merger
    }

    fn candidate(&self, pair: Pair, count: u64) -> Candidate {
        Candidate {
            count,
            left: self.tokens[pair.0 as usize].clone(),
            right: self.tokens[pair.1 as usize].clone(),
            pair,
        }
    }

    /// The most frequent pair, its count up to date.
    fn most_frequent(&mut self) -> Option<Candidate> {
        loop {
            let top = self.heap.pop()?;
            let current = self.pair_counts.get(&top.pair).copied().unwrap_or(0);
            if current == top.count {
                return Some(top);
            }
            // Counts of existing pairs only fall, and a fall is not pushed: the entry comes
            // back with its count corrected. (A rise always pushes, leaving a stale low entry.)
            if current > 0 && current < top.count {
                self.heap.push(Candidate { count: current, ..top });
            }
        }
    }

    /// Merges `top`'s pair everywhere; true when that made a new token.
    fn apply(&mut self, top: Candidate) -> bool {
        let pair = top.pair;
        let joined: Rc<[u8]> = [&top.left[..], &top.right[..]].concat().into();
        let known = self.ids_of_merged.get(&joined).copied();
        let merged = known.unwrap_or_else(|| {
            self.tokens.push(joined.clone());
            let id = (self.tokens.len() - 1) as u32;
            self.ids_of_merged.insert(joined, id);
            id
        });
        self.merges.push(Merge { left: pair.0, right: pair.1, merged });
        self.pair_counts.remove(&pair);
        let mut deltas: FxHashMap<Pair, i64> = FxHashMap::default();
        for w in self.pair_words.remove(&pair).unwrap_or_default() {
            let word = &mut self.words[w as usize];
            if !rewrite(word, pair, merged, &mut deltas) {
                continue;
            }
            for p in word.ids.windows(2).filter(|p| p[0] == merged || p[1] == merged) {
                self.pair_words.entry((p[0], p[1])).or_default().insert(w);
            }
        }
        for (p, delta) in deltas {
            if delta == 0 || p == pair {
                continue;
            }
            let count = self.pair_counts.entry(p).or_default();
            *count = (*count as i64 + delta) as u64;
            if *count == 0 {
                self.pair_counts.remove(&p);
            } else if delta > 0 {
                let count = *count;
                self.heap.push(self.candidate(p, count));
            }
        }
        known.is_none()
    }
}

/// Replaces each occurrence of `pair` in `word` (left to right) by `merged`, recording the
/// change of every pair count. False when the word does not hold the pair.
fn rewrite(word: &mut Word, pair: Pair, merged: u32, deltas: &mut FxHashMap<Pair, i64>) -> bool {
    let ids = &word.ids;
    if !ids.windows(2).any(|p| (p[0], p[1]) == pair) {
        return false;
    }
    let count = word.count as i64;
    for p in ids.windows(2) {
        *deltas.entry((p[0], p[1])).or_default() -= count;
    }
    let mut out = Vec::with_capacity(ids.len());
    let mut i = 0;
    while i < ids.len() {
        if i + 1 < ids.len() && (ids[i], ids[i + 1]) == pair {
            out.push(merged);
            i += 2;
        } else {
            out.push(ids[i]);
            i += 1;
        }
    }
    for p in out.windows(2) {
        *deltas.entry((p[0], p[1])).or_default() += count;
    }
    word.ids = out;
    true
}
