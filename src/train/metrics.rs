//! Learner metrics (loss, tokens/s, DPO's rewards) and the `metrics.jsonl` logger.

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
use crate::run::metrics::RewardFigures;
use crate::run::{MetricsLine, RunControl};

pub const LOSS: &str = "Loss";
pub const LEARNING_RATE: &str = "Learning Rate";
pub const TOKENS_PER_SEC: &str = "Tokens/s";
pub const REWARD_MARGIN: &str = "Reward Margin";
pub const REWARD_ACCURACY: &str = "Reward Accuracy";
/// The figures averaged over a validation pass.
const VALIDATION_FIGURES: [&str; 3] = [LOSS, REWARD_MARGIN, REWARD_ACCURACY];

/// A figure of each batch averaged over the batches seen in the epoch, each weighing by what
/// its loss is a mean over (tokens; pairs for DPO): the loss, or a DPO reward figure.
#[derive(Clone)]
pub struct WeightedMetric {
    name: MetricName,
    pick: fn(&LmStats) -> f64,
    higher_is_better: bool,
    state: NumericMetricState,
}

impl WeightedMetric {
    fn new(name: &str, pick: fn(&LmStats) -> f64, higher_is_better: bool) -> Self {
        Self {
            name: Arc::new(name.into()),
            pick,
            higher_is_better,
            state: NumericMetricState::new(),
        }
    }

    pub fn loss() -> Self {
        Self::new(LOSS, |s| s.loss, false)
    }

    /// DPO: the mean of β·((π_c − ref_c) − (π_r − ref_r)).
    pub fn reward_margin() -> Self {
        Self::new(REWARD_MARGIN, |s| s.rewards.map_or(f64::NAN, |r| r[0]), true)
    }

    /// DPO: the fraction of pairs whose chosen response earns the higher reward.
    pub fn reward_accuracy() -> Self {
        Self::new(REWARD_ACCURACY, |s| s.rewards.map_or(f64::NAN, |r| r[1]), true)
    }
}

impl Metric for WeightedMetric {
    type Input = LmStats;
    fn name(&self) -> MetricName {
        self.name.clone()
    }
    fn attributes(&self) -> MetricAttributes {
        NumericAttributes { unit: None, higher_is_better: self.higher_is_better }.into()
    }
    fn update(&mut self, item: &LmStats, _: &MetricMetadata) -> SerializedEntry {
        let format = FormatOptions::new(self.name()).precision(4);
        self.state.update((self.pick)(item), item.weight.max(1), format)
    }
    fn clear(&mut self) {
        self.state.reset()
    }
}

impl Numeric for WeightedMetric {
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
    /// Weighted sums of the validation figures so far, and their weights.
    val_sums: HashMap<&'static str, (f64, usize)>,
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
            val_sums: HashMap::new(),
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
    /// What the loss of an update is a mean over (its weight in the epoch's mean).
    fn loss_weight(&self, update: &MetricsUpdate) -> usize {
        let entry = update
            .entries_numeric
            .iter()
            .find(|u| self.names.get(&u.entry.metric_id).is_some_and(|n| n == LOSS));
        entry.map_or(1, |u| entry_weight(&u.numeric_entry))
    }
}

/// What a loss entry is a mean over: its weight in a mean over batches.
pub(super) fn entry_weight(entry: &NumericEntry) -> usize {
    match entry {
        NumericEntry::Aggregated { count, .. } => (*count).max(1),
        _ => 1,
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
                let figure = |name| values.get(name).copied().filter(|v: &f64| !v.is_nan());
                let rewards = RewardFigures {
                    reward_margin: figure(REWARD_MARGIN),
                    reward_accuracy: figure(REWARD_ACCURACY),
                };
                let line = MetricsLine {
                    rewards,
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
                let weight = self.loss_weight(&update);
                for name in VALIDATION_FIGURES {
                    if let Some(value) = values.get(name).filter(|v| !v.is_nan()) {
                        let sum = self.val_sums.entry(name).or_default();
                        *sum = (sum.0 + value * weight as f64, sum.1 + weight);
                    }
                }
            }
            Split::Test(_) => {}
        }
    }

    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        match summary.split {
            Split::Valid if self.val_sums.contains_key(LOSS) => {
                let mut sums = std::mem::take(&mut self.val_sums);
                let mut mean = |name| sums.remove(name).map(|(sum, n)| sum / n.max(1) as f64);
                let loss = mean(LOSS).unwrap_or(f64::NAN);
                let rewards = RewardFigures {
                    reward_margin: mean(REWARD_MARGIN),
                    reward_accuracy: mean(REWARD_ACCURACY),
                };
                self.write(&MetricsLine {
                    rewards,
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
