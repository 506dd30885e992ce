//! Hugging Face `tokenizer.json` for byte-level BPE, both ways.
//!
//! Byte-level files spell each byte as a printable character (GPT-2's `bytes_to_unicode`:
//! printable Latin-1 bytes stand for themselves, the rest map to U+0100 onwards, so a space
//! is `Ġ`). Merges are written as `"left right"`, which every `tokenizers` version reads;
//! both that form and `["left", "right"]` are read.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{BpeTokenizer, Merge};

/// GPT-2's byte → character table.
fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100..U+0143 are chars")
        };
    }
    table
}

fn to_chars(bytes: &[u8], table: &[char; 256]) -> String {
    bytes.iter().map(|&b| table[b as usize]).collect()
}

/// The `tokenizer.json` of `tok`: ByteLevel pre-tokenizer and decoder, BPE model, special
/// tokens as added tokens.
pub fn to_json(tok: &BpeTokenizer) -> Value {
    let table = byte_chars();
    let spelled: Vec<String> = tok.tokens.iter().map(|t| to_chars(t, &table)).collect();
    let mut vocab = Map::new();
    for (id, text) in spelled.iter().enumerate() {
        let text = match tok.specials.iter().find(|&&(_, s)| s == id as u32) {
            Some((special, _)) => special.clone(),
            None => text.clone(),
        };
        vocab.insert(text, json!(id));
    }
    let merges: Vec<String> = tok
        .merges
        .iter()
        .map(|m| format!("{} {}", spelled[m.left as usize], spelled[m.right as usize]))
        .collect();
    let added: Vec<Value> = tok
        .specials
        .iter()
        .map(|(content, id)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": tok.whole_pieces.is_some(),
            "vocab": vocab,
            "merges": merges,
        },
    })
}

#[derive(Deserialize)]
struct HfFile {
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    #[serde(default)]
    normalizer: Option<Value>,
    #[serde(default)]
    pre_tokenizer: Option<Value>,
    model: HfModel,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
}

#[derive(Deserialize)]
struct HfModel {
    #[serde(default)]
    dropout: Option<f64>,
    #[serde(default)]
    continuing_subword_prefix: Option<String>,
    #[serde(default)]
    end_of_word_suffix: Option<String>,
    #[serde(default)]
    ignore_merges: bool,
    #[serde(default)]
    vocab: std::collections::HashMap<String, u32>,
    #[serde(default)]
    merges: Vec<HfMerge>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum HfMerge {
    Joined(String),
    Pair([String; 2]),
}

/// Reads a Hugging Face byte-level BPE `tokenizer.json`; the error says what does not fit.
pub fn from_json(value: Value) -> Result<BpeTokenizer, String> {
    let kind = value.pointer("/model/type").and_then(Value::as_str).unwrap_or("(none)").to_string();
    if kind != "BPE" {
        return Err(format!(
            "model type {kind:?}: kiln reads byte-level BPE tokenizers only (model.type = \"BPE\")"
        ));
    }
    let file: HfFile = serde_json::from_value(value)
        .map_err(|e| format!("not a Hugging Face tokenizer.json: {e}"))?;
    check_pipeline(&file)?;
    check_model(&file.model)?;
    let specials: Vec<(String, u32)> =
        file.added_tokens.iter().map(|t| (t.content.clone(), t.id)).collect();
    let tokens = token_bytes(&file.model, &specials)?;
    let merges = merges(&file.model)?;
    BpeTokenizer::new(tokens, merges, specials, file.model.ignore_merges)
}

/// No BPE dropout and no word prefixes or suffixes, which byte-level BPE does not use.
fn check_model(model: &HfModel) -> Result<(), String> {
    if model.dropout.is_some_and(|p| p > 0.0) {
        return Err(
            "model.dropout is set; kiln encodes deterministically and does not support BPE dropout"
                .into(),
        );
    }
    for (key, value) in [
        ("continuing_subword_prefix", &model.continuing_subword_prefix),
        ("end_of_word_suffix", &model.end_of_word_suffix),
    ] {
        if value.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(format!("model.{key} = {value:?}: byte-level BPE files have none"));
        }
    }
    Ok(())
}

