//! GELU, LayerNorm, linear layers and cross-entropy on `Autodiff<NdArray<f32>>`, each one
//! operation with a backward of its own (see the module above).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::ndarray::{NdArray, NdArrayTensor};
use burn::prelude::*;
use ndarray::{
    ArcArray, Array1, Array2, ArrayD, ArrayView2, ArrayViewD, Axis, Ix1, Ix2, IxDyn, Zip,
};

use super::gemm::{matmul, Threads};
use super::{elements, elements_mut, f32_array, output_gradient, standard_layout, Ad};
use crate::kernels::cpu::{self, RowStats};
use crate::kernels::{node, LayerNorm, LinearWeights};

/// GELU: one pass computes `x·Φ(x)` and keeps its derivative `Φ(x) + x·φ(x)`, so that the
/// backward is one product.
pub(super) fn gelu<C: CheckpointStrategy, const D: usize>(
    x: &Tensor<Ad<C>, D>,
) -> Option<Tensor<Ad<C>, D>> {
    let x = node::tracked(x.clone());
    let input = standard_layout(f32_array(&x)?);
    let (mut y, mut derivative) = (ArrayD::zeros(input.raw_dim()), ArrayD::zeros(input.raw_dim()));
    cpu::gelu_and_derivative(elements(&input), elements_mut(&mut y), elements_mut(&mut derivative));
    let y = NdArrayTensor::from(y.into_shared());
    Some(node::record(ExactGelu, [&x], || derivative.into_shared(), y))
}

/// LayerNorm: forward and backward are each one pass over the rows.
pub(super) fn layer_norm<C: CheckpointStrategy, const D: usize>(
    x: &Tensor<Ad<C>, D>,
    norm: &LayerNorm<Ad<C>>,
) -> Option<Tensor<Ad<C>, D>> {
    let x = node::tracked(x.clone());
    let gamma = node::tracked(norm.gamma.clone());
    let beta = norm.beta.clone().map(node::tracked);
    let epsilon = norm.epsilon;
    let values = |t: &NdArrayTensor| match t {
        NdArrayTensor::F32(t) => Some(t.view().iter().copied().collect::<Vec<f32>>()),
        _ => None,
    };
    let gamma_values = values(&gamma.primitive)?;
    let beta_values = match &beta {
        Some(beta) => values(&beta.primitive)?,
        None => vec![0.0; gamma_values.len()],
    };
    let input = standard_layout(f32_array(&x)?);
    let d = gamma_values.len();
    if d == 0 || input.shape().last() != Some(&d) || beta_values.len() != d {
        return None;
    }
    let mut y = ArrayD::zeros(input.raw_dim());
    let stats = cpu::layer_norm(
        elements(&input),
        &gamma_values,
        &beta_values,
        epsilon as f32,
        elements_mut(&mut y),
    );
    let saved = || LayerNormInput { x: input, gamma: gamma_values, stats };
    let y = NdArrayTensor::from(y.into_shared());
    Some(match &beta {
        Some(beta) => node::record(LayerNormBackward, [&x, &gamma, beta], saved, y),
        None => node::record(LayerNormBackward, [&x, &gamma], saved, y),
    })
}

/// A linear layer, `x: [..., d_in]` · `weight: [d_in, d_out]` (+ `bias`) → `[..., d_out]`, as
/// one product over all rows, whose backward reads the transposes in place. `x` and the
/// output are viewed as matrices where they lie: burn-ndarray's `reshape` copies every tensor.
pub(super) fn linear<C: CheckpointStrategy, const D: usize>(
    x: &Tensor<Ad<C>, D>,
    layer: &LinearWeights<Ad<C>>,
) -> Option<Tensor<Ad<C>, D>> {
    let x = node::tracked(x.clone());
    let weight = node::tracked(layer.weight.clone());
    let bias = layer.bias.clone().map(node::tracked);
    let weights = f32_array(&weight)?.into_dimensionality::<Ix2>().ok()?;
    let input = f32_array(&x)?;
    let x_dims = input.raw_dim();
    let input = rows(input)?;
    if input.ncols() != weights.nrows() {
        return None;
    }
    let mut y = Array2::zeros((input.nrows(), weights.ncols()));
    if let Some(bias) = &bias {
        let NdArrayTensor::F32(bias) = &bias.primitive else {
            return None;
        };
        y += &bias.view().into_dimensionality::<Ix1>().ok()?;
    }
    matmul(1.0, &input.view(), &weights.view(), 1.0, &mut y.view_mut(), Threads::Pool);
    let mut y_dims = x_dims.clone();
    y_dims[D - 1] = weights.ncols();
    let y = y.into_shape_with_order(y_dims).ok()?;
    let saved = || LinearInput { x: input, x_dims, weight: weights };
    let y = NdArrayTensor::from(y.into_shared());
    Some(match &bias {
        Some(bias) => node::record(LinearBackward, [&x, &weight, bias], saved, y),
        None => node::record(LinearBackward, [&x, &weight], saved, y),
    })
}

/// `a: [..., d]` as the matrix `[rows, d]` of its rows, without a copy where it is in standard
/// layout.
fn rows(a: ArcArray<f32, IxDyn>) -> Option<ArcArray<f32, Ix2>> {
    let d = *a.shape().last()?;
    let rows = a.len().checked_div(d).unwrap_or(0);
    standard_layout(a).into_shape_with_order((rows, d)).ok()
}

