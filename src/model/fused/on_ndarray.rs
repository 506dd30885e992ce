//! GELU on ndarray with autodiff, differentiated exactly and in one pass.
//!
//! Burn 0.21's GELU computes `x·Φ(x)` with `erf`, but its default backward (the one ndarray
//! inherits) is the derivative of the tanh approximation: about fifteen passes over the
//! tensor, among them a cube through `powf` and a `tanh`, which `perf` puts at a fifth of a
//! `small.toml` training step on ndarray. libtorch and flex have an exact backward of their own.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ndarray::{NdArray, NdArrayTensor};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::ActivationOps;
use burn::tensor::TensorPrimitive;
use ndarray::{ArcArray, IxDyn, Zip};

type Ad = Autodiff<NdArray<f32>>;

/// [`super::gelu`] for `Autodiff<NdArray<f32>>`: the forward is ndarray's own; the backward
/// is `grad · (Φ(x) + x·φ(x))`.
pub(super) fn gelu<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    let x = super::cast::<B, Ad, D>(x)?.into_primitive().tensor();
    let NdArrayTensor::F32(storage) = &x.primitive else {
        return None;
    };
    let saved = storage.clone().into_shared();
    let y = NdArray::<f32>::gelu(x.primitive.clone());
    let y = match ExactGelu.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(saved, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    super::back(Tensor::<Ad, D>::from_primitive(TensorPrimitive::Float(y)))
}

/// `d/dx x·Φ(x) = Φ(x) + x·φ(x)`, with `Φ` and `φ` the standard normal's CDF and density.
fn gelu_derivative(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * x * x).exp() * (0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
    cdf + x * pdf
}

#[derive(Debug)]
struct ExactGelu;

impl Backward<NdArray<f32>, 1> for ExactGelu {
    /// The input.
    type State = ArcArray<f32, IxDyn>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<NdArray<f32>>(&ops.node);
        let [Some(parent)] = ops.parents else {
            return;
        };
        let NdArrayTensor::F32(grad) = grad else {
            unreachable!("the gradient of an f32 GELU is f32");
        };
        let dx = Zip::from(&ops.state).and(&grad.view()).map_collect(|&x, &g| g * gelu_derivative(x));
        grads.register::<NdArray<f32>>(parent.id, NdArrayTensor::from(dx.into_shared()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_gradient_is_the_exact_derivative() {
        let xs: Vec<f32> = (-60..=60).map(|i| i as f32 / 10.0).collect();
        let x = Tensor::<Ad, 1>::from_floats(xs.as_slice(), &Default::default()).require_grad();
        let y = gelu(&x).expect("Autodiff<NdArray<f32>> has the exact GELU");
        let burns = burn::tensor::activation::gelu(x.clone());
        let forward: f32 = (y.clone().inner() - burns.inner()).abs().max().into_scalar();
        assert_eq!(forward, 0.0, "the forward is ndarray's own");

        let grad = x.grad(&y.sum().backward()).expect("x is a leaf").into_data();
        let grad = grad.as_slice::<f32>().expect("f32");
        // Central differences of x·Φ(x) in f64, with Φ from erf.
        let f = |x: f64| x * 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        for (x, g) in xs.iter().map(|&x| x as f64).zip(grad) {
            let h = 1e-4;
            let numeric = (f(x + h) - f(x - h)) / (2.0 * h);
            assert!((*g as f64 - numeric).abs() < 1e-5, "x = {x}: gradient {g}, numerically {numeric}");
        }
    }

    #[test]
    fn other_backends_take_burns_path() {
        let x = Tensor::<NdArray<f32>, 1>::zeros([3], &Default::default());
        assert!(gelu(&x).is_none(), "without autodiff there is no backward to replace");
    }
}
