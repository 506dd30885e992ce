//! GELU and LayerNorm on ndarray with autodiff, each differentiated in one pass.
//!
//! - Burn 0.21's GELU computes `x·Φ(x)` with `erf`, but its default backward (the one ndarray
//!   inherits) is the derivative of the tanh approximation: about fifteen passes over the
//!   tensor, among them a cube through `powf` and a `tanh`, which `perf` puts at a fifth of a
//!   `small.toml` training step on ndarray. libtorch and flex have an exact backward of their
//!   own.
//! - LayerNorm is, under autodiff, a mean, a subtraction, a square, another mean, a square
//!   root, a division, a scale and a shift, each recorded with its own backward. Here the
//!   forward is ndarray's own LayerNorm and the backward one pass over the rows.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::ndarray::{NdArray, NdArrayTensor};
use burn::prelude::*;
use burn::tensor::ops::{ActivationOps, ModuleOps};
use ndarray::{ArcArray, Array1, ArrayD, ArrayViewD, Axis, IxDyn, Zip};

/// [`super::gelu`] for `Autodiff<NdArray<f32>>`: the forward is ndarray's own; the backward
/// is `grad · (Φ(x) + x·φ(x))`.
pub(super) fn gelu<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    let x = super::cast::<B, NdArray<f32>, D>(x)?;
    let NdArrayTensor::F32(input) = &x.primitive else {
        return None;
    };
    let y = NdArray::<f32>::gelu(x.primitive.clone());
    super::back::<NdArray<f32>, B, D>(super::record(ExactGelu, [&x], || input.clone().into_shared(), y))
}

