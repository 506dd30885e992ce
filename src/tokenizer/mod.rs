//! Tokenizers behind one trait, saved with the run as `tokenizer.json` so a run directory is
//! self-contained.

pub mod bpe;
mod char_level;
mod huggingface;
mod tiktoken;
mod word;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{DataSection, TokenizerSpec};

pub use bpe::pretokenize::EncodeStreamError;
pub use bpe::BpeTokenizer;
pub use char_level::CharTokenizer;
pub use huggingface::HuggingFaceTokenizer;
pub use tiktoken::TiktokenTokenizer;
pub use word::{split_words, WordTokenizer, END_OF_TEXT};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("character {ch:?} (U+{code:04X}) at char {position} is not in the vocabulary; train on a corpus that contains it or set data.allow_unknown = true", code = *ch as u32)]
    UnknownChar { ch: char, position: usize },
    #[error("{0}")]
    BadSpec(String),
    #[error("tokenizer file {path}: {reason}")]
    File { path: String, reason: String },
}

/// A text ⇄ token-id mapping.
pub trait Tokenizer: Send + Sync {
    fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError>;
    /// Raw bytes of the tokens; byte-level tokens may split a UTF-8 character.
    fn decode_bytes(&self, ids: &[u32]) -> Vec<u8>;
    fn vocab_size(&self) -> usize;
    /// The contents of `tokenizer.json`: kiln's own form, or Hugging Face's for BPE.
    fn to_json(&self) -> serde_json::Value;

    /// Bytes to append when `id` follows already decoded text (word tokens add a space).
    fn decode_next(&self, id: u32) -> Vec<u8> {
        self.decode_bytes(&[id])
    }

    /// A decoder for the ids that follow `context` (a prompt): called with each id in turn,
    /// it returns the bytes that id adds, so that together they are what decoding the ids
    /// after `context` gives. For tokenizers whose decoding of a token depends on the ones
    /// around it.
    fn stream_decoder<'a>(&'a self, _context: &[u32]) -> StreamDecoder<'a> {
        Box::new(move |id| self.decode_next(id))
    }

    /// The vocabulary's own spelling of `id` (`Ġthe`, `▁the`, `##ing`), where it has one.
    fn token_text(&self, _id: u32) -> Option<String> {
        None
    }

    /// The id of a special token such as `<|endoftext|>`, when the vocabulary has it.
    fn special_id(&self, _token: &str) -> Option<u32> {
        None
    }

    fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }
}

/// See [`Tokenizer::stream_decoder`].
pub type StreamDecoder<'a> = Box<dyn FnMut(u32) -> Vec<u8> + 'a>;

/// How tokenizers fitted on the corpus (`char`, `word`) treat rare and unseen symbols.
#[derive(Debug, Clone, Copy, Default)]
pub struct FitOptions {
    /// `char`: map characters unseen in the corpus to `<unk>` instead of failing.
    pub allow_unknown: bool,
    /// `word`: keep only words seen at least this often (others become `<|unk|>`).
    pub min_count: usize,
}

impl FitOptions {
    /// The options a `[data]` section sets.
    pub fn of(data: &DataSection) -> Self {
        Self { allow_unknown: data.allow_unknown, min_count: data.min_count }
    }
}

/// The tokenizer `spec` names, fitted on `corpus` where its kind needs it.
pub fn build(
    spec: &TokenizerSpec,
    corpus: &str,
    fit: FitOptions,
) -> Result<Box<dyn Tokenizer>, TokenizerError> {
    Ok(match spec {
        TokenizerSpec::Char => Box::new(CharTokenizer::fit(corpus, fit.allow_unknown)),
        TokenizerSpec::Word => Box::new(WordTokenizer::fit(corpus, fit.min_count.max(1))),
        TokenizerSpec::Tiktoken(enc) => Box::new(TiktokenTokenizer::new(enc)?),
        TokenizerSpec::Bpe(path) => load(path)?,
        TokenizerSpec::BpeTrain { vocab_size } => {
            let options = bpe::train::BpeTrainOptions {
                vocab_size: *vocab_size,
                specials: vec![END_OF_TEXT.to_string()],
                progress: true,
            };
            Box::new(
                bpe::train::train_on_text(corpus, &options)
                    .map_err(|e| TokenizerError::BadSpec(e.to_string()))?,
            )
        }
    })
}
/// The on-disk form of a tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TokenizerFile {
    /// Ids are positions in `chars`; with `unk`, id `chars.len()` is `<unk>`.
    Char {
        chars: String,
        unk: bool,
    },
    /// Ids are positions in `words`, which end with `<|endoftext|>` and `<|unk|>`.
    Word {
        words: Vec<String>,
    },
    Tiktoken {
        encoding: String,
    },
}

