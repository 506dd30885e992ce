//! Parallel corpora for translation: aligned source/target lines (plain or gzip), encoded
//! with a joint tokenizer, bucketed by length into padded batches ([`batches`]).

mod batches;

use std::io::Read;
use std::path::Path;

use crate::tokenizer::Tokenizer;

pub use batches::{FixedPairs, PairBatches, Pairs, Seq2SeqBatch};

/// The special tokens of a translation vocabulary.
pub const PAD: &str = "<pad>";
pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";

#[derive(Debug, thiserror::Error)]
pub enum ParallelError {
    #[error("{key} = {path:?}: {reason}")]
    File { key: &'static str, path: String, reason: String },
    #[error("{source_key} = {source_path:?} has {sources} lines but {target_key} = {target_path:?} has {targets}: expected one target line per source line")]
    Misaligned {
        source_key: &'static str,
        source_path: String,
        sources: usize,
        target_key: &'static str,
        target_path: String,
        targets: usize,
    },
    #[error("the tokenizer has no {0} token; a translation vocabulary needs <pad>, <bos> and <eos> (data.tokenizer = \"bpe:train:<vocab size>\" adds them)")]
    MissingSpecial(&'static str),
    #[error("{key}: line {line} cannot be encoded: {reason}")]
    Encode { key: &'static str, line: usize, reason: String },
}

/// The lines of a text file, gunzipped when its name ends in `.gz`, without line ends.
pub fn read_lines(key: &'static str, path: &Path) -> Result<Vec<String>, ParallelError> {
    let err =
        |reason: String| ParallelError::File { key, path: path.display().to_string(), reason };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    let read = match path.extension().is_some_and(|e| e == "gz") {
        true => flate2::read::MultiGzDecoder::new(file).read_to_end(&mut bytes),
        false => std::io::BufReader::new(file).read_to_end(&mut bytes),
    };
    read.map_err(|e| err(format!("cannot read it: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        err(format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
    })?;
    let lines: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect();
    if lines.is_empty() {
        return Err(err("the file is empty".into()));
    }
    Ok(lines)
}

/// The aligned (source, target) lines of two files.
pub fn read_pairs(
    files: [(&'static str, &Path); 2],
) -> Result<Vec<(String, String)>, ParallelError> {
    let [(source_key, source_path), (target_key, target_path)] = files;
    let (sources, targets) =
        (read_lines(source_key, source_path)?, read_lines(target_key, target_path)?);
    if sources.len() != targets.len() {
        return Err(ParallelError::Misaligned {
            source_key,
            source_path: source_path.display().to_string(),
            sources: sources.len(),
            target_key,
            target_path: target_path.display().to_string(),
            targets: targets.len(),
        });
    }
    Ok(sources.into_iter().zip(targets).collect())
}

/// The ids of `<pad>`, `<bos>` and `<eos>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specials {
    pub pad: u32,
    pub bos: u32,
    pub eos: u32,
}

impl Specials {
    pub fn of(tokenizer: &dyn Tokenizer) -> Result<Self, ParallelError> {
        let id = |token: &'static str| {
            tokenizer.special_id(token).ok_or(ParallelError::MissingSpecial(token))
        };
        Ok(Self { pad: id(PAD)?, bos: id(BOS)?, eos: id(EOS)? })
    }
}

/// One encoded pair: `source` ends with `<eos>`; `target` is `<bos> … <eos>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairTokens {
    pub source: Vec<u32>,
    pub target: Vec<u32>,
}

impl PairTokens {
    /// Tokens of the longer side, which bound the positions the model needs.
    pub fn len(&self) -> usize {
        self.source.len().max(self.target.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A source sentence as the encoder reads it: its tokens then `<eos>`.
pub fn encode_source(
    tokenizer: &dyn Tokenizer,
    text: &str,
    specials: Specials,
) -> Result<Vec<u32>, String> {
    let mut ids = tokenizer.encode(text).map_err(|e| e.to_string())?;
    ids.push(specials.eos);
    Ok(ids)
}

/// Encodes `pairs`; keys name the files in errors.
pub fn encode_pairs(
    tokenizer: &dyn Tokenizer,
    specials: Specials,
    pairs: &[(String, String)],
    keys: [&'static str; 2],
) -> Result<Vec<PairTokens>, ParallelError> {
    let style =
        indicatif::ProgressStyle::with_template("kiln: encoding {msg} {bar:30} {pos}/{len} pairs")
            .expect("valid progress template");
    let bar =
        indicatif::ProgressBar::new(pairs.len() as u64).with_style(style).with_message(keys[0]);
    let encoded = pairs
        .iter()
        .enumerate()
        .map(|(i, (source, target))| {
            bar.inc(1);
            let source = encode_source(tokenizer, source, specials)
                .map_err(|reason| ParallelError::Encode { key: keys[0], line: i + 1, reason })?;
            let mut ids = vec![specials.bos];
            ids.extend(tokenizer.encode(target).map_err(|e| ParallelError::Encode {
                key: keys[1],
                line: i + 1,
                reason: e.to_string(),
            })?);
            ids.push(specials.eos);
            Ok(PairTokens { source, target: ids })
        })
        .collect();
    bar.finish_and_clear();
    encoded
}
