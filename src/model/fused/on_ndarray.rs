//! GELU, LayerNorm and causal attention on ndarray with autodiff, each one operation with a
//! backward of its own.
//!
//! - Burn 0.21's GELU computes `x·Φ(x)` with `erf` in f64, but its default backward (the one
//!   ndarray inherits) is the derivative of the tanh approximation: about fifteen passes over
//!   the tensor, among them a cube through `powf` and a `tanh`, which `perf` put at a fifth of
//!   a `small.toml` training step on ndarray. Here one pass computes the output and the exact
//!   derivative, and the backward is one product. libtorch and flex have an exact backward of
//!   their own.
//! - LayerNorm is, under autodiff, a mean, a subtraction, a square, another mean, a square
//!   root, a division, a scale and a shift, each recorded with its own backward (burn-ndarray's
//!   forward is the same chain). Here forward and backward are each one pass over the rows,
//!   and the forward keeps each row's mean and 1/std for the backward.
//! - A linear layer's backward in Burn copies `xᵀ` (and `Wᵀ`) into fresh arrays before each
//!   matrix product. Here both products read the transposes in place.
//! - Causal attention is, under autodiff, a split of the fused projection into heads, a
//!   matmul, a scale, a mask, a softmax in five operations and another matmul, each recorded
//!   with its own backward (the split's writes each third of the gradient into a zeroed tensor
//!   of the whole width). Here it is one operation per batch row and head: two matrix
//!   products and a softmax over the causal half of the scores, and a backward of four products
//!   that writes straight into the gradient of the fused projection.
//! - Cross-entropy is, under autodiff, a log-softmax in five operations, a gather and a mean,
//!   each with its own backward. Here it is one pass over the rows, and the backward is
//!   `softmax − onehot` in one more.
//!
//! The element- and row-wise work is [`super::cpu`]'s; attention runs its batch rows on every
//! core.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::ndarray::{NdArray, NdArrayTensor};
use burn::prelude::*;
use ndarray::linalg::general_mat_mul;
use ndarray::{
    s, ArcArray, Array1, Array2, Array3, Array4, ArrayBase, ArrayD, ArrayView3, ArrayViewD,
    ArrayViewMut2, Axis, Data, DataMut, Dimension, Ix1, Ix2, Ix3, IxDyn, Zip,
};
use rayon::prelude::*;

use super::cpu::{self, RowStats};

/// [`super::gelu`] for `Autodiff<NdArray<f32>>`: one pass computes `x·Φ(x)` and keeps its
/// derivative `Φ(x) + x·φ(x)`, so that the backward is one product.
pub(super) fn gelu<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    let x = super::cast::<B, NdArray<f32>, D>(x)?;
    let NdArrayTensor::F32(input) = &x.primitive else {
        return None;
    };
    let input = standard_layout(input.clone().into_shared());
    let (mut y, mut derivative) = (
        ArrayD::zeros(input.raw_dim()),
        ArrayD::zeros(input.raw_dim()),
    );
    cpu::gelu_and_derivative(
        elements(&input),
        elements_mut(&mut y),
        elements_mut(&mut derivative),
    );
    let y = NdArrayTensor::from(y.into_shared());
    super::back::<NdArray<f32>, B, D>(super::record(
        ExactGelu,
        [&x],
        || derivative.into_shared(),
        y,
    ))
}

/// [`super::layer_norm`] for `Autodiff<NdArray<f32>>`: forward and backward are each one
/// pass over the rows.
pub(super) fn layer_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    gamma: &Tensor<B, 1>,
    beta: Option<&Tensor<B, 1>>,
    epsilon: f64,
) -> Option<Tensor<B, D>> {
    let x = super::cast::<B, NdArray<f32>, D>(x)?;
    let gamma = super::cast::<B, NdArray<f32>, 1>(gamma)?;
    let beta = match beta {
        Some(beta) => Some(super::cast::<B, NdArray<f32>, 1>(beta)?),
        None => None,
    };
    let values = |t: &NdArrayTensor| match t {
        NdArrayTensor::F32(t) => Some(t.view().iter().copied().collect::<Vec<f32>>()),
        _ => None,
    };
    let gamma_values = values(&gamma.primitive)?;
    let beta_values = match &beta {
        Some(beta) => values(&beta.primitive)?,
        None => vec![0.0; gamma_values.len()],
    };
    let NdArrayTensor::F32(input) = &x.primitive else {
        return None;
    };
    let input = standard_layout(input.clone().into_shared());
    let d = gamma_values.len();
    if d == 0 || input.shape().last() != Some(&d) || beta_values.len() != d {
        return None;
    }
    let mut y = ArrayD::zeros(input.raw_dim());
    let stats = cpu::layer_norm(
        elements(&input),
        &gamma_values,
        &beta_values,
        epsilon as f32,
        elements_mut(&mut y),
    );
    let saved = || LayerNormInput {
        x: input,
        gamma: gamma_values,
        stats,
    };
    let y = NdArrayTensor::from(y.into_shared());
    let y = match &beta {
        Some(beta) => super::record(LayerNormBackward, [&x, &gamma, beta], saved, y),
        None => super::record(LayerNormBackward, [&x, &gamma], saved, y),
    };
    super::back::<NdArray<f32>, B, D>(y)
}

