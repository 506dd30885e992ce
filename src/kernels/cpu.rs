//! The CPU kernels behind the ndarray path and libtorch's LayerNorm backward, on plain f32
//! slices in row-major order.
//!
//! Each splits its rows (or elements) into fixed blocks that rayon runs on every core. A
//! block's result does not depend on the thread that runs it, and partial sums are added in
//! block order, so results are bit-identical from run to run and whatever the number of
//! cores. `exp` and `erf` are written out without branches or library calls
//! ([`exp_nonpositive`], [`gelu_block`]), so that their loops vectorize.

// libtorch uses LayerNorm's backward on the calling thread, ndarray the rest: a build with only
// one of the two leaves the other's part unused.
#![cfg_attr(not(all(feature = "ndarray", feature = "tch")), allow(dead_code))]

use ndarray::ArrayView1;
use rayon::prelude::*;

/// Elements per block of GELU: enough work to outweigh handing the block to a thread.
const ELEMENTS_PER_BLOCK: usize = 1 << 14;

/// Rows per block of the row-wise kernels.
const ROWS_PER_BLOCK: usize = 64;

/// `x·Φ(x)` into `y` and its derivative `Φ(x) + x·φ(x)` into `derivative`, for each of `x`.
pub(super) fn gelu_and_derivative(x: &[f32], y: &mut [f32], derivative: &mut [f32]) {
    let blocks = x.par_chunks(ELEMENTS_PER_BLOCK).zip(y.par_chunks_mut(ELEMENTS_PER_BLOCK));
    blocks
        .zip(derivative.par_chunks_mut(ELEMENTS_PER_BLOCK))
        .for_each(|((x, y), derivative)| gelu_block(x, y, derivative));
}

/// One block of [`gelu_and_derivative`], with `Φ` and `φ` the standard normal's CDF and density.
///
/// With z = |x|/√2, the tail 1 − Φ(|x|) = erfc(z)/2 comes from Abramowitz & Stegun 7.1.26,
/// erfc(z) ≈ t·(a₁ + t·(a₂ + t·(a₃ + t·(a₄ + t·a₅))))·e^(−z²) with t = 1/(1 + p·z), within
/// 1.5e-7 of erfc; φ(x) = e^(−z²)/√(2π) shares its exponential.
fn gelu_block(x: &[f32], y: &mut [f32], derivative: &mut [f32]) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152_1, 1.061_405_4];
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    for ((&x, y), derivative) in x.iter().zip(y).zip(derivative) {
        let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
        let t = 1.0 / (1.0 + P * z);
        let gaussian = exp_nonpositive(-z * z);
        let tail = 0.5 * t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4])))) * gaussian;
        let cdf = if x < 0.0 { tail } else { 1.0 - tail };
        *y = x * cdf;
        *derivative = cdf + x * gaussian * FRAC_1_SQRT_2PI;
    }
}

/// Each row's mean and 1/√(variance + ε), from LayerNorm's forward.
#[derive(Debug, Clone)]
pub(super) struct RowStats {
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
}

/// LayerNorm of each `gamma.len()`-wide row of `x` into `y`: `(x − mean)·rstd·gamma + beta`.
pub(super) fn layer_norm(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
    y: &mut [f32],
) -> RowStats {
    let d = gamma.len();
    let rows = x.len() / d;
    let mut stats = RowStats { mean: vec![0.0; rows], rstd: vec![0.0; rows] };
    let blocks = x.par_chunks(ROWS_PER_BLOCK * d).zip(y.par_chunks_mut(ROWS_PER_BLOCK * d));
    let blocks = blocks
        .zip(stats.mean.par_chunks_mut(ROWS_PER_BLOCK))
        .zip(stats.rstd.par_chunks_mut(ROWS_PER_BLOCK));
    blocks.for_each(|(((x, y), mean), rstd)| {
        for (((x, y), mean), rstd) in
            x.chunks_exact(d).zip(y.chunks_exact_mut(d)).zip(mean).zip(rstd)
        {
            *mean = sum(x) / d as f32;
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x - *mean;
            }
            *rstd = 1.0 / (dot(y, y) / d as f32 + epsilon).sqrt();
            for ((y, &gamma), &beta) in y.iter_mut().zip(gamma).zip(beta) {
                *y = *y * *rstd * gamma + beta;
            }
        }
    });
    stats
}

