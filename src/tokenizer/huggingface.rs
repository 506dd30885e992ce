//! Any Hugging Face `tokenizer.json`, through the `tokenizers` library: Llama-, GPT-4- and
//! SentencePiece-style pipelines, WordPiece and Unigram models, normalizers. kiln's own
//! byte-level BPE (`bpe::hf`) reads GPT-2-style files faster; this serves the rest.

use serde_json::Value;

use super::{StreamDecoder, Tokenizer, TokenizerError};

/// A tokenizer the `tokenizers` library runs from its `tokenizer.json`.
pub struct HuggingFaceTokenizer {
    inner: tokenizers::Tokenizer,
    /// The file as read, written back unchanged into a run.
    json: Value,
    vocab_size: usize,
}

impl HuggingFaceTokenizer {
    /// The tokenizer of a `tokenizer.json`'s JSON; the error is the library's.
    pub fn from_json(json: Value) -> Result<Self, String> {
        let inner =
            tokenizers::Tokenizer::from_bytes(json.to_string()).map_err(|e| e.to_string())?;
        let vocab = inner.get_vocab(true);
        let vocab_size = vocab.values().max().map_or(0, |&id| id as usize + 1);
        if vocab_size == 0 {
            return Err("the vocabulary is empty".into());
        }
        Ok(Self { inner, json, vocab_size })
    }

    fn decode_text(&self, ids: &[u32]) -> String {
        // Ids come from this vocabulary (callers check ranges), so decoding does not fail;
        // were it to, nothing is the honest text.
        self.inner.decode(ids, false).unwrap_or_default()
    }
}

impl Tokenizer for HuggingFaceTokenizer {
    /// Encodes without the post-processor's special tokens (`<s>`, `[CLS]`): a training
    /// corpus is encoded in blocks, and a document separator is the corpus's own.
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode(text, false).map_err(|e| {
            TokenizerError::BadSpec(format!("the tokenizer failed on the text: {e}"))
        })?;
        Ok(encoding.get_ids().to_vec())
    }

    fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        self.decode_text(ids).into_bytes()
    }

    /// The library's own stream decoder: these decoders join tokens with context (a `##`
    /// piece, a leading `▁`, a character spread over byte-fallback tokens), so text is
    /// released once it can no longer change.
    fn stream_decoder<'a>(&'a self, context: &[u32]) -> StreamDecoder<'a> {
        let mut stream = self.inner.decode_stream(false);
        for &id in context {
            let _ = stream.step(id);
        }
        Box::new(move |id| match stream.step(id) {
            Ok(text) => text.unwrap_or_default().into_bytes(),
            Err(_) => self.decode_bytes(&[id]),
        })
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn to_json(&self) -> Value {
        self.json.clone()
    }

    fn special_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}
