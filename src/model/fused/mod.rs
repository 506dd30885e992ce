//! Fused kernels for the operations whose autodiff Burn 0.21 builds from many small ones.
//!
//! Under `Autodiff`, Burn runs `attention` and `layer_norm` as chains of single operations
//! (matmul, scale, mask, max, exp, sum, divide, matmul; mean, subtract, square, …), each
//! recorded with a backward step of its own, and it differentiates GELU through the tanh
//! approximation's derivative (a cube, a tanh and a dozen passes on ndarray). Here:
//! - on libtorch on the CPU ([`on_libtorch`]), attention and LayerNorm's forward run
//!   libtorch's own kernels, the ones PyTorch's autograd runs, each recorded as one autodiff
//!   operation; LayerNorm's backward is [`cpu`]'s one pass over the rows; linear layers'
//!   matmuls run on oneDNN instead of MKL (AVX-512 kernels on AMD processors too);
//! - on ndarray ([`on_ndarray`]), attention and linear layers have backwards of their own,
//!   GELU's backward is the exact derivative of the GELU the forward computes,
//!   `Φ(x) + x·φ(x)`, and LayerNorm is one pass over the rows each way;
//! - on both, cross-entropy is one operation whose backward is `softmax − onehot`.
//!
//! The README's Performance section has what each saves per training step.
//!
//! The model is generic over `B: Backend` and Rust has no specialisation, so the fast path
//! is picked at run time: each function recognises the backends it has a kernel for by their
//! type and returns `None` for every other one, which then runs Burn's ops.

#[cfg(any(feature = "ndarray", feature = "tch"))]
use std::any::{Any, TypeId};

#[cfg(any(feature = "ndarray", feature = "tch"))]
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
#[cfg(any(feature = "ndarray", feature = "tch"))]
use burn::backend::autodiff::ops::{Backward, OpsKind};
#[cfg(any(feature = "ndarray", feature = "tch"))]
use burn::backend::Autodiff;
use burn::prelude::*;
#[cfg(any(feature = "ndarray", feature = "tch"))]
use burn::tensor::{ops::FloatTensor, TensorPrimitive};

#[cfg(any(feature = "ndarray", feature = "tch"))]
mod cpu;
#[cfg(feature = "tch")]
mod on_libtorch;
#[cfg(feature = "ndarray")]
mod on_ndarray;

/// Causal self-attention of the fused projection `qkv: [batch, seq, 3 * d_model]` (queries,
/// keys, values side by side) → `[batch, seq, d_model]`, the heads merged again; `None` where
/// there is no fused kernel (anything but libtorch on the CPU and ndarray, with autodiff).
pub fn causal_self_attention<B: Backend>(
    qkv: &Tensor<B, 3>,
    n_heads: usize,
) -> Option<Tensor<B, 3>> {
    #[cfg(feature = "tch")]
    if let Some(y) = on_libtorch::causal_self_attention(qkv, n_heads) {
        return Some(y);
    }
    #[cfg(feature = "ndarray")]
    if let Some(y) = on_ndarray::causal_self_attention(qkv, n_heads) {
        return Some(y);
    }
    let _ = (qkv, n_heads);
    None
}

/// `x: [rows, d_in]` · `weight: [d_in, d_out]` (+ `bias`); `None` where Burn's own is used
/// (anything but ndarray, and libtorch in f32 on the CPU, with autodiff; on libtorch, also
/// fewer rows than oneDNN earns its set-up back on).
pub fn linear<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "tch")]
    if let Some(y) = on_libtorch::linear(x, weight, bias) {
        return Some(y);
    }
    #[cfg(feature = "ndarray")]
    if let Some(y) = on_ndarray::linear(x, weight, bias) {
        return Some(y);
    }
    let _ = (x, weight, bias);
    None
}

/// LayerNorm of `x: [..., d]` over its last dimension, `(x - mean) / √(var + eps) · gamma +
/// beta`; `None` where there is no fused kernel (anything but libtorch on the CPU and ndarray,
/// with autodiff).
pub fn layer_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    gamma: &Tensor<B, 1>,
    beta: Option<&Tensor<B, 1>>,
    epsilon: f64,
) -> Option<Tensor<B, D>> {
    #[cfg(feature = "tch")]
    if let Some(y) = on_libtorch::layer_norm(x, gamma, beta, epsilon) {
        return Some(y);
    }
    #[cfg(feature = "ndarray")]
    if let Some(y) = on_ndarray::layer_norm(x, gamma, beta, epsilon) {
        return Some(y);
    }
    let _ = (x, gamma, beta, epsilon);
    None
}

/// GELU `x·Φ(x)` with the exact derivative in its backward; `None` where Burn's own is used
/// (anything but ndarray with autodiff; libtorch and flex have an exact one).
pub fn gelu<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    #[cfg(feature = "ndarray")]
    if let Some(y) = on_ndarray::gelu(x) {
        return Some(y);
    }
    let _ = x;
    None
}

