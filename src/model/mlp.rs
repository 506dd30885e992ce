//! Position-wise feed-forward network: Linear → GELU → Linear → dropout.

use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::gelu;

use super::attention::linear;

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    c_fc: Linear<B>,
    c_proj: Linear<B>,
    dropout: Dropout,
}

impl<B: Backend> Mlp<B> {
    /// `proj_std` is the init std of the output projection (scaled down for deep residual stacks).
    pub fn new(d_model: usize, d_ff: usize, bias: bool, dropout: f64, proj_std: f64, device: &B::Device) -> Self {
        Self {
            c_fc: linear(d_model, d_ff, bias, 0.02, device),
            c_proj: linear(d_ff, d_model, bias, proj_std, device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// `[batch, seq, d_model]` → `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.dropout.forward(self.c_proj.forward(gelu(self.c_fc.forward(x))))
    }
}
