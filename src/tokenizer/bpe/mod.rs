//! Byte-level BPE: 256 byte tokens, special tokens, then merges learned by [`train`].
//!
//! Text is cut at special tokens, then into GPT-2 pre-tokens; within each pre-token the
//! bytes are merged pair by pair, always the pair with the lowest merge rank (leftmost on a
//! tie), as GPT-2, tiktoken and Hugging Face `tokenizers` do. Files are Hugging Face
//! `tokenizer.json` ([`hf`]), so Python's `tokenizers` reads what kiln writes.

pub mod hf;
pub mod pretokenize;
pub mod train;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use pretokenize::{pre_tokens, Segment, SpecialMatcher};

use super::{Tokenizer, TokenizerError};

/// Pre-tokens longer than this are merged with a heap instead of repeated scans, and are
/// not cached.
const SHORT_PIECE: usize = 32;
/// Texts longer than this are encoded in parallel chunks.
const PARALLEL_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct BpeTokenizer {
    /// The bytes of each token, indexed by id (a special token's bytes are its text).
    tokens: Vec<Vec<u8>>,
    /// The id of each single-byte token.
    byte_ids: [u32; 256],
    /// Merges in rank order: `(left, right)` becomes `merged`.
    merges: Vec<Merge>,
    /// `(left, right)` → `(rank, merged)`.
    ranks: FxHashMap<(u32, u32), (u32, u32)>,
    /// Special tokens and their ids; matched before pre-tokenization, never merged.
    specials: Vec<(String, u32)>,
    special_matcher: SpecialMatcher,
    /// Hugging Face's `ignore_merges`: a pre-token that is itself a token is emitted whole.
    whole_pieces: Option<FxHashMap<Vec<u8>, u32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merge {
    pub left: u32,
    pub right: u32,
    pub merged: u32,
}

impl BpeTokenizer {
    /// A tokenizer from its parts; checks that every id is in range and every merge's
    /// token is the concatenation of its two halves.
    pub fn new(
        tokens: Vec<Vec<u8>>,
        merges: Vec<Merge>,
        specials: Vec<(String, u32)>,
        ignore_merges: bool,
    ) -> Result<Self, String> {
        let n = tokens.len() as u32;
        let mut byte_ids = [u32::MAX; 256];
        let special_ids: Vec<u32> = specials.iter().map(|&(_, id)| id).collect();
        for (id, bytes) in tokens.iter().enumerate() {
            if let [b] = bytes[..] {
                if byte_ids[b as usize] == u32::MAX && !special_ids.contains(&(id as u32)) {
                    byte_ids[b as usize] = id as u32;
                }
            }
        }
        if let Some(b) = byte_ids.iter().position(|&id| id == u32::MAX) {
            return Err(format!(
                "byte 0x{b:02X} has no token; a byte-level BPE needs all 256 bytes"
            ));
        }
        let mut ranks = FxHashMap::default();
        for (rank, m) in merges.iter().enumerate() {
            if m.left >= n || m.right >= n || m.merged >= n {
                return Err(format!("merge {rank} refers to an id outside the vocabulary of {n}"));
            }
            let joined = [&tokens[m.left as usize][..], &tokens[m.right as usize][..]].concat();
            if joined != tokens[m.merged as usize] {
                return Err(format!(
                    "merge {rank}: token {} is not the concatenation of tokens {} and {}",
                    m.merged, m.left, m.right
                ));
            }
            ranks.entry((m.left, m.right)).or_insert((rank as u32, m.merged));
        }
        if let Some((text, id)) = specials.iter().find(|(text, id)| *id >= n || text.is_empty()) {
            return Err(format!(
                "special token {text:?} has id {id}, outside the vocabulary of {n} (or is empty)"
            ));
        }
        let whole_pieces = ignore_merges.then(|| {
            let mut ids = FxHashMap::default();
            for (id, bytes) in tokens.iter().enumerate().rev() {
                if !special_ids.contains(&(id as u32)) {
                    ids.insert(bytes.clone(), id as u32);
                }
            }
            ids
        });
        let texts: Vec<String> = specials.iter().map(|(t, _)| t.clone()).collect();
        let special_matcher = SpecialMatcher::new(&texts)?;
        Ok(Self { tokens, byte_ids, merges, ranks, special_matcher, specials, whole_pieces })
    }

    /// A tokenizer whose ids are merge ranks, as tiktoken's: each multi-byte token is the
    /// merge of the two pieces the earlier merges make of its bytes.
    pub fn from_ranked_tokens(
        tokens: Vec<Vec<u8>>,
        specials: Vec<(String, u32)>,
    ) -> Result<Self, String> {
        let mut tok = Self::new(tokens, Vec::new(), specials, false)?;
        for id in 0..tok.tokens.len() as u32 {
            if tok.tokens[id as usize].len() < 2 || tok.specials.iter().any(|&(_, s)| s == id) {
                continue;
            }
            let mut parts = Vec::new();
            tok.encode_piece(&tok.tokens[id as usize], &mut parts);
            let [left, right] = parts[..] else {
                return Err(format!("token {id} is not the merge of two earlier tokens"));
            };
            tok.ranks.entry((left, right)).or_insert((tok.merges.len() as u32, id));
            tok.merges.push(Merge { left, right, merged: id });
        }
        Ok(tok)
    }

    pub fn merges(&self) -> &[Merge] {
        &self.merges
    }

    pub fn specials(&self) -> &[(String, u32)] {
        &self.specials
    }

    /// The bytes of token `id`.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize).map(Vec::as_slice)
    }

    /// Encodes `text` on the calling thread, reusing `cache` for repeated pre-tokens.
    fn encode_serial<'t>(
        &self,
        text: &'t str,
        cache: &mut FxHashMap<&'t str, Vec<u32>>,
        out: &mut Vec<u32>,
    ) {
        for segment in self.special_matcher.segments(text) {
            match segment {
                Segment::Special(i) => out.push(self.specials[i].1),
                Segment::Text(text) => {
                    for piece in pre_tokens(text) {
                        if let Some(ids) = cache.get(piece) {
                            out.extend_from_slice(ids);
                            continue;
                        }
                        let start = out.len();
                        self.encode_piece(piece.as_bytes(), out);
                        if piece.len() <= SHORT_PIECE {
                            cache.insert(piece, out[start..].to_vec());
                        }
                    }
                }
            }
        }
    }

    /// The ids of one pre-token.
    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(&id) = self.whole_pieces.as_ref().and_then(|w| w.get(piece)) {
            out.push(id);
            return;
        }
        let mut ids: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
        if ids.len() <= SHORT_PIECE {
            self.merge_by_scan(&mut ids);
        } else {
            ids = self.merge_by_heap(&ids);
        }
        out.extend_from_slice(&ids);
    }

    /// Repeatedly merges the lowest-ranked adjacent pair: quadratic, fast for short pieces.
    fn merge_by_scan(&self, ids: &mut Vec<u32>) {
        loop {
            let best = ids
                .windows(2)
                .enumerate()
                .filter_map(|(pos, w)| {
                    self.ranks.get(&(w[0], w[1])).map(|&(rank, merged)| (rank, pos, merged))
                })
                .min();
            let Some((_, pos, merged)) = best else { return };
            ids[pos] = merged;
            ids.remove(pos + 1);
        }
    }

    /// The same merges in O(n log n): a heap of candidate pairs over a linked list of symbols.
    fn merge_by_heap(&self, ids: &[u32]) -> Vec<u32> {
        let n = ids.len();
        let mut id = ids.to_vec();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, id: &[u32], pos: usize, nxt: usize| {
            if nxt < n {
                if let Some(&(rank, _)) = self.ranks.get(&(id[pos], id[nxt])) {
                    heap.push(Reverse((rank, pos)));
                }
            }
        };
        for pos in 0..n.saturating_sub(1) {
            push(&mut heap, &id, pos, pos + 1);
        }
        while let Some(Reverse((rank, pos))) = heap.pop() {
            let right = next[pos];
            if !alive[pos] || right >= n {
                continue;
            }
            match self.ranks.get(&(id[pos], id[right])) {
                Some(&(r, merged)) if r == rank => id[pos] = merged,
                _ => continue,
            }
            alive[right] = false;
            next[pos] = next[right];
            if next[pos] < n {
                prev[next[pos]] = pos;
            }
            if prev[pos] < n {
                push(&mut heap, &id, prev[pos], pos);
            }
            push(&mut heap, &id, pos, next[pos]);
        }
        (0..n).filter(|&i| alive[i]).map(|i| id[i]).collect()
    }

    /// All ids of `text`; long texts are cut at safe points and encoded in parallel.
    pub fn encode_text(&self, text: &str) -> Vec<u32> {
        if text.len() < PARALLEL_BYTES {
            return self.encode_single_thread(text);
        }
        let chunks = pretokenize::chunks(text, PARALLEL_BYTES / 4);
        let parts: Vec<Vec<u32>> = chunks
            .par_chunks(chunks.len().div_ceil(rayon::current_num_threads() * 4).max(1))
            .map(|group| {
                let mut cache = FxHashMap::default();
                let mut out = Vec::new();
                for chunk in group {
                    self.encode_serial(chunk, &mut cache, &mut out);
                }
                out
            })
            .collect();
        parts.concat()
    }

    /// Encodes on the calling thread only (for benchmarks against single-threaded encoders).
    pub fn encode_single_thread(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        self.encode_serial(text, &mut FxHashMap::default(), &mut out);
        out
    }
}