/// [`super::linear`] for `Autodiff<NdArray<f32>>`.
pub(super) fn linear<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 2>> {
    let x = super::cast::<B, NdArray<f32>, 2>(x)?;
    let weight = super::cast::<B, NdArray<f32>, 2>(weight)?;
    let bias = match bias {
        Some(bias) => Some(super::cast::<B, NdArray<f32>, 1>(bias)?),
        None => None,
    };
    let matrix = |t: &NdArrayTensor| match t {
        NdArrayTensor::F32(t) => t.clone().into_shared().into_dimensionality::<Ix2>().ok(),
        _ => None,
    };
    let (input, weights) = (matrix(&x.primitive)?, matrix(&weight.primitive)?);
    let mut y = Array2::zeros((input.nrows(), weights.ncols()));
    if let Some(bias) = &bias {
        let NdArrayTensor::F32(bias) = &bias.primitive else {
            return None;
        };
        y += &bias.view().into_dimensionality::<Ix1>().ok()?;
    }
    general_mat_mul(1.0, &input, &weights, 1.0, &mut y);
    let saved = || LinearInput {
        x: input,
        weight: weights,
    };
    let y = NdArrayTensor::from(y.into_dyn().into_shared());
    let y = match &bias {
        Some(bias) => super::record(LinearBackward, [&x, &weight, bias], saved, y),
        None => super::record(LinearBackward, [&x, &weight], saved, y),
    };
    super::back::<NdArray<f32>, B, 2>(y)
}

/// [`super::cross_entropy`] for `Autodiff<NdArray<f32>>`.
pub(super) fn cross_entropy<B: Backend>(
    logits: &Tensor<B, 2>,
    targets: &Tensor<B, 1, Int>,
) -> Option<Tensor<B, 1>> {
    let logits = super::cast::<B, NdArray<f32>, 2>(logits)?;
    let NdArrayTensor::F32(input) = &logits.primitive else {
        return None;
    };
    let input = standard_layout(input.clone().into_shared());
    // Indices, if none is negative.
    let targets: Vec<usize> = targets
        .to_data()
        .iter::<i64>()
        .map(|t| usize::try_from(t).ok())
        .collect::<Option<_>>()?;
    let (loss, log_sum_exp) =
        cpu::cross_entropy(elements(&input), &targets, *input.shape().last()?)?;
    let saved = || CrossEntropyInput {
        logits: input,
        targets,
        log_sum_exp,
    };
    let loss = NdArrayTensor::from(ArrayD::from_elem(IxDyn(&[1]), loss).into_shared());
    super::back::<NdArray<f32>, B, 1>(super::record(CrossEntropyBackward, [&logits], saved, loss))
}

/// What cross-entropy's backward needs: the logits `[rows, vocab]` in standard layout, the
/// targets and each row's log-sum-exp.
#[derive(Debug, Clone)]
struct CrossEntropyInput {
    logits: ArcArray<f32, IxDyn>,
    targets: Vec<usize>,
    log_sum_exp: Vec<f32>,
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<NdArray<f32>, 1> for CrossEntropyBackward {
    type State = CrossEntropyInput;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let loss_grad = output_gradient(&ops, grads)
            .iter()
            .copied()
            .next()
            .unwrap_or(0.0);
        let [Some(parent)] = ops.parents else {
            return;
        };
        let CrossEntropyInput {
            logits,
            targets,
            log_sum_exp,
        } = &ops.state;
        let mut dlogits = ArrayD::zeros(logits.raw_dim());
        cpu::cross_entropy_backward(
            elements(logits),
            targets,
            log_sum_exp,
            loss_grad / targets.len() as f32,
            elements_mut(&mut dlogits),
        );
        grads.register::<NdArray<f32>>(parent.id, NdArrayTensor::from(dlogits.into_shared()));
    }
}

