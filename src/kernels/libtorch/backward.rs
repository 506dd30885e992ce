//! The backward of libtorch's fused operations.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::libtorch::{LibTorch, TchElement, TchTensor};

use super::autotune;
use super::matmul::{Library, Product, Shape};
use crate::kernels::cpu;

/// What a fused op keeps from its forward pass for its backward.
#[derive(Debug, Clone)]
pub(super) enum Saved {
    /// Queries, keys, values and output `[batch, n_heads, seq, head_dim]`, and the log-sum-exp
    /// of each query's scores.
    Attention { q: TchTensor, k: TchTensor, v: TchTensor, out: TchTensor, logsumexp: TchTensor },
    /// Input `[..., d]`, weight, and the per-row mean and 1/√(var + eps) of the input.
    LayerNorm { x: TchTensor, gamma: TchTensor, mean: TchTensor, rstd: TchTensor },
    /// Logits `[rows, vocab]`, targets `[rows]` and each row's log-sum-exp `[rows, 1]`.
    CrossEntropy { logits: TchTensor, targets: TchTensor, log_sum_exp: TchTensor },
    /// A linear layer's input `[rows, d_in]` and weight `[d_in, d_out]`, their shape, and
    /// whether it has a bias.
    Linear { x: TchTensor, weight: TchTensor, shape: Shape, bias: bool },
}

impl Saved {
    /// The gradients of the op's parents, in their order, from that of its output.
    fn gradients(self, grad: &tch::Tensor) -> Vec<tch::Tensor> {
        match self {
            Saved::Attention { q, k, v, out, logsumexp } => {
                vec![attention_backward(grad, [q, k, v, out, logsumexp])]
            }
            Saved::LayerNorm { x, gamma, mean, rstd } => {
                layer_norm_backward(grad, &x.tensor, &gamma.tensor, &mean.tensor, &rstd.tensor)
            }
            Saved::CrossEntropy { logits, targets, log_sum_exp } => {
                let rows = logits.tensor.size()[0];
                let mut probs = (&logits.tensor - &log_sum_exp.tensor).exp_();
                let minus_one = tch::Tensor::full([rows, 1], -1.0, (probs.kind(), probs.device()));
                let _ = probs.scatter_add_(1, &targets.tensor.unsqueeze(1), &minus_one);
                vec![probs.g_mul_(&(grad / rows as f64))]
            }
            Saved::Linear { x, weight, shape, bias } => {
                let product = |product: Product, a: &tch::Tensor, b: &tch::Tensor| {
                    let library = autotune::library(product, shape);
                    product.compute(library, a, b).unwrap_or_else(|_| {
                        let mkl = product.compute(Library::Mkl, a, b);
                        mkl.expect("the saved input, weight and gradient fit together")
                    })
                };
                let dx = product(Product::InputGradient, grad, &weight.tensor);
                let dweight = product(Product::WeightGradient, &x.tensor, grad);
                let dbias = bias.then(|| grad.sum_dim_intlist([0i64].as_slice(), false, None));
                [Some(dx), Some(dweight), dbias].into_iter().flatten().collect()
            }
        }
    }
}

/// The gradient of the fused projection, from libtorch's flash-attention backward.
fn attention_backward(grad: &tch::Tensor, saved: [TchTensor; 5]) -> tch::Tensor {
    let [q, k, v, out, logsumexp] = saved.map(|t| t.tensor);
    let [batch, heads, seq, head_dim] = [0, 1, 2, 3].map(|i| q.size()[i]);
    let grad = grad.reshape([batch, seq, heads, head_dim]).transpose(1, 2);
    let (dq, dk, dv) = tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu_backward(
        &grad, &q, &k, &v, &out, &logsumexp, 0.0, true, None::<tch::Tensor>, None,
    );
    // `[batch, seq, 3, heads, head_dim]`, laid out as the projection was.
    let dqkv = tch::Tensor::stack(&[dq, dk, dv].map(|g| g.transpose(1, 2)), 2);
    dqkv.reshape([batch, seq, 3 * heads * head_dim])
}

/// LayerNorm's gradients (input, weight, shift) through [`cpu`]'s one pass, on copies.
fn layer_norm_backward(
    grad: &tch::Tensor,
    x: &tch::Tensor,
    gamma: &tch::Tensor,
    mean: &tch::Tensor,
    rstd: &tch::Tensor,
) -> Vec<tch::Tensor> {
    let floats = |t: &tch::Tensor| {
        Vec::<f32>::try_from(&t.reshape([-1])).expect("a CPU float tensor copies into f32")
    };
    let stats = cpu::RowStats { mean: floats(mean), rstd: floats(rstd) };
    let x_values = floats(x);
    let mut dx = vec![0.0; x_values.len()];
    let (dgamma, dbeta) = cpu::layer_norm_backward(
        &x_values,
        &floats(grad),
        &floats(gamma),
        &stats,
        &mut dx,
        cpu::Threads::Caller,
    );
    vec![
        tch::Tensor::from_slice(&dx).reshape(x.size()),
        tch::Tensor::from_slice(&dgamma),
        tch::Tensor::from_slice(&dbeta),
    ]
}

/// The backward step of every fused op: its state says which.
#[derive(Debug)]
pub(super) struct Fused;

impl<E: TchElement, const N: usize> Backward<LibTorch<E>, N> for Fused {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, N>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<LibTorch<E>>(&ops.node);
        let parent_grads = ops.state.gradients(&grad.tensor);
        for (parent, parent_grad) in ops.parents.into_iter().zip(parent_grads) {
            if let Some(parent) = parent {
                // In half precision, LayerNorm's statistics are f32 and so would be the gradients.
                let parent_grad = parent_grad.to_kind(grad.tensor.kind());
                grads.register::<LibTorch<E>>(parent.id, TchTensor::new(parent_grad));
            }
        }
    }
}