/// Mean cross-entropy of `logits: [rows, vocab]` against `targets: [rows]` → `[1]`; `None`
/// where Burn's own is used (anything but ndarray, and libtorch on the CPU, with autodiff), or where a
/// target is not a token of the vocabulary (Burn's then reports it).
pub fn cross_entropy<B: Backend>(
    logits: &Tensor<B, 2>,
    targets: &Tensor<B, 1, Int>,
) -> Option<Tensor<B, 1>> {
    #[cfg(feature = "tch")]
    if let Some(loss) = on_libtorch::cross_entropy(logits, targets) {
        return Some(loss);
    }
    #[cfg(feature = "ndarray")]
    if let Some(loss) = on_ndarray::cross_entropy(logits, targets) {
        return Some(loss);
    }
    let _ = (logits, targets);
    None
}

/// `t`'s autodiff primitive (`primitive` and graph `node`) when `B` is `Autodiff<IB>`.
#[cfg(any(feature = "ndarray", feature = "tch"))]
fn cast<B: Backend, IB: Backend, const D: usize>(
    t: &Tensor<B, D>,
) -> Option<FloatTensor<Autodiff<IB>>> {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<IB>>() {
        return None;
    }
    let t: Box<Tensor<Autodiff<IB>, D>> = (Box::new(t.clone()) as Box<dyn Any>).downcast().ok()?;
    Some(t.into_primitive().tensor())
}

/// An autodiff primitive of `Autodiff<IB>` as a tensor of `B`, when they are the same.
#[cfg(any(feature = "ndarray", feature = "tch"))]
fn back<IB: Backend, B: Backend, const D: usize>(
    t: FloatTensor<Autodiff<IB>>,
) -> Option<Tensor<B, D>> {
    moved_as(Tensor::<Autodiff<IB>, D>::from_primitive(
        TensorPrimitive::Float(t),
    ))
    .ok()
}

/// `value` as a `U` when `T` and `U` are the same type (a generic one that is a concrete one),
/// else `value` back: how a kernel takes tensors by value, to write them in place.
#[cfg(any(feature = "ndarray", feature = "tch"))]
pub(crate) fn moved_as<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    if TypeId::of::<T>() != TypeId::of::<U>() {
        return Err(value);
    }
    match (Box::new(value) as Box<dyn Any>).downcast::<U>() {
        Ok(value) => Ok(*value),
        Err(_) => unreachable!("T and U have the same TypeId"),
    }
}

/// `output`, computed by a fused kernel from `parents`, as one autodiff node whose backward
/// is `op` with the state `saved` builds (built only when a gradient is needed).
#[cfg(any(feature = "ndarray", feature = "tch"))]
fn record<IB: Backend, Op: Backward<IB, N>, const N: usize>(
    op: Op,
    parents: [&FloatTensor<Autodiff<IB>>; N],
    saved: impl FnOnce() -> Op::State,
    output: FloatTensor<IB>,
) -> FloatTensor<Autodiff<IB>> {
    match op
        .prepare::<NoCheckpointing>(parents.map(|p| p.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(saved(), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

#[cfg(all(test, any(feature = "ndarray", feature = "tch")))]
mod tests {
    use burn::tensor::backend::AutodiffBackend;

    use super::*;

    #[test]
    fn cross_entropy_matches_burns_forward_and_backward() {
        #[cfg(feature = "ndarray")]
        matches_burns_cross_entropy::<Autodiff<burn::backend::NdArray<f32>>>(&Default::default());
        #[cfg(feature = "tch")]
        matches_burns_cross_entropy::<Autodiff<burn::backend::LibTorch<f32>>>(
            &burn::backend::libtorch::LibTorchDevice::Cpu,
        );
    }

    /// Against Burn's `CrossEntropyLoss`, over 150 rows (three blocks of the ndarray kernel)
    /// of 11 logits.
    fn matches_burns_cross_entropy<B: AutodiffBackend>(device: &B::Device) {
        let logits = Tensor::<B, 2>::random(
            [150, 11],
            burn::tensor::Distribution::Normal(0.0, 2.0),
            device,
        )
        .require_grad();
        let target_ids: Vec<i32> = (0..150).map(|i| i * 7 % 11).collect();
        let targets = Tensor::<B, 1, Int>::from_ints(target_ids.as_slice(), device);
        let loss_and_grad = |loss: Tensor<B, 1>| {
            let grads = (loss.clone() * 3.0).backward();
            (
                loss.into_scalar().elem::<f32>(),
                logits.grad(&grads).expect("logits are a leaf"),
            )
        };
        let (fused, fused_grad) = loss_and_grad(
            cross_entropy(&logits, &targets).expect("this backend has the fused cross-entropy"),
        );
        let burns = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits.clone(), targets.clone());
        let (burn, burn_grad) = loss_and_grad(burns);
        assert!(
            (fused - burn).abs() < 1e-5,
            "loss {fused} against Burn's {burn}"
        );
        let diff: f32 = (fused_grad - burn_grad).abs().max().into_scalar().elem();
        assert!(diff < 1e-6, "the gradients differ by {diff}");
        for bad in [11, -1] {
            let targets = Tensor::<B, 1, Int>::from_ints([0, bad], device);
            let logits = Tensor::<B, 2>::zeros([2, 11], device);
            assert!(
                cross_entropy(&logits, &targets).is_none(),
                "target {bad} is left to Burn's path, which reports it"
            );
        }
    }
}
