//! OpenAI's byte-level BPE encodings through tiktoken-rs; `<|endoftext|>` is allowed in text.

use std::collections::HashSet;

use tiktoken_rs::CoreBPE;

use super::{Tokenizer, TokenizerError, TokenizerFile};

pub const ENCODINGS: &[&str] = &["gpt2", "cl100k_base", "o200k_base"];
use super::END_OF_TEXT;

pub struct TiktokenTokenizer {
    encoding: String,
    bpe: &'static CoreBPE,
    vocab_size: usize,
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
        Ok(Self { encoding: encoding.to_string(), bpe, vocab_size })
    }
}

impl Tokenizer for TiktokenTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self.bpe.encode(text, &HashSet::from([END_OF_TEXT])).0)
    }

    fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        self.bpe._decode_native_and_split(ids.to_vec()).flatten().collect()
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
    fn every_encoding_loads() {
        assert_eq!(TiktokenTokenizer::new("cl100k_base").unwrap().vocab_size(), 100277);
        assert_eq!(TiktokenTokenizer::new("o200k_base").unwrap().vocab_size(), 200019);
    }
}
