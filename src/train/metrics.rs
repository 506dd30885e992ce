//! Learner metrics (loss, tokens/s) and the `metrics.jsonl` logger.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::train::logger::MetricLogger;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{
    Metric, MetricAttributes, MetricDefinition, MetricId, MetricMetadata, MetricName, Numeric,
    NumericAttributes, NumericEntry, SerializedEntry,
};

use super::step::LmStats;
use crate::run::metrics::unix_time;
use crate::run::{MetricsLine, RunControl};

pub const LOSS: &str = "Loss";
pub const LEARNING_RATE: &str = "Learning Rate";
pub const TOKENS_PER_SEC: &str = "Tokens/s";

/// Mean cross-entropy per token of the batches seen in the epoch.
#[derive(Clone)]
pub struct LossMetric {
    name: MetricName,
    state: NumericMetricState,
}

impl LossMetric {
    pub fn new() -> Self {
        Self { name: Arc::new(LOSS.into()), state: NumericMetricState::new() }
    }
}

impl Metric for LossMetric {
    type Input = LmStats;
    fn name(&self) -> MetricName {
        self.name.clone()
    }
    fn attributes(&self) -> MetricAttributes {
        NumericAttributes { unit: None, higher_is_better: false }.into()
    }
    fn update(&mut self, item: &LmStats, _: &MetricMetadata) -> SerializedEntry {
        // Weighted by tokens: seq2seq batches differ in size, and an epoch's loss is per token.
        self.state.update(
            item.loss,
            item.tokens.max(1),
            FormatOptions::new(self.name()).precision(4),
        )
    }
    fn clear(&mut self) {
        self.state.reset()
    }
}

impl Numeric for LossMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }
    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

/// Training tokens per second since the start of the epoch.
#[derive(Clone)]
pub struct TokensPerSecond {
    name: MetricName,
    started: Option<Instant>,
    tokens: usize,
    rate: f64,
}

impl TokensPerSecond {
    pub fn new() -> Self {
        Self { name: Arc::new(TOKENS_PER_SEC.into()), started: None, tokens: 0, rate: 0.0 }
    }
}

impl Metric for TokensPerSecond {
    type Input = LmStats;
    fn name(&self) -> MetricName {
        self.name.clone()
    }
    fn attributes(&self) -> MetricAttributes {
        NumericAttributes { unit: Some("tok/s".into()), higher_is_better: true }.into()
    }
    fn update(&mut self, item: &LmStats, _: &MetricMetadata) -> SerializedEntry {
        // The first batch of an epoch only starts the clock; its tokens were produced before.
        match self.started {
            None => self.started = Some(Instant::now()),
            Some(start) => {
                self.tokens += item.tokens;
                self.rate = self.tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
            }
        }
        SerializedEntry::new(format!("{:.0} tok/s", self.rate), self.rate.to_string())
    }
    fn clear(&mut self) {
        *self = Self::new();
    }
}

impl Numeric for TokensPerSecond {
    fn value(&self) -> NumericEntry {
        NumericEntry::Value(self.rate)
    }
    fn running_value(&self) -> NumericEntry {
        NumericEntry::Value(self.rate)
    }
}

/// The latest figures of a run, shared between the logger and the trainer.
#[derive(Debug, Default, Clone)]
pub struct LatestMetrics {
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub tokens_per_sec: Option<f64>,
}

/// A Burn `MetricLogger` that appends one JSON line per optimizer step (split `train`) and
/// per validation (split `val`); without a file it keeps count and writes nothing, as the
/// replicas other than the first of a data-parallel run do (Burn's default logger would write
/// files into the run directory).
pub struct JsonlLogger {
    file: Option<File>,
    names: HashMap<MetricId, String>,
    grad_accumulation: usize,
    /// Optimizer steps done, counted here because Burn's epoch numbers restart on resume.
    step: usize,
    /// Micro-batches logged in the current accumulation window and their summed loss.
    micro_batches: usize,
    window_loss: f64,
    /// Token-weighted sum of the validation losses so far, and their tokens.
    val_sum: f64,
    val_count: usize,
    latest: Arc<Mutex<LatestMetrics>>,
    /// Tokens one optimizer step trains on, over all replicas.
    tokens_per_step: u64,
    /// Where the gradient norm of each step is recorded.
    control: Option<Arc<RunControl>>,
}

impl JsonlLogger {
    /// Adds the tokens seen and the gradient norm to every train line.
    pub fn with_step_figures(self, tokens_per_step: usize, control: Arc<RunControl>) -> Self {
        Self { tokens_per_step: tokens_per_step as u64, control: Some(control), ..self }
    }

