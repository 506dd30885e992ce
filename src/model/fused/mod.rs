//! Fused kernels for the operations whose autodiff Burn 0.21 builds from many small ones.
//!
//! Under `Autodiff`, Burn runs `attention` and `layer_norm` as chains of single operations
//! (matmul, scale, mask, max, exp, sum, divide, matmul; mean, subtract, square, …), each
//! recorded with a backward step of its own, and it differentiates GELU through the tanh
//! approximation's derivative (a cube, a tanh and a dozen passes on ndarray). Here:
//! - on libtorch on the CPU ([`on_libtorch`]), attention and LayerNorm run libtorch's own kernels,
//!   the ones PyTorch's autograd runs, each recorded as one autodiff operation;
//! - on ndarray ([`on_ndarray`]), GELU's backward is the exact derivative of the GELU the
//!   forward computes, `Φ(x) + x·φ(x)`, in one pass, and LayerNorm's backward is one pass
//!   over the rows.
//!
//! The README's Performance section has what each saves per training step.
//!
//! The model is generic over `B: Backend` and Rust has no specialisation, so the fast path
//! is picked at run time: each function recognises the backends it has a kernel for by their
//! type and returns `None` for every other one, which then runs Burn's ops.

#[cfg(any(feature = "ndarray", feature = "tch"))]
use std::any::{Any, TypeId};

use burn::prelude::*;

#[cfg(feature = "ndarray")]
mod on_ndarray;
#[cfg(feature = "tch")]
mod on_libtorch;

/// Causal self-attention of the fused projection `qkv: [batch, seq, 3 * d_model]` (queries,
/// keys, values side by side) → `[batch, seq, d_model]`, the heads merged again; `None` where
/// there is no fused kernel (anything but libtorch with autodiff on the CPU).
pub fn causal_self_attention<B: Backend>(qkv: &Tensor<B, 3>, n_heads: usize) -> Option<Tensor<B, 3>> {
    #[cfg(feature = "tch")]
    if let Some(y) = on_libtorch::causal_self_attention(qkv, n_heads) {
        return Some(y);
    }
    let _ = (qkv, n_heads);
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

/// `t` as a tensor of backend `T`, when `B` is `T`.
#[cfg(any(feature = "ndarray", feature = "tch"))]
fn cast<B: Backend, T: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<Tensor<T, D>> {
    if TypeId::of::<B>() != TypeId::of::<T>() {
        return None;
    }
    (Box::new(t.clone()) as Box<dyn Any>).downcast().ok().map(|t| *t)
}

/// A tensor of backend `T` back as one of `B`, when they are the same.
#[cfg(any(feature = "ndarray", feature = "tch"))]
fn back<T: Backend, B: Backend, const D: usize>(t: Tensor<T, D>) -> Option<Tensor<B, D>> {
    (Box::new(t) as Box<dyn Any>).downcast().ok().map(|t| *t)
}
