//! libtorch's attention and LayerNorm kernels, cross-entropy, and linear layers through
//! oneDNN, recorded as single autodiff operations.
//!
//! Only for `Autodiff<LibTorch<E>>` with tensors on the CPU: libtorch without autodiff calls
//! these kernels by itself, and on CUDA the CPU flash-attention kernel does not apply.
//!
//! libtorch's matmul calls MKL, whose SGEMM runs its AVX2 code on AMD processors; oneDNN,
//! also inside libtorch, picks its kernels by instruction set, AVX-512 where there is one.
//! tch has no oneDNN matmul of plain tensors, but a 1×1 convolution is one ([`onednn_matmul`]).
//!
//! tch exposes no LayerNorm backward kernel, and composed from libtorch's operations it is a
//! dozen passes. It runs [`super::cpu`]'s one pass over copies of the tensors instead, on the
//! calling thread.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::libtorch::{LibTorch, TchElement, TchTensor};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use half::{bf16, f16};

use super::cpu;

/// [`super::causal_self_attention`] through libtorch's CPU flash-attention kernels.
///
/// Taking `qkv` whole also spares the split's backward: Burn writes each third's gradient
/// into a zeroed tensor of the whole width and adds the three.
pub(super) fn causal_self_attention<B: Backend>(
    qkv: &Tensor<B, 3>,
    n_heads: usize,
) -> Option<Tensor<B, 3>> {
    self_attention_as::<B, f32>(qkv, n_heads)
        .or_else(|| self_attention_as::<B, f16>(qkv, n_heads))
        .or_else(|| self_attention_as::<B, bf16>(qkv, n_heads))
}

/// [`super::layer_norm`] through libtorch's `native_layer_norm`.
pub(super) fn layer_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    gamma: &Tensor<B, 1>,
    beta: Option<&Tensor<B, 1>>,
    epsilon: f64,
) -> Option<Tensor<B, D>> {
    layer_norm_as::<B, f32, D>(x, gamma, beta, epsilon)
        .or_else(|| layer_norm_as::<B, f16, D>(x, gamma, beta, epsilon))
        .or_else(|| layer_norm_as::<B, bf16, D>(x, gamma, beta, epsilon))
}

/// [`super::cross_entropy`]: the rows' log-sum-exp and the targets' logits forward; the
/// backward is `softmax − onehot` from them, so no log-softmax of the logits' size is kept.
pub(super) fn cross_entropy<B: Backend>(
    logits: &Tensor<B, 2>,
    targets: &Tensor<B, 1, Int>,
) -> Option<Tensor<B, 1>> {
    cross_entropy_as::<B, f32>(logits, targets)
        .or_else(|| cross_entropy_as::<B, f16>(logits, targets))
        .or_else(|| cross_entropy_as::<B, bf16>(logits, targets))
}

/// Rows below which a linear layer stays on MKL: oneDNN sets up each call in about 60 µs,
/// which its faster kernel earns back from about 256 rows (measured at d_model 128–768).
const ONEDNN_MIN_ROWS: i64 = 256;

/// [`super::linear`] through oneDNN, in f32 and for at least [`ONEDNN_MIN_ROWS`] rows.
pub(super) fn linear<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, 2>> {
    let x = on_cpu::<B, f32, 2>(x)?;
    let weight = on_cpu::<B, f32, 2>(weight)?;
    let bias = match bias {
        Some(bias) => Some(on_cpu::<B, f32, 1>(bias)?),
        None => None,
    };
    let (rows, _) = x.primitive.tensor.size2().ok()?;
    if rows < ONEDNN_MIN_ROWS {
        return None;
    }
    let y = onednn_matmul(
        &x.primitive.tensor,
        &weight.primitive.tensor.tr(),
        bias.as_ref().map(|b| &b.primitive.tensor),
    )
    .ok()?;
    let state = || Saved::Linear {
        x: x.primitive.clone(),
        weight: weight.primitive.clone(),
        bias: bias.is_some(),
    };
    let y = match &bias {
        Some(bias) => record([&x, &weight, bias], state, y),
        None => record([&x, &weight], state, y),
    };
    super::back::<LibTorch<f32>, B, 2>(y)
}

