//! Position-wise feed-forward network: Linear → GELU (or ReLU) → Linear → dropout, or its gated
//! SwiGLU form (LLaMA, CS336): `c_proj(silu(c_gate(x)) · c_fc(x))`.

use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::{gelu_approximate, relu, silu};

use super::attention::{linear, project};
use super::Sublayers;
use crate::config::Activation;
use crate::kernels::KernelBackend;

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    c_fc: Linear<B>,
    /// SwiGLU's gate; `None` for the GELU forms.
    c_gate: Option<Linear<B>>,
    c_proj: Linear<B>,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
}

impl<B: Backend> Mlp<B> {
    pub fn new(d_model: usize, d_ff: usize, shape: &Sublayers, device: &B::Device) -> Self {
        Self {
            c_fc: linear(d_model, d_ff, shape.bias, shape.std, device),
            c_gate: (shape.activation == Activation::SwiGlu)
                .then(|| linear(d_model, d_ff, shape.bias, shape.std, device)),
            c_proj: linear(d_ff, d_model, shape.bias, shape.proj_std, device),
            dropout: DropoutConfig::new(shape.dropout).init(),
            activation: shape.activation,
        }
    }
}

impl<B: KernelBackend> Mlp<B> {
    /// `[batch, seq, d_model]` → `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = match (self.activation, &self.c_gate) {
            (Activation::Gelu, _) => <B as KernelBackend>::gelu(project(&self.c_fc, x)),
            (Activation::GeluTanh, _) => gelu_approximate(project(&self.c_fc, x)),
            (Activation::Relu, _) => relu(project(&self.c_fc, x)),
            (Activation::SwiGlu, Some(gate)) => {
                silu(project(gate, x.clone())) * project(&self.c_fc, x)
            }
            (Activation::SwiGlu, None) => unreachable!("a SwiGLU network is built with its gate"),
        };
        self.dropout.forward(project(&self.c_proj, hidden))
    }
}
