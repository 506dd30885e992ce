//! The corpus encoded once into a cached token file, split train/val.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::files::{sha256_hex, write_atomic};
use crate::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data.path = {path:?}: {reason}")]
    Source { path: PathBuf, reason: String },
    #[error("data.path = {path:?}: the {split} split has {tokens} tokens, but model.block_size = {block_size} needs at least {need}; use a longer corpus, a smaller block_size or a different data.val_fraction")]
    TooShort { path: PathBuf, split: &'static str, tokens: usize, block_size: usize, need: usize },
    #[error("token cache {path}: {reason}; delete it and train again")]
    Cache { path: PathBuf, reason: String },
    /// Writing the token cache (the error names the file).
    #[error(transparent)]
    Write(std::io::Error),
}

/// The UTF-8 text of a corpus file.
pub fn read_text(path: &Path) -> Result<String, DataError> {
    let err = |reason: String| DataError::Source { path: path.into(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if bytes.is_empty() {
        return Err(err("the file is empty".into()));
    }
    String::from_utf8(bytes).map_err(|e| {
        err(format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
    })
}

/// Where a corpus's tokens are cached: the token file (u16 or u32 little-endian) and its
/// provenance (JSON).
#[derive(Debug, Clone)]
pub struct TokenCache {
    pub tokens: PathBuf,
    pub meta: PathBuf,
}

/// Provenance of `tokens.bin`: reused only when the source and tokenizer are unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TokenFileMeta {
    source: PathBuf,
    source_sha256: String,
    /// SHA-256 of the tokenizer's file.
    tokenizer_sha256: String,
    /// Bytes per token in `tokens.bin`: 2 (u16) when the vocabulary fits, else 4 (u32).
    bytes_per_token: usize,
    tokens: usize,
    /// SHA-256 of `tokens.bin` (absent in caches older than it).
    #[serde(default)]
    tokens_sha256: Option<String>,
}

/// The encoded corpus with its train split (head) and val split (tail).
#[derive(Debug)]
pub struct Corpus {
    pub train: Arc<[u32]>,
    pub val: Arc<[u32]>,
    /// Bytes of source text.
    pub source_bytes: usize,
}

impl Corpus {
    /// Encodes `text` (the contents of `source`), or reuses the cached tokens when they were
    /// made from the same bytes with the same tokenizer, and splits it.
    pub fn prepare(
        source: &Path,
        text: &str,
        tokenizer: &dyn Tokenizer,
        cache: &TokenCache,
        val_fraction: f64,
        block_size: usize,
    ) -> Result<Self, DataError> {
        if text.is_empty() {
            return Err(DataError::Source {
                path: source.into(),
                reason: "the file is empty".into(),
            });
        }
        let bytes = text.as_bytes();
        let meta = TokenFileMeta {
            source: source.into(),
            source_sha256: sha256_hex(bytes),
            tokenizer_sha256: sha256_hex(
                &serde_json::to_vec(&tokenizer.to_json()).expect("JSON values serialize"),
            ),
            bytes_per_token: if tokenizer.vocab_size() <= 1 << 16 { 2 } else { 4 },
            tokens: 0,
            tokens_sha256: None,
        };
        let tokens = match read_cache(cache, &meta, tokenizer.vocab_size())? {
            Some(tokens) => tokens,
            None => {
                let tokens = encode_with_spinner(tokenizer, text).map_err(|e| {
                    DataError::Source { path: source.into(), reason: e.to_string() }
                })?;
                write_cache(cache, TokenFileMeta { tokens: tokens.len(), ..meta }, &tokens)?;
                tokens
            }
        };
        Self::split(tokens, source, val_fraction, block_size, bytes.len())
    }

    /// Encodes `text` without touching any run directory (for `kiln data show`).
    pub fn in_memory(
        source: &Path,
        text: &str,
        tokenizer: &dyn Tokenizer,
        val_fraction: f64,
        block_size: usize,
    ) -> Result<Self, DataError> {
        let tokens = encode_with_spinner(tokenizer, text)
            .map_err(|e| DataError::Source { path: source.into(), reason: e.to_string() })?;
        Self::split(tokens, source, val_fraction, block_size, text.len())
    }

    /// The cached tokens of a finished run (for `eval`), without the source text; every id
    /// must be below `vocab_size`.
    pub fn from_cache(
        cache: &TokenCache,
        val_fraction: f64,
        block_size: usize,
        vocab_size: usize,
    ) -> Result<Self, DataError> {
        let meta_path = cache.meta.clone();
        let cache_err = |reason: String| DataError::Cache { path: meta_path.clone(), reason };
        let meta: TokenFileMeta =
            std::fs::read(&meta_path)
                .map_err(|e| cache_err(e.to_string()))
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| cache_err(e.to_string())))?;
        let tokens = read_tokens(&cache.tokens, &meta, vocab_size)?;
        Self::split(tokens, &meta.source, val_fraction, block_size, 0)
    }

    fn split(
        tokens: Vec<u32>,
        source: &Path,
        val_fraction: f64,
        block_size: usize,
        source_bytes: usize,
    ) -> Result<Self, DataError> {
        let n_val = ((tokens.len() as f64) * val_fraction).round() as usize;
        let n_train = tokens.len() - n_val;
        let need = block_size + 1;
        for (split, len) in [("training", n_train), ("validation", n_val)] {
            if len < need {
                return Err(DataError::TooShort {
                    path: source.into(),
                    split,
                    tokens: len,
                    block_size,
                    need,
                });
            }
        }
        Ok(Self {
            train: Arc::from(&tokens[..n_train]),
            val: Arc::from(&tokens[n_train..]),
            source_bytes,
        })
    }
}