/// `a: [m, k]` · `filtersᵀ` (+ `bias`) for `filters: [n, k]` → `[m, n]`, as oneDNN's 1×1
/// convolution of `a` read as one image of `m` pixels with `k` channels, stored channels-last
/// (as `a` is), through `n` filters.
fn onednn_matmul(
    a: &tch::Tensor,
    filters: &tch::Tensor,
    bias: Option<&tch::Tensor>,
) -> Result<tch::Tensor, tch::TchError> {
    let (m, k) = a.size2()?;
    let (n, _) = filters.size2()?;
    let image = a.contiguous().reshape([1, 1, m, k]).permute([0, 3, 1, 2]);
    let y = one_by_one_convolution(&image, &filters.reshape([n, k, 1, 1]), bias)?;
    Ok(y.permute([0, 2, 3, 1]).reshape([m, n]))
}

/// `aᵀ · b` for `a: [m, p]`, `b: [m, q]` → `[p, q]` through oneDNN: `b` read as one image of
/// `q` pixels with `m` channels (rows are channels) and `a`'s columns as `p` filters. oneDNN
/// runs this fastest with the narrower side as the filters, so the wider one is the image.
fn onednn_matmul_tn(a: &tch::Tensor, b: &tch::Tensor) -> Result<tch::Tensor, tch::TchError> {
    let ((m, p), (_, q)) = (a.size2()?, b.size2()?);
    if p > q {
        return Ok(onednn_matmul_tn(b, a)?.tr());
    }
    let image = b.contiguous().reshape([1, m, 1, q]);
    Ok(one_by_one_convolution(&image, &a.tr().reshape([p, m, 1, 1]), None)?.reshape([p, q]))
}

/// oneDNN's convolution of `image: [1, channels, height, width]` with `filters:
/// [n, channels, 1, 1]` (no padding, stride or dilation).
fn one_by_one_convolution(
    image: &tch::Tensor,
    filters: &tch::Tensor,
    bias: Option<&tch::Tensor>,
) -> Result<tch::Tensor, tch::TchError> {
    image.f_mkldnn_convolution(filters, bias, [0, 0], [1, 1], [1, 1], 1)
}

fn cross_entropy_as<B: Backend, E: TchElement>(
    logits: &Tensor<B, 2>,
    targets: &Tensor<B, 1, Int>,
) -> Option<Tensor<B, 1>> {
    let logits = on_cpu::<B, E, 2>(logits)?;
    let targets = super::moved_as::<_, Tensor<Autodiff<LibTorch<E>>, 1, Int>>(targets.clone())
        .ok()?
        .into_primitive()
        .tensor;
    let vocab = *logits.primitive.tensor.size().last()?;
    // libtorch's gather would throw on a target outside the vocabulary; Burn's path reports it.
    let in_vocabulary = targets.numel() > 0
        && targets.min().int64_value(&[]) >= 0
        && targets.max().int64_value(&[]) < vocab;
    if !in_vocabulary {
        return None;
    }
    let log_sum_exp = logits.primitive.tensor.logsumexp([-1], true);
    let target_logits = logits
        .primitive
        .tensor
        .gather(1, &targets.unsqueeze(1), false);
    let loss = (&log_sum_exp - target_logits).mean(None).reshape([1]);
    let state = || Saved::CrossEntropy {
        logits: logits.primitive.clone(),
        targets: TchTensor::new(targets),
        log_sum_exp: TchTensor::new(log_sum_exp),
    };
    super::back::<LibTorch<E>, B, 1>(record([&logits], state, loss))
}

fn self_attention_as<B: Backend, E: TchElement>(
    qkv: &Tensor<B, 3>,
    n_heads: usize,
) -> Option<Tensor<B, 3>> {
    let qkv = on_cpu::<B, E, 3>(qkv)?;
    let (batch, seq, width) = qkv.primitive.tensor.size3().ok()?;
    let d_model = width / 3;
    // Views of `qkv` (no copies): its thirds as `[batch, n_heads, seq, head_dim]`.
    let heads = |i: i64| {
        qkv.primitive
            .tensor
            .narrow(2, i * d_model, d_model)
            .reshape([batch, seq, n_heads as i64, d_model / n_heads as i64])
            .transpose(1, 2)
    };
    let (q, k, v) = (heads(0), heads(1), heads(2));
    let (out, logsumexp) = tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu(
        &q,
        &k,
        &v,
        0.0,
        true,
        None::<tch::Tensor>,
        None,
    );
    let merged = out.transpose(1, 2).reshape([batch, seq, d_model]);
    let state = || Saved::Attention {
        q: TchTensor::new(q),
        k: TchTensor::new(k),
        v: TchTensor::new(v),
        out: TchTensor::new(out),
        logsumexp: TchTensor::new(logsumexp),
    };
    super::back::<LibTorch<E>, B, 3>(record([&qkv], state, merged))
}

