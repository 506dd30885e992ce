//! Every backend's kernels against [`reference`], forward and backward, under autodiff.

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Distribution;

use super::*;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// The backends with kernels of their own, each on its CPU device.
#[allow(clippy::vec_init_then_push)] // each push is behind its backend's feature
fn backends() -> Vec<Box<dyn Check>> {
    let mut all: Vec<Box<dyn Check>> = Vec::new();
    #[cfg(feature = "ndarray")]
    all.push(Box::new(On::<Autodiff<burn::backend::NdArray<f32>>>(Default::default())));
    #[cfg(feature = "tch")]
    all.push(Box::new(On::<Autodiff<burn::backend::LibTorch<f32>>>(
        burn::backend::libtorch::LibTorchDevice::Cpu,
    )));
    all
}

trait Check {
    fn attention(&self);
    fn layer_norm(&self);
    fn linear(&self);
    fn gelu(&self);
    fn cross_entropy(&self);
}

struct On<B: AutodiffBackend>(B::Device);

fn random<B: Backend, const D: usize>(shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn max_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    (a - b).abs().max().into_scalar().elem()
}

/// `y` and the gradients of `Σ y · weights` with respect to `leaves`. Each graph's backward
/// runs before the next graph is built: a backward pass frees the graph it walks.
fn with_grads<B: AutodiffBackend, const D: usize, const L: usize>(
    y: Tensor<B, D>,
    weights: &Tensor<B, D>,
    leaves: &[&Tensor<B, L>],
) -> (Tensor<Inner<B>, D>, Vec<Tensor<Inner<B>, L>>) {
    let grads = (y.clone() * weights.clone()).sum().backward();
    let leaf_grads = leaves.iter().map(|t| t.grad(&grads).expect("a leaf that was used"));
    (y.inner(), leaf_grads.collect())
}

/// The kernel's and the reference's output and gradients differ by at most `tolerance`.
fn agree<B: AutodiffBackend, const D: usize, const L: usize>(
    what: &str,
    kernel: impl Fn() -> Tensor<B, D>,
    reference: impl Fn() -> Tensor<B, D>,
    weights: &Tensor<B, D>,
    leaves: &[&Tensor<B, L>],
    tolerance: f32,
) {
    let (y, grads) = with_grads(kernel(), weights, leaves);
    let (want, want_grads) = with_grads(reference(), weights, leaves);
    let out = max_diff(y, want);
    assert!(out < tolerance, "{what}: outputs differ by {out}");
    for (i, (got, want)) in grads.into_iter().zip(want_grads).enumerate() {
        let diff = max_diff(got, want);
        assert!(diff < tolerance, "{what}: the gradient of leaf {i} differs by {diff}");
    }
}

impl<B: AutodiffBackend + KernelBackend> Check for On<B> {
    fn attention(&self) {
        let [batch, seq, heads, head_dim] = [3, 17, 4, 8];
        let d_model = heads * head_dim;
        let qkv = random::<B, 3>([batch, seq, 3 * d_model], &self.0).require_grad();
        let weights = random([batch, seq, d_model], &self.0);
        agree(
            "attention",
            || <B as KernelBackend>::causal_self_attention(qkv.clone(), heads),
            || reference::causal_self_attention(qkv.clone(), heads),
            &weights,
            &[&qkv],
            1e-5,
        );
    }

    fn layer_norm(&self) {
        // 160 rows: three blocks of the one-pass backward's partial sums.
        let x = random::<B, 3>([4, 40, 24], &self.0).require_grad();
        let weights = random([4, 40, 24], &self.0);
        for with_beta in [true, false] {
            let gamma = random::<B, 1>([24], &self.0).require_grad();
            let beta = with_beta.then(|| random::<B, 1>([24], &self.0).require_grad());
            let run = |kernel: bool| {
                let norm = LayerNorm { gamma: gamma.clone(), beta: beta.clone(), epsilon: 1e-5 };
                match kernel {
                    true => <B as KernelBackend>::layer_norm(x.clone(), norm),
                    false => reference::layer_norm(x.clone(), norm),
                }
            };
            let what = format!("layer norm, beta {with_beta}");
            agree(&what, || run(true), || run(false), &weights, &[&x], 1e-5);
            let params: Vec<&Tensor<B, 1>> =
                [Some(&gamma), beta.as_ref()].into_iter().flatten().collect();
            agree(&what, || run(true), || run(false), &weights, &params, 1e-4);
        }
    }

