//! AdamW with decoupled weight decay on matrices only, behind global-norm gradient clipping.
//!
//! Burn's own AdamW decays every parameter and its clipping works per tensor; nanoGPT (and
//! PyTorch's `clip_grad_norm_`) decay only ≥2-D weights and clip the norm of all gradients
//! taken together. Both are reproduced here on top of Burn's `SimpleOptimizer` machinery.

use std::sync::Arc;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, LearningRate, MultiGradientsParams, Optimizer, SimpleOptimizer};
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;

use super::control::RunControl;
use crate::distributed::Exchange;

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

impl<B: Backend> SimpleOptimizer<B> for AdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let (b1, b2) = (self.beta1, self.beta2);
        let state = match state {
            Some(s) => AdamWState {
                moment_1: s.moment_1 * b1 + grad.clone() * (1.0 - b1),
                moment_2: s.moment_2 * b2 + grad.square() * (1.0 - b2),
                time: s.time + 1,
            },
            None => AdamWState { moment_1: grad.clone() * (1.0 - b1), moment_2: grad.square() * (1.0 - b2), time: 1 },
        };
        let t = state.time as i32;
        let m_hat = state.moment_1.clone() / (1.0 - b1.powi(t));
        let v_hat = state.moment_2.clone() / (1.0 - b2.powi(t));
        // Matrices (linear weights, embeddings) decay; biases and norm gains (1-D) do not.
        let param = if D >= 2 && self.weight_decay > 0.0 { param * (1.0 - lr * self.weight_decay) } else { param };
        let param = param - m_hat / (v_hat.sqrt() + self.epsilon) * lr;
        (param, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        AdamWState { moment_1: state.moment_1.to_device(device), moment_2: state.moment_2.to_device(device), time: state.time }
    }
}

/// Scales the summed gradients of an accumulation window back to a mean, clips their global
/// norm to `max_norm` (0 = off), then lets the inner optimizer step.
///
/// Under a [`RunControl`] it also counts steps and refuses a step whose gradient norm is not
/// finite: the weights stay as they were and the run is told it diverged.
#[derive(Clone)]
pub struct ClippedAdamW<M: AutodiffModule<B>, B: AutodiffBackend> {
    inner: OptimizerAdaptor<AdamW, M, B>,
    max_norm: f64,
    grad_scale: f64,
    control: Option<Arc<RunControl>>,
    exchange: Option<Arc<Exchange>>,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> ClippedAdamW<M, B> {
    pub fn new(adamw: AdamW, max_norm: f64, grad_accumulation: usize) -> Self {
        Self { inner: OptimizerAdaptor::from(adamw), max_norm, grad_scale: 1.0 / grad_accumulation as f64, control: None, exchange: None }
    }

    pub fn with_control(self, control: Arc<RunControl>) -> Self {
        Self { control: Some(control), ..self }
    }

    /// A replica of a data-parallel run: each step first averages the gradients over all
    /// replicas (so clipping and the update see the whole step's batch) and settles whether
    /// any replica asked to stop.
    pub fn with_exchange(self, exchange: Arc<Exchange>) -> Self {
        Self { exchange: Some(exchange), ..self }
    }

    /// The replicas' mean gradients, or `None` (the run told why) when the exchange failed.
    fn exchanged(&self, module: &M, grads: GradientsParams) -> Option<GradientsParams> {
        let (Some(exchange), Some(control)) = (&self.exchange, &self.control) else {
            return Some(grads);
        };
        match exchange.average(module, grads, control.wants_stop()) {
            Ok((grads, stop)) => {
                if stop {
                    control.agree_stop();
                }
                Some(grads)
            }
            Err(e) => {
                control.interrupter().stop(Some(&format!("{e:#}")));
                None
            }
        }
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Optimizer<M, B> for ClippedAdamW<M, B> {
    type Record = <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record;

    fn step(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        let Some(mut grads) = self.exchanged(&module, grads) else {
            return module;
        };
        let mut factor = self.grad_scale;
        if self.max_norm > 0.0 || self.control.is_some() {
            let norm = global_norm(&module, &grads) * self.grad_scale;
            if let Some(control) = self.control.as_ref().filter(|_| !norm.is_finite()) {
                control.diverged(norm);
                return module;
            }
            if self.max_norm > 0.0 && norm > self.max_norm {
                factor *= self.max_norm / (norm + 1e-6);
            }
        }
        if factor != 1.0 {
            module.visit(&mut ScaleGrads::<B> { grads: &mut grads, factor, _b: Default::default() });
        }
        let module = self.inner.step(lr, module, grads);
        if let Some(control) = &self.control {
            control.step_done();
        }
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
pub fn global_norm<M: AutodiffModule<B>, B: AutodiffBackend>(module: &M, grads: &GradientsParams) -> f64 {
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
