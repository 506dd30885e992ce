//! Preference tuning with DPO (Rafailov et al., 2023), as Raschka's chapter-7 notebook does
//! it: the model `model.init_from` names is both the starting point and the frozen reference.
//! The reference's log-probabilities of every response are computed once, before training,
//! and travel with the data; the loss pushes the tuned model's margin between chosen and
//! rejected responses past the reference's.

use std::sync::Arc;

use anyhow::{bail, Result};
use burn::prelude::*;

use super::gpt::{init_gpt, mean_loss, tokenizer_for};
use super::instructions::{answer, end_token, show_responses, write_responses, Response};
use super::learner::Plan;
use super::seq2seq::held_out;
use super::step::{lm_objective, response_logprobs};
use super::task::{Loaders, Task, Trained};
use crate::config::RunSpec;
use crate::data::preferences::{
    encode_pairs, read_preferences, FixedPreferences, PairBatcher, PreferencePair, PreferenceRecord,
};
use crate::data::{Batcher, LmBatch};
use crate::distributed::Replica;
use crate::kernels::{KernelBackend, TrainBackend};
use crate::model::{Gpt, ParamCounts};
use crate::run::Started;
use crate::tokenizer::Tokenizer;

/// The training and held-out pairs, scored by the reference model.
pub struct PreferenceTask<B: TrainBackend> {
    train: Arc<[PreferencePair]>,
    held_out: Arc<[PreferencePair]>,
    held_out_records: Vec<PreferenceRecord>,
    /// Records whose prompt fills the model's block, left out.
    too_long: usize,
    end: u32,
    _backend: std::marker::PhantomData<fn() -> B>,
}

impl<B: TrainBackend> Task<B> for PreferenceTask<B> {
    type Raw = Vec<PreferenceRecord>;
    type Model = Gpt<B>;

    fn read(spec: &RunSpec) -> Result<Vec<PreferenceRecord>> {
        Ok(read_preferences(&spec.data.path)?)
    }

    /// The reference run's (validation makes `model.init_from` required).
    fn fit_tokenizer(_: &Vec<PreferenceRecord>, spec: &RunSpec) -> Result<Box<dyn Tokenizer>> {
        tokenizer_for(spec, "")
    }

    fn encode(
        mut records: Vec<PreferenceRecord>,
        spec: &RunSpec,
        started: &Started,
        device: &B::Device,
    ) -> Result<Self> {
        let tokenizer = started.tokenizer.as_ref();
        let end = end_token(spec, tokenizer)?;
        let held_out_records =
            records.split_off(records.len() - held_out(&spec.data, records.len()));
        let (template, block_size) = (&spec.data.template, spec.model.block_size());
        let (mut train, left_out) = encode_pairs(&records, template, tokenizer, end, block_size)?;
        let (mut held_out, held_left_out) =
            encode_pairs(&held_out_records, template, tokenizer, end, block_size)?;
        if train.is_empty() || held_out.is_empty() {
            bail!(
                "data.path = {:?}: no record's prompt fits model.block_size = {block_size} tokens \
                 with room for a response; raise model.block_size",
                spec.data.path
            );
        }
        // The starting weights, before any tuning (also when resuming), are the reference.
        let (reference, _) = init_gpt::<B::InnerBackend>(spec, false, device)?;
        let batch_size = spec.training.batch_size;
        score_with_reference(&reference, &mut train, end, batch_size, device);
        score_with_reference(&reference, &mut held_out, end, batch_size, device);
        Ok(Self {
            train: train.into(),
            held_out: held_out.into(),
            held_out_records,
            too_long: left_out + held_left_out,
            end,
            _backend: std::marker::PhantomData,
        })
    }

    fn describe(&self, spec: &RunSpec) -> String {
        let mut text = format!(
            "{} train / {} held-out preference pairs, DPO with β = {}",
            self.train.len(),
            self.held_out.len(),
            spec.training.dpo_beta
        );
        if self.too_long > 0 {
            text += &format!(" | {} records whose prompt fills the block left out", self.too_long);
        }
        text
    }

    fn init_model(
        &self,
        spec: &RunSpec,
        resuming: bool,
        device: &B::Device,
    ) -> Result<(Gpt<B>, ParamCounts)> {
        init_gpt(spec, resuming, device)
    }

    fn loaders(&self, plan: &Plan, replica: Replica, device: &B::Device) -> Loaders<B, Gpt<B>> {
        let (spec, t) = (plan.spec, &plan.spec.training);
        let batches = self.batcher(&self.train, spec).bucketed(t.batch_size, spec.run.seed);
        let train = plan.train_batches(batches, replica, device);
        let held_out = self.batcher(&self.held_out, spec);
        let valid = held_out
            .fixed::<B::InnerBackend>(t.batch_size, t.eval_iters, device.clone())
            .skip_when(plan.validation_stop(replica));
        (Arc::new(train), Arc::new(valid))
    }

