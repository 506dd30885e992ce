//! Fused kernels for the operations whose autodiff Burn 0.21 builds from many small ones.
//!
//! Under `Autodiff`, Burn runs `attention` and `layer_norm` as chains of single operations
//! (matmul, scale, mask, max, exp, sum, divide, matmul; mean, subtract, square, …), each
//! recorded with a backward step of its own, and it differentiates GELU through the tanh
//! approximation's derivative (a cube, a tanh and a dozen passes on ndarray). Here:
//! - on libtorch on the CPU ([`on_libtorch`]), attention and LayerNorm run libtorch's own kernels,
//!   the ones PyTorch's autograd runs, each recorded as one autodiff operation;
//! - on ndarray ([`on_ndarray`]), attention and linear layers have backwards of their own,
//!   GELU's backward is the exact derivative of the GELU the forward computes,
//!   `Φ(x) + x·φ(x)`, and LayerNorm's backward is one pass over the rows.
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

#[cfg(feature = "ndarray")]
mod on_ndarray;
#[cfg(feature = "tch")]
mod on_libtorch;

/// Causal self-attention of the fused projection `qkv: [batch, seq, 3 * d_model]` (queries,
/// keys, values side by side) → `[batch, seq, d_model]`, the heads merged again; `None` where
/// there is no fused kernel (anything but libtorch on the CPU and ndarray, with autodiff).
pub fn causal_self_attention<B: Backend>(qkv: &Tensor<B, 3>, n_heads: usize) -> Option<Tensor<B, 3>> {
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
/// (anything but ndarray with autodiff).
pub fn linear<B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Option<Tensor<B, 2>> {
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
pub fn layer_norm<B: Backend, const D: usize>(x: &Tensor<B, D>, gamma: &Tensor<B, 1>, beta: Option<&Tensor<B, 1>>, epsilon: f64) -> Option<Tensor<B, D>> {
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

/// `t`'s autodiff primitive (`primitive` and graph `node`) when `B` is `Autodiff<IB>`.
#[cfg(any(feature = "ndarray", feature = "tch"))]
fn cast<B: Backend, IB: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FloatTensor<Autodiff<IB>>> {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<IB>>() {
        return None;
    }
    let t: Box<Tensor<Autodiff<IB>, D>> = (Box::new(t.clone()) as Box<dyn Any>).downcast().ok()?;
    Some(t.into_primitive().tensor())
}

/// An autodiff primitive of `Autodiff<IB>` as a tensor of `B`, when they are the same.
#[cfg(any(feature = "ndarray", feature = "tch"))]
fn back<IB: Backend, B: Backend, const D: usize>(t: FloatTensor<Autodiff<IB>>) -> Option<Tensor<B, D>> {
    moved_as(Tensor::<Autodiff<IB>, D>::from_primitive(TensorPrimitive::Float(t))).ok()
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
fn record<IB: Backend, Op: Backward<IB, N>, const N: usize>(op: Op, parents: [&FloatTensor<Autodiff<IB>>; N], saved: impl FnOnce() -> Op::State, output: FloatTensor<IB>) -> FloatTensor<Autodiff<IB>> {
    match op.prepare::<NoCheckpointing>(parents.map(|p| p.node.clone())).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(saved(), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}
