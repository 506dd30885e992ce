//! [`KernelBackend`] for `NdArray<f32>`.
//!
//! Under autodiff, Burn builds these operations from many small ones, each recorded with a
//! backward of its own, on one core. Here each is one operation, forward and backward:
//! - GELU: Burn 0.21's forward is exact but its default backward is the tanh
//!   approximation's derivative, about fifteen passes; here one pass computes the output and
//!   the exact derivative `Φ(x) + x·φ(x)`, and the backward is one product;
//! - LayerNorm: one pass over the rows each way, the forward keeping each row's mean and
//!   1/std for the backward;
//! - linear layers: Burn's backward copies `xᵀ` and `Wᵀ` before each product; here both read
//!   the transposes in place, and `[batch, seq, d]` inputs are one 2-D product, not one per
//!   batch row ([`attention`] for causal attention, per batch row and head on every core);
//! - cross-entropy: one pass over the rows, the backward `softmax − onehot` in one more.
//!
//! Every fused path checks its inputs (f32, standard shapes) and falls back to
//! [`reference`] where they are not what it handles.

mod attention;
mod fused;
mod gemm;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::ndarray::{NdArray, NdArrayTensor};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use ndarray::{ArcArray, ArrayBase, Data, DataMut, Dimension, IxDyn, Zip};

use super::{reference, AdamWStep, KernelBackend, LayerNorm, LinearWeights, Moments};

type Ad<C> = Autodiff<NdArray<f32>, C>;

impl KernelBackend for NdArray<f32> {
    /// One 2-D product over all rows: a 3-D matmul runs as one small GEMM per batch row, each
    /// repacking the whole weight.
    fn linear<const D: usize>(x: Tensor<Self, D>, layer: LinearWeights<Self>) -> Tensor<Self, D> {
        layer.flattened(x, |x, layer| match x.dims()[0] == 1 && is_transposed(&layer.weight) {
            // One decoding step through the tied head, whose weight is the embedding table
            // transposed: `table · xᵀ` reads the table as stored, where `x · tableᵀ` copies it.
            true => {
                let y = layer.weight.transpose().matmul(x.transpose()).transpose();
                match layer.bias {
                    Some(bias) => y + bias.unsqueeze(),
                    None => y,
                }
            }
            false => reference::linear(x, layer),
        })
    }

    fn adamw_update<const D: usize>(
        moments: Moments<Self, D>,
        grad: Tensor<Self, D>,
        step: AdamWStep,
    ) -> Moments<Self, D> {
        let all_f32 = moments.iter().chain([&grad]).all(|t| t.dtype() == DType::F32);
        match all_f32 {
            true => adamw_in_place(moments, grad, step),
            false => reference::adamw_update(moments, grad, step),
        }
    }
}

impl<C: CheckpointStrategy> KernelBackend for Ad<C> {
    fn causal_self_attention(qkv: Tensor<Self, 3>, n_heads: usize) -> Tensor<Self, 3> {
        attention::causal_self_attention(&qkv, n_heads)
            .unwrap_or_else(|| reference::causal_self_attention(qkv, n_heads))
    }

    fn linear<const D: usize>(x: Tensor<Self, D>, layer: LinearWeights<Self>) -> Tensor<Self, D> {
        fused::linear(&x, &layer).unwrap_or_else(|| layer.flattened(x, reference::linear))
    }

    fn layer_norm<const D: usize>(x: Tensor<Self, D>, norm: LayerNorm<Self>) -> Tensor<Self, D> {
        fused::layer_norm(&x, &norm).unwrap_or_else(|| reference::layer_norm(x, norm))
    }

    fn gelu<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        fused::gelu(&x).unwrap_or_else(|| reference::gelu(x))
    }

    fn cross_entropy(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        fused::cross_entropy(&logits, &targets)
            .unwrap_or_else(|| reference::cross_entropy(logits, targets))
    }
}

/// Whether `weight` is a transposed view (column-major), as the tied head passes the table.
fn is_transposed(weight: &Tensor<NdArray<f32>, 2>) -> bool {
    match &weight.clone().into_primitive().tensor() {
        NdArrayTensor::F32(array) => {
            let array = array.clone().into_shared();
            array.strides().first() == Some(&1) && array.shape()[1] > 1
        }
        _ => false,
    }
}

