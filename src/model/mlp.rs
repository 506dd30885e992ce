//! Position-wise feed-forward network: Linear → GELU (or ReLU) → Linear → dropout, or its gated
//! SwiGLU form (LLaMA, CS336): `c_proj(silu(c_gate(x)) · c_fc(x))`.

use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::{gelu, gelu_approximate, relu, silu};
use serde::{Deserialize, Serialize};

use super::attention::{linear, project};

/// The nonlinearity between the two projections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Activation {
    /// `x · Φ(x)` with the exact Gaussian CDF (PyTorch's `nn.GELU()`).
    #[default]
    Gelu,
    /// GELU's tanh approximation, which GPT-2 was trained with (`gelu_new` in transformers).
    GeluTanh,
    /// `max(0, x)`, the original Transformer's.
    Relu,
    /// A SiLU-gated linear unit: a third projection, `c_gate`, whose SiLU scales `c_fc`'s
    /// output element-wise. Usually run with `d_ff` ≈ 8/3 · d_model to keep the parameter
    /// count of a 4 · d_model GELU network.
    SwiGlu,
}

super::config_choice!(Activation { "gelu" => Gelu, "gelu_tanh" => GeluTanh, "relu" => Relu, "swiglu" => SwiGlu });

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

/// How an [`Mlp`] is built besides its widths.
#[derive(Debug, Clone, Copy)]
pub struct MlpOptions {
    pub bias: bool,
    pub dropout: f64,
    /// Init std of the projections, the output one scaled down for deep residual stacks;
    /// `None` for PyTorch's defaults.
    pub std: Option<f64>,
    pub proj_std: Option<f64>,
    pub activation: Activation,
}

impl<B: Backend> Mlp<B> {
    pub fn new(d_model: usize, d_ff: usize, shape: MlpOptions, device: &B::Device) -> Self {
        Self {
            c_fc: linear(d_model, d_ff, shape.bias, shape.std, device),
            c_gate: (shape.activation == Activation::SwiGlu)
                .then(|| linear(d_model, d_ff, shape.bias, shape.std, device)),
            c_proj: linear(d_ff, d_model, shape.bias, shape.proj_std, device),
            dropout: DropoutConfig::new(shape.dropout).init(),
            activation: shape.activation,
        }
    }

    /// `[batch, seq, d_model]` → `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = match (self.activation, &self.c_gate) {
            (Activation::Gelu, _) => {
                let h = project(&self.c_fc, x);
                super::fused::gelu(&h).unwrap_or_else(|| gelu(h))
            }
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