    fn linear(&self) {
        // 300 rows of a 3-D input, as the model passes them; a transposed weight is the tied head's.
        for (d_in, d_out, transposed) in [(24, 40, false), (40, 24, false), (24, 40, true)] {
            let x = random::<B, 3>([3, 100, d_in], &self.0).require_grad();
            let weight = match transposed {
                true => random::<B, 2>([d_out, d_in], &self.0).require_grad(),
                false => random::<B, 2>([d_in, d_out], &self.0).require_grad(),
            };
            let bias = random::<B, 1>([d_out], &self.0).require_grad();
            let w = || match transposed {
                true => weight.clone().transpose(),
                false => weight.clone(),
            };
            let weights = random([3, 100, d_out], &self.0);
            let what = format!("linear {d_in}→{d_out}, transposed {transposed}");
            let layer = || LinearWeights { weight: w(), bias: Some(bias.clone()) };
            let kernel = || <B as KernelBackend>::linear(x.clone(), layer());
            let plain = || reference::linear(x.clone(), layer());
            agree(&what, kernel, plain, &weights, &[&x], 1e-3);
            agree(&what, kernel, plain, &weights, &[&weight], 1e-3);
            agree(&what, kernel, plain, &weights, &[&bias], 1e-3);
        }
    }

    /// Against the exact derivative, which Burn's default backward (the tanh approximation's)
    /// is not.
    fn gelu(&self) {
        let xs: Vec<f32> = (-60..=60).map(|i| i as f32 / 10.0).collect();
        let x = Tensor::<B, 1>::from_floats(xs.as_slice(), &self.0).require_grad();
        let y = <B as KernelBackend>::gelu(x.clone());
        let forward = max_diff(y.clone().inner(), reference::gelu(x.clone()).inner());
        assert!(forward < 1e-6, "GELU differs from Burn's (erf in f64) by {forward}");
        let grad = x.grad(&y.sum().backward()).expect("x is a leaf");
        let grad: Vec<f32> = grad.into_data().convert::<f32>().to_vec().expect("f32");
        let f = |x: f64| x * 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        for (x, g) in xs.iter().map(|&x| x as f64).zip(grad) {
            let h = 1e-4;
            let numeric = (f(x + h) - f(x - h)) / (2.0 * h);
            let error = (g as f64 - numeric).abs();
            assert!(error < 1e-5, "x = {x}: gradient {g}, numerically {numeric}");
        }
    }

    /// Over 150 rows (three blocks of the ndarray kernel) of 11 logits.
    fn cross_entropy(&self) {
        let logits = Tensor::<B, 2>::random([150, 11], Distribution::Normal(0.0, 2.0), &self.0)
            .require_grad();
        let target_ids: Vec<i32> = (0..150).map(|i| i * 7 % 11).collect();
        let targets = Tensor::<B, 1, Int>::from_ints(target_ids.as_slice(), &self.0);
        let weights = Tensor::<B, 1>::full([1], 3.0, &self.0);
        agree(
            "cross-entropy",
            || <B as KernelBackend>::cross_entropy(logits.clone(), targets.clone()),
            || reference::cross_entropy(logits.clone(), targets.clone()),
            &weights,
            &[&logits],
            1e-5,
        );
    }
}

/// One test per kernel, each over every backend that has kernels of its own.
macro_rules! on_every_backend {
    ($($test:ident => $check:ident),+ $(,)?) => {
        $(
            #[test]
            fn $test() {
                backends().iter().for_each(|on| on.$check());
            }
        )+
    };
}

on_every_backend! {
    attention_matches_the_reference => attention,
    layer_norm_matches_the_reference => layer_norm,
    linear_matches_the_reference => linear,
    gelu_has_the_exact_derivative => gelu,
    cross_entropy_matches_the_reference => cross_entropy,
}

#[test]
fn adamw_update_matches_the_reference() {
    fn check<B: KernelBackend>(device: &B::Device) {
        let step =
            AdamWStep { beta1: 0.9, beta2: 0.95, decay: 0.999, step_size: 1e-2, epsilon: 1e-8 };
        let moments = || {
            let param = random::<B, 2>([5, 7], device);
            let m1 = random::<B, 2>([5, 7], device);
            [param, m1.clone(), m1.abs()]
        };
        let (start, grad) = (moments(), random::<B, 2>([5, 7], device));
        let fused = <B as KernelBackend>::adamw_update(start.clone(), grad.clone(), step);
        let plain = reference::adamw_update(start, grad, step);
        for (a, b) in fused.into_iter().zip(plain) {
            assert!(max_diff(a, b) < 1e-6);
        }
    }
    #[cfg(feature = "ndarray")]
    check::<burn::backend::NdArray<f32>>(&Default::default());
    #[cfg(feature = "tch")]
    check::<burn::backend::LibTorch<f32>>(&burn::backend::libtorch::LibTorchDevice::Cpu);
}