/// The gradient of a fused operation's f32 output, taken from `grads`.
fn output_gradient<S, const N: usize>(
    ops: &Ops<S, N>,
    grads: &mut Gradients,
) -> ArcArray<f32, IxDyn> {
    match grads.consume::<NdArray<f32>>(&ops.node) {
        NdArrayTensor::F32(grad) => grad.into_shared(),
        _ => unreachable!("the gradient of an f32 output is f32"),
    }
}

/// What a linear layer's backward needs: its input `[rows, d_in]` and weight `[d_in, d_out]`.
#[derive(Debug, Clone)]
struct LinearInput {
    x: ArcArray<f32, Ix2>,
    weight: ArcArray<f32, Ix2>,
}

#[derive(Debug)]
struct LinearBackward;

impl<const N: usize> Backward<NdArray<f32>, N> for LinearBackward {
    type State = LinearInput;

    /// dx = dy·Wᵀ, dW = xᵀ·dy, db = Σ dy over the rows; each only where its parent needs it.
    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = output_gradient(&ops, grads)
            .into_dimensionality::<Ix2>()
            .expect("the output is [rows, d_out]");
        let LinearInput { x, weight } = &ops.state;
        for (i, parent) in ops.parents.into_iter().enumerate() {
            let Some(parent) = parent else {
                continue;
            };
            let grad = match i {
                0 => dy.dot(&weight.t()).into_dyn(),
                1 => x.t().dot(&dy).into_dyn(),
                _ => dy.sum_axis(Axis(0)).into_dyn(),
            };
            grads.register::<NdArray<f32>>(parent.id, NdArrayTensor::from(grad.into_shared()));
        }
    }
}

