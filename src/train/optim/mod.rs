//! AdamW with decoupled weight decay on matrices only, behind global-norm gradient clipping.
//!
//! Burn's own AdamW decays every parameter and its clipping works per tensor; nanoGPT (and
//! PyTorch's `clip_grad_norm_`) decay only ≥2-D weights and clip the norm of all gradients
//! taken together. Both are reproduced here on top of Burn's `SimpleOptimizer` machinery.
//!
//! The update of one parameter ([`Update`]) runs as the backend's own kernels where kiln has
//! them (libtorch: [`on_libtorch`], ndarray: [`on_ndarray`]) and in Burn's operations elsewhere.

use std::sync::Arc;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{
    GradientsParams, LearningRate, MultiGradientsParams, Optimizer, SimpleOptimizer,
};
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;

use super::control::RunControl;
use crate::distributed::Exchange;

#[cfg(feature = "tch")]
mod on_libtorch;
#[cfg(feature = "ndarray")]
mod on_ndarray;

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
        // Zero moments are what the first step starts from; the update reads them as such.
        let (moment_1, moment_2, time) = match state {
            Some(s) => (s.moment_1, s.moment_2, s.time + 1),
            None => (grad.zeros_like(), grad.zeros_like(), 1),
        };
        // Matrices (linear weights, embeddings) decay; biases and norm gains (1-D) do not.
        let decays = D >= 2 && self.weight_decay > 0.0;
        let update = Update::new(self, lr, time, decays);
        let slot = Slot {
            param,
            grad,
            moment_1,
            moment_2,
        };
        let (param, moment_1, moment_2) =
            fused_update(slot, update).unwrap_or_else(|slot| update.with_ops(slot));
        (
            param,
            Some(AdamWState {
                moment_1,
                moment_2,
                time,
            }),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        AdamWState {
            moment_1: state.moment_1.to_device(device),
            moment_2: state.moment_2.to_device(device),
            time: state.time,
        }
    }
}

/// The scalars of one AdamW update in PyTorch's formulation, which folds both bias corrections
/// into the step size and epsilon so that the update is
///
/// ```text
/// m ← β₁·m + (1-β₁)·g      v ← β₂·v + (1-β₂)·g²
/// θ ← θ·decay − step_size · m / (√v + epsilon)
/// ```
///
/// with `step_size = lr·√(1-β₂ᵗ)/(1-β₁ᵗ)`, `epsilon = ε·√(1-β₂ᵗ)` and `decay = 1 - lr·λ`:
/// the same as `lr · m̂ / (√v̂ + ε)` with `m̂, v̂` the bias-corrected moments, in fewer passes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Update {
    pub beta1: f64,
    pub beta2: f64,
    pub decay: f64,
    pub step_size: f64,
    pub epsilon: f64,
}

impl Update {
    fn new(adamw: &AdamW, lr: f64, time: usize, decays: bool) -> Self {
        let t = time as i32;
        let correction_2 = (1.0 - adamw.beta2.powi(t)).sqrt();
        Self {
            beta1: adamw.beta1,
            beta2: adamw.beta2,
            decay: if decays {
                1.0 - lr * adamw.weight_decay
            } else {
                1.0
            },
            step_size: lr * correction_2 / (1.0 - adamw.beta1.powi(t)),
            epsilon: adamw.epsilon * correction_2,
        }
    }

    /// The update in Burn's tensor operations, for backends without a kernel of their own.
    fn with_ops<B: Backend, const D: usize>(self, slot: Slot<B, D>) -> Updated<B, D> {
        let Slot {
            param,
            grad,
            moment_1,
            moment_2,
        } = slot;
        let moment_1 = moment_1 * self.beta1 + grad.clone() * (1.0 - self.beta1);
        let moment_2 = moment_2 * self.beta2 + grad.square() * (1.0 - self.beta2);
        let param = if self.decay != 1.0 {
            param * self.decay
        } else {
            param
        };
        let param =
            param - moment_1.clone() / (moment_2.clone().sqrt() + self.epsilon) * self.step_size;
        (param, moment_1, moment_2)
    }
}

/// One parameter's tensors going into an [`Update`], moved so that a kernel may write them in place.
pub(crate) struct Slot<B: Backend, const D: usize> {
    pub param: Tensor<B, D>,
    pub grad: Tensor<B, D>,
    pub moment_1: Tensor<B, D>,
    pub moment_2: Tensor<B, D>,
}

/// The parameter and moments after an [`Update`].
pub(crate) type Updated<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>);

/// A kernel's results, computed on `IB`, as the `B` they were moved from.
#[cfg(any(feature = "ndarray", feature = "tch"))]
fn updated_as<IB: Backend, B: Backend, const D: usize>(
    updated: [Tensor<IB, D>; 3],
) -> Updated<B, D> {
    match crate::model::fused::moved_as::<_, [Tensor<B, D>; 3]>(updated) {
        Ok([param, moment_1, moment_2]) => (param, moment_1, moment_2),
        Err(_) => unreachable!("a kernel runs only on the backend its slot was moved to"),
    }
}

