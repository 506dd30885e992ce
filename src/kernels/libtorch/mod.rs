//! [`KernelBackend`] for `LibTorch<E>`.
//!
//! Under autodiff on the CPU, libtorch's own kernels — the ones PyTorch's autograd runs —
//! recorded as one autodiff operation each: flash attention (which also spares the split of
//! the fused projection), `native_layer_norm` (its backward is [`cpu`]'s one pass: tch
//! exposes no LayerNorm backward kernel), and cross-entropy whose backward is
//! `softmax − onehot`. Each product of a linear layer in f32 runs on MKL or oneDNN,
//! whichever [`autotune`] timed faster for its shape on this machine ([`matmul`]).
//!
//! Without autodiff burn-tch calls the same kernels by itself, and on CUDA the CPU kernels do
//! not apply: both run [`reference`]. The AdamW update runs as libtorch's in-place kernels
//! on every device.
//!
//! [`cpu`]: crate::kernels::cpu

pub(super) mod autotune;
mod backward;
mod matmul;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::libtorch::{LibTorch, TchElement, TchTensor};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;

use self::backward::{Fused, Saved};
use self::matmul::{Product, Shape};
use super::node::{self, Tracked};
use super::{reference, AdamWStep, KernelBackend, LayerNorm, LinearWeights, Moments};

type Ad<E, C> = Autodiff<LibTorch<E>, C>;

impl<E: TchElement> KernelBackend for LibTorch<E> {
    fn adamw_update<const D: usize>(
        moments: Moments<Self, D>,
        grad: Tensor<Self, D>,
        u: AdamWStep,
    ) -> Moments<Self, D> {
        let [mut param, mut moment_1, mut moment_2] = moments.map(writable);
        let grad = grad.into_primitive().tensor().tensor;
        if u.decay != 1.0 {
            let _ = param.g_mul_scalar_(u.decay);
        }
        let _ = moment_1.lerp_(&grad, 1.0 - u.beta1);
        let _ = moment_2.lerp_(&grad.square(), 1.0 - u.beta2);
        let mut denominator = moment_2.sqrt();
        let _ = denominator.g_add_scalar_(u.epsilon);
        let _ = param.addcdiv_(&(&moment_1 * -u.step_size), &denominator);
        [param, moment_1, moment_2]
            .map(|t| Tensor::from_primitive(TensorPrimitive::Float(TchTensor::new(t))))
    }
}

impl<E: TchElement, C: CheckpointStrategy> KernelBackend for Ad<E, C> {
    fn causal_self_attention(qkv: Tensor<Self, 3>, n_heads: usize) -> Tensor<Self, 3> {
        match on_cpu(&qkv) {
            Some(tracked) => flash_attention(tracked, n_heads),
            None => reference::causal_self_attention(qkv, n_heads),
        }
    }

    fn linear<const D: usize>(x: Tensor<Self, D>, layer: LinearWeights<Self>) -> Tensor<Self, D> {
        layer.flattened(x, |x, layer| {
            tuned_linear(&x, &layer).unwrap_or_else(|| reference::linear(x, layer))
        })
    }

    fn layer_norm<const D: usize>(x: Tensor<Self, D>, norm: LayerNorm<Self>) -> Tensor<Self, D> {
        match on_cpu(&x) {
            Some(tracked) => native_layer_norm(tracked, norm),
            None => reference::layer_norm(x, norm),
        }
    }

    fn cross_entropy(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        fused_cross_entropy(&logits, &targets)
            .unwrap_or_else(|| reference::cross_entropy(logits, targets))
    }
}

/// `t`'s autodiff primitive when it lies on the CPU.
fn on_cpu<E: TchElement, C: CheckpointStrategy, const D: usize>(
    t: &Tensor<Ad<E, C>, D>,
) -> Option<Tracked<LibTorch<E>>> {
    let tracked = node::tracked(t.clone());
    (tracked.primitive.tensor.device() == tch::Device::Cpu).then_some(tracked)
}

/// `output` of a fused op over `parents` as an autodiff node whose backward is [`Fused`].
fn record<E: TchElement, C: CheckpointStrategy, const N: usize, const D: usize>(
    parents: [&Tracked<LibTorch<E>>; N],
    saved: impl FnOnce() -> Saved,
    output: tch::Tensor,
) -> Tensor<Ad<E, C>, D> {
    node::record(Fused, parents, saved, TchTensor::new(output))
}

/// Causal attention through libtorch's CPU flash-attention kernels, on views of `qkv`'s thirds.
fn flash_attention<E: TchElement, C: CheckpointStrategy>(
    qkv: Tracked<LibTorch<E>>,
    n_heads: usize,
) -> Tensor<Ad<E, C>, 3> {
    let projection = &qkv.primitive.tensor;
    let [batch, seq, width] = [0, 1, 2].map(|i| projection.size()[i]);
    let d_model = width / 3;
    // Views of `qkv` (no copies): its thirds as `[batch, n_heads, seq, head_dim]`.
    let heads = |i: i64| {
        projection
            .narrow(2, i * d_model, d_model)
            .reshape([batch, seq, n_heads as i64, d_model / n_heads as i64])
            .transpose(1, 2)
    };
    let (q, k, v) = (heads(0), heads(1), heads(2));
    let (out, logsumexp) = tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu(
        &q, &k, &v, 0.0, true, None::<tch::Tensor>, None,
    );
    let merged = out.transpose(1, 2).reshape([batch, seq, d_model]);
    let state = || Saved::Attention {
        q: TchTensor::new(q),
        k: TchTensor::new(k),
        v: TchTensor::new(v),
        out: TchTensor::new(out),
        logsumexp: TchTensor::new(logsumexp),
    };
    record([&qkv], state, merged)
}

