//! AdamW with decoupled weight decay on matrices only, behind global-norm gradient clipping;
//! and what a supervised run adds around it.
//!
//! Burn's own AdamW decays every parameter and its clipping works per tensor; nanoGPT (and
//! PyTorch's `clip_grad_norm_`) decay only ≥2-D weights and clip the norm of all gradients
//! taken together. Both are reproduced here on top of Burn's `SimpleOptimizer` machinery; the
//! update of one parameter is [`KernelBackend::adamw_update`]. What a run adds around each
//! step — the exchange between replicas, divergence, counting — is a [`StepGuard`].

use std::sync::Arc;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{
    GradientsParams, LearningRate, MultiGradientsParams, Optimizer, SimpleOptimizer,
};
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;

use crate::config::TrainingSection;
use crate::distributed::Exchange;
use crate::kernels::{AdamWStep, KernelBackend};
use crate::run::RunControl;

#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

/// First and second moment estimates of one parameter, and its step count.
#[derive(Record, Clone)]
pub struct AdamWState<B: Backend, const D: usize> {
    pub moment_1: Tensor<B, D>,
    pub moment_2: Tensor<B, D>,
    pub time: usize,
}

impl<B: KernelBackend> SimpleOptimizer<B> for AdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        // Zero moments are what the first step starts from; the update reads them as such.
        let (moment_1, moment_2, time) = match state {
            Some(s) => (s.moment_1, s.moment_2, s.time + 1),
            None => (grad.zeros_like(), grad.zeros_like(), 1),
        };
        // Matrices (linear weights, embeddings) decay; biases and norm gains (1-D) do not.
        let decays = D >= 2 && self.weight_decay > 0.0;
        let step = self.scalars(lr, time, decays);
        let [param, moment_1, moment_2] = B::adamw_update([param, moment_1, moment_2], grad, step);
        let state = AdamWState { moment_1, moment_2, time };
        (param, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        AdamWState {
            moment_1: state.moment_1.to_device(device),
            moment_2: state.moment_2.to_device(device),
            time: state.time,
        }
    }
}

impl AdamW {
    /// The training section's AdamW.
    pub fn of(training: &TrainingSection) -> Self {
        Self {
            beta1: training.beta1,
            beta2: training.beta2,
            epsilon: 1e-8,
            weight_decay: training.weight_decay,
        }
    }

    /// Step `time`'s scalars in PyTorch's formulation: `step_size = lr·√(1-β₂ᵗ)/(1-β₁ᵗ)`,
    /// `epsilon = ε·√(1-β₂ᵗ)` and `decay = 1 - lr·λ`, the same as `lr · m̂ / (√v̂ + ε)` with
    /// `m̂, v̂` the bias-corrected moments, in fewer passes.
    fn scalars(&self, lr: f64, time: usize, decays: bool) -> AdamWStep {
        let t = time as i32;
        let correction_2 = (1.0 - self.beta2.powi(t)).sqrt();
        AdamWStep {
            beta1: self.beta1,
            beta2: self.beta2,
            decay: if decays { 1.0 - lr * self.weight_decay } else { 1.0 },
            step_size: lr * correction_2 / (1.0 - self.beta1.powi(t)),
            epsilon: self.epsilon * correction_2,
        }
    }
}

/// Scales the summed gradients of an accumulation window back to a mean, clips their global
/// norm to `max_norm` (0 = off), then lets AdamW step; a [`StepGuard`] sees every step.
#[derive(Clone)]
pub struct ClippedAdamW<M, B, G = ()>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend<InnerBackend: KernelBackend>,
{
    inner: OptimizerAdaptor<AdamW, M, B>,
    max_norm: f64,
    grad_scale: f64,
    guard: G,
}

/// What a run adds around an optimizer step; `()` adds nothing.
pub trait StepGuard: Clone + Send + Sync {
    /// The gradients to step with, or `None` to skip the step.
    fn gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        _module: &M,
        grads: GradientsParams,
    ) -> Option<GradientsParams> {
        Some(grads)
    }

    /// Whether it needs the global norm of every step (else only clipping computes it).
    fn watches_norm(&self) -> bool {
        false
    }

    /// Whether a step whose mean gradient has this global norm may be applied.
    fn admits(&self, _norm: f64) -> bool {
        true
    }

    fn step_done(&self) {}
}

impl StepGuard for () {}