    /// The DPO loss over every held-out pair.
    fn final_val_loss(
        &self,
        model: &Gpt<B::InnerBackend>,
        spec: &RunSpec,
        device: &B::Device,
    ) -> f64 {
        mean_loss(model, self.all_held_out::<B::InnerBackend>(spec, device).batches())
    }

    /// Response tokens of all the passes over the training pairs the run makes.
    fn tokens_seen(&self, spec: &RunSpec) -> usize {
        let t = &spec.training;
        let pairs = t.max_iters * t.grad_accumulation * t.batch_size * spec.distributed.replicas();
        let tokens: usize = self.train.iter().map(|p| p.chosen.len() + p.rejected.len() - 2).sum();
        (tokens as f64 * pairs as f64 / self.train.len() as f64) as usize
    }

    /// The first held-out instructions and the tuned model's responses.
    fn show_samples(
        &self,
        model: &Trained<B, Gpt<B>>,
        tokenizer: &dyn Tokenizer,
        spec: &RunSpec,
        _: usize,
        _: &B::Device,
    ) -> Result<String> {
        Ok(show_responses(&self.responses(model, tokenizer, spec, 3)?))
    }

    /// Prints the held-out reward figures; writes the responses to the held-out instructions.
    fn finish(&self, model: &Trained<B, Gpt<B>>, started: &Started, spec: &RunSpec) -> Result<()> {
        let (margin, accuracy) = self.held_out_rewards(model, spec);
        eprintln!(
            "kiln: held-out pairs: reward accuracy {accuracy:.3}, reward margin {margin:.4} \
             ({} pairs)",
            self.held_out.len()
        );
        let tokenizer = started.tokenizer.as_ref();
        let count = self.held_out_records.len();
        write_responses(started, &self.responses(model, tokenizer, spec, count)?)
    }
}

impl<B: TrainBackend> PreferenceTask<B> {
    fn batcher(&self, pairs: &Arc<[PreferencePair]>, spec: &RunSpec) -> PairBatcher {
        PairBatcher::new(pairs.clone(), self.end, spec.training.dpo_beta)
    }

    fn all_held_out<M: Backend>(&self, spec: &RunSpec, device: &M::Device) -> FixedPreferences<M> {
        let batcher = self.batcher(&self.held_out, spec);
        batcher.fixed(spec.training.batch_size, 0, device.clone())
    }

    /// The mean reward margin and the reward accuracy over every held-out pair.
    fn held_out_rewards<M: KernelBackend>(&self, model: &Gpt<M>, spec: &RunSpec) -> (f64, f64) {
        let device = model.devices().into_iter().next().unwrap_or_default();
        let (mut sums, mut pairs) = ([0.0; 2], 0);
        for batch in self.all_held_out::<M>(spec, &device).batches() {
            let weight = batch.loss_weight();
            let Some(rewards) = lm_objective(model, &batch).1 else { continue };
            let values = rewards.into_data().convert::<f64>().to_vec::<f64>().unwrap_or_default();
            for (sum, value) in sums.iter_mut().zip(values) {
                *sum += value * weight as f64;
            }
            pairs += weight;
        }
        (sums[0] / pairs.max(1) as f64, sums[1] / pairs.max(1) as f64)
    }

    fn responses<'a, M: KernelBackend>(
        &'a self,
        model: &Gpt<M>,
        tokenizer: &dyn Tokenizer,
        spec: &RunSpec,
        count: usize,
    ) -> Result<Vec<Response<'a>>> {
        let records = &self.held_out_records[..count.min(self.held_out_records.len())];
        let answered =
            answer(model, tokenizer, spec, self.end, records, |r| (&r.instruction, &r.input))?;
        let responses = answered.into_iter().map(|(record, model_response)| Response {
            instruction: &record.instruction,
            input: &record.input,
            output: None,
            chosen: Some(&record.chosen),
            rejected: Some(&record.rejected),
            model_response,
        });
        Ok(responses.collect())
    }
}

/// Fills in each pair's reference log-probabilities: the mean log-probability `reference`
/// gives its chosen and its rejected response.
fn score_with_reference<M: KernelBackend>(
    reference: &Gpt<M>,
    pairs: &mut [PreferencePair],
    end: u32,
    batch_size: usize,
    device: &M::Device,
) {
    let shared: Arc<[PreferencePair]> = pairs.to_vec().into();
    let batcher = PairBatcher::new(shared, end, 0.0);
    let indices: Vec<usize> = (0..pairs.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch: LmBatch<M> = batcher.batch(chunk, device);
        let logprobs = response_logprobs(reference, &batch).into_data().convert::<f32>();
        let values = logprobs.to_vec::<f32>().unwrap_or_default();
        let n = chunk.len();
        for (k, &i) in chunk.iter().enumerate() {
            pairs[i].reference = [values[k], values[n + k]];
        }
    }
}