/// Every id's bytes: vocab entries spelled in byte-level characters, specials as written.
fn token_bytes(model: &HfModel, specials: &[(String, u32)]) -> Result<Vec<Vec<u8>>, String> {
    let char_bytes: std::collections::HashMap<char, u8> =
        byte_chars().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
    let n = model
        .vocab
        .values()
        .chain(specials.iter().map(|(_, id)| id))
        .max()
        .map_or(0, |&id| id as usize + 1);
    // Ids are dense in real files; a stray huge id must not make kiln allocate for it.
    let entries = model.vocab.len() + specials.len();
    if n > entries {
        return Err(format!(
            "token id {} is out of range: the file has {entries} vocab and added tokens",
            n - 1
        ));
    }
    let mut tokens: Vec<Vec<u8>> = vec![Vec::new(); n];
    for (text, &id) in &model.vocab {
        if specials.iter().any(|&(_, s)| s == id) {
            continue;
        }
        tokens[id as usize] = text
            .chars()
            .map(|c| char_bytes.get(&c).copied())
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| {
                format!("vocab entry {text:?} (id {id}) is not spelled in byte-level characters")
            })?;
    }
    for (text, id) in specials {
        tokens[*id as usize] = text.as_bytes().to_vec();
    }
    Ok(tokens)
}

/// The merges, by rank, as ids of the vocab.
fn merges(model: &HfModel) -> Result<Vec<Merge>, String> {
    model
        .merges
        .iter()
        .enumerate()
        .map(|(rank, merge)| {
            let (left, right) = match merge {
                HfMerge::Joined(s) => s
                    .split_once(' ')
                    .ok_or_else(|| format!("merge {rank} {s:?} is not \"left right\""))?,
                HfMerge::Pair([l, r]) => (l.as_str(), r.as_str()),
            };
            let id = |t: &str| {
                let found = model.vocab.get(t).copied();
                found.ok_or_else(|| format!("merge {rank} uses {t:?}, which is not in the vocab"))
            };
            Ok(Merge { left: id(left)?, right: id(right)?, merged: id(&format!("{left}{right}"))? })
        })
        .collect()
}

/// Only the pipeline kiln implements: no normalizer, the GPT-2 ByteLevel pre-tokenizer.
fn check_pipeline(file: &HfFile) -> Result<(), String> {
    if let Some(normalizer) = file.normalizer.as_ref().filter(|n| !n.is_null()) {
        let kind = normalizer.get("type").and_then(Value::as_str).unwrap_or("?");
        return Err(format!("normalizer {kind:?}: kiln applies no normalizer; byte-level BPE files have \"normalizer\": null"));
    }
    let pre = file.pre_tokenizer.as_ref().filter(|p| !p.is_null());
    let kind = pre.and_then(|p| p.get("type")).and_then(Value::as_str);
    let flag = |key: &str, default: bool| {
        pre.and_then(|p| p.get(key)).and_then(Value::as_bool).unwrap_or(default)
    };
    if kind != Some("ByteLevel") || !flag("use_regex", true) || flag("add_prefix_space", false) {
        return Err(format!(
            "pre_tokenizer {}: kiln implements ByteLevel with use_regex = true and add_prefix_space = false (GPT-2's)",
            pre.map_or("null".to_string(), |p| p.to_string())
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;

    #[test]
    fn byte_table_spells_space_as_g_dot() {
        let table = byte_chars();
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'a' as usize], 'a');
        let distinct: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn json_round_trip_keeps_ids() {
        let opts = super::super::train::BpeTrainOptions {
            vocab_size: 400,
            specials: vec!["<|endoftext|>".into()],
            progress: false,
        };
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/the-verdict.txt"))
                .unwrap();
        let tok = super::super::train::train_on_text(&text, &opts).unwrap();
        let back = from_json(to_json(&tok)).unwrap();
        let sample =
            "I had always thought Jack Gisburn rather a cheap genius<|endoftext|> Ünïcødé!";
        assert_eq!(back.encode(sample).unwrap(), tok.encode(sample).unwrap());
        assert_eq!(back.vocab_size(), 400);
    }

    #[test]
    fn other_models_and_pipelines_are_refused() {
        let err = from_json(json!({"model": {"type": "WordPiece", "vocab": {}}})).unwrap_err();
        assert!(err.contains("\"WordPiece\"") && err.contains("byte-level BPE"), "{err}");
        let err = from_json(json!({"model": {"type": "BPE", "vocab": {}, "merges": []},
            "pre_tokenizer": {"type": "Whitespace"}}))
        .unwrap_err();
        assert!(err.contains("Whitespace"), "{err}");
        let err = from_json(json!({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
            "pre_tokenizer": {"type": "ByteLevel"}}))
        .unwrap_err();
        assert!(err.contains("byte 0x00 has no token"), "{err}");
        let err = from_json(
            json!({"model": {"type": "BPE", "vocab": {"a": 4000000000u32}, "merges": []},
            "pre_tokenizer": {"type": "ByteLevel"}}),
        )
        .unwrap_err();
        assert!(err.contains("token id 4000000000 is out of range"), "{err}");
    }
}
