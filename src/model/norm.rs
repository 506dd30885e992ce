//! The normalisation in front of (or after) each sublayer: LayerNorm or RMSNorm.
//!
//! One module for both keeps the parameter names (`ln_1.gamma`, `ln_1.beta`) the same
//! whichever is configured, so checkpoints, `inspect` and the GPT-2 name mapping see one
//! layout; a Burn enum module would add the variant to every name.

use burn::module::{Initializer, Param};
use burn::prelude::*;

use crate::config::NormKind;
use crate::kernels::{KernelBackend, LayerNorm};

#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    gamma: Param<Tensor<B, 1>>,
    /// LayerNorm's shift; `None` for RMSNorm and for LayerNorm without bias.
    beta: Option<Param<Tensor<B, 1>>>,
    epsilon: f64,
    #[module(skip)]
    kind: NormKind,
}

impl<B: Backend> Norm<B> {
    pub fn new(
        kind: NormKind,
        d_model: usize,
        bias: bool,
        epsilon: f64,
        device: &B::Device,
    ) -> Self {
        let with_beta = bias && kind == NormKind::LayerNorm;
        Self {
            gamma: Initializer::Ones.init([d_model], device),
            beta: with_beta.then(|| Initializer::Zeros.init([d_model], device)),
            epsilon,
            kind,
        }
    }
}

impl<B: KernelBackend> Norm<B> {
    /// A residual sublayer `f` around this norm: `x + f(norm(x))` pre-norm (GPT-2), or
    /// `norm(x + f(x))` post-norm ("Attention Is All You Need").
    pub fn residual(
        &self,
        x: Tensor<B, 3>,
        norm_first: bool,
        f: impl FnOnce(Tensor<B, 3>) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        match norm_first {
            true => x.clone() + f(self.forward(x)),
            false => self.forward(x.clone() + f(x)),
        }
    }

    /// `[…, d_model]` → `[…, d_model]`, normalised over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let gamma = self.gamma.val();
        match self.kind {
            NormKind::LayerNorm => {
                let beta = self.beta.as_ref().map(|b| b.val());
                <B as KernelBackend>::layer_norm(
                    x,
                    LayerNorm { gamma, beta, epsilon: self.epsilon },
                )
            }
            NormKind::RmsNorm => {
                let rms = (x.clone().square().mean_dim(D - 1) + self.epsilon).sqrt();
                x / rms * gamma.unsqueeze()
            }
        }
    }
}