fn layer_norm_as<B: Backend, E: TchElement, const D: usize>(
    x: &Tensor<B, D>,
    gamma: &Tensor<B, 1>,
    beta: Option<&Tensor<B, 1>>,
    epsilon: f64,
) -> Option<Tensor<B, D>> {
    let x = on_cpu::<B, E, D>(x)?;
    let gamma = on_cpu::<B, E, 1>(gamma)?;
    let beta = match beta {
        Some(beta) => Some(on_cpu::<B, E, 1>(beta)?),
        None => None,
    };
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
    let y = match &beta {
        Some(beta) => record([&x, &gamma, beta], state, y),
        None => record([&x, &gamma], state, y),
    };
    super::back::<LibTorch<E>, B, D>(y)
}

/// An autodiff tensor of libtorch: its `primitive` and its graph `node`.
type AdTensor<E> = FloatTensor<Autodiff<LibTorch<E>>>;

/// `t`'s autodiff primitive when `B` is `Autodiff<LibTorch<E>>` and `t` lies on the CPU.
fn on_cpu<B: Backend, E: TchElement, const D: usize>(t: &Tensor<B, D>) -> Option<AdTensor<E>> {
    let t = super::cast::<B, LibTorch<E>, D>(t)?;
    (t.primitive.tensor.device() == tch::Device::Cpu).then_some(t)
}

/// `output` of a fused op over `parents` as an autodiff node whose backward is [`Fused`].
fn record<E: TchElement, const N: usize>(
    parents: [&AdTensor<E>; N],
    saved: impl FnOnce() -> Saved,
    output: tch::Tensor,
) -> AdTensor<E> {
    super::record(Fused, parents, saved, TchTensor::new(output))
}

/// What a fused op keeps from its forward pass for its backward.
#[derive(Debug, Clone)]
enum Saved {
    /// Queries, keys, values and output `[batch, n_heads, seq, head_dim]`, and the log-sum-exp
    /// of each query's scores.
    Attention {
        q: TchTensor,
        k: TchTensor,
        v: TchTensor,
        out: TchTensor,
        logsumexp: TchTensor,
    },
    /// Input `[..., d]`, weight, and the per-row mean and 1/√(var + eps) of the input.
    LayerNorm {
        x: TchTensor,
        gamma: TchTensor,
        mean: TchTensor,
        rstd: TchTensor,
    },
    /// Logits `[rows, vocab]`, targets `[rows]` and each row's log-sum-exp `[rows, 1]`.
    CrossEntropy {
        logits: TchTensor,
        targets: TchTensor,
        log_sum_exp: TchTensor,
    },
    /// A linear layer's input `[rows, d_in]` and weight `[d_in, d_out]`, and whether it has a bias.
    Linear {
        x: TchTensor,
        weight: TchTensor,
        bias: bool,
    },
}