fn native_layer_norm<E: TchElement, C: CheckpointStrategy, const D: usize>(
    x: Tracked<LibTorch<E>>,
    norm: LayerNorm<Ad<E, C>>,
) -> Tensor<Ad<E, C>, D> {
    let (epsilon, gamma) = (norm.epsilon, node::tracked(norm.gamma));
    let beta = norm.beta.map(node::tracked);
    let d = x.primitive.tensor.size().last().copied().unwrap_or(1);
    let (y, mean, rstd) = x.primitive.tensor.native_layer_norm(
        [d],
        Some(&gamma.primitive.tensor),
        beta.as_ref().map(|b| &b.primitive.tensor),
        epsilon,
    );
    let state = || Saved::LayerNorm {
        x: x.primitive.clone(),
        gamma: gamma.primitive.clone(),
        mean: TchTensor::new(mean),
        rstd: TchTensor::new(rstd),
    };
    match &beta {
        Some(beta) => record([&x, &gamma, beta], state, y),
        None => record([&x, &gamma], state, y),
    }
}

/// The rows' log-sum-exp and the targets' logits forward; the backward is `softmax − onehot`
/// from them, so no log-softmax of the logits' size is kept. `None` off the CPU or where a
/// target is outside the vocabulary (libtorch's gather would throw; Burn's path reports it).
fn fused_cross_entropy<E: TchElement, C: CheckpointStrategy>(
    logits: &Tensor<Ad<E, C>, 2>,
    targets: &Tensor<Ad<E, C>, 1, Int>,
) -> Option<Tensor<Ad<E, C>, 1>> {
    let logits = on_cpu(logits)?;
    let targets = targets.clone().into_primitive().tensor;
    let vocab = *logits.primitive.tensor.size().last()?;
    let in_vocabulary = targets.numel() > 0
        && targets.min().int64_value(&[]) >= 0
        && targets.max().int64_value(&[]) < vocab;
    if !in_vocabulary {
        return None;
    }
    let log_sum_exp = logits.primitive.tensor.logsumexp([-1], true);
    let target_logits = logits.primitive.tensor.gather(1, &targets.unsqueeze(1), false);
    let loss = (&log_sum_exp - target_logits).mean(None).reshape([1]);
    let state = || Saved::CrossEntropy {
        logits: logits.primitive.clone(),
        targets: TchTensor::new(targets),
        log_sum_exp: TchTensor::new(log_sum_exp),
    };
    Some(record([&logits], state, loss))
}

/// A linear layer in f32 on the CPU, each product on the library [`autotune`] chose for its
/// shape; `None` elsewhere.
fn tuned_linear<E: TchElement, C: CheckpointStrategy>(
    x: &Tensor<Ad<E, C>, 2>,
    layer: &LinearWeights<Ad<E, C>>,
) -> Option<Tensor<Ad<E, C>, 2>> {
    let x = on_cpu(x)?;
    if x.primitive.tensor.kind() != tch::Kind::Float {
        return None;
    }
    let weight = node::tracked(layer.weight.clone());
    let bias = layer.bias.clone().map(node::tracked);
    let (input, w) = (&x.primitive.tensor, &weight.primitive.tensor);
    let shape = Shape::of(input, w)?;
    let library = autotune::library(Product::Forward, shape);
    let mut y = Product::Forward.compute(library, input, w).ok()?;
    if let Some(bias) = &bias {
        let _ = y.g_add_(&bias.primitive.tensor);
    }
    let state = || Saved::Linear {
        x: x.primitive.clone(),
        weight: weight.primitive.clone(),
        shape,
        bias: bias.is_some(),
    };
    Some(match &bias {
        Some(bias) => record([&x, &weight, bias], state, y),
        None => record([&x, &weight], state, y),
    })
}

/// `t`'s libtorch tensor, copied first where another Burn tensor shares its storage (a
/// checkpoint being written from it, say): writing it in place must change nothing else.
fn writable<E: TchElement, const D: usize>(t: Tensor<LibTorch<E>, D>) -> tch::Tensor {
    let t = t.into_primitive().tensor();
    if t.can_mut() {
        t.tensor
    } else {
        t.tensor.copy()
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::libtorch::LibTorchDevice;

    use super::*;

    type Train = Autodiff<LibTorch<f32>>;

    #[test]
    fn linear_layers_in_f32_take_the_tuned_path() {
        let device = LibTorchDevice::Cpu;
        let layer = LinearWeights { weight: Tensor::<Train, 2>::ones([8, 8], &device), bias: None };
        let x = Tensor::<Train, 2>::ones([3, 8], &device);
        assert!(tuned_linear(&x, &layer).is_some());
        assert!(tuned_linear(&x.cast(burn::tensor::DType::F64), &layer).is_none());
    }

    #[test]
    fn out_of_vocabulary_targets_are_left_to_burns_path() {
        let device = LibTorchDevice::Cpu;
        let logits = Tensor::<Train, 2>::zeros([2, 11], &device);
        for bad in [11, -1] {
            let targets = Tensor::<Train, 1, Int>::from_ints([0, bad], &device);
            assert!(fused_cross_entropy(&logits, &targets).is_none());
        }
    }
}