/// [`super::causal_self_attention`] for `Autodiff<NdArray<f32>>`.
pub(super) fn causal_self_attention<B: Backend>(
    qkv: &Tensor<B, 3>,
    n_heads: usize,
) -> Option<Tensor<B, 3>> {
    let qkv = super::cast::<B, NdArray<f32>, 3>(qkv)?;
    let NdArrayTensor::F32(input) = &qkv.primitive else {
        return None;
    };
    let input = input
        .clone()
        .into_shared()
        .into_dimensionality::<Ix3>()
        .ok()?;
    let heads = Heads::of(input.view(), n_heads)?;
    let (y, probs) = heads.forward(input.view());
    let saved = || CausalAttention {
        qkv: input.clone(),
        probs: probs.into_shared(),
        heads,
    };
    let y = NdArrayTensor::from(y.into_dyn().into_shared());
    super::back::<NdArray<f32>, B, 3>(super::record(CausalAttentionBackward, [&qkv], saved, y))
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
        (n_heads > 0 && d_model * 3 == qkv.dim().2 && d_model % n_heads == 0).then_some(Self {
            n_heads,
            d_model,
            head_dim: d_model / n_heads,
        })
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
        let rows: Vec<_> = qkv
            .outer_iter()
            .zip(y.outer_iter_mut())
            .zip(probs.outer_iter_mut())
            .collect();
        rows.into_par_iter().for_each(|((qkv, mut y), mut probs)| {
            for h in 0..self.n_heads {
                let [q, k, v] = [0, 1, 2].map(|part| qkv.slice(s![.., self.columns(part, h)]));
                let mut p = probs.index_axis_mut(Axis(0), h);
                general_mat_mul(self.scale(), &q, &k.t(), 0.0, &mut p);
                causal_softmax(&mut p);
                general_mat_mul(
                    1.0,
                    &p,
                    &v,
                    0.0,
                    &mut y.slice_mut(s![.., self.columns(0, h)]),
                );
            }
        });
        (y, probs)
    }
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
    probs: ArcArray<f32, ndarray::Ix4>,
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
        rows.into_par_iter()
            .for_each(|(((qkv, probs), dy), mut dqkv)| {
                let mut ds = Array2::zeros((seq, seq));
                for h in 0..heads.n_heads {
                    let [q, k, v] = [0, 1, 2].map(|part| qkv.slice(s![.., heads.columns(part, h)]));
                    let (p, dy) = (
                        probs.index_axis(Axis(0), h),
                        dy.slice(s![.., heads.columns(0, h)]),
                    );
                    general_mat_mul(
                        1.0,
                        &p.t(),
                        &dy,
                        0.0,
                        &mut dqkv.slice_mut(s![.., heads.columns(2, h)]),
                    );
                    general_mat_mul(1.0, &dy, &v.t(), 0.0, &mut ds);
                    Zip::from(ds.rows_mut())
                        .and(p.rows())
                        .for_each(|mut ds, p| {
                            let dot = ds.dot(&p);
                            Zip::from(&mut ds)
                                .and(&p)
                                .for_each(|ds, &p| *ds = p * (*ds - dot));
                        });
                    general_mat_mul(
                        heads.scale(),
                        &ds,
                        &k,
                        0.0,
                        &mut dqkv.slice_mut(s![.., heads.columns(0, h)]),
                    );
                    general_mat_mul(
                        heads.scale(),
                        &ds.t(),
                        &q,
                        0.0,
                        &mut dqkv.slice_mut(s![.., heads.columns(1, h)]),
                    );
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

/// `a` itself when it is in standard (contiguous, row-major) layout, else a copy that is.
fn standard_layout(a: ArcArray<f32, IxDyn>) -> ArcArray<f32, IxDyn> {
    match a.is_standard_layout() {
        true => a,
        false => a.as_standard_layout().into_owned().into_shared(),
    }
}

/// The elements of `a`, which is in standard layout, in order.
fn elements<S: Data<Elem = f32>, D: Dimension>(a: &ArrayBase<S, D>) -> &[f32] {
    a.as_slice()
        .unwrap_or_else(|| unreachable!("arrays in standard layout are contiguous"))
}

/// [`elements`], to write.
fn elements_mut<S: DataMut<Elem = f32>, D: Dimension>(a: &mut ArrayBase<S, D>) -> &mut [f32] {
    a.as_slice_mut()
        .unwrap_or_else(|| unreachable!("arrays in standard layout are contiguous"))
}

#[derive(Debug)]
struct ExactGelu;

impl Backward<NdArray<f32>, 1> for ExactGelu {
    /// The derivative at the input, `Φ(x) + x·φ(x)` with `Φ` and `φ` the standard normal's CDF
    /// and density.
    type State = ArcArray<f32, IxDyn>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let mut grad = output_gradient(&ops, grads);
        let [Some(parent)] = ops.parents else {
            return;
        };
        // In place unless the gradient is shared (`view_mut` copies it then).
        Zip::from(grad.view_mut())
            .and(&ops.state)
            .for_each(|g, &derivative| *g *= derivative);
        grads.register::<NdArray<f32>>(parent.id, NdArrayTensor::from(grad));
    }
}

/// What LayerNorm's backward needs: its input `[..., d]` in standard layout, its weight and
/// its rows' statistics.
#[derive(Debug, Clone)]
struct LayerNormInput {
    x: ArcArray<f32, IxDyn>,
    gamma: Vec<f32>,
    stats: RowStats,
}

impl LayerNormInput {
    /// The gradients of the input, the weight and the shift from `grad`, the output's.
    fn gradients(&self, grad: ArrayViewD<f32>) -> (ArrayD<f32>, Array1<f32>, Array1<f32>) {
        let grad = grad.as_standard_layout();
        let mut dx = ArrayD::zeros(self.x.raw_dim());
        let (dgamma, dbeta) = cpu::layer_norm_backward(
            elements(&self.x),
            elements(&grad),
            &self.gamma,
            &self.stats,
            elements_mut(&mut dx),
            cpu::Threads::Pool,
        );
        (dx, Array1::from(dgamma), Array1::from(dbeta))
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl<const N: usize> Backward<NdArray<f32>, N> for LayerNormBackward {
    type State = LayerNormInput;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (dx, dgamma, dbeta) = ops.state.gradients(output_gradient(&ops, grads).view());
        let parent_grads = [
            dx.into_shared(),
            dgamma.into_dyn().into_shared(),
            dbeta.into_dyn().into_shared(),
        ];
        for (parent, parent_grad) in ops.parents.into_iter().zip(parent_grads) {
            if let Some(parent) = parent {
                grads.register::<NdArray<f32>>(parent.id, NdArrayTensor::from(parent_grad));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::ops::ModuleOps;
    use burn::tensor::TensorPrimitive;

    use super::*;

    type Ad = Autodiff<NdArray<f32>>;

    #[test]
    fn gelu_gradient_is_the_exact_derivative() {
        let xs: Vec<f32> = (-60..=60).map(|i| i as f32 / 10.0).collect();
        let x = Tensor::<Ad, 1>::from_floats(xs.as_slice(), &Default::default()).require_grad();
        let y = gelu(&x).expect("Autodiff<NdArray<f32>> has the exact GELU");
        let burns = burn::tensor::activation::gelu(x.clone());
        let forward: f32 = (y.clone().inner() - burns.inner())
            .abs()
            .max()
            .into_scalar();
        assert!(
            forward < 1e-6,
            "the forward differs from Burn's (erf in f64) by {forward}"
        );

        let grad = x
            .grad(&y.sum().backward())
            .expect("x is a leaf")
            .into_data();
        let grad = grad.as_slice::<f32>().expect("f32");
        // Central differences of x·Φ(x) in f64, with Φ from erf.
        let f = |x: f64| x * 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        for (x, g) in xs.iter().map(|&x| x as f64).zip(grad) {
            let h = 1e-4;
            let numeric = (f(x + h) - f(x - h)) / (2.0 * h);
            assert!(
                (*g as f64 - numeric).abs() < 1e-5,
                "x = {x}: gradient {g}, numerically {numeric}"
            );
        }
    }

    #[test]
    fn layer_norm_matches_burns_ops_forward_and_backward() {
        let device = Default::default();
        let random = |shape: [usize; 3]| {
            Tensor::<Ad, 3>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device)
        };
        // 160 rows: three blocks of the backward's partial sums.
        let (x, weights) = (random([4, 40, 24]).require_grad(), random([4, 40, 24]));
        let max_diff = |a: Tensor<NdArray<f32>, 1>, b: Tensor<NdArray<f32>, 1>| -> f32 {
            (a - b).abs().max().into_scalar()
        };
        for with_beta in [true, false] {
            let gamma = random([1, 1, 24]).reshape([24]).require_grad();
            let beta = with_beta.then(|| random([1, 1, 24]).reshape([24]).require_grad());
            let y = |fused: bool| match fused {
                true => layer_norm(&x, &gamma, beta.as_ref(), 1e-5)
                    .expect("Autodiff<NdArray<f32>> has the one-pass LayerNorm"),
                false => Tensor::from_primitive(TensorPrimitive::Float(Ad::layer_norm(
                    x.clone().into_primitive().tensor(),
                    gamma.clone().into_primitive().tensor(),
                    beta.clone().map(|b| b.into_primitive().tensor()),
                    1e-5,
                ))),
            };
            // Each graph's backward runs before the next graph is built: a backward pass
            // frees the graph it walks, the shared leaves included.
            let with_grads = |y: Tensor<Ad, 3>| {
                (
                    y.clone().inner().flatten(0, 2),
                    (y * weights.clone()).sum().backward(),
                )
            };
            let ((fused_y, fused), (burn_y, burn)) = (with_grads(y(true)), with_grads(y(false)));
            let y = max_diff(fused_y, burn_y);
            assert!(y < 1e-5, "beta {with_beta}: the forward differs by {y}");
            let dx = max_diff(
                x.grad(&fused).expect("x").flatten(0, 2),
                x.grad(&burn).expect("x").flatten(0, 2),
            );
            let dgamma = max_diff(
                gamma.grad(&fused).expect("gamma"),
                gamma.grad(&burn).expect("gamma"),
            );
            assert!(
                dx < 1e-5 && dgamma < 1e-4,
                "beta {with_beta}: d(x) differs by {dx}, d(gamma) by {dgamma}"
            );
            if let Some(beta) = &beta {
                let dbeta = max_diff(
                    beta.grad(&fused).expect("beta"),
                    beta.grad(&burn).expect("beta"),
                );
                assert!(dbeta < 1e-4, "d(beta) differs by {dbeta}");
            }
        }
    }

    #[test]
    fn causal_attention_matches_burns_ops_forward_and_backward() {
        let device = Default::default();
        let [batch, seq, heads, head_dim] = [3, 17, 4, 8];
        let d_model = heads * head_dim;
        let random = |shape: [usize; 3]| {
            Tensor::<Ad, 3>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device)
        };
        let (qkv, weights) = (
            random([batch, seq, 3 * d_model]).require_grad(),
            random([batch, seq, d_model]),
        );
        let y = |fused: bool| match fused {
            true => causal_self_attention(&qkv, heads)
                .expect("Autodiff<NdArray<f32>> has the fused attention"),
            false => {
                let [q, k, v] = [0, 1, 2].map(|i| {
                    qkv.clone()
                        .narrow(2, i * d_model, d_model)
                        .reshape([batch, seq, heads, head_dim])
                        .swap_dims(1, 2)
                });
                let causal = burn::tensor::ops::AttentionModuleOptions {
                    is_causal: true,
                    ..Default::default()
                };
                burn::tensor::module::attention(q, k, v, None, None, causal)
                    .swap_dims(1, 2)
                    .reshape([batch, seq, d_model])
            }
        };
        // Each graph's backward runs before the next graph is built (see the LayerNorm test).
        let with_grad = |y: Tensor<Ad, 3>| {
            (
                y.clone().inner(),
                qkv.grad(&(y * weights.clone()).sum().backward())
                    .expect("qkv"),
            )
        };
        let ((fused_y, fused), (burn_y, burn)) = (with_grad(y(true)), with_grad(y(false)));
        let out: f32 = (fused_y - burn_y).abs().max().into_scalar();
        let grad: f32 = (fused - burn).abs().max().into_scalar();
        assert!(
            out < 1e-5 && grad < 1e-5,
            "fused vs Burn: output differs by {out}, d(qkv) by {grad}"
        );
    }

    #[test]
    fn linear_matches_burns_ops_forward_and_backward() {
        let device = Default::default();
        let random = |shape: [usize; 2]| {
            Tensor::<Ad, 2>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device)
        };
        let (x, weights) = (random([13, 24]).require_grad(), random([13, 10]));
        let max_diff = |a: Tensor<NdArray<f32>, 2>, b: Tensor<NdArray<f32>, 2>| -> f32 {
            (a - b).abs().max().into_scalar()
        };
        // The tied output head passes the embedding table transposed, a strided view.
        for (with_bias, transposed) in [(true, false), (false, true)] {
            let weight = match transposed {
                true => random([10, 24]).require_grad(),
                false => random([24, 10]).require_grad(),
            };
            let bias = with_bias.then(|| random([1, 10]).reshape([10]).require_grad());
            let w = || {
                if transposed {
                    weight.clone().transpose()
                } else {
                    weight.clone()
                }
            };
            let y = |fused: bool| match fused {
                true => linear(&x, &w(), bias.as_ref())
                    .expect("Autodiff<NdArray<f32>> has the fused linear"),
                false => burn::tensor::module::linear(x.clone(), w(), bias.clone()),
            };
            let with_grads =
                |y: Tensor<Ad, 2>| (y.clone().inner(), (y * weights.clone()).sum().backward());
            let ((fused_y, fused), (burn_y, burn)) = (with_grads(y(true)), with_grads(y(false)));
            assert!(
                max_diff(fused_y, burn_y) < 1e-5,
                "bias {with_bias}: outputs differ"
            );
            let dx = max_diff(x.grad(&fused).expect("x"), x.grad(&burn).expect("x"));
            let dw = max_diff(
                weight.grad(&fused).expect("weight"),
                weight.grad(&burn).expect("weight"),
            );
            assert!(
                dx < 1e-5 && dw < 1e-5,
                "bias {with_bias}, transposed {transposed}: d(x) differs by {dx}, d(W) by {dw}"
            );
            if let Some(bias) = &bias {
                let db: f32 = (bias.grad(&fused).expect("bias") - bias.grad(&burn).expect("bias"))
                    .abs()
                    .max()
                    .into_scalar();
                assert!(db < 1e-5, "d(bias) differs by {db}");
            }
        }
    }

    #[test]
    fn other_backends_take_burns_path() {
        let x = Tensor::<NdArray<f32>, 1>::zeros([3], &Default::default());
        assert!(
            gelu(&x).is_none(),
            "without autodiff there is no backward to replace"
        );
        assert!(causal_self_attention(
            &Tensor::<NdArray<f32>, 3>::zeros([1, 4, 12], &Default::default()),
            2
        )
        .is_none());
    }
}