/// The AdamW update in one pass over the parameter, its gradient and moments, writing the
/// parameter and moments in place, where Burn's operations make twelve passes, each into a
/// fresh tensor.
fn adamw_in_place<const D: usize>(
    moments: Moments<NdArray<f32>, D>,
    grad: Tensor<NdArray<f32>, D>,
    u: AdamWStep,
) -> Moments<NdArray<f32>, D> {
    let f32_array = |t: Tensor<NdArray<f32>, D>| match t.into_primitive().tensor() {
        NdArrayTensor::F32(array) => array,
        _ => unreachable!("every tensor was checked to be f32"),
    };
    let grad = f32_array(grad);
    // `into_owned` copies an array first where another tensor shares it (a checkpoint being
    // written from it, say): writing it in place must change nothing else.
    let [mut param, mut moment_1, mut moment_2] = moments.map(|t| f32_array(t).into_owned());
    let (beta1, beta2, decay) = (u.beta1 as f32, u.beta2 as f32, u.decay as f32);
    let (step_size, epsilon) = (u.step_size as f32, u.epsilon as f32);
    let (rest1, rest2) = ((1.0 - u.beta1) as f32, (1.0 - u.beta2) as f32);
    Zip::from(param.view_mut())
        .and(moment_1.view_mut())
        .and(moment_2.view_mut())
        .and(grad.view())
        .for_each(|p, m, v, &g| {
            *m = beta1 * *m + rest1 * g;
            *v = beta2 * *v + rest2 * (g * g);
            *p = *p * decay - step_size * *m / (v.sqrt() + epsilon);
        });
    [param, moment_1, moment_2].map(|t| {
        Tensor::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(t.into_shared())))
    })
}

/// `t`'s f32 array, if it holds f32.
fn f32_array(t: &super::node::Tracked<NdArray<f32>>) -> Option<ArcArray<f32, IxDyn>> {
    match &t.primitive {
        NdArrayTensor::F32(array) => Some(array.clone().into_shared()),
        _ => None,
    }
}

/// `a` itself when it is in standard (contiguous, row-major) layout, else a copy that is.
fn standard_layout(a: ArcArray<f32, IxDyn>) -> ArcArray<f32, IxDyn> {
    match a.is_standard_layout() {
        true => a,
        false => a.as_standard_layout().into_owned().into_shared(),
    }
}

/// The elements of `a`, which is in standard layout, in order.
fn elements<S: Data<Elem = f32>, D: Dimension>(a: &ArrayBase<S, D>) -> &[f32] {
    a.as_slice().unwrap_or_else(|| unreachable!("arrays in standard layout are contiguous"))
}

/// [`elements`], to write.
fn elements_mut<S: DataMut<Elem = f32>, D: Dimension>(a: &mut ArrayBase<S, D>) -> &mut [f32] {
    a.as_slice_mut().unwrap_or_else(|| unreachable!("arrays in standard layout are contiguous"))
}

/// The gradient of a fused operation's f32 output, taken from `grads`.
fn output_gradient<S, const N: usize>(
    ops: &burn::backend::autodiff::ops::Ops<S, N>,
    grads: &mut burn::backend::autodiff::grads::Gradients,
) -> ArcArray<f32, IxDyn> {
    match grads.consume::<NdArray<f32>>(&ops.node) {
        NdArrayTensor::F32(grad) => grad.into_shared(),
        _ => unreachable!("the gradient of an f32 output is f32"),
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    type Train = Autodiff<NdArray<f32>>;

    #[test]
    fn the_fused_paths_are_taken_under_autodiff() {
        let device = Default::default();
        let x = Tensor::<Train, 3>::ones([2, 4, 12], &device);
        assert!(fused::gelu(&x).is_some());
        assert!(attention::causal_self_attention(&x, 2).is_some());
        let gamma = Tensor::<Train, 1>::ones([12], &device);
        let norm = LayerNorm { gamma, beta: None, epsilon: 1e-5 };
        assert!(fused::layer_norm(&x, &norm).is_some());
        let flat = x.clone().reshape([8, 12]);
        let layer = LinearWeights { weight: Tensor::ones([12, 5], &device), bias: None };
        assert!(fused::linear(&flat, &layer).is_some());
        assert_eq!(fused::linear(&x, &layer).map(|y| y.dims()), Some([2, 4, 5]));
        let targets = Tensor::<Train, 1, Int>::zeros([8], &device);
        assert!(fused::cross_entropy(&flat, &targets).is_some());
    }

    fn tied(table: Tensor<NdArray<f32>, 2>) -> LinearWeights<NdArray<f32>> {
        LinearWeights { weight: table.transpose(), bias: None }
    }

    #[test]
    fn the_tied_head_reads_the_table_in_place_for_one_token() {
        let device = Default::default();
        let table = Tensor::<NdArray<f32>, 2>::random([7, 4], Distribution::Default, &device);
        let x = Tensor::<NdArray<f32>, 3>::random([1, 1, 4], Distribution::Default, &device);
        assert!(is_transposed(&table.clone().transpose()));
        let fast = <NdArray<f32> as KernelBackend>::linear(x.clone(), tied(table.clone()));
        let plain = reference::linear(x, tied(table));
        let diff: f32 = (fast - plain).abs().max().into_scalar();
        assert!(diff < 1e-6, "{diff}");
    }
}
