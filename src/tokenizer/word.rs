//! Word-level tokenizer as Raschka's `SimpleTokenizerV2` (chapter 2): split on punctuation,
//! `--` and whitespace, keep the punctuation as tokens, map unknown words to `<|unk|>`.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use regex::Regex;

use super::{Tokenizer, TokenizerError, TokenizerFile};

pub const END_OF_TEXT: &str = "<|endoftext|>";
pub const UNKNOWN: &str = "<|unk|>";

/// Where text splits; the captured separators are tokens themselves unless whitespace.
static SPLIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"([,.:;?_!"()']|--|\s)"#).expect("valid regex"));

/// Punctuation that decoding glues to the preceding word.
const GLUED: &[&str] = &[",", ".", ":", ";", "?", "!", "\"", "(", ")", "'"];

pub struct WordTokenizer {
    /// Ids are positions; the last two entries are `<|endoftext|>` and `<|unk|>`.
    words: Vec<String>,
    ids: HashMap<String, u32>,
}

/// The pieces of `text`: words and punctuation, whitespace dropped.
pub fn split_words(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut last = 0;
    for sep in SPLIT.find_iter(text) {
        pieces.push(&text[last..sep.start()]);
        pieces.push(sep.as_str());
        last = sep.end();
    }
    pieces.push(&text[last..]);
    pieces.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

impl WordTokenizer {
    /// Vocabulary: the corpus's words seen at least `min_count` times, sorted, then the two
    /// special tokens.
    pub fn fit(corpus: &str, min_count: usize) -> Self {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for piece in split_words(corpus) {
            *counts.entry(piece).or_default() += 1;
        }
        let words = counts
            .into_iter()
            .filter(|&(w, n)| n >= min_count && w != END_OF_TEXT && w != UNKNOWN)
            .map(|(w, _)| w.to_string())
            .chain([END_OF_TEXT.to_string(), UNKNOWN.to_string()])
            .collect();
        Self::from_words(words).expect("a fitted vocabulary is valid")
    }

    pub fn from_words(words: Vec<String>) -> Result<Self, TokenizerError> {
        let n = words.len();
        if n < 2 || words[n - 2] != END_OF_TEXT || words[n - 1] != UNKNOWN {
            return Err(TokenizerError::BadSpec(format!(
                "word vocabulary must end with {END_OF_TEXT:?} and {UNKNOWN:?}"
            )));
        }
        let ids: HashMap<String, u32> =
            words.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
        if ids.len() != n {
            return Err(TokenizerError::BadSpec("word vocabulary has duplicate entries".into()));
        }
        Ok(Self { words, ids })
    }

    fn unknown_id(&self) -> u32 {
        (self.words.len() - 1) as u32
    }

    fn word(&self, id: u32) -> &str {
        self.words.get(id as usize).map_or(UNKNOWN, String::as_str)
    }
}

impl Tokenizer for WordTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(split_words(text)
            .into_iter()
            .map(|w| self.ids.get(w).copied().unwrap_or(self.unknown_id()))
            .collect())
    }

    /// Words joined by spaces, without a space before punctuation.
    fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut text = String::new();
        for (i, &id) in ids.iter().enumerate() {
            let word = self.word(id);
            if i > 0 && !GLUED.contains(&word) {
                text.push(' ');
            }
            text.push_str(word);
        }
        text.into_bytes()
    }

    fn decode_next(&self, id: u32) -> Vec<u8> {
        let word = self.word(id);
        if GLUED.contains(&word) {
            word.into()
        } else {
            format!(" {word}").into_bytes()
        }
    }

    fn vocab_size(&self) -> usize {
        self.words.len()
    }

    fn to_json(&self) -> serde_json::Value {
        TokenizerFile::Word { words: self.words.clone() }.to_json()
    }

    fn special_id(&self, token: &str) -> Option<u32> {
        (token == END_OF_TEXT).then_some((self.words.len() - 2) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_the_book() {
        let pieces = split_words("Hello, world. Is this-- a test?");
        assert_eq!(pieces, ["Hello", ",", "world", ".", "Is", "this", "--", "a", "test", "?"]);
    }

    #[test]
    fn unknown_words_map_to_unk_and_decoding_glues_punctuation() {
        let tok = WordTokenizer::fit("the cat sat. the dog sat, too!", 1);
        let ids = tok.encode("the bird sat.").unwrap();
        assert_eq!(ids[1], tok.unknown_id());
        assert_eq!(tok.decode(&ids), "the <|unk|> sat.");
    }

    #[test]
    fn min_count_caps_the_vocabulary() {
        let tok = WordTokenizer::fit("a a a b b c", 2);
        assert_eq!(tok.words, ["a", "b", END_OF_TEXT, UNKNOWN]);
        assert_eq!(tok.encode("c").unwrap(), vec![3]);
    }
}
