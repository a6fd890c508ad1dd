"""The CPU backend's memory-bound primitives against what they replace, alternating in one
process after warm-up:

* ``mixing``: the thin mixing products of ``dynamic_conv2d`` (``pi @ W`` forward,
  ``pi^T @ G`` for the experts' gradient; ``products.gemm`` sends them to the Numba
  kernel ``_thin_nn``) against single-threaded BLAS (``np.matmul`` under
  ``blas_single_thread``, where such products went before);
* ``channels``: batch statistics (``batch_stats`` with ``ddof=(0, 1)``, float64 sums)
  against NumPy's float32 ``mean`` and ``var``, and the ReLU (``relu``) against
  ``np.maximum(z, 0)``;
* ``gradient``: a shared kernel's backward (``conv_backward``, the cost model's
  strategy) with its gradient formed transposed (``conv.TRANSPOSED_GRADIENT``, the
  default) against the plain product;
* ``blas``: the GEMMs the conv kernels run, one a sample over a batch of 16 in a
  Numba-parallel loop, in the BLAS bound for the kernels (``backends.cpu.blas``: NumPy's
  OpenBLAS where found) against Numba's ``np.dot`` (SciPy's BLAS, where they ran
  before).

Usage::

    python benchmarks/primitives.py --threads 1 2 --repeat 30

Prints, per thread count, the median ms of each side and their ratio (above 1: ours, or
the default, is faster).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from functools import partial

import numpy as np

try:  # compare.py's timer (as a package under asv, as a script's sibling otherwise)
    from .compare import median_ms
except ImportError:
    from compare import median_ms

#: The eight shapes' mixing products: (N, K, O*C*k*k), from benchmarks/compare.py.
MIXING = {
    "batch1": (1, 8, 256 * 256 * 9),
    "stride2": (32, 4, 128 * 128 * 9),
    "cifar32": (128, 4, 32 * 32 * 9),
    "cifar16": (128, 4, 64 * 64 * 9),
    "cifar8": (128, 4, 128 * 128 * 9),
}
#: Activations (N, C, H, W) of the digits net's first layer and of cifar16.
CHANNELS = {"digits1": (64, 16, 16, 16), "digits3": (64, 32, 8, 8), "cifar16": (128, 64, 16, 16)}
#: Shared-kernel layers (N, C, O, H=W, stride), 3x3, padding 1.
GRADIENT = {"digits2": (64, 16, 32, 16, 2), "cifar_s2": (128, 64, 128, 16, 2), "stride2": (32, 128, 128, 28, 2)}
#: The conv kernels' per-sample GEMMs (M, K, N, A transposed, B transposed): forward
#: W (O, F) @ cols (F, P), kernel gradient dY (O, P) @ cols^T, input gradient W^T @ dY;
#: Winograd's (O, C) @ (C, grid tiles).
BLAS = {
    "mbv2_1x1 forward": (24, 144, 784, False, False),
    "mbv2_1x1 kernel gradient": (24, 784, 144, False, True),
    "mbv2_1x1 input gradient": (144, 24, 784, True, False),
    "cifar16 forward": (64, 576, 256, False, False),
    "cifar16 kernel gradient": (64, 256, 576, False, True),
    "cifar16 input gradient": (576, 64, 256, True, False),
    "cifar_s2 forward": (128, 576, 64, False, False),
    "cifar_s2 kernel gradient": (128, 64, 576, False, True),
    "cifar_s2 input gradient": (576, 128, 64, True, False),
    "stride2 forward": (128, 1152, 196, False, False),
    "stride2 kernel gradient": (128, 196, 1152, False, True),
    "digits3 forward": (32, 288, 64, False, False),
    "digits3 input gradient": (288, 32, 64, True, False),
    "cifar16 winograd2 product": (64, 64, 72, False, False),
    "cifar16 winograd2 kernel gradient": (64, 72, 64, False, True),
    "resnet3x3 winograd4 product": (64, 64, 60, False, False),
    "resnet3x3 winograd4 kernel gradient": (64, 60, 64, False, True),
}


def _pair(a, b, repeat: int) -> tuple[float, float]:
    # medians of a and b, alternating in rounds
    ta, tb = [], []
    for _ in range(3):
        ta.append(median_ms(a, repeat))
        tb.append(median_ms(b, repeat))
    return float(np.median(ta)), float(np.median(tb))


def _row(name: str, ours: float, other: float) -> None:
    print(f"| {name} | {ours:.3f} | {other:.3f} | {other / ours:.2f} |")


def run(threads: int, repeat: int, parts) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import dynconv_np as dc
    from dynconv_np.backends import cpu
    from dynconv_np.backends.cpu import conv

    dc.set_num_threads(threads)
    rng = np.random.default_rng(0)
    print(f"\n{threads} thread(s), median of {repeat} (3 alternating rounds); load average "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    if "mixing" in parts:
        print("| mixing product | thin kernel ms | BLAS ms | BLAS/kernel |\n|---|---|---|---|")
        for name, (N, K, D) in MIXING.items():
            pi = rng.random((N, K), dtype=np.float32)
            W = rng.standard_normal((K, D), dtype=np.float32)
            G = rng.standard_normal((N, D), dtype=np.float32)
            _row(f"{name} pi @ W ({N}x{K} @ {K}x{D})",
                 *_pair(partial(cpu.gemm, pi, W), partial(_blas, pi, W), repeat))
            _row(f"{name} pi^T @ G ({K}x{N} @ {N}x{D})",
                 *_pair(partial(cpu.gemm, pi, G, ta=True), partial(_blas, pi.T, G), repeat))
    if "channels" in parts:
        print("| channels | ours ms | NumPy ms | NumPy/ours |\n|---|---|---|---|")
        for name, shape in CHANNELS.items():
            x = rng.standard_normal(shape, dtype=np.float32)
            _row(f"{name} batch_stats / mean+var",
                 *_pair(partial(cpu.batch_stats, x, ddof=(0, 1)), partial(_numpy_stats, x), repeat))
            _row(f"{name} relu / np.maximum", *_pair(partial(cpu.relu, x), partial(np.maximum, x, 0), repeat))
    if "gradient" in parts:
        print("| shared kernel backward | transposed ms | plain ms | plain/transposed |\n|---|---|---|---|")
        for name, (N, C, O, H, s) in GRADIENT.items():
            x = rng.standard_normal((N, C, H, H), dtype=np.float32)
            W = rng.standard_normal((O, C, 3, 3), dtype=np.float32)
            y, pullback = dc.conv2d.vjp(x, W, stride=s, padding=1)
            dy = rng.standard_normal(y.shape, dtype=np.float32)
            chosen = dc.explain(dc.conv2d, x, W, stride=s, padding=1)[-1].chosen
            try:
                _row(f"{name} ({chosen})", *_pair(partial(_backward, conv, pullback, dy, True),
                                                  partial(_backward, conv, pullback, dy, False), repeat))
            finally:
                conv.TRANSPOSED_GRADIENT = True
    if "blas" in parts:
        _blas_rows(repeat, rng)


def _gemm_loops():
    # (bound, numba): C[n] = op(A[n]) @ op(B[n]) over the batch, a sample a work item,
    # by dot_into (the BLAS bound for the kernels) and by Numba's np.dot
    from numba import njit, prange

    from dynconv_np.backends.cpu.blas import dot_into

    @njit(parallel=True)
    def bound(A, B, C, ta, tb):
        for n in prange(A.shape[0]):
            dot_into(A[n].T if ta else A[n], B[n].T if tb else B[n], C[n])

    @njit(parallel=True)
    def numba(A, B, C, ta, tb):
        for n in prange(A.shape[0]):
            np.dot(A[n].T if ta else A[n], B[n].T if tb else B[n], C[n])

    return bound, numba


def _blas_rows(repeat: int, rng) -> None:
    import warnings

    from dynconv_np.backends.cpu.blas import LIBRARY
    from dynconv_np.backends.cpu.products import blas_single_thread

    print(f"kernels' BLAS: {LIBRARY}")
    print("| GEMM (16 samples) | bound BLAS ms | np.dot ms | np.dot/bound |\n|---|---|---|---|")
    bound, numba = _gemm_loops()
    for name, (M, K, N, ta, tb) in BLAS.items():
        A = rng.standard_normal((16, K, M) if ta else (16, M, K), dtype=np.float32)
        B = rng.standard_normal((16, N, K) if tb else (16, K, N), dtype=np.float32)
        C = np.empty((16, M, N), np.float32)
        with blas_single_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore")                 # np.dot on transposed views
            _row(f"{name} ({M}x{K} @ {K}x{N})", *_pair(partial(bound, A, B, C, ta, tb),
                                                     partial(numba, A, B, C, ta, tb), repeat))


def _blas(a, b):
    from dynconv_np.backends.cpu.products import blas_single_thread

    with blas_single_thread():
        return np.matmul(a, b)


def _numpy_stats(x):
    return x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)), x.var(axis=(0, 2, 3), ddof=1)


def _backward(conv, pullback, dy, transposed: bool):
    conv.TRANSPOSED_GRADIENT = transposed
    pullback(dy)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="thread counts; several run one after the other, each in a fresh process")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--parts", nargs="+", choices=("mixing", "channels", "gradient", "blas"),
                    default=["mixing", "channels", "gradient", "blas"])
    args = ap.parse_args(argv)
    if len(args.threads) > 1:
        for t in args.threads:
            child = ["--threads", str(t), "--repeat", str(args.repeat), "--parts", *args.parts]
            rc = subprocess.run([sys.executable, os.path.abspath(__file__), *child]).returncode
            if rc:
                return rc
        return 0
    run(args.threads[0], args.repeat, args.parts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