    pub fn new(
        path: &Path,
        grad_accumulation: usize,
        start_step: usize,
        latest: Arc<Mutex<LatestMetrics>>,
    ) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file: Some(file), grad_accumulation, step: start_step, latest, ..Self::silent() })
    }

    /// A logger that writes nothing.
    pub fn silent() -> Self {
        Self {
            file: None,
            names: HashMap::new(),
            grad_accumulation: 1,
            step: 0,
            micro_batches: 0,
            window_loss: 0.0,
            val_sum: 0.0,
            val_count: 0,
            latest: Default::default(),
            tokens_per_step: 0,
            control: None,
        }
    }

    fn write(&mut self, line: &MetricsLine) {
        let Some(file) = &mut self.file else {
            return;
        };
        let json = serde_json::to_string(line).expect("metrics lines serialize");
        if let Err(e) = writeln!(file, "{json}") {
            log::error!("cannot append to metrics.jsonl: {e}");
        }
    }

    fn values(&self, update: &MetricsUpdate) -> HashMap<String, f64> {
        update
            .entries_numeric
            .iter()
            .filter_map(|u| {
                Some((self.names.get(&u.entry.metric_id)?.clone(), u.numeric_entry.current()))
            })
            .collect()
    }
}

impl JsonlLogger {
    /// The tokens behind the loss of an update (its weight in the epoch's mean).
    fn loss_tokens(&self, update: &MetricsUpdate) -> usize {
        let entry = update
            .entries_numeric
            .iter()
            .find(|u| self.names.get(&u.entry.metric_id).is_some_and(|n| n == LOSS));
        match entry.map(|u| &u.numeric_entry) {
            Some(NumericEntry::Aggregated { count, .. }) => (*count).max(1),
            _ => 1,
        }
    }
}

impl MetricLogger for JsonlLogger {
    fn log(&mut self, update: MetricsUpdate, _epoch: usize, split: &Split) {
        let values = self.values(&update);
        let Some(&loss) = values.get(LOSS) else {
            return;
        };
        match split {
            Split::Train => {
                self.micro_batches += 1;
                self.window_loss += loss;
                if self.micro_batches < self.grad_accumulation {
                    return;
                }
                let loss = self.window_loss / self.grad_accumulation as f64;
                (self.window_loss, self.micro_batches) = (0.0, 0);
                self.step += 1;
                let line = MetricsLine {
                    step: self.step,
                    split: "train".into(),
                    loss,
                    lr: values.get(LEARNING_RATE).copied(),
                    tokens_per_sec: values.get(TOKENS_PER_SEC).copied().filter(|&r| r > 0.0),
                    perplexity: None,
                    tokens: Some(self.step as u64 * self.tokens_per_step)
                        .filter(|_| self.tokens_per_step > 0),
                    grad_norm: self.control.as_ref().map(|c| c.grad_norm()).filter(|n| !n.is_nan()),
                    time: Some(unix_time()),
                };
                self.write(&line);
                let mut latest = self.latest.lock().expect("metrics lock");
                latest.train_loss = Some(loss);
                latest.tokens_per_sec = line.tokens_per_sec.or(latest.tokens_per_sec);
            }
            Split::Valid => {
                let tokens = self.loss_tokens(&update);
                self.val_sum += loss * tokens as f64;
                self.val_count += tokens;
            }
            Split::Test(_) => {}
        }
    }

    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        match summary.split {
            Split::Valid if self.val_count > 0 => {
                let loss = self.val_sum / self.val_count as f64;
                (self.val_sum, self.val_count) = (0.0, 0);
                self.write(&MetricsLine {
                    step: self.step,
                    split: "val".into(),
                    loss,
                    lr: None,
                    tokens_per_sec: None,
                    perplexity: Some(loss.exp()),
                    tokens: Some(self.step as u64 * self.tokens_per_step)
                        .filter(|_| self.tokens_per_step > 0),
                    grad_norm: None,
                    time: Some(unix_time()),
                });
                self.latest.lock().expect("metrics lock").val_loss = Some(loss);
            }
            _ => {}
        }
    }

    fn read_numeric(
        &mut self,
        name: &str,
        epoch: usize,
        _: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        Err(format!(
            "kiln keeps metrics in metrics.jsonl; {name} of epoch {epoch} is not queryable"
        ))
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id, definition.name);
    }
}
