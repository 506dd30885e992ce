//! Preference data for DPO: records of an instruction (and input) with a `chosen` and a
//! `rejected` response, encoded as two examples that share the prompt, each with the frozen
//! reference model's log-probability of its response; batches put the chosen responses in
//! the first half of the rows and the rejected ones in the second.

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;

use super::batches::{Batcher, FixedBatches};
use super::buckets::Bucketed;
use super::corpus::DataError;
use super::instructions::{read_objects, text_field, Example};
use super::loader::{LmBatch, Objective};
use crate::config::PromptTemplate;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// An instruction with a preferred and a dispreferred response.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceRecord {
    pub instruction: String,
    pub input: String,
    pub chosen: String,
    pub rejected: String,
}

/// The records of `path` (a JSON array or JSON Lines, as instruction data), each with
/// `instruction`, optional `input`, `chosen` and `rejected`.
pub fn read_preferences(path: &Path) -> Result<Vec<PreferenceRecord>, DataError> {
    read_objects(path, "\"instruction\", \"chosen\" and \"rejected\"", |object| {
        Ok(PreferenceRecord {
            instruction: text_field(object, "instruction", true)?,
            input: text_field(object, "input", false)?,
            chosen: text_field(object, "chosen", true)?,
            rejected: text_field(object, "rejected", true)?,
        })
    })
}

/// A record encoded: both responses after the same prompt, and the reference model's mean
/// log-probability of each (filled in once the pairs are scored).
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub chosen: Example,
    pub rejected: Example,
    pub reference: [f32; 2],
}

impl PreferencePair {
    fn len(&self) -> usize {
        self.chosen.len().max(self.rejected.len())
    }
}

/// Encodes `records` for a model of `block_size` positions; a record whose prompt fills the
/// block is left out (the count is returned with the pairs).
pub fn encode_pairs(
    records: &[PreferenceRecord],
    template: &PromptTemplate,
    tokenizer: &dyn Tokenizer,
    end: u32,
    block_size: usize,
) -> Result<(Vec<PreferencePair>, usize), TokenizerError> {
    let (mut pairs, mut too_long) = (Vec::new(), 0);
    for record in records {
        let prompt = tokenizer.encode(&template.render(&record.instruction, &record.input))?;
        if prompt.len() >= block_size {
            too_long += 1;
            continue;
        }
        let response = |text: &str| -> Result<Example, TokenizerError> {
            let mut response = tokenizer.encode(text)?;
            response.push(end);
            response.truncate(block_size + 1 - prompt.len());
            Ok(Example { prompt: prompt.clone(), response })
        };
        let (chosen, rejected) = (response(&record.chosen)?, response(&record.rejected)?);
        pairs.push(PreferencePair { chosen, rejected, reference: [0.0; 2] });
    }
    Ok((pairs, too_long))
}

/// Pairs by their indices: `[chosen…, rejected…]` rows, padded together.
#[derive(Clone)]
pub struct PairBatcher {
    pairs: Arc<[PreferencePair]>,
    pad: u32,
    beta: f64,
}

impl PairBatcher {
    pub fn new(pairs: Arc<[PreferencePair]>, pad: u32, beta: f64) -> Self {
        Self { pairs, pad, beta }
    }
}

impl<B: Backend> Batcher<B> for PairBatcher {
    type Batch = LmBatch<B>;
    fn batch(&self, indices: &[usize], device: &B::Device) -> LmBatch<B> {
        let pairs: Vec<&PreferencePair> = indices.iter().map(|&i| &self.pairs[i]).collect();
        let rows: Vec<&Example> =
            pairs.iter().map(|p| &p.chosen).chain(pairs.iter().map(|p| &p.rejected)).collect();
        let reference: Vec<f32> =
            (0..2).flat_map(|side| pairs.iter().map(move |p| p.reference[side])).collect();
        let batch = LmBatch::from_examples(&rows, self.pad, device);
        let reference = Tensor::from_data(TensorData::new(reference, [rows.len()]), device);
        LmBatch { objective: Objective::Preference { beta: self.beta, reference }, ..batch }
    }
}

fn lengths(pairs: &[PreferencePair]) -> Vec<usize> {
    pairs.iter().map(PreferencePair::len).collect()
}

/// Training batches of pairs of similar length.
pub type PreferenceBatches = Bucketed<PairBatcher>;

/// The held-out pairs in the same batches at every evaluation.
pub type FixedPreferences<B> = FixedBatches<B, PairBatcher>;

impl PairBatcher {
    /// Training batches of `batch_size` of these pairs.
    pub fn bucketed(self, batch_size: usize, seed: u64) -> PreferenceBatches {
        let lengths = lengths(&self.pairs);
        Bucketed::new(self, lengths, batch_size, seed)
    }

    /// At most `max_batches` batches (0: all) of `batch_size` of these pairs, sorted by length.
    pub fn fixed<B: Backend>(
        self,
        batch_size: usize,
        max_batches: usize,
        device: B::Device,
    ) -> FixedPreferences<B> {
        let lengths = lengths(&self.pairs);
        FixedBatches::by_length(self, &lengths, batch_size, max_batches, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::NdArray<f32>;

    #[test]
    fn a_batch_holds_the_chosen_rows_then_the_rejected_ones() {
        let pair = |c: Vec<u32>, r: Vec<u32>, reference| PreferencePair {
            chosen: Example { prompt: vec![1, 2], response: c },
            rejected: Example { prompt: vec![1, 2], response: r },
            reference,
        };
        let pairs: Arc<[PreferencePair]> = vec![
            pair(vec![3, 0], vec![4, 4, 0], [-1.0, -2.0]),
            pair(vec![5, 0], vec![6, 0], [-3.0, -4.0]),
        ]
        .into();
        let batch: LmBatch<B> = PairBatcher::new(pairs, 0, 0.1).batch(&[0, 1], &Default::default());
        let inputs = batch.inputs.into_data().to_vec::<i64>().unwrap();
        assert_eq!(inputs, vec![1, 2, 3, 0, 1, 2, 5, 0, 1, 2, 4, 4, 1, 2, 6, 0]);
        let Objective::Preference { beta, reference } = batch.objective else {
            panic!("no preference")
        };
        assert_eq!(beta, 0.1);
        assert_eq!(reference.into_data().to_vec::<f32>().unwrap(), vec![-1.0, -3.0, -2.0, -4.0]);
    }
}
