//! Character-level tokenizer: the vocabulary is the sorted set of characters in the corpus.

use std::collections::{BTreeSet, HashMap};

use super::{Tokenizer, TokenizerError, TokenizerFile};

pub struct CharTokenizer {
    chars: Vec<char>,
    ids: HashMap<char, u32>,
    /// `Some(id)` when unknown characters map to `<unk>` instead of failing.
    unk: Option<u32>,
}

impl CharTokenizer {
    pub fn fit(corpus: &str, allow_unknown: bool) -> Self {
        let chars: Vec<char> = corpus.chars().collect::<BTreeSet<_>>().into_iter().collect();
        Self::from_chars(chars, allow_unknown).expect("a set of chars has no duplicates")
    }

    pub fn from_chars(chars: Vec<char>, unk: bool) -> Result<Self, TokenizerError> {
        let ids: HashMap<char, u32> =
            chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
        if ids.len() != chars.len() {
            return Err(TokenizerError::BadSpec("char vocabulary has duplicate characters".into()));
        }
        let unk = unk.then_some(chars.len() as u32);
        Ok(Self { chars, ids, unk })
    }
}

impl Tokenizer for CharTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        text.chars()
            .enumerate()
            .map(|(position, ch)| match (self.ids.get(&ch), self.unk) {
                (Some(&id), _) => Ok(id),
                (None, Some(unk)) => Ok(unk),
                (None, None) => Err(TokenizerError::UnknownChar { ch, position }),
            })
            .collect()
    }

    fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let text: String = ids
            .iter()
            .map(|&id| self.chars.get(id as usize).copied().unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect();
        text.into_bytes()
    }

    fn vocab_size(&self) -> usize {
        self.chars.len() + usize::from(self.unk.is_some())
    }

    fn to_json(&self) -> serde_json::Value {
        TokenizerFile::Char { chars: self.chars.iter().collect(), unk: self.unk.is_some() }
            .to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sorted_vocab() {
        let tok = CharTokenizer::fit("hello world", false);
        assert_eq!(tok.vocab_size(), 8);
        assert_eq!(tok.encode(" ").unwrap(), vec![0]);
        let ids = tok.encode("world hello").unwrap();
        assert_eq!(tok.decode(&ids), "world hello");
    }

    #[test]
    fn unknown_char_is_named_or_mapped() {
        let strict = CharTokenizer::fit("abc", false);
        let err = strict.encode("abz").unwrap_err().to_string();
        assert!(err.contains("'z'") && err.contains("char 2"), "{err}");
        let lenient = CharTokenizer::fit("abc", true);
        assert_eq!(lenient.encode("abz").unwrap(), vec![0, 1, 3]);
        assert_eq!(lenient.vocab_size(), 4);
    }
}
