//! f32 matrix products of ndarray views through the `gemm` crate, on rayon's pool.
//!
//! ndarray's own products go through matrixmultiply, which threads each product on a pool of
//! its own: on a 2-core machine its threads and rayon's then take turns yielding to each other,
//! and a `small.toml` layer's product (768 × 128 × 384) ran at 85 GFLOP/s on two cores against
//! 80 on one. `gemm` splits a product over rayon's pool, where kiln's other kernels run, and
//! its kernels are as fast on one core. Each element of the output is summed over `k` in
//! blocks that depend on `k` and the CPU's caches only, never on how the rows and columns are
//! split between threads, so results do not depend on the number of cores.

use ndarray::{ArrayView2, ArrayViewMut2};

pub(super) use crate::kernels::cpu::Threads;

/// `c = alpha · a · b + beta · c`, as ndarray's `general_mat_mul`, for views of any strides.
///
/// # Shapes
/// - `a`: `[m, k]`, `b`: `[k, n]`, `c`: `[m, n]`
///
/// # Panics
/// Where the shapes do not fit together, as `general_mat_mul` does: they come from the model's
/// own tensors, never from the user.
pub(super) fn matmul(
    alpha: f32,
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    beta: f32,
    c: &mut ArrayViewMut2<f32>,
    threads: Threads,
) {
    let ((m, k), (k_b, n)) = (a.dim(), b.dim());
    assert!(
        k == k_b && c.dim() == (m, n),
        "matmul of {:?} by {:?} into {:?}",
        a.dim(),
        b.dim(),
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.mapv_inplace(|x| if beta == 0.0 { 0.0 } else { beta * x });
        return;
    }
    let parallelism = match threads {
        Threads::Pool => gemm::Parallelism::Rayon(0),
        Threads::Caller => gemm::Parallelism::None,
    };
    let ([a_rs, a_cs], [b_rs, b_cs]) =
        ([a.strides()[0], a.strides()[1]], [b.strides()[0], b.strides()[1]]);
    let [c_rs, c_cs] = [c.strides()[0], c.strides()[1]];
    // SAFETY: the three views are valid for their shapes and strides; `c` is borrowed mutably,
    // so it overlaps neither `a` nor `b`, and a mutable view never has two indices on one
    // element. gemm computes `dst = alpha·dst + beta·lhs·rhs`, reading `dst` only when told to.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{s, Array2};

    use super::*;

    fn filled(rows: usize, cols: usize, seed: usize) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            ((i * 31 + j * 17 + seed) % 23) as f32 / 7.0 - 1.5
        })
    }

    /// Against ndarray's product, for transposed and sliced operands, both thread modes,
    /// and `beta` zero (the output's old values, NaN here, are never read) and not.
    #[test]
    fn products_match_ndarrays() {
        for (m, k, n) in [(1, 1, 1), (7, 3, 5), (64, 32, 64), (130, 70, 33), (300, 17, 260)] {
            let (a, b) = (filled(k, m, 1), filled(n + 2, k, 2));
            let (a, b) = (a.t(), b.slice(s![1..n + 1, ..]).reversed_axes());
            let expected = a.dot(&b);
            for threads in [Threads::Pool, Threads::Caller] {
                let mut c = Array2::from_elem((m, n), f32::NAN);
                matmul(1.0, &a, &b, 0.0, &mut c.view_mut(), threads);
                let diff = (&c - &expected).mapv(f32::abs).fold(0.0f32, |m, &x| m.max(x));
                assert!(diff <= 1e-4 * k as f32, "{m}x{k}x{n}: {diff}");
                matmul(0.5, &a, &b, 2.0, &mut c.view_mut(), threads);
                let diff = (&c - &(&expected * 2.5)).mapv(f32::abs).fold(0.0f32, |m, &x| m.max(x));
                assert!(diff <= 1e-4 * k as f32, "{m}x{k}x{n}, beta 2: {diff}");
            }
        }
    }

    #[test]
    fn an_empty_inner_dimension_scales_the_output() {
        let (a, b) = (Array2::<f32>::zeros((2, 0)), Array2::<f32>::zeros((0, 3)));
        let mut c = Array2::from_elem((2, 3), 4.0);
        matmul(1.0, &a.view(), &b.view(), 0.5, &mut c.view_mut(), Threads::Caller);
        assert!(c.iter().all(|&x| x == 2.0));
    }

    /// The rows and columns one thread gets change nothing: the pool's result is the caller's,
    /// bit for bit.
    #[test]
    fn the_pool_and_one_thread_agree_bit_for_bit() {
        let (a, b) = (filled(768, 128, 3), filled(128, 384, 4));
        let mut pool = Array2::zeros((768, 384));
        let mut caller = Array2::zeros((768, 384));
        matmul(1.0, &a.view(), &b.view(), 0.0, &mut pool.view_mut(), Threads::Pool);
        matmul(1.0, &a.view(), &b.view(), 0.0, &mut caller.view_mut(), Threads::Caller);
        assert_eq!(pool, caller);
    }
}