/// [`super::layer_norm`] for `Autodiff<NdArray<f32>>`: the forward is ndarray's own; the
/// backward is one pass over the rows.
pub(super) fn layer_norm<B: Backend, const D: usize>(x: &Tensor<B, D>, gamma: &Tensor<B, 1>, beta: Option<&Tensor<B, 1>>, epsilon: f64) -> Option<Tensor<B, D>> {
    let x = super::cast::<B, NdArray<f32>, D>(x)?;
    let gamma = super::cast::<B, NdArray<f32>, 1>(gamma)?;
    let beta = match beta {
        Some(beta) => Some(super::cast::<B, NdArray<f32>, 1>(beta)?),
        None => None,
    };
    let (NdArrayTensor::F32(x_saved), NdArrayTensor::F32(gamma_saved)) = (&x.primitive, &gamma.primitive) else {
        return None;
    };
    let saved = || LayerNormInput { x: x_saved.clone().into_shared(), gamma: gamma_saved.clone().into_shared(), epsilon: epsilon as f32 };
    let y = NdArray::<f32>::layer_norm(x.primitive.clone(), gamma.primitive.clone(), beta.as_ref().map(|b| b.primitive.clone()), epsilon);
    let y = match &beta {
        Some(beta) => super::record(LayerNormBackward, [&x, &gamma, beta], saved, y),
        None => super::record(LayerNormBackward, [&x, &gamma], saved, y),
    };
    super::back::<NdArray<f32>, B, D>(y)
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

/// What LayerNorm's backward needs: its input `[..., d]`, its weight and its epsilon.
#[derive(Debug, Clone)]
struct LayerNormInput {
    x: ArcArray<f32, IxDyn>,
    gamma: ArcArray<f32, IxDyn>,
    epsilon: f32,
}

impl LayerNormInput {
    /// The gradients of the input, the weight and the shift from `grad`, the output's.
    ///
    /// Per row, with x̂ = (x - mean)·rstd and g = grad·gamma:
    /// dx = rstd · (g - mean(g) - x̂ · mean(g·x̂)); over the rows, dgamma = Σ grad·x̂ and
    /// dbeta = Σ grad.
    fn gradients(&self, grad: ArrayViewD<f32>) -> (ArrayD<f32>, Array1<f32>, Array1<f32>) {
        let last = Axis(self.x.ndim() - 1);
        let d = self.x.len_of(last);
        let gamma: Vec<f32> = self.gamma.iter().copied().collect();
        let mut dx = ArrayD::zeros(self.x.raw_dim());
        let (mut dgamma, mut dbeta) = (Array1::zeros(d), Array1::zeros(d));
        Zip::from(self.x.lanes(last)).and(grad.lanes(last)).and(dx.lanes_mut(last)).for_each(|x, grad, mut dx| {
            let mean = x.sum() / d as f32;
            let var = x.fold(0.0, |sum, &v| sum + (v - mean) * (v - mean)) / d as f32;
            let rstd = 1.0 / (var + self.epsilon).sqrt();
            let (mut g_sum, mut gx_sum) = (0.0, 0.0);
            for ((&x, &grad), &w) in x.iter().zip(&grad).zip(&gamma) {
                g_sum += grad * w;
                gx_sum += grad * w * (x - mean) * rstd;
            }
            let (g_mean, gx_mean) = (g_sum / d as f32, gx_sum / d as f32);
            for (i, ((&x, &grad), dx)) in x.iter().zip(&grad).zip(dx.iter_mut()).enumerate() {
                let x_hat = (x - mean) * rstd;
                *dx = rstd * (grad * gamma[i] - g_mean - x_hat * gx_mean);
                dgamma[i] += grad * x_hat;
                dbeta[i] += grad;
            }
        });
        (dx, dgamma, dbeta)
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl<const N: usize> Backward<NdArray<f32>, N> for LayerNormBackward {
    type State = LayerNormInput;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let NdArrayTensor::F32(grad) = grads.consume::<NdArray<f32>>(&ops.node) else {
            unreachable!("the gradient of an f32 LayerNorm is f32");
        };
        let (dx, dgamma, dbeta) = ops.state.gradients(grad.view());
        let parent_grads = [dx.into_shared(), dgamma.into_dyn().into_shared(), dbeta.into_dyn().into_shared()];
        for (parent, parent_grad) in ops.parents.into_iter().zip(parent_grads) {
            if let Some(parent) = parent {
                grads.register::<NdArray<f32>>(parent.id, NdArrayTensor::from(parent_grad));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::TensorPrimitive;

    use super::*;

    type Ad = Autodiff<NdArray<f32>>;

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
    fn layer_norm_matches_burns_ops_forward_and_backward() {
        let device = Default::default();
        let random = |shape: [usize; 3]| Tensor::<Ad, 3>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let (x, weights) = (random([4, 9, 24]).require_grad(), random([4, 9, 24]));
        let max_diff = |a: Tensor<NdArray<f32>, 1>, b: Tensor<NdArray<f32>, 1>| -> f32 { (a - b).abs().max().into_scalar() };
        for with_beta in [true, false] {
            let gamma = random([1, 1, 24]).reshape([24]).require_grad();
            let beta = with_beta.then(|| random([1, 1, 24]).reshape([24]).require_grad());
            let y = |fused: bool| match fused {
                true => layer_norm(&x, &gamma, beta.as_ref(), 1e-5).expect("Autodiff<NdArray<f32>> has the one-pass LayerNorm"),
                false => Tensor::from_primitive(TensorPrimitive::Float(Ad::layer_norm(x.clone().into_primitive().tensor(), gamma.clone().into_primitive().tensor(), beta.clone().map(|b| b.into_primitive().tensor()), 1e-5))),
            };
            // Each graph's backward runs before the next graph is built: a backward pass
            // frees the graph it walks, the shared leaves included.
            let with_grads = |y: Tensor<Ad, 3>| (y.clone().inner().flatten(0, 2), (y * weights.clone()).sum().backward());
            let ((fused_y, fused), (burn_y, burn)) = (with_grads(y(true)), with_grads(y(false)));
            assert_eq!(max_diff(fused_y, burn_y), 0.0, "beta {with_beta}: the forward is ndarray's own");
            let dx = max_diff(x.grad(&fused).expect("x").flatten(0, 2), x.grad(&burn).expect("x").flatten(0, 2));
            let dgamma = max_diff(gamma.grad(&fused).expect("gamma"), gamma.grad(&burn).expect("gamma"));
            assert!(dx < 1e-5 && dgamma < 1e-4, "beta {with_beta}: d(x) differs by {dx}, d(gamma) by {dgamma}");
            if let Some(beta) = &beta {
                let dbeta = max_diff(beta.grad(&fused).expect("beta"), beta.grad(&burn).expect("beta"));
                assert!(dbeta < 1e-4, "d(beta) differs by {dbeta}");
            }
        }
    }

    #[test]
    fn other_backends_take_burns_path() {
        let x = Tensor::<NdArray<f32>, 1>::zeros([3], &Default::default());
        assert!(gelu(&x).is_none(), "without autodiff there is no backward to replace");
    }
}
