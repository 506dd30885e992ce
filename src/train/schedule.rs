//! Linear warmup, then cosine decay to `min_lr` (nanoGPT's `get_lr`) or inverse-square-root
//! decay (the Noam schedule of "Attention Is All You Need"), counted in optimizer steps. The
//! Learner asks for a rate before every micro-batch, so the scheduler divides its call count
//! by the accumulation factor.

use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::tensor::backend::Backend;

use crate::config::{ScheduleKind, TrainingSection};

#[derive(Debug, Clone)]
pub struct WarmupSchedule {
    pub kind: ScheduleKind,
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup_iters: usize,
    pub decay_iters: usize,
    pub grad_accumulation: usize,
    /// Micro-batches seen so far (the scheduler's whole state).
    calls: usize,
}

impl WarmupSchedule {
    pub fn new(
        max_lr: f64,
        min_lr: f64,
        warmup_iters: usize,
        decay_iters: usize,
        grad_accumulation: usize,
    ) -> Self {
        Self {
            kind: ScheduleKind::Cosine,
            max_lr,
            min_lr,
            warmup_iters,
            decay_iters,
            grad_accumulation,
            calls: 0,
        }
    }

    pub fn with_kind(self, kind: ScheduleKind) -> Self {
        Self { kind, ..self }
    }

    /// The training section's schedule.
    pub fn of(t: &TrainingSection) -> Self {
        Self::new(t.learning_rate, t.min_lr, t.warmup_iters, t.max_iters, t.grad_accumulation)
            .with_kind(t.schedule)
    }

    /// Learning rate at optimizer step `it` (0-based).
    pub fn lr_at(&self, it: usize) -> f64 {
        if it < self.warmup_iters {
            return self.max_lr * (it + 1) as f64 / (self.warmup_iters + 1) as f64;
        }
        if self.kind == ScheduleKind::Noam {
            return self.max_lr * ((self.warmup_iters + 1) as f64 / (it + 1) as f64).sqrt();
        }
        if it > self.decay_iters {
            return self.min_lr;
        }
        let span = (self.decay_iters - self.warmup_iters).max(1) as f64;
        let progress = (it - self.warmup_iters) as f64 / span;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr + coeff * (self.max_lr - self.min_lr)
    }
}

impl LrScheduler for WarmupSchedule {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        let it = self.calls / self.grad_accumulation;
        self.calls += 1;
        self.lr_at(it)
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.calls
    }

    fn load_record<B: Backend>(mut self, calls: usize) -> Self {
        self.calls = calls;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_min() {
        let s = WarmupSchedule::new(1e-3, 1e-4, 100, 2000, 1);
        assert!((s.lr_at(0) - 1e-3 / 101.0).abs() < 1e-12);
        assert!((s.lr_at(100) - 1e-3).abs() < 1e-12);
        assert!((s.lr_at(1050) - 5.5e-4).abs() < 1e-9);
        assert!((s.lr_at(2000) - 1e-4).abs() < 1e-12);
        assert_eq!(s.lr_at(5000), 1e-4);
    }

    #[test]
    fn noam_warms_up_then_decays_as_inverse_square_root() {
        let s = WarmupSchedule::new(1e-3, 0.0, 99, 1000, 1).with_kind(ScheduleKind::Noam);
        assert!((s.lr_at(98) - 0.99e-3).abs() < 1e-12);
        assert!((s.lr_at(99) - 1e-3).abs() < 1e-12);
        assert!((s.lr_at(399) - 0.5e-3).abs() < 1e-12);
        assert!(s.lr_at(5000) < s.lr_at(4000));
    }

    #[test]
    fn counts_optimizer_steps_under_accumulation() {
        let mut s = WarmupSchedule::new(1.0, 0.0, 10, 100, 4);
        let rates: Vec<f64> = (0..8).map(|_| s.step()).collect();
        assert!(rates[..4].iter().all(|&r| r == rates[0]));
        assert!(rates[4] > rates[3]);
    }
}
