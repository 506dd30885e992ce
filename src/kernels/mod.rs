//! The operations a training step spends its time in, as one backend-extension trait.
//!
//! [`KernelBackend`] is implemented for every backend kiln runs on. Each method's default is
//! [`reference`]: Burn's own ops, as any backend runs them. A backend with a faster way
//! overrides the method in its own module here, and its tests check it against the
//! reference:
//! - [`ndarray`] (`NdArray<f32>`): under autodiff, attention, LayerNorm, GELU, linear layers
//!   and cross-entropy are each one operation with a backward of its own, on every core
//!   ([`cpu`]'s slice kernels, and the `gemm` crate's products on the same rayon pool); the
//!   AdamW update is one pass in place;
//! - [`libtorch`] (`LibTorch<E>`): under autodiff on the CPU, libtorch's flash-attention and
//!   LayerNorm kernels, linear layers on MKL or oneDNN (whichever was timed faster for the
//!   shape on this machine), cross-entropy as one operation; the AdamW
//!   update as libtorch's in-place kernels, on every device.
//!
//! The trait is implemented for each backend and for `Autodiff` over it: under autodiff a
//! fast path must also say how to differentiate itself, and the `Autodiff<B>` implementation
//! is where a backend records its fused operations as single autodiff nodes ([`node`]).
//!
//! The model calls these methods and nothing else of a backend: `model/` is generic over
//! `B: KernelBackend` and never names one.

pub mod reference;

#[cfg(any(feature = "ndarray", feature = "tch"))]
mod cpu;
#[cfg(feature = "tch")]
mod libtorch;
#[cfg(feature = "ndarray")]
mod ndarray;
#[cfg(test)]
mod tests;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// The processor's name, family and model, as /proc/cpuinfo gives them (Linux), and the
/// cores the process sees and the vector extensions that decide which kernels are fastest.
pub fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
    };
    let name = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let flags = field("flags").unwrap_or_default();
    let vector: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"].contains(f))
        .collect();
    let vector = if vector.is_empty() { String::new() } else { format!(", {}", vector.join(" ")) };
    match (field("cpu family"), field("model")) {
        (Some(family), Some(model)) => {
            format!("{name} (family {family}, model {model}), {cores} cores{vector}")
        }
        _ => format!("{name}, {cores} cores{vector}"),
    }
}

/// Which library ran the linear layers' matrix products of this process, where a choice was
/// made (libtorch on the CPU: MKL or oneDNN, timed per shape).
pub fn matmul_summary() -> Option<String> {
    #[cfg(feature = "tch")]
    return libtorch::autotune::summary();
    #[cfg(not(feature = "tch"))]
    None
}

/// The scalars of one AdamW update in PyTorch's formulation, which folds both bias
/// corrections into the step size and epsilon:
///
/// ```text
/// m ← β₁·m + (1-β₁)·g      v ← β₂·v + (1-β₂)·g²
/// θ ← θ·decay − step_size · m / (√v + epsilon)
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub beta1: f64,
    pub beta2: f64,
    pub decay: f64,
    pub step_size: f64,
    pub epsilon: f64,
}

/// A linear layer's `weight: [d_in, d_out]` and `bias: [d_out]`.
#[derive(Debug, Clone)]
pub struct LinearWeights<B: Backend> {
    pub weight: Tensor<B, 2>,
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> LinearWeights<B> {
    pub fn of(layer: &burn::nn::Linear<B>) -> Self {
        Self { weight: layer.weight.val(), bias: layer.bias.as_ref().map(|b| b.val()) }
    }

    /// `x: [..., d_in]` through `linear` as one `[rows, d_in]` product, `[..., d_out]` after.
    pub(crate) fn flattened<const D: usize>(
        self,
        x: Tensor<B, D>,
        linear: impl FnOnce(Tensor<B, 2>, Self) -> Tensor<B, 2>,
    ) -> Tensor<B, D> {
        let mut dims = x.dims();
        let rows = dims[..D - 1].iter().product();
        let [d_in, d_out] = self.weight.dims();
        dims[D - 1] = d_out;
        linear(x.reshape([rows, d_in]), self).reshape(dims)
    }
}

/// LayerNorm's weight `gamma: [d]`, shift `beta: [d]` (none without bias) and epsilon.
#[derive(Debug, Clone)]
pub struct LayerNorm<B: Backend> {
    pub gamma: Tensor<B, 1>,
    pub beta: Option<Tensor<B, 1>>,
    pub epsilon: f64,
}

/// A parameter and its two AdamW moments.
pub type Moments<B, const D: usize> = [Tensor<B, D>; 3];

/// A backend with kiln's fast paths; every method defaults to [`reference`].
///
/// # Shapes
/// - `causal_self_attention`: `qkv: [batch, seq, 3·d_model]` (queries, keys, values side by
///   side) → `[batch, seq, d_model]`, the heads merged again;
/// - `linear`: `x: [..., d_in]` · `weight: [d_in, d_out]` (+ `bias`) → `[..., d_out]`;
/// - `layer_norm`: `x: [..., d]` → `[..., d]`;
/// - `cross_entropy`: `logits: [rows, vocab]`, `targets: [rows]` → the mean, `[1]`.
pub trait KernelBackend: Backend {
    fn causal_self_attention(qkv: Tensor<Self, 3>, n_heads: usize) -> Tensor<Self, 3> {
        reference::causal_self_attention(qkv, n_heads)
    }