fn encode_with_spinner(
    tokenizer: &dyn Tokenizer,
    text: &str,
) -> Result<Vec<u32>, crate::tokenizer::TokenizerError> {
    let spinner = indicatif::ProgressBar::new_spinner()
        .with_message(format!("encoding corpus ({} bytes)", text.len()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let tokens = tokenizer.encode(text);
    spinner.finish_and_clear();
    tokens
}

fn read_cache(
    cache: &TokenCache,
    wanted: &TokenFileMeta,
    vocab_size: usize,
) -> Result<Option<Vec<u32>>, DataError> {
    let Ok(bytes) = std::fs::read(&cache.meta) else {
        return Ok(None);
    };
    let Ok(meta) = serde_json::from_slice::<TokenFileMeta>(&bytes) else {
        return Ok(None);
    };
    let same = TokenFileMeta {
        tokens: meta.tokens,
        tokens_sha256: meta.tokens_sha256.clone(),
        ..wanted.clone()
    };
    if meta != same {
        return Ok(None);
    }
    read_tokens(&cache.tokens, &meta, vocab_size).map(Some)
}

/// The ids of `tokens.bin`, checked against its metadata and the vocabulary.
fn read_tokens(
    path: &Path,
    meta: &TokenFileMeta,
    vocab_size: usize,
) -> Result<Vec<u32>, DataError> {
    let err = |reason: String| DataError::Cache { path: path.into(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if Some(bytes.len()) != meta.tokens.checked_mul(meta.bytes_per_token) {
        return Err(err(format!(
            "{} bytes, expected {} tokens of {} bytes",
            bytes.len(),
            meta.tokens,
            meta.bytes_per_token
        )));
    }
    if meta.tokens_sha256.as_ref().is_some_and(|expected| *expected != sha256_hex(&bytes)) {
        return Err(err("does not match the SHA-256 recorded when it was written".into()));
    }
    let tokens: Vec<u32> = match meta.bytes_per_token {
        2 => bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect(),
        4 => bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        n => return Err(err(format!("unsupported token width {n}"))),
    };
    if let Some((at, id)) = tokens.iter().enumerate().find(|(_, &id)| id as usize >= vocab_size) {
        return Err(err(format!("token {at} is id {id}, outside the vocabulary of {vocab_size}")));
    }
    Ok(tokens)
}

fn write_cache(cache: &TokenCache, meta: TokenFileMeta, tokens: &[u32]) -> Result<(), DataError> {
    let bytes: Vec<u8> = match meta.bytes_per_token {
        2 => tokens.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect(),
        _ => tokens.iter().flat_map(|&t| t.to_le_bytes()).collect(),
    };
    write_atomic(&cache.tokens, &bytes).map_err(DataError::Write)?;
    let meta = TokenFileMeta { tokens_sha256: Some(sha256_hex(&bytes)), ..meta };
    let json = serde_json::to_vec_pretty(&meta).expect("token metadata serializes");
    write_atomic(&cache.meta, &json).map_err(DataError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::CharTokenizer;

    #[test]
    fn encodes_once_then_reuses_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("corpus.txt");
        std::fs::write(&source, "abcdefghij".repeat(20)).unwrap();
        let run = TokenCache {
            tokens: dir.path().join("tokens.bin"),
            meta: dir.path().join("tokens.json"),
        };
        let tok = CharTokenizer::fit("abcdefghij", false);
        let text = std::fs::read_to_string(&source).unwrap();
        let first = Corpus::prepare(&source, &text, &tok, &run, 0.1, 8).unwrap();
        assert_eq!((first.train.len(), first.val.len()), (180, 20));
        assert_eq!(&first.train[..3], &[0, 1, 2]);
        let cached = Corpus::from_cache(&run, 0.1, 8, tok.vocab_size()).unwrap();
        assert!(Corpus::from_cache(&run, 0.1, 8, 5).is_err(), "ids past the vocabulary");
        assert_eq!(cached.val, first.val);
    }

    #[test]
    fn too_short_corpus_names_the_split_and_block_size() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("tiny.txt");
        let run = TokenCache {
            tokens: dir.path().join("tokens.bin"),
            meta: dir.path().join("tokens.json"),
        };
        let tok = CharTokenizer::fit("abcdefghij", false);
        let err =
            Corpus::prepare(&source, "abcdefghij", &tok, &run, 0.5, 8).unwrap_err().to_string();
        assert!(err.contains("block_size = 8") && err.contains("needs at least 9"), "{err}");
    }
}
