//! Instruction data: Alpaca-style records (`instruction`, `input`, `output`) read from JSON or
//! JSON Lines, rendered with a prompt template, encoded into examples whose loss counts the
//! response only, and padded per batch.

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::batches::{Batcher, FixedBatches};
use super::buckets::Bucketed;
use super::corpus::{read_text, DataError};
use super::loader::{LmBatch, Objective};
use crate::config::PromptTemplate;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// One instruction and the response it should get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub instruction: String,
    /// Context for the instruction; empty when there is none.
    #[serde(default)]
    pub input: String,
    pub output: String,
}

/// The records of `path`: a JSON array of objects, or one object per line (JSON Lines).
/// Other keys of a record (`chosen`, `rejected`, …) are left for other uses.
pub fn read_records(path: &Path) -> Result<Vec<Record>, DataError> {
    read_objects(path, "\"instruction\" and \"output\"", |object| {
        Ok(Record {
            instruction: text_field(object, "instruction", true)?,
            input: text_field(object, "input", false)?,
            output: text_field(object, "output", true)?,
        })
    })
}

pub(super) type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The objects of a JSON array or of JSON Lines, each read by `parse`; `keys` says what an
/// object must have. Errors name the file and the record's number (or line).
pub(super) fn read_objects<T>(
    path: &Path,
    keys: &str,
    parse: impl Fn(&JsonObject) -> Result<T, String>,
) -> Result<Vec<T>, DataError> {
    let text = read_text(path)?;
    let err = |reason: String| DataError::Source { path: path.into(), reason };
    let object = |value: serde_json::Value| match value {
        serde_json::Value::Object(object) => parse(&object),
        other => Err(format!("expected an object with {keys}, found {other}")),
    };
    let records = match text.trim_start().starts_with('[') {
        true => {
            let values: Vec<serde_json::Value> = serde_json::from_str(&text)
                .map_err(|e| err(format!("not a JSON array of records: {e}")))?;
            let records = values.into_iter().enumerate().map(|(i, value)| {
                object(value).map_err(|reason| err(format!("record {}: {reason}", i + 1)))
            });
            records.collect::<Result<Vec<_>, _>>()?
        }
        false => {
            let lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
            let records = lines.map(|(i, line)| {
                let at = |reason: String| err(format!("line {}: {reason}", i + 1));
                let value = serde_json::from_str(line).map_err(|e| {
                    at(format!(
                        "not a JSON object ({e}); expected a JSON array of records or one \
                         record per line"
                    ))
                })?;
                object(value).map_err(at)
            });
            records.collect::<Result<Vec<_>, _>>()?
        }
    };
    if records.len() < 2 {
        return Err(err(format!(
            "{} record(s); finetuning needs at least 2 (one to train on, one held out)",
            records.len()
        )));
    }
    Ok(records)
}

/// The string at `key`; a missing or null optional one is empty.
pub(super) fn text_field(object: &JsonObject, key: &str, required: bool) -> Result<String, String> {
    match object.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        None | Some(serde_json::Value::Null) if !required => Ok(String::new()),
        None => Err(format!("no \"{key}\" (expected a string)")),
        Some(other) => Err(format!("\"{key}\" is {other}; expected a string")),
    }
}

/// A record encoded: the rendered prompt, then the response and the end-of-response token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
}