/// Mean cross-entropy in one pass over the rows; `None` where a target is not a token of the
/// vocabulary (Burn's path then reports it).
pub(super) fn cross_entropy<C: CheckpointStrategy>(
    logits: &Tensor<Ad<C>, 2>,
    targets: &Tensor<Ad<C>, 1, Int>,
) -> Option<Tensor<Ad<C>, 1>> {
    let logits = node::tracked(logits.clone());
    let input = standard_layout(f32_array(&logits)?);
    // Indices, if none is negative.
    let targets: Vec<usize> =
        targets.to_data().iter::<i64>().map(|t| usize::try_from(t).ok()).collect::<Option<_>>()?;
    let (loss, log_sum_exp) =
        cpu::cross_entropy(elements(&input), &targets, *input.shape().last()?)?;
    let saved = || CrossEntropyInput { logits: input, targets, log_sum_exp };
    let loss = NdArrayTensor::from(ArrayD::from_elem(IxDyn(&[1]), loss).into_shared());
    Some(node::record(CrossEntropyBackward, [&logits], saved, loss))
}

/// What cross-entropy's backward needs: the logits `[rows, vocab]` in standard layout, the
/// targets and each row's log-sum-exp.
#[derive(Debug, Clone)]
struct CrossEntropyInput {
    logits: ArcArray<f32, IxDyn>,
    targets: Vec<usize>,
    log_sum_exp: Vec<f32>,
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<NdArray<f32>, 1> for CrossEntropyBackward {
    type State = CrossEntropyInput;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let loss_grad = output_gradient(&ops, grads).iter().copied().next().unwrap_or(0.0);
        let [Some(parent)] = ops.parents else {
            return;
        };
        let CrossEntropyInput { logits, targets, log_sum_exp } = &ops.state;
        let mut dlogits = ArrayD::zeros(logits.raw_dim());
        cpu::cross_entropy_backward(
            elements(logits),
            targets,
            log_sum_exp,
            loss_grad / targets.len() as f32,
            elements_mut(&mut dlogits),
        );
        grads.register::<NdArray<f32>>(parent.id, NdArrayTensor::from(dlogits.into_shared()));
    }
}

/// What a linear layer's backward needs: its input as `[rows, d_in]` and its shape, and the
/// weight `[d_in, d_out]`.
#[derive(Debug, Clone)]
struct LinearInput {
    x: ArcArray<f32, Ix2>,
    x_dims: IxDyn,
    weight: ArcArray<f32, Ix2>,
}

#[derive(Debug)]
struct LinearBackward;

impl<const N: usize> Backward<NdArray<f32>, N> for LinearBackward {
    type State = LinearInput;

    /// dx = dy·Wᵀ, dW = xᵀ·dy, db = Σ dy over the rows; each only where its parent needs it.
    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = rows(output_gradient(&ops, grads)).expect("the output is [..., d_out]");
        let LinearInput { x, x_dims, weight } = &ops.state;
        for (i, parent) in ops.parents.into_iter().enumerate() {
            let Some(parent) = parent else {
                continue;
            };
            let product = |a: ArrayView2<f32>, b: ArrayView2<f32>| {
                let mut c = Array2::zeros((a.nrows(), b.ncols()));
                matmul(1.0, &a, &b, 0.0, &mut c.view_mut(), Threads::Pool);
                c.into_dyn()
            };
            let grad = match i {
                0 => product(dy.view(), weight.t())
                    .into_shape_with_order(x_dims.clone())
                    .expect("dx has x's elements"),
                1 => product(x.t(), dy.view()),
                _ => dy.sum_axis(Axis(0)).into_dyn(),
            };
            grads.register::<NdArray<f32>>(parent.id, NdArrayTensor::from(grad.into_shared()));
        }
    }
}

#[derive(Debug)]
struct ExactGelu;

impl Backward<NdArray<f32>, 1> for ExactGelu {
    /// The derivative at the input, `Φ(x) + x·φ(x)` with `Φ` and `φ` the standard normal's CDF
    /// and density.
    type State = ArcArray<f32, IxDyn>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let mut grad = output_gradient(&ops, grads);
        let [Some(parent)] = ops.parents else {
            return;
        };
        // In place unless the gradient is shared (`view_mut` copies it then).
        Zip::from(grad.view_mut()).and(&ops.state).for_each(|g, &derivative| *g *= derivative);
        grads.register::<NdArray<f32>>(parent.id, NdArrayTensor::from(grad));
    }
}

/// What LayerNorm's backward needs: its input `[..., d]` in standard layout, its weight and
/// its rows' statistics.
#[derive(Debug, Clone)]
struct LayerNormInput {
    x: ArcArray<f32, IxDyn>,
    gamma: Vec<f32>,
    stats: RowStats,
}

impl LayerNormInput {
    /// The gradients of the input, the weight and the shift from `grad`, the output's.
    fn gradients(&self, grad: ArrayViewD<f32>) -> (ArrayD<f32>, Array1<f32>, Array1<f32>) {
        let grad = grad.as_standard_layout();
        let mut dx = ArrayD::zeros(self.x.raw_dim());
        let (dgamma, dbeta) = cpu::layer_norm_backward(
            elements(&self.x),
            elements(&grad),
            &self.gamma,
            &self.stats,
            elements_mut(&mut dx),
            cpu::Threads::Pool,
        );
        (dx, Array1::from(dgamma), Array1::from(dbeta))
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl<const N: usize> Backward<NdArray<f32>, N> for LayerNormBackward {
    type State = LayerNormInput;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (dx, dgamma, dbeta) = ops.state.gradients(output_gradient(&ops, grads).view());
        let parent_grads =
            [dx.into_shared(), dgamma.into_dyn().into_shared(), dbeta.into_dyn().into_shared()];
        for (parent, parent_grad) in ops.parents.into_iter().zip(parent_grads) {
            if let Some(parent) = parent {
                grads.register::<NdArray<f32>>(parent.id, NdArrayTensor::from(parent_grad));
            }
        }
    }
}