    fn linear<const D: usize>(x: Tensor<Self, D>, layer: LinearWeights<Self>) -> Tensor<Self, D> {
        reference::linear(x, layer)
    }

    fn layer_norm<const D: usize>(x: Tensor<Self, D>, norm: LayerNorm<Self>) -> Tensor<Self, D> {
        reference::layer_norm(x, norm)
    }

    /// `x·Φ(x)` with the exact Gaussian CDF.
    fn gelu<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        reference::gelu(x)
    }

    fn cross_entropy(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        reference::cross_entropy(logits, targets)
    }

    /// One AdamW update of `[param, moment_1, moment_2]` by `grad`.
    fn adamw_update<const D: usize>(
        moments: Moments<Self, D>,
        grad: Tensor<Self, D>,
        step: AdamWStep,
    ) -> Moments<Self, D> {
        reference::adamw_update(moments, grad, step)
    }
}

/// A backend to train on: autodiff over a [`KernelBackend`], both with kiln's kernels.
pub trait TrainBackend: AutodiffBackend<InnerBackend: KernelBackend> + KernelBackend {}

impl<B: AutodiffBackend<InnerBackend: KernelBackend> + KernelBackend> TrainBackend for B {}

/// A backend without fast paths of kiln's own: Burn's ops serve it as they are, with autodiff
/// or without.
#[cfg(any(feature = "wgpu", feature = "flex"))]
macro_rules! burns_ops_only {
    ($backend:ty) => {
        impl KernelBackend for $backend {}
        impl<C> KernelBackend for burn::backend::Autodiff<$backend, C> where
            C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy
        {
        }
    };
}

#[cfg(feature = "wgpu")]
burns_ops_only!(burn::backend::Wgpu);
#[cfg(feature = "flex")]
burns_ops_only!(burn::backend::Flex<f32>);

/// Recording a fused operation as one autodiff node, shared by the backends' kernels.
#[cfg(any(feature = "ndarray", feature = "tch"))]
mod node {
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::ops::{Backward, OpsKind};
    use burn::backend::Autodiff;
    use burn::prelude::*;
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::TensorPrimitive;

    /// An autodiff tensor's primitive: the inner backend's `primitive` and the graph `node`
    /// (the same whatever the checkpointing strategy).
    pub type Tracked<B> = FloatTensor<Autodiff<B>>;

    pub fn tracked<B: Backend, C: CheckpointStrategy, const D: usize>(
        t: Tensor<Autodiff<B, C>, D>,
    ) -> Tracked<B> {
        t.into_primitive().tensor()
    }

    pub fn tensor<B: Backend, C: CheckpointStrategy, const D: usize>(
        t: Tracked<B>,
    ) -> Tensor<Autodiff<B, C>, D> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    /// `output`, computed by a fused kernel from `parents`, as one autodiff node whose
    /// backward is `op` with the state `saved` builds (built only when a gradient is needed).
    pub fn record<B, C, Op, const N: usize, const D: usize>(
        op: Op,
        parents: [&Tracked<B>; N],
        saved: impl FnOnce() -> Op::State,
        output: FloatTensor<B>,
    ) -> Tensor<Autodiff<B, C>, D>
    where
        B: Backend,
        C: CheckpointStrategy,
        Op: Backward<B, N>,
    {
        let nodes = parents.map(|p| p.node.clone());
        let recorded = match op.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(saved(), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        tensor(recorded)
    }
}