/// Where a kernel's blocks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Threads {
    /// rayon's pool, on every core.
    Pool,
    /// The calling thread. For libtorch: its OpenMP threads busy-wait between its kernels, and
    /// rayon's threads would fight them for the cores (measured: 2 ms a `small.toml` step slower).
    Caller,
}

/// LayerNorm's backward: the input's gradient into `dx` from the output's, `grad`; returns
/// those of the weight and the shift. The latter two are summed per block of rows, then the
/// blocks' sums in block order.
pub(super) fn layer_norm_backward(
    x: &[f32],
    grad: &[f32],
    gamma: &[f32],
    stats: &RowStats,
    dx: &mut [f32],
    threads: Threads,
) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let block = ROWS_PER_BLOCK * d;
    let blocks = x.chunks(block).zip(grad.chunks(block)).zip(dx.chunks_mut(block));
    let blocks: Vec<_> = blocks
        .zip(stats.mean.chunks(ROWS_PER_BLOCK))
        .zip(stats.rstd.chunks(ROWS_PER_BLOCK))
        .collect();
    let work =
        |((((x, grad), dx), mean), rstd)| layer_norm_backward_block(x, grad, gamma, mean, rstd, dx);
    let partial_sums: Vec<_> = match threads {
        Threads::Pool => blocks.into_par_iter().map(work).collect(),
        Threads::Caller => blocks.into_iter().map(work).collect(),
    };
    let (mut dgamma, mut dbeta) = (vec![0.0; d], vec![0.0; d]);
    for (block_dgamma, block_dbeta) in &partial_sums {
        for i in 0..d {
            dgamma[i] += block_dgamma[i];
            dbeta[i] += block_dbeta[i];
        }
    }
    (dgamma, dbeta)
}

/// One block of [`layer_norm_backward`]. Per row, with x̂ = (x − mean)·rstd and g = grad·gamma:
/// dx = rstd · (g − mean(g) − x̂ · mean(g·x̂)); over the rows, dgamma = Σ grad·x̂ and
/// dbeta = Σ grad.
fn layer_norm_backward_block(
    x: &[f32],
    grad: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let (mut dgamma, mut dbeta, mut x_hat, mut g) =
        (vec![0.0; d], vec![0.0; d], vec![0.0; d], vec![0.0; d]);
    for ((((x, grad), dx), &mean), &rstd) in
        x.chunks_exact(d).zip(grad.chunks_exact(d)).zip(dx.chunks_exact_mut(d)).zip(mean).zip(rstd)
    {
        for i in 0..d {
            x_hat[i] = (x[i] - mean) * rstd;
            g[i] = grad[i] * gamma[i];
        }
        let (g_mean, gx_mean) = (sum(&g) / d as f32, dot(&g, &x_hat) / d as f32);
        for i in 0..d {
            dx[i] = rstd * (g[i] - g_mean - x_hat[i] * gx_mean);
            dgamma[i] += grad[i] * x_hat[i];
            dbeta[i] += grad[i];
        }
    }
    (dgamma, dbeta)
}

/// Cross-entropy of each `vocab`-wide row of `logits` against its target: the mean over the
/// rows, and each row's log-sum-exp for the backward. `None` if a target is not below `vocab`.
pub(super) fn cross_entropy(
    logits: &[f32],
    targets: &[usize],
    vocab: usize,
) -> Option<(f32, Vec<f32>)> {
    if vocab == 0 || targets.iter().any(|&t| t >= vocab) || logits.len() != targets.len() * vocab {
        return None;
    }
    let mut log_sum_exp = vec![0.0; targets.len()];
    let blocks = logits
        .par_chunks(ROWS_PER_BLOCK * vocab)
        .zip(targets.par_chunks(ROWS_PER_BLOCK))
        .zip(log_sum_exp.par_chunks_mut(ROWS_PER_BLOCK));
    let partial_sums: Vec<f32> = blocks
        .map(|((logits, targets), log_sum_exp)| {
            let mut loss = 0.0;
            for ((row, &target), lse) in logits.chunks_exact(vocab).zip(targets).zip(log_sum_exp) {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
                let exps: f32 = row.iter().map(|&x| exp_nonpositive(x - max)).sum();
                *lse = max + exps.ln();
                loss += *lse - row[target];
            }
            loss
        })
        .collect();
    Some((partial_sums.iter().sum::<f32>() / targets.len() as f32, log_sum_exp))
}