impl Saved {
    /// The gradients of the op's parents, in their order, from that of its output.
    fn gradients(self, grad: &tch::Tensor) -> Vec<tch::Tensor> {
        match self {
            Saved::Attention {
                q,
                k,
                v,
                out,
                logsumexp,
            } => {
                let [batch, heads, seq, head_dim] = [0, 1, 2, 3].map(|i| q.tensor.size()[i]);
                let grad = grad.reshape([batch, seq, heads, head_dim]).transpose(1, 2);
                let (dq, dk, dv) =
                    tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu_backward(
                        &grad,
                        &q.tensor,
                        &k.tensor,
                        &v.tensor,
                        &out.tensor,
                        &logsumexp.tensor,
                        0.0,
                        true,
                        None::<tch::Tensor>,
                        None,
                    );
                // `[batch, seq, 3, heads, head_dim]`, laid out as the projection was.
                let dqkv = tch::Tensor::stack(&[dq, dk, dv].map(|g| g.transpose(1, 2)), 2);
                vec![dqkv.reshape([batch, seq, 3 * heads * head_dim])]
            }
            Saved::LayerNorm {
                x,
                gamma,
                mean,
                rstd,
            } => {
                let floats = |t: &tch::Tensor| {
                    Vec::<f32>::try_from(&t.reshape([-1]))
                        .expect("a CPU float tensor copies into f32")
                };
                let stats = cpu::RowStats {
                    mean: floats(&mean.tensor),
                    rstd: floats(&rstd.tensor),
                };
                let x_values = floats(&x.tensor);
                let mut dx = vec![0.0; x_values.len()];
                let (dgamma, dbeta) = cpu::layer_norm_backward(
                    &x_values,
                    &floats(grad),
                    &floats(&gamma.tensor),
                    &stats,
                    &mut dx,
                    cpu::Threads::Caller,
                );
                vec![
                    tch::Tensor::from_slice(&dx).reshape(x.tensor.size()),
                    tch::Tensor::from_slice(&dgamma),
                    tch::Tensor::from_slice(&dbeta),
                ]
            }
            Saved::CrossEntropy {
                logits,
                targets,
                log_sum_exp,
            } => {
                let rows = logits.tensor.size()[0];
                let mut probs = (&logits.tensor - &log_sum_exp.tensor).exp_();
                let minus_one = tch::Tensor::full([rows, 1], -1.0, (probs.kind(), probs.device()));
                let _ = probs.scatter_add_(1, &targets.tensor.unsqueeze(1), &minus_one);
                vec![probs.g_mul_(&(grad / rows as f64))]
            }
            Saved::Linear { x, weight, bias } => {
                let (x, weight) = (&x.tensor, &weight.tensor);
                // MKL where oneDNN refuses (a libtorch built without it).
                let dx =
                    onednn_matmul(grad, weight, None).unwrap_or_else(|_| grad.matmul(&weight.tr()));
                let dweight = onednn_matmul_tn(x, grad).unwrap_or_else(|_| x.tr().matmul(grad));
                let dbias = bias.then(|| grad.sum_dim_intlist([0i64].as_slice(), false, None));
                [Some(dx), Some(dweight), dbias]
                    .into_iter()
                    .flatten()
                    .collect()
            }
        }
    }
}

/// The backward step of every fused op: its state says which.
#[derive(Debug)]
struct Fused;

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

#[cfg(test)]
mod tests {
    use burn::backend::libtorch::LibTorchDevice;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::module::attention;
    use burn::tensor::ops::{AttentionModuleOptions, ModuleOps};
    use burn::tensor::{Distribution, TensorPrimitive};

    use super::*;

