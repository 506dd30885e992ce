//! The kernels in Burn's own ops: what every backend runs unless it has a faster way, and
//! what the faster ways are tested against.

use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::TensorPrimitive;

use super::{AdamWStep, LayerNorm, LinearWeights, Moments};

/// Splits the fused projection into heads, runs Burn's causal attention and merges the heads.
pub fn causal_self_attention<B: Backend>(qkv: Tensor<B, 3>, n_heads: usize) -> Tensor<B, 3> {
    let [batch, seq, width] = qkv.dims();
    let d_model = width / 3;
    let [q, k, v] = [0, 1, 2].map(|i| {
        qkv.clone()
            .narrow(2, i * d_model, d_model)
            .reshape([batch, seq, n_heads, d_model / n_heads])
            .swap_dims(1, 2)
    });
    let causal = AttentionModuleOptions { is_causal: true, ..Default::default() };
    attention(q, k, v, None, None, causal).swap_dims(1, 2).reshape([batch, seq, d_model])
}

pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    layer: LinearWeights<B>,
) -> Tensor<B, D> {
    burn::tensor::module::linear(x, layer.weight, layer.bias)
}

/// The backend's LayerNorm, as Burn's own `LayerNorm` module runs it.
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, norm: LayerNorm<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        norm.gamma.into_primitive().tensor(),
        norm.beta.map(|b| b.into_primitive().tensor()),
        norm.epsilon,
    )))
}

pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::gelu(x)
}

pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let device = logits.device();
    burn::nn::loss::CrossEntropyLossConfig::new().init(&device).forward(logits, targets)
}

pub fn adamw_update<B: Backend, const D: usize>(
    [param, moment_1, moment_2]: Moments<B, D>,
    grad: Tensor<B, D>,
    step: AdamWStep,
) -> Moments<B, D> {
    let moment_1 = moment_1 * step.beta1 + grad.clone() * (1.0 - step.beta1);
    let moment_2 = moment_2 * step.beta2 + grad.square() * (1.0 - step.beta2);
    let param = match step.decay != 1.0 {
        true => param * step.decay,
        false => param,
    };
    let update = moment_1.clone() / (moment_2.clone().sqrt() + step.epsilon) * step.step_size;
    [param - update, moment_1, moment_2]
}