/// Cross-entropy's backward: `scale · (softmax(row) − onehot(target))` into `dlogits`, with
/// `scale` the loss's gradient over the number of rows.
pub(super) fn cross_entropy_backward(
    logits: &[f32],
    targets: &[usize],
    log_sum_exp: &[f32],
    scale: f32,
    dlogits: &mut [f32],
) {
    let vocab = logits.len() / targets.len().max(1);
    let blocks = logits
        .par_chunks(ROWS_PER_BLOCK * vocab)
        .zip(dlogits.par_chunks_mut(ROWS_PER_BLOCK * vocab));
    blocks
        .zip(targets.par_chunks(ROWS_PER_BLOCK))
        .zip(log_sum_exp.par_chunks(ROWS_PER_BLOCK))
        .for_each(|(((logits, dlogits), targets), log_sum_exp)| {
            for (((row, d_row), &target), &lse) in logits
                .chunks_exact(vocab)
                .zip(dlogits.chunks_exact_mut(vocab))
                .zip(targets)
                .zip(log_sum_exp)
            {
                for (d, &x) in d_row.iter_mut().zip(row) {
                    *d = scale * exp_nonpositive(x - lse);
                }
                d_row[target] -= scale;
            }
        });
}

/// e^v for v ≤ 0, within 2 ulp of f32's: v = k·ln 2 + r with |r| ≤ ln 2 / 2, e^r from Cephes'
/// polynomial, and 2^k written straight into the exponent bits. v is clamped at −87, where
/// e^v ≈ 1.6e-38, so that 2^k stays a normal float.
pub(super) fn exp_nonpositive(v: f32) -> f32 {
    // Adding 1.5·2²³ rounds to an integer and leaves it in the sum's low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // Not `max`, which would turn a NaN into −87: a NaN must reach the loss and stop the run.
    let v = if v < -87.0 { -87.0 } else { v };
    let shifted = v * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    // ln 2 in two parts, so that k·ln 2 is subtracted without rounding away r's bits.
    let r = (v - k * 0.693_359_4) + k * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let two_to_k =
        f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    (p * r * r + r + 1.0) * two_to_k
}

/// Σ a, in ndarray's eight interleaved partial sums (one running sum would wait on every
/// addition; eight vectorize).
fn sum(a: &[f32]) -> f32 {
    ArrayView1::from(a).sum()
}

/// Σ a·b, as [`sum`] does it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    ArrayView1::from(a).dot(&ArrayView1::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp() {
        for i in 0..=200_000 {
            let v = -87.0 * i as f32 / 200_000.0;
            let (fast, exact) = (exp_nonpositive(v) as f64, (v as f64).exp());
            assert!(
                (fast - exact).abs() <= 2.0 * f32::EPSILON as f64 * exact,
                "e^{v}: {fast}, exactly {exact}"
            );
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(f32::NEG_INFINITY) < 1e-37 && exp_nonpositive(f32::NAN).is_nan());
    }

    /// Against the textbook formulas in f64, over 150 rows (three blocks) of 7 logits.
    #[test]
    fn cross_entropy_and_its_gradient_match_f64() {
        let (rows, vocab) = (150, 7);
        let logits: Vec<f32> =
            (0..rows * vocab).map(|i| 4.0 * ((i * 37 % 101) as f32 / 101.0 - 0.5)).collect();
        let targets: Vec<usize> = (0..rows).map(|r| r * 5 % vocab).collect();
        let (loss, lse) = cross_entropy(&logits, &targets, vocab).expect("targets below vocab");
        let mut dlogits = vec![0.0; logits.len()];
        cross_entropy_backward(&logits, &targets, &lse, 0.5 / rows as f32, &mut dlogits);
        let mut expected_loss = 0.0;
        for r in 0..rows {
            let row: Vec<f64> =
                logits[r * vocab..(r + 1) * vocab].iter().map(|&x| x as f64).collect();
            let norm: f64 = row.iter().map(|x| x.exp()).sum();
            expected_loss += norm.ln() - row[targets[r]];
            for (i, x) in row.iter().enumerate() {
                let expected =
                    0.5 / rows as f64 * (x.exp() / norm - f64::from(u8::from(i == targets[r])));
                assert!(
                    (dlogits[r * vocab + i] as f64 - expected).abs() < 1e-7,
                    "row {r}, logit {i}"
                );
            }
        }
        assert!(
            (loss as f64 - expected_loss / rows as f64).abs() < 1e-5,
            "{loss} against {}",
            expected_loss / rows as f64
        );
        assert!(
            cross_entropy(&logits, &[7; 150], vocab).is_none(),
            "a target past the vocabulary is refused"
        );
    }
}