    type B = Autodiff<LibTorch<f32>>;
    type Inner = <B as AutodiffBackend>::InnerBackend;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &LibTorchDevice::Cpu)
    }

    fn max_diff<const D: usize>(a: Tensor<Inner, D>, b: Tensor<Inner, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// `y` and the gradients of `Σ y · weights` with respect to `leaves`.
    fn with_grads<const D: usize>(
        y: Tensor<B, 3>,
        weights: &Tensor<B, 3>,
        leaves: &[&Tensor<B, D>],
    ) -> (Tensor<Inner, 3>, Vec<Tensor<Inner, D>>) {
        let grads = (y.clone() * weights.clone()).sum().backward();
        (
            y.inner(),
            leaves
                .iter()
                .map(|t| t.grad(&grads).expect("a leaf that was used"))
                .collect(),
        )
    }

    #[test]
    fn self_attention_matches_burns_ops_forward_and_backward() {
        let [batch, seq, heads, head_dim] = [3, 17, 4, 8];
        let d_model = heads * head_dim;
        let qkv = random([batch, seq, 3 * d_model]).require_grad();
        let weights = random([batch, seq, d_model]);
        let fused =
            causal_self_attention(&qkv, heads).expect("Autodiff<LibTorch> on the CPU is fused");
        let [q, k, v] = [0, 1, 2].map(|i| {
            qkv.clone()
                .narrow(2, i * d_model, d_model)
                .reshape([batch, seq, heads, head_dim])
                .swap_dims(1, 2)
        });
        let burn = attention(
            q,
            k,
            v,
            None,
            None,
            AttentionModuleOptions {
                is_causal: true,
                ..Default::default()
            },
        );
        let burn = burn.swap_dims(1, 2).reshape([batch, seq, d_model]);
        let (fused, fused_grad) = with_grads(fused, &weights, &[&qkv]);
        let (burn, burn_grad) = with_grads(burn, &weights, &[&qkv]);
        let (out, grad) = (
            max_diff(fused, burn),
            max_diff(fused_grad[0].clone(), burn_grad[0].clone()),
        );
        assert!(
            out < 1e-5 && grad < 1e-5,
            "fused vs Burn: output differs by {out}, d(qkv) by {grad}"
        );
    }

    #[test]
    fn layer_norm_matches_burns_ops_forward_and_backward() {
        // 160 rows: three blocks of the backward's partial sums.
        let (x, weights) = (random([4, 40, 24]).require_grad(), random([4, 40, 24]));
        for with_beta in [true, false] {
            let gamma = random([24]).require_grad();
            let beta = with_beta.then(|| random([24]).require_grad());
            let y = |fused: bool| match fused {
                true => layer_norm(&x, &gamma, beta.as_ref(), 1e-5)
                    .expect("Autodiff<LibTorch> on the CPU is fused"),
                false => Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
                    x.clone().into_primitive().tensor(),
                    gamma.clone().into_primitive().tensor(),
                    beta.clone().map(|b| b.into_primitive().tensor()),
                    1e-5,
                ))),
            };
            let (fused, fused_dx) = with_grads(y(true), &weights, &[&x]);
            let (burn, burn_dx) = with_grads(y(false), &weights, &[&x]);
            assert!(
                max_diff(fused, burn) < 1e-5,
                "beta {with_beta}: outputs differ"
            );
            assert!(
                max_diff(fused_dx[0].clone(), burn_dx[0].clone()) < 1e-5,
                "beta {with_beta}: d(x) differs"
            );
            let params: Vec<&Tensor<B, 1>> = [Some(&gamma), beta.as_ref()]
                .into_iter()
                .flatten()
                .collect();
            let (_, fused_dp) = with_grads(y(true), &weights, &params);
            let (_, burn_dp) = with_grads(y(false), &weights, &params);
            for (name, (a, b)) in ["gamma", "beta"]
                .iter()
                .zip(fused_dp.into_iter().zip(burn_dp))
            {
                let diff = max_diff(a, b);
                assert!(diff < 1e-4, "beta {with_beta}: d({name}) differs by {diff}");
            }
        }
    }

    #[test]
    fn linear_matches_burns_matmul_forward_and_backward() {
        // Weights narrower and wider than the input, so both of oneDNN's weight-gradient
        // layouts run.
        for (d_in, d_out) in [(24, 40), (40, 24)] {
            let x = random([ONEDNN_MIN_ROWS as usize + 44, d_in]).require_grad();
            let weight = random([d_in, d_out]).require_grad();
            let bias = random([d_out]).require_grad();
            let weights = random([1, x.dims()[0], d_out]);
            let y = |fused: bool| {
                let y = match fused {
                    true => linear(&x, &weight, Some(&bias))
                        .expect("Autodiff<LibTorch<f32>> on the CPU is fused"),
                    false => {
                        burn::tensor::module::linear(x.clone(), weight.clone(), Some(bias.clone()))
                    }
                };
                y.unsqueeze::<3>()
            };
            let (fused, fused_grads) = with_grads(y(true), &weights, &[&x, &weight]);
            let (burn, burn_grads) = with_grads(y(false), &weights, &[&x, &weight]);
            assert!(
                max_diff(fused, burn) < 1e-4,
                "{d_in}→{d_out}: outputs differ"
            );
            for (name, (a, b)) in ["x", "weight"]
                .iter()
                .zip(fused_grads.into_iter().zip(burn_grads))
            {
                let diff = max_diff(a, b);
                assert!(diff < 1e-3, "{d_in}→{d_out}: d({name}) differs by {diff}");
            }
            let (_, fused_dbias) = with_grads(y(true), &weights, &[&bias]);
            let (_, burn_dbias) = with_grads(y(false), &weights, &[&bias]);
            assert!(
                max_diff(fused_dbias[0].clone(), burn_dbias[0].clone()) < 1e-3,
                "{d_in}→{d_out}: d(bias) differs"
            );
        }
        let few_rows = random([ONEDNN_MIN_ROWS as usize - 1, 8]);
        assert!(
            linear(&few_rows, &random([8, 8]), None).is_none(),
            "fewer rows than oneDNN earns its set-up back on stay on MKL"
        );
    }

    #[test]
    fn other_backends_and_inference_take_burns_path() {
        type Nd = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
        let qkv = Tensor::<Nd, 3>::zeros([1, 4, 12], &Default::default());
        assert!(causal_self_attention(&qkv, 2).is_none());
        let inference = Tensor::<LibTorch<f32>, 3>::zeros([1, 4, 12], &LibTorchDevice::Cpu);
        assert!(
            causal_self_attention(&inference, 2).is_none(),
            "without autodiff burn-tch fuses by itself"
        );
    }
}