impl TokenizerFile {
    pub fn into_tokenizer(self) -> Result<Box<dyn Tokenizer>, TokenizerError> {
        Ok(match self {
            Self::Char { chars, unk } => {
                Box::new(CharTokenizer::from_chars(chars.chars().collect(), unk)?)
            }
            Self::Word { words } => Box::new(WordTokenizer::from_words(words)?),
            Self::Tiktoken { encoding } => Box::new(TiktokenTokenizer::new(&encoding)?),
        })
    }
}

/// Encodes a stream in blocks of about 8 MiB, never holding it whole; each block's ids go to
/// `sink` with the number of text bytes they cover. Blocks are cut just after a newline before a visible character, where no
/// tokenizer here joins text across the cut. Returns the bytes read.
pub fn encode_reader(
    tokenizer: &dyn Tokenizer,
    reader: impl std::io::Read,
    sink: impl FnMut(&[u32], usize) -> std::io::Result<()>,
) -> Result<u64, EncodeStreamError> {
    encode_blocks(tokenizer, reader, 8 << 20, sink)
}

pub(crate) fn encode_blocks(
    tokenizer: &dyn Tokenizer,
    reader: impl std::io::Read,
    block: usize,
    mut sink: impl FnMut(&[u32], usize) -> std::io::Result<()>,
) -> Result<u64, EncodeStreamError> {
    let mut blocks = bpe::pretokenize::TextBlocks::new(reader, block);
    while let Some(text) = blocks.next_block()? {
        let ids = tokenizer.encode(&text).map_err(|e| EncodeStreamError::Encode(e.to_string()))?;
        sink(&ids, text.len()).map_err(EncodeStreamError::Sink)?;
    }
    Ok(blocks.bytes_read())
}

impl TokenizerFile {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("tokenizer files serialize")
    }
}

pub fn save(tokenizer: &dyn Tokenizer, path: &Path) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(&tokenizer.to_json()).expect("JSON values serialize");
    crate::files::write_atomic(path, &json)
}

/// Reads a `tokenizer.json`: kiln's own (`"kind"`) or a Hugging Face one (`"model"`).
pub fn load(path: &Path) -> Result<Box<dyn Tokenizer>, TokenizerError> {
    let err = |reason: String| TokenizerError::File { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    from_json(value).map_err(err)
}

/// A Hugging Face `tokenizer.json`: kiln's byte-level BPE where the file is GPT-2's kind (it
/// encodes several times faster), the `tokenizers` library for every other pipeline.
fn hugging_face(value: serde_json::Value) -> Result<Box<dyn Tokenizer>, String> {
    let own = match bpe::hf::from_json(value.clone()) {
        Ok(tokenizer) => return Ok(Box::new(tokenizer)),
        Err(reason) => reason,
    };
    match HuggingFaceTokenizer::from_json(value) {
        Ok(tokenizer) => Ok(Box::new(tokenizer)),
        Err(library) => Err(format!(
            "not a tokenizer.json the tokenizers library reads ({library}); nor one kiln's \
             byte-level BPE reads ({own})"
        )),
    }
}

/// A tokenizer from the JSON of a `tokenizer.json` (see [`load`]).
pub fn from_json(value: serde_json::Value) -> Result<Box<dyn Tokenizer>, String> {
    if value.get("model").is_some() {
        return hugging_face(value);
    }
    if value.get("kind").is_none() {
        return Err(
            "neither a kiln tokenizer (\"kind\") nor a Hugging Face tokenizer.json (\"model\")"
                .into(),
        );
    }
    let file: TokenizerFile = serde_json::from_value(value).map_err(|e| e.to_string())?;
    file.into_tokenizer().map_err(|e| e.to_string())
}
