//! Causal self-attention on `Autodiff<NdArray<f32>>`, its batch rows on every core.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::ndarray::{NdArray, NdArrayTensor};
use burn::prelude::*;
use ndarray::{
    s, ArcArray, Array2, Array3, Array4, ArrayView2, ArrayView3, ArrayViewMut2, Axis, Ix3, Ix4, Zip,
};
use rayon::prelude::*;

use super::gemm::{self, Threads};
use super::{f32_array, output_gradient, Ad};
use crate::kernels::cpu;
use crate::kernels::node;

/// Causal self-attention of the fused projection as one operation per batch row and head:
/// two matrix products and a softmax over the causal half of the scores, and a backward of
/// four products that writes straight into the gradient of the fused projection (Burn's
/// split writes each third of it into a zeroed tensor of the whole width).
pub(super) fn causal_self_attention<C: CheckpointStrategy>(
    qkv: &Tensor<Ad<C>, 3>,
    n_heads: usize,
) -> Option<Tensor<Ad<C>, 3>> {
    let qkv = node::tracked(qkv.clone());
    let input = f32_array(&qkv)?.into_dimensionality::<Ix3>().ok()?;
    let heads = Heads::of(input.view(), n_heads)?;
    let (y, probs) = heads.forward(input.view());
    let saved = || CausalAttention { qkv: input.clone(), probs: probs.into_shared(), heads };
    let y = NdArrayTensor::from(y.into_dyn().into_shared());
    Some(node::record(CausalAttentionBackward, [&qkv], saved, y))
}

/// How the fused projection `[batch, seq, 3 * d_model]` splits into heads.
#[derive(Debug, Clone, Copy)]
struct Heads {
    n_heads: usize,
    d_model: usize,
    head_dim: usize,
}

impl Heads {
    fn of(qkv: ArrayView3<f32>, n_heads: usize) -> Option<Self> {
        let d_model = qkv.dim().2 / 3;
        (n_heads > 0 && d_model * 3 == qkv.dim().2 && d_model.is_multiple_of(n_heads))
            .then_some(Self { n_heads, d_model, head_dim: d_model / n_heads })
    }

    /// Columns of head `h` in part `part` (0 queries, 1 keys, 2 values) of the projection.
    fn columns(&self, part: usize, h: usize) -> std::ops::Range<usize> {
        let start = part * self.d_model + h * self.head_dim;
        start..start + self.head_dim
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// `softmax(q·kᵀ/√head_dim + causal mask)·v` per batch row and head → the output
    /// `[batch, seq, d_model]` (heads side by side) and the probabilities `[batch, heads, seq, seq]`.
    fn forward(&self, qkv: ArrayView3<f32>) -> (Array3<f32>, Array4<f32>) {
        let (batch, seq, _) = qkv.dim();
        let mut y = Array3::zeros((batch, seq, self.d_model));
        let mut probs = Array4::zeros((batch, self.n_heads, seq, seq));
        let rows: Vec<_> =
            qkv.outer_iter().zip(y.outer_iter_mut()).zip(probs.outer_iter_mut()).collect();
        rows.into_par_iter().for_each(|((qkv, mut y), mut probs)| {
            for h in 0..self.n_heads {
                let [q, k, v] = [0, 1, 2].map(|part| qkv.slice(s![.., self.columns(part, h)]));
                let mut p = probs.index_axis_mut(Axis(0), h);
                product(self.scale(), &q, &k.t(), &mut p);
                causal_softmax(&mut p);
                product(1.0, &p.view(), &v, &mut y.slice_mut(s![.., self.columns(0, h)]));
            }
        });
        (y, probs)
    }
}

/// `c = alpha · a · b` for one batch row and head, on the calling thread: the batch rows are
/// already spread over the cores.
fn product(alpha: f32, a: &ArrayView2<f32>, b: &ArrayView2<f32>, c: &mut ArrayViewMut2<f32>) {
    gemm::matmul(alpha, a, b, 0.0, c, Threads::Caller);
}

/// Row `i` of `scores` → the softmax of its first `i + 1` entries, zeros after them.
fn causal_softmax(scores: &mut ArrayViewMut2<f32>) {
    for (i, mut row) in scores.rows_mut().into_iter().enumerate() {
        let seen = (i + 1).min(row.len());
        let (mut seen, mut future) = row.view_mut().split_at(Axis(0), seen);
        let max = seen.fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        seen.mapv_inplace(|x| cpu::exp_nonpositive(x - max));
        let sum = seen.sum();
        seen.mapv_inplace(|x| x / sum);
        future.fill(0.0);
    }
}

/// What causal attention's backward needs: the fused projection and the probabilities.
#[derive(Debug, Clone)]
struct CausalAttention {
    qkv: ArcArray<f32, Ix3>,
    probs: ArcArray<f32, Ix4>,
    heads: Heads,
}

impl CausalAttention {
    /// The gradient of the fused projection from `dy`, the output's. Per batch row and head,
    /// with `P` the probabilities and `dS` the scores' gradient:
    /// dV = Pᵀ·dY, dP = dY·Vᵀ, dS = P ⊙ (dP − rowsum(P ⊙ dP)), dQ = dS·K/√d, dK = dSᵀ·Q/√d.
    fn gradient(&self, dy: ArrayView3<f32>) -> Array3<f32> {
        let heads = self.heads;
        let (batch, seq, width) = self.qkv.dim();
        let mut dqkv = Array3::zeros((batch, seq, width));
        let rows: Vec<_> = self
            .qkv
            .outer_iter()
            .zip(self.probs.outer_iter())
            .zip(dy.outer_iter())
            .zip(dqkv.outer_iter_mut())
            .collect();
        rows.into_par_iter().for_each(|(((qkv, probs), dy), mut dqkv)| {
            let mut ds = Array2::zeros((seq, seq));
            for h in 0..heads.n_heads {
                let [q, k, v] = [0, 1, 2].map(|part| qkv.slice(s![.., heads.columns(part, h)]));
                let (p, dy) = (probs.index_axis(Axis(0), h), dy.slice(s![.., heads.columns(0, h)]));
                product(1.0, &p.t(), &dy, &mut dqkv.slice_mut(s![.., heads.columns(2, h)]));
                product(1.0, &dy, &v.t(), &mut ds.view_mut());
                Zip::from(ds.rows_mut()).and(p.rows()).for_each(|mut ds, p| {
                    let dot = ds.dot(&p);
                    Zip::from(&mut ds).and(&p).for_each(|ds, &p| *ds = p * (*ds - dot));
                });
                let scale = heads.scale();
                product(scale, &ds.view(), &k, &mut dqkv.slice_mut(s![.., heads.columns(0, h)]));
                product(scale, &ds.t(), &q, &mut dqkv.slice_mut(s![.., heads.columns(1, h)]));
            }
        });
        dqkv
    }
}

#[derive(Debug)]
struct CausalAttentionBackward;

impl Backward<NdArray<f32>, 1> for CausalAttentionBackward {
    type State = CausalAttention;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = output_gradient(&ops, grads)
            .into_dimensionality::<Ix3>()
            .expect("the output is [batch, seq, d_model]");
        let [Some(parent)] = ops.parents else {
            return;
        };
        let dqkv = ops.state.gradient(dy.view());
        grads.register::<NdArray<f32>>(
            parent.id,
            NdArrayTensor::from(dqkv.into_dyn().into_shared()),
        );
    }
}
