//! An indicatif progress bar for the whole run, wired into the Learner as its renderer.
//!
//! The bar counts optimizer steps and shows loss, last val loss, learning rate, tokens/s and
//! the ETA; after each validation a `step N: train loss …, val loss …` line is printed above
//! it (also when stderr is not a terminal and the bar itself is hidden).

use std::collections::HashMap;

use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::metrics::{entry_weight, LEARNING_RATE, LOSS, TOKENS_PER_SEC};

pub struct ProgressRenderer {
    bar: ProgressBar,
    names: HashMap<MetricId, String>,
    grad_accumulation: usize,
    max_iters: usize,
    start_step: usize,
    /// Micro-batches trained since this process started (Burn's epoch numbers say nothing
    /// about steps once a run was resumed mid-epoch).
    micro_batches: usize,
    train: HashMap<String, f64>,
    epoch_train_loss: (f64, usize),
    val_loss: (f64, usize),
    last_val: Option<f64>,
}

impl ProgressRenderer {
    pub fn new(max_iters: usize, start_step: usize, grad_accumulation: usize) -> Self {
        let bar = ProgressBar::new(max_iters as u64).with_position(start_step as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos:>6}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("static template is valid")
            .progress_chars("█▉▊▋▌▍▎▏ "),
        );
        Self {
            bar,
            names: HashMap::new(),
            grad_accumulation,
            max_iters,
            start_step,
            micro_batches: 0,
            train: HashMap::new(),
            epoch_train_loss: (0.0, 0),
            val_loss: (0.0, 0),
            last_val: None,
        }
    }

    /// Draws nothing: replicas other than the first of a data-parallel run train silently.
    pub fn hidden(self) -> Self {
        self.bar.set_draw_target(ProgressDrawTarget::hidden());
        self
    }

    fn numeric(&self, state: &MetricState) -> Option<(String, f64)> {
        match state {
            MetricState::Numeric(entry, value) => {
                Some((self.names.get(&entry.metric_id)?.clone(), value.current()))
            }
            MetricState::Generic(_) => None,
        }
    }

    fn step(&self) -> usize {
        (self.start_step + self.micro_batches / self.grad_accumulation).min(self.max_iters)
    }

    fn message(&self) -> String {
        let get = |k: &str| self.train.get(k).copied();
        let mut parts = Vec::new();
        if let Some(loss) = get(LOSS) {
            parts.push(format!("loss {loss:.4}"));
        }
        if let Some(val) = self.last_val {
            parts.push(format!("val {val:.4}"));
        }
        if let Some(lr) = get(LEARNING_RATE) {
            parts.push(format!("lr {lr:.2e}"));
        }
        if let Some(rate) = get(TOKENS_PER_SEC).filter(|&r| r > 0.0) {
            parts.push(format!("{rate:.0} tok/s"));
        }
        parts.join(" | ")
    }
}

impl MetricsRendererTraining for ProgressRenderer {
    fn update_train(&mut self, state: MetricState) {
        if let Some((name, value)) = self.numeric(&state) {
            if name == LOSS {
                self.epoch_train_loss.0 += value;
                self.epoch_train_loss.1 += 1;
            }
            self.train.insert(name, value);
        }
    }

    /// Validation batches weigh by their tokens, as in `metrics.jsonl`.
    fn update_valid(&mut self, state: MetricState) {
        if let Some((_, value)) = self.numeric(&state).filter(|(name, _)| name == LOSS) {
            let MetricState::Numeric(_, entry) = &state else { return };
            let tokens = entry_weight(entry);
            self.val_loss.0 += value * tokens as f64;
            self.val_loss.1 += tokens;
        }
    }

    fn render_train(&mut self, _: TrainingProgress, _: Vec<ProgressType>) {
        self.micro_batches += 1;
        self.bar.set_position(self.step() as u64);
        self.bar.set_message(self.message());
    }

    fn render_valid(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        let Some(progress) = item.progress else {
            return;
        };
        if progress.items_processed < progress.items_total || self.val_loss.1 == 0 {
            self.bar.set_message(format!("{} | validating", self.message()));
            return;
        }
        let val = self.val_loss.0 / self.val_loss.1 as f64;
        let train = self.epoch_train_loss.0 / self.epoch_train_loss.1.max(1) as f64;
        let step = self.step();
        self.bar.suspend(|| eprintln!("step {step}: train loss {train:.4}, val loss {val:.4}"));
        self.last_val = Some(val);
        self.val_loss = (0.0, 0);
        self.epoch_train_loss = (0.0, 0);
        self.bar.set_message(self.message());
    }

    fn on_train_end(
        &mut self,
        _: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        self.bar.finish_and_clear();
        Ok(())
    }
}

impl MetricsRendererEvaluation for ProgressRenderer {
    fn update_test(&mut self, _: EvaluationName, _: MetricState) {}
    fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}
}

impl MetricsRenderer for ProgressRenderer {
    fn manual_close(&mut self) {
        self.bar.finish_and_clear();
    }

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id, definition.name);
    }
}