/// The guard of a run under a [`RunControl`]: each step first averages the gradients with
/// the other replicas (so clipping and the update see the whole step's batch) and settles
/// whether any replica asked to stop; a step whose gradient norm is not finite is refused,
/// the weights kept and the run told it diverged; every step taken is counted.
#[derive(Clone)]
pub struct RunGuard {
    pub control: Arc<RunControl>,
    pub exchange: Option<Arc<Exchange>>,
}

impl StepGuard for RunGuard {
    fn gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        grads: GradientsParams,
    ) -> Option<GradientsParams> {
        let Some(exchange) = &self.exchange else {
            return Some(grads);
        };
        match exchange.average(module, grads, self.control.wants_stop()) {
            Ok((grads, stop)) => {
                if stop {
                    self.control.agree_stop();
                }
                Some(grads)
            }
            Err(e) => {
                self.control.interrupter().stop(Some(&format!("{e:#}")));
                None
            }
        }
    }

    fn watches_norm(&self) -> bool {
        true
    }

    fn admits(&self, norm: f64) -> bool {
        self.control.record_grad_norm(norm);
        if !norm.is_finite() {
            self.control.diverged(norm);
        }
        norm.is_finite()
    }

    fn step_done(&self) {
        self.control.step_done();
    }
}

impl<M, B> ClippedAdamW<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend<InnerBackend: KernelBackend>,
{
    pub fn new(adamw: AdamW, max_norm: f64, grad_accumulation: usize) -> Self {
        Self {
            inner: OptimizerAdaptor::from(adamw),
            max_norm,
            grad_scale: 1.0 / grad_accumulation as f64,
            guard: (),
        }
    }

    /// The training section's optimizer.
    pub fn of(training: &TrainingSection) -> Self {
        let adamw = AdamW::of(training);
        Self::new(adamw, training.grad_clip, training.grad_accumulation)
    }

    /// The same optimizer, its steps seen by `guard`.
    pub fn guarded<G: StepGuard>(self, guard: G) -> ClippedAdamW<M, B, G> {
        let Self { inner, max_norm, grad_scale, .. } = self;
        ClippedAdamW { inner, max_norm, grad_scale, guard }
    }
}

impl<M, B, G> Optimizer<M, B> for ClippedAdamW<M, B, G>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend<InnerBackend: KernelBackend>,
    G: StepGuard,
{
    type Record = <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record;

    fn step(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        let Some(mut grads) = self.guard.gradients(&module, grads) else {
            return module;
        };
        let mut factor = self.grad_scale;
        if self.max_norm > 0.0 || self.guard.watches_norm() {
            let norm = global_norm(&module, &grads) * self.grad_scale;
            if !self.guard.admits(norm) {
                return module;
            }
            if self.max_norm > 0.0 && norm > self.max_norm {
                factor *= self.max_norm / (norm + 1e-6);
            }
        }
        if factor != 1.0 {
            let mut scale = ScaleGrads::<B> { grads: &mut grads, factor, _b: Default::default() };
            module.visit(&mut scale);
        }
        let module = self.inner.step(lr, module, grads);
        self.guard.step_done();
        module
    }

    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        self.inner.step_multi(lr, module, grads)
    }

    fn to_record(&self) -> Self::Record {
        self.inner.to_record()
    }

    fn load_record(mut self, record: Self::Record) -> Self {
        self.inner = self.inner.load_record(record);
        self
    }
}

/// L2 norm of all gradients of `module`'s parameters taken as one vector.
pub fn global_norm<M: AutodiffModule<B>, B: AutodiffBackend>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut visitor = SquaredNorm::<B> { grads, sum: None };
    module.visit(&mut visitor);
    visitor.sum.map_or(0.0, |s| s.into_scalar().elem::<f64>().sqrt())
}

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let squares = grad.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(sum) => sum + squares,
                None => squares,
            });
        }
    }
}

struct ScaleGrads<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, grad * self.factor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_is_pytorchs_bias_corrected_step() {
        let adamw = AdamW { beta1: 0.9, beta2: 0.99, epsilon: 1e-8, weight_decay: 0.1 };
        let u = adamw.scalars(1e-3, 3, false);
        let (m, v) = (0.2_f64, 0.04_f64);
        let textbook =
            1e-3 * (m / (1.0 - 0.9_f64.powi(3))) / ((v / (1.0 - 0.99_f64.powi(3))).sqrt() + 1e-8);
        assert!((u.step_size * m / (v.sqrt() + u.epsilon) - textbook).abs() < 1e-15);
        assert_eq!(u.decay, 1.0, "1-D parameters do not decay");
    }
}
