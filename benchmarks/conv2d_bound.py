"""How close conv2d can come to oneDNN where it stays behind it: the step against its
GEMMs alone, runnable without asv.

The static conv2d runs level with PyTorch's oneDNN, or a little behind it, on three of
the eight presets (``stride2``, ``cifar_s2``: stride 2; ``batch1``: a batch of one). This
script times, alternating in one process after a warm-up (median of ``--repeat``):

``ours``
    ``dc.conv2d`` forward+backward (the cost model's plan).
``torch``
    ``torch.nn.functional.conv2d`` forward+backward (when PyTorch is installed).
``gemm``
    The direct method's three GEMMs alone, on the whole batch, in NumPy's BLAS, each in
    the fastest of three operand layouts (``W cols``, ``cols^T W^T``, ...): the forward
    ``(O, 9C) @ (9C, NP)``, the kernel gradient ``(O, NP) @ (NP, 9C)``, the input
    gradient ``(9C, O) @ (O, NP)``. No unfold, no fold: what an im2col engine on this
    BLAS cannot go below.
``wino``
    Fewer multiplications, their GEMMs alone. Stride 1: F(2x2, 3x3)'s 16 GEMMs of each
    pass (``(O, C) @ (C, T)``, the kernel gradient ``(O, T) @ (T, C)``), T the tiles
    with the module's gap tile a tile row. Stride 2: the forward of a polyphase Winograd
    F(m, 3) for stride 2 (per axis 2m + 1 products for m outputs: F(m, 2) on the two
    taps of one input phase, the middle tap direct on the other), ``(2m + 1)^2`` GEMMs
    of ``(O, C) @ (C, T)``, times three passes, for m = 2 and 4, without gap tiles:
    the GEMMs such a path would run, before any transform is paid for. These small
    products run on one BLAS thread each, split over the threads (as the engine's work
    items run them); the direct GEMMs run on all the threads in BLAS.

Usage::

    python benchmarks/conv2d_bound.py --threads 1 --repeat 7
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from . import compare
except ImportError:
    import compare

def _fastest(M, K, N, rng, repeat):
    # the product (M, K) @ (K, N) in its fastest of three operand layouts, ms
    A = rng.standard_normal((M, K), dtype=np.float32)
    B = rng.standard_normal((K, N), dtype=np.float32)
    At, Bt = np.ascontiguousarray(A.T), np.ascontiguousarray(B.T)
    return min(compare.median_ms(f, repeat) for f in (lambda: A @ B, lambda: At.T @ B, lambda: Bt @ At))


def _batched(P, M, K, N, rng, repeat, threads, transposed=False):
    # P products (M, K) @ (K, N) (or (M, N) @ (N, K)^T with `transposed`), one BLAS
    # call each on one BLAS thread, split over the threads as the engine's work items
    # are (several BLAS threads on each of these small products ran slower than one)
    A = rng.standard_normal((P, M, N if transposed else K), dtype=np.float32)
    B = rng.standard_normal((P, K, N), dtype=np.float32)
    out = np.empty((P, M, K if transposed else N), dtype=np.float32)

    def part(t):
        for i in range(t * P // threads, (t + 1) * P // threads):
            if transposed:
                np.matmul(A[i], B[i].T, out=out[i])
            else:
                np.matmul(A[i], B[i], out=out[i])

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        return compare.median_ms(lambda: list(pool.map(part, range(threads))), repeat)


def bounds(name: str, repeat: int, threads: int) -> dict:
    """``{who: ms}`` for one preset (see the module docstring)."""
    N, C, O, H, k, s, p, K = compare.SHAPES[name]
    Ho = (H + 2 * p - k) // s + 1
    NP, F = N * Ho * Ho, C * k * k
    rng = np.random.default_rng(0)
    out = {}
    out["gemm"] = _fastest(O, F, NP, rng, repeat) + _fastest(O, NP, F, rng, repeat) + _fastest(F, O, NP, rng, repeat)
    if k == 3 and s == 1:
        t = -(-Ho // 2)
        tiles = N * t * (t + 1)
        out["wino"] = (_batched(16, O, C, tiles, rng, repeat, threads) + _batched(16, C, O, tiles, rng, repeat, threads)
                       + _batched(16, O, C, tiles, rng, repeat, threads, transposed=True))
    elif k == 3 and s == 2:
        for m in (2, 4):
            T = N * (-(-Ho // m)) ** 2
            out[f"wino{m}"] = 3 * _batched((2 * m + 1) ** 2, O, C, T, rng, repeat, threads)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["stride2", "cifar_s2", "batch1"],
                    choices=sorted(compare.SHAPES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    compare._set_threads(args.threads)
    compare.use_checkout()
    torch = compare.have_torch()
    if torch:
        import torch as _t

        _t.set_num_threads(args.threads)
    print(f"threads {args.threads}, load {os.getloadavg()[0]:.2f}; ms, medians of {args.repeat}")
    for name in args.shapes:
        times = compare.run_shape(name, ["ours", "torch"] if torch else ["ours"], args.repeat, args.threads, "static")
        row = {who: 1e3 * t for who, t in times.items()}
        row.update(bounds(name, args.repeat, args.threads))
        text = "  ".join(f"{who} {ms:.1f}" for who, ms in row.items())
        if torch:
            text += "  | torch/ours {:.2f}, torch/gemm {:.2f}".format(row["torch"] / row["ours"],
                                                                      row["torch"] / row["gemm"])
        print(f"{name:9s} {text}", flush=True)
    print(f"load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
