"""MKL against oneDNN for the matrix products of kiln's linear layers on libtorch (tch-cpu).

libtorch's `matmul` calls MKL's SGEMM. kiln's fused linear layer (src/kernels/libtorch/)
calls oneDNN instead, through a 1×1 convolution over the rows. This prints both in GFLOP/s for
the layers of configs/small.toml and configs/gpt2-small-cpu.toml, from the same libtorch that
kiln links (the venv's PyTorch), so that the choice can be checked on any CPU:

    .venv/bin/python bench/gemm_paths.py

Columns: the forward `y = x·W`, the input gradient `dx = dy·Wᵀ` and the weight gradient
`dW = xᵀ·dy`, each the best of 7 timings.
"""
import time

import torch

SHAPES = [  # (rows, d_in, d_out): batch·seq and a layer's sides
    (768, 128, 384), (768, 128, 128), (768, 128, 512), (768, 512, 128), (768, 128, 65),
    (1024, 768, 2304), (1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768), (1024, 768, 50257),
]
ONE_BY_ONE = dict(padding=[0, 0], stride=[1, 1], dilation=[1, 1], groups=1)


def conv(image, filters):
    return torch.mkldnn_convolution(image, filters, None, *ONE_BY_ONE.values())


def onednn_matmul(a, filters):
    """a: [m, k] · filtersᵀ for filters: [n, k], as kiln's `onednn_matmul` computes it."""
    (m, k), n = a.shape, filters.shape[0]
    y = conv(a.reshape(1, 1, m, k).permute(0, 3, 1, 2), filters.reshape(n, k, 1, 1))
    return y.permute(0, 2, 3, 1).reshape(m, n)


def onednn_matmul_tn(a, b):
    """aᵀ · b for a: [m, p], b: [m, q], the narrower side as the filters (kiln's choice)."""
    (m, p), q = a.shape, b.shape[1]
    if p > q:
        return onednn_matmul_tn(b, a).t()
    return conv(b.reshape(1, m, 1, q), a.t().reshape(p, m, 1, 1)).reshape(p, q)


def gflops(flop, run, calls):
    for _ in range(3):
        run()
    best = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(calls):
            run()
        best = min(best, (time.perf_counter() - started) / calls)
    return flop / best / 1e9


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}; GFLOP/s, MKL / oneDNN")
    print(f"{'rows × d_in → d_out':>22} {'y = x·W':>16} {'dx = dy·Wᵀ':>16} {'dW = xᵀ·dy':>16}")
    torch.manual_seed(0)
    for rows, d_in, d_out in SHAPES:
        x, weight, dy = torch.randn(rows, d_in), torch.randn(d_in, d_out), torch.randn(rows, d_out)
        for ours, mkl in [(onednn_matmul(x, weight.t()), x @ weight), (onednn_matmul(dy, weight), dy @ weight.t()),
                          (onednn_matmul_tn(x, dy), x.t() @ dy)]:
            torch.testing.assert_close(ours, mkl, rtol=1e-4, atol=1e-2)
        flop, calls = 2 * rows * d_in * d_out, max(1, int(2e9 // (2 * rows * d_in * d_out)))
        pairs = [(lambda: x @ weight, lambda: onednn_matmul(x, weight.t())),
                 (lambda: dy @ weight.t(), lambda: onednn_matmul(dy, weight)),
                 (lambda: x.t() @ dy, lambda: onednn_matmul_tn(x, dy))]
        cells = [f"{gflops(flop, m, calls):6.0f} / {gflops(flop, o, calls):<6.0f}" for m, o in pairs]
        print(f"{rows:>6} × {d_in:>4} → {d_out:<6} " + " ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
