//! OpenAI's byte-level BPE encodings through tiktoken-rs; `<|endoftext|>` is allowed in text.

use std::collections::HashSet;

use tiktoken_rs::CoreBPE;

use super::{BpeTokenizer, Tokenizer, TokenizerError, TokenizerFile};

use super::END_OF_TEXT;
use crate::config::TIKTOKEN_ENCODINGS as ENCODINGS;

pub struct TiktokenTokenizer {
    encoding: String,
    bpe: &'static CoreBPE,
    vocab_size: usize,
    /// Ids below `vocab_size` that are no token (gaps before the special tokens).
    gaps: HashSet<u32>,
}

impl TiktokenTokenizer {
    pub fn new(encoding: &str) -> Result<Self, TokenizerError> {
        let bpe: &'static CoreBPE = match encoding {
            "gpt2" => tiktoken_rs::r50k_base_singleton(),
            "cl100k_base" => tiktoken_rs::cl100k_base_singleton(),
            "o200k_base" => tiktoken_rs::o200k_base_singleton(),
            other => {
                return Err(TokenizerError::BadSpec(format!(
                    "unknown tiktoken encoding {other:?}: expected one of {}",
                    ENCODINGS.join(", ")
                )))
            }
        };
        // The special tokens sit at the top of each encoding's id range.
        let vocab_size = bpe
            .special_tokens()
            .into_iter()
            .flat_map(|s| bpe.encode_with_special_tokens(s))
            .max()
            .map_or(0, |id| id as usize + 1);
        let gaps = (0..vocab_size as u32).filter(|&id| !is_token(bpe, id)).collect();
        Ok(Self { encoding: encoding.to_string(), bpe, vocab_size, gaps })
    }

    /// The GPT-2 encoding as a [`BpeTokenizer`] with explicit merges (tiktoken's ranks are
    /// the merge order), e.g. to compare encoders on the same vocabulary.
    pub fn gpt2_as_bpe() -> Result<BpeTokenizer, TokenizerError> {
        let gpt2 = Self::new("gpt2")?;
        let special = gpt2.special_id(END_OF_TEXT).expect("gpt2 has <|endoftext|>");
        let tokens = (0..gpt2.vocab_size as u32).map(|id| gpt2.decode_bytes(&[id])).collect();
        BpeTokenizer::from_ranked_tokens(tokens, vec![(END_OF_TEXT.to_string(), special)])
            .map_err(|reason| TokenizerError::BadSpec(format!("tiktoken gpt2 as BPE: {reason}")))
    }
}

/// Whether `id` decodes. tiktoken-rs exposes no lookup that does not panic on a gap, and
/// its `decode` fails both for gaps and for tokens that are not whole UTF-8 characters.
fn is_token(bpe: &CoreBPE, id: u32) -> bool {
    match bpe.decode(vec![id]) {
        Ok(_) => true,
        Err(e) => e.to_string().starts_with("Unable to decode into a valid UTF-8"),
    }
}

impl Tokenizer for TiktokenTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.bpe.encode(text, &HashSet::from([END_OF_TEXT])).0)
    }

    fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if (id as usize) < self.vocab_size && !self.gaps.contains(&id) {
                bytes.extend(self.bpe._decode_native_and_split(vec![id]).flatten());
            } else {
                bytes.extend_from_slice(char::REPLACEMENT_CHARACTER.to_string().as_bytes());
            }
        }
        bytes
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn to_json(&self) -> serde_json::Value {
        TokenizerFile::Tiktoken { encoding: self.encoding.clone() }.to_json()
    }

    fn special_id(&self, token: &str) -> Option<u32> {
        match self.bpe.encode_with_special_tokens(token).as_slice() {
            [id] if self.bpe.special_tokens().contains(&token) => Some(*id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_round_trip_with_end_of_text() {
        let tok = TiktokenTokenizer::new("gpt2").unwrap();
        assert_eq!(tok.vocab_size(), 50257);
        let text = "Hello, world!<|endoftext|> Ünïcødé";
        let ids = tok.encode(text).unwrap();
        assert!(ids.contains(&50256));
        assert_eq!(tok.decode(&ids), text);
        assert_eq!(tok.encode("Hello").unwrap(), vec![15496]);
    }

    #[test]
    fn every_encoding_loads_and_gaps_decode_to_replacement() {
        let cl100k = TiktokenTokenizer::new("cl100k_base").unwrap();
        assert_eq!(cl100k.vocab_size(), 100277);
        assert!(cl100k.gaps.contains(&100256));
        assert_eq!(cl100k.decode(&[100256, 1_000_000]), "\u{FFFD}\u{FFFD}");
        assert_eq!(TiktokenTokenizer::new("o200k_base").unwrap().vocab_size(), 200019);
    }
}