impl Tokenizer for BpeTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.encode_text(text))
    }

    fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.tokens.get(id as usize) {
                Some(token) => bytes.extend_from_slice(token),
                None => bytes.extend_from_slice(char::REPLACEMENT_CHARACTER.to_string().as_bytes()),
            }
        }
        bytes
    }

    fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    fn to_json(&self) -> serde_json::Value {
        hf::to_json(self)
    }

    fn special_id(&self, token: &str) -> Option<u32> {
        self.specials.iter().find(|(text, _)| text == token).map(|&(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes, then `<|endoftext|>`, then merges "ab", "abc" and "aa".
    fn toy() -> BpeTokenizer {
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        tokens.push(b"<|endoftext|>".to_vec());
        tokens.extend([b"ab".to_vec(), b"abc".to_vec(), b"aa".to_vec()]);
        let merges = vec![
            Merge { left: 97, right: 98, merged: 257 },
            Merge { left: 257, right: 99, merged: 258 },
            Merge { left: 97, right: 97, merged: 259 },
        ];
        BpeTokenizer::new(tokens, merges, vec![("<|endoftext|>".into(), 256)], false).unwrap()
    }

    #[test]
    fn merges_apply_by_rank_and_specials_stay_whole() {
        let tok = toy();
        assert_eq!(tok.encode("abc").unwrap(), vec![258]);
        assert_eq!(tok.encode("aaab").unwrap(), vec![259, 257]);
        assert_eq!(tok.encode("abc<|endoftext|>aaa").unwrap(), vec![258, 256, 259, 97]);
        assert_eq!(tok.decode(&[258, 256, 259]), "abc<|endoftext|>aa");
    }

    #[test]
    fn heap_and_scan_agree_on_long_pieces() {
        let tok = toy();
        let long = "aab".repeat(40) + &"a".repeat(77);
        let ids: Vec<u32> = long.bytes().map(|b| b as u32).collect();
        let mut scanned = ids.clone();
        tok.merge_by_scan(&mut scanned);
        assert_eq!(tok.merge_by_heap(&ids), scanned);
    }

    #[test]
    fn streaming_matches_whole_text() {
        let tok = toy();
        let text = "abc aab\n  cab<|endoftext|>\nbaa\n".repeat(20_000);
        let mut streamed = Vec::new();
        let read = crate::tokenizer::encode_blocks(&tok, text.as_bytes(), 4096, |ids, _| {
            streamed.extend_from_slice(ids);
            Ok(())
        })
        .unwrap();
        assert_eq!(read as usize, text.len());
        assert_eq!(streamed, tok.encode_single_thread(&text));
        assert_eq!(tok.encode_text(&text), streamed);
    }

    #[test]
    fn a_merge_must_concatenate_its_halves() {
        let tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).chain([b"xy".to_vec()]).collect();
        let err = BpeTokenizer::new(
            tokens,
            vec![Merge { left: 97, right: 98, merged: 256 }],
            vec![],
            false,
        )
        .unwrap_err();
        assert!(err.contains("merge 0"), "{err}");
    }
}