/// The update through a kernel of the backend's own, or the slot back untouched where there is
/// none. In Burn's operations the update is a dozen passes over the parameter, each into a
/// fresh tensor; the kernels make six (libtorch) or one (ndarray), writing in place.
fn fused_update<B: Backend, const D: usize>(
    slot: Slot<B, D>,
    update: Update,
) -> Result<Updated<B, D>, Slot<B, D>> {
    let result = Err(slot);
    #[cfg(feature = "tch")]
    let result = result.or_else(|slot| on_libtorch::update(slot, update));
    #[cfg(feature = "ndarray")]
    let result = result.or_else(|slot| on_ndarray::update(slot, update));
    let _ = update;
    result
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
        Self {
            inner: OptimizerAdaptor::from(adamw),
            max_norm,
            grad_scale: 1.0 / grad_accumulation as f64,
            control: None,
            exchange: None,
        }
    }

    pub fn with_control(self, control: Arc<RunControl>) -> Self {
        Self {
            control: Some(control),
            ..self
        }
    }

    /// A replica of a data-parallel run: each step first averages the gradients over all
    /// replicas (so clipping and the update see the whole step's batch) and settles whether
    /// any replica asked to stop.
    pub fn with_exchange(self, exchange: Arc<Exchange>) -> Self {
        Self {
            exchange: Some(exchange),
            ..self
        }
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
            module.visit(&mut ScaleGrads::<B> {
                grads: &mut grads,
                factor,
                _b: Default::default(),
            });
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
pub fn global_norm<M: AutodiffModule<B>, B: AutodiffBackend>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut visitor = SquaredNorm::<B> { grads, sum: None };
    module.visit(&mut visitor);
    visitor
        .sum
        .map_or(0.0, |s| s.into_scalar().elem::<f64>().sqrt())
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

    /// A step of the backend's own kernel against the same step in Burn's operations, from
    /// moments that are not zero; and a tensor sharing the parameter's storage (a checkpoint
    /// being written, say) keeps its values.
    fn kernel_matches_ops<B: Backend>(device: &B::Device) {
        let random = |scale: f64| {
            Tensor::<B, 2>::random(
                [37, 19],
                burn::tensor::Distribution::Normal(0.0, scale),
                device,
            )
        };
        let (param, grad, moment_1) = (random(1.0), random(0.1), random(0.01));
        let moment_2 = random(0.01).abs();
        let update = Update::new(
            &AdamW {
                beta1: 0.9,
                beta2: 0.99,
                epsilon: 1e-8,
                weight_decay: 0.1,
            },
            1e-3,
            7,
            true,
        );
        let slot = || Slot {
            param: param.clone(),
            grad: grad.clone(),
            moment_1: moment_1.clone(),
            moment_2: moment_2.clone(),
        };
        let before = param.clone().into_data();
        let Ok(fused) = fused_update(slot(), update) else {
            panic!("{} has an AdamW kernel", std::any::type_name::<B>());
        };
        param.clone().into_data().assert_eq(&before, true);
        let by_ops = update.with_ops(slot());
        for (name, (a, b)) in ["param", "moment_1", "moment_2"].iter().zip([
            (fused.0, by_ops.0),
            (fused.1, by_ops.1),
            (fused.2, by_ops.2),
        ]) {
            let diff: f32 = (a - b).abs().max().into_scalar().elem();
            assert!(diff < 1e-6, "{name} differs by {diff}");
        }
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn ndarray_kernel_matches_burns_ops() {
        kernel_matches_ops::<burn::backend::NdArray<f32>>(&Default::default());
    }

    #[cfg(feature = "tch")]
    #[test]
    fn libtorch_kernel_matches_burns_ops() {
        kernel_matches_ops::<burn::backend::LibTorch<f32>>(
            &burn::backend::libtorch::LibTorchDevice::Cpu,
        );
    }

    #[test]
    fn update_is_pytorchs_bias_corrected_step() {
        let adamw = AdamW {
            beta1: 0.9,
            beta2: 0.99,
            epsilon: 1e-8,
            weight_decay: 0.1,
        };
        let u = Update::new(&adamw, 1e-3, 3, false);
        let (m, v) = (0.2_f64, 0.04_f64);
        let textbook =
            1e-3 * (m / (1.0 - 0.9_f64.powi(3))) / ((v / (1.0 - 0.99_f64.powi(3))).sqrt() + 1e-8);
        assert!((u.step_size * m / (v.sqrt() + u.epsilon) - textbook).abs() < 1e-15);
        assert_eq!(u.decay, 1.0, "1-D parameters do not decay");
    }
}