impl Example {
    /// Tokens of the whole sequence.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.response.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Records encoded for a model of `block_size` positions.
#[derive(Debug, Clone)]
pub struct Examples {
    pub examples: Arc<[Example]>,
    /// Records whose response was cut to fit the block.
    pub truncated: usize,
    /// Records left out because their prompt alone fills the block.
    pub too_long: usize,
}

/// Encodes `records`: each sequence is the prompt, the response and `end`, cut to
/// `block_size + 1` tokens (inputs and targets are that shifted by one).
pub fn encode_examples(
    records: &[Record],
    template: &PromptTemplate,
    tokenizer: &dyn Tokenizer,
    end: u32,
    block_size: usize,
) -> Result<Examples, TokenizerError> {
    let (mut examples, mut truncated, mut too_long) = (Vec::new(), 0, 0);
    for record in records {
        let prompt = tokenizer.encode(&template.render(&record.instruction, &record.input))?;
        if prompt.len() >= block_size {
            too_long += 1;
            continue;
        }
        let mut response = tokenizer.encode(&record.output)?;
        response.push(end);
        let room = block_size + 1 - prompt.len();
        if response.len() > room {
            response.truncate(room);
            truncated += 1;
        }
        examples.push(Example { prompt, response });
    }
    Ok(Examples { examples: examples.into(), truncated, too_long })
}

impl<B: Backend> LmBatch<B> {
    /// Examples padded with `pad` to the longest, the loss masked to their responses.
    pub fn from_examples(examples: &[&Example], pad: u32, device: &B::Device) -> Self {
        let seq = examples.iter().map(|e| e.len() - 1).max().unwrap_or(1).max(1);
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        let mut mask = Vec::with_capacity(examples.len() * seq);
        for example in examples {
            let ids: Vec<i64> =
                example.prompt.iter().chain(&example.response).map(|&t| t as i64).collect();
            let padded = |ids: &[i64]| {
                ids.iter()
                    .copied()
                    .chain(std::iter::repeat(pad as i64))
                    .take(seq)
                    .collect::<Vec<_>>()
            };
            inputs.extend(padded(&ids[..ids.len() - 1]));
            targets.extend(padded(&ids[1..]));
            // Target j is token j + 1: a response token from the prompt's length on.
            let counted = (0..seq).map(|j| j + 1 >= example.prompt.len() && j + 1 < ids.len());
            mask.extend(counted.map(|c| c as u8 as f32));
        }
        let shape = [examples.len(), seq];
        let loss_tokens = mask.iter().filter(|&&m| m > 0.0).count();
        let ints = |v: Vec<i64>| Tensor::from_data(TensorData::new(v, shape), device);
        Self {
            inputs: ints(inputs),
            targets: ints(targets),
            loss_mask: Some(Tensor::from_data(TensorData::new(mask, shape), device)),
            loss_tokens,
            objective: Objective::NextToken,
        }
    }
}

/// Examples by their indices, padded into one batch.
#[derive(Clone)]
pub struct ExampleBatcher {
    examples: Arc<[Example]>,
    pad: u32,
}

impl<B: Backend> Batcher<B> for ExampleBatcher {
    type Batch = LmBatch<B>;
    fn batch(&self, indices: &[usize], device: &B::Device) -> LmBatch<B> {
        let examples: Vec<&Example> = indices.iter().map(|&i| &self.examples[i]).collect();
        LmBatch::from_examples(&examples, self.pad, device)
    }
}

fn lengths(examples: &[Example]) -> Vec<usize> {
    examples.iter().map(Example::len).collect()
}

/// Training batches of examples of similar length.
pub type ExampleBatches = Bucketed<ExampleBatcher>;

impl Bucketed<ExampleBatcher> {
    pub fn examples(examples: Arc<[Example]>, batch_size: usize, pad: u32, seed: u64) -> Self {
        let lengths = lengths(&examples);
        Self::new(ExampleBatcher { examples, pad }, lengths, batch_size, seed)
    }
}

/// The held-out examples in the same batches at every evaluation.
pub type FixedExamples<B> = FixedBatches<B, ExampleBatcher>;

impl<B: Backend> FixedBatches<B, ExampleBatcher> {
    /// At most `max_batches` batches (0: all) of `batch_size` examples, sorted by length.
    pub fn new(
        examples: Arc<[Example]>,
        batch_size: usize,
        max_batches: usize,
        pad: u32,
        device: B::Device,
    ) -> Self {
        let lengths = lengths(&examples);
        Self::by_length(ExampleBatcher { examples, pad }, &lengths, batch_size, max_batches, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::NdArray<f32>;

    #[test]
    fn batches_mask_the_prompt_and_the_padding() {
        let a = Example { prompt: vec![10, 11, 12], response: vec![20, 0] };
        let b = Example { prompt: vec![10], response: vec![21, 22, 0] };
        let batch = LmBatch::<B>::from_examples(&[&a, &b], 0, &Default::default());
        let ints = |t: Tensor<B, 2, Int>| t.into_data().to_vec::<i64>().unwrap();
        assert_eq!(ints(batch.inputs), vec![10, 11, 12, 20, 10, 21, 22, 0]);
        assert_eq!(ints(batch.targets), vec![11, 12, 20, 0, 21, 22, 0, 0]);
        let mask = batch.loss_mask.unwrap().into_data().to_vec::<f32>().unwrap();
        assert_eq!(mask, vec![0., 0., 1., 1., 1., 1., 1., 0.]);
        assert_eq!(batch.loss_tokens, 5);
    }

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn records_read_from_json_and_json_lines_alike() {
        let array = r#"[{"instruction": "a", "input": "", "output": "b", "chosen": "x"},
                        {"instruction": "c", "output": "d"}]"#;
        let lines = "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n\n{\"instruction\": \"c\", \"input\": null, \"output\": \"d\"}\n";
        let (_a, array) = write(array);
        let (_l, lines) = write(lines);
        assert_eq!(read_records(&array).unwrap(), read_records(&lines).unwrap());
    }

    #[test]
    fn bad_records_are_named_by_number_and_key() {
        let cases = [
            (
                r#"[{"instruction": "a", "output": "b"}, {"instruction": "c"}]"#,
                "record 2: no \"output\"",
            ),
            (
                r#"[{"instruction": 3, "output": "b"}, {"instruction": "c", "output": "d"}]"#,
                "record 1: \"instruction\" is 3",
            ),
            ("{\"instruction\": \"a\", \"output\": \"b\"}\n{oops\n", "line 2: not a JSON object"),
            (
                r#"[["a", "b"], {"instruction": "c", "output": "d"}]"#,
                "record 1: expected an object",
            ),
            (r#"[{"instruction": "a", "output": "b"}]"#, "1 record(s)"),
            ("[{\"instruction\": \"a\"", "not a JSON array"),
        ];
        for (text, expected) in cases {
            let (_dir, path) = write(text);
            let err = read_records(&path).unwrap_err().to_string();
            assert!(err.contains(expected) && err.contains("records.json"), "{text}: {err}");
        }
    }
}
