"""atom_conv2d forward+backward against an unfold + einsum NumPy formulation.

Run: ``python benchmarks/compare_atoms.py`` (options: ``--repeat``, ``--size``).

Both compute the same thing (checked at the start): the ACDA two-layer computation
``Z = atoms . unfold(x)`` then ``y = A Z + b``, and its full backward (dx, datoms,
dcoeff, dbias). The NumPy version materialises the unfolded input
``(N, C, k*k, Ho, Wo)`` (``sliding_window_view`` then a contiguous copy, as ``unfold``
does) and contracts with ``np.einsum(..., optimize=True)``; dx is folded back tap by
tap. The second dynconv_np row runs with a one-sample workspace budget
(``backends.cpu.set_workspace_bytes``): Z is then recomputed in the backward instead of kept.
Time is the median wall clock of ``--repeat`` runs; peak memory is the
``tracemalloc`` peak of one forward+backward (NumPy allocations are traced; inputs
allocated before the measurement are not counted). Every row is run with the BLAS
thread pool left as it is and limited to one thread (threadpoolctl, a core dependency).
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np
from threadpoolctl import threadpool_limits

import dynconv_np as dc
from dynconv_np.backends import cpu


def unfold_einsum(x, atoms, coeff, bias, dy, pad):
    """Forward and backward with the unfolded input; returns ``y, (dx, datoms, dcoeff, dbias)``."""
    N, C, H, W = x.shape
    _, M, kh, kw, Ho, Wo = atoms.shape
    O = coeff.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))     # (N, C, Ho, Wo, kh, kw)
    X = np.ascontiguousarray(win.transpose(0, 1, 4, 5, 2, 3)).reshape(N, C, kh * kw, Ho * Wo)
    D = atoms.reshape(N, M, kh * kw, Ho * Wo)
    Z = np.einsum("nmtp,nctp->ncmp", D, X, optimize=True).reshape(N, C * M, Ho * Wo)
    A = coeff.reshape(O, C * M)
    y = np.einsum("ok,nkp->nop", A, Z, optimize=True) + bias[None, :, None]
    dyr = dy.reshape(N, O, Ho * Wo)
    dcoeff = np.einsum("nop,nkp->ok", dyr, Z, optimize=True).reshape(O, C, M)
    dbias = dyr.sum(axis=(0, 2))
    dZ = np.einsum("ok,nop->nkp", A, dyr, optimize=True).reshape(N, C, M, Ho * Wo)
    datoms = np.einsum("ncmp,nctp->nmtp", dZ, X, optimize=True).reshape(atoms.shape)
    dX = np.einsum("ncmp,nmtp->nctp", dZ, D, optimize=True).reshape(N, C, kh, kw, Ho, Wo)
    dxp = np.zeros_like(xp)
    for u in range(kh):
        for v in range(kw):
            dxp[:, :, u:u + Ho, v:v + Wo] += dX[:, :, u, v]
    dx = dxp[:, :, pad:pad + H, pad:pad + W]
    return y.reshape(N, O, Ho, Wo), (dx, datoms, dcoeff, dbias)


def dynconv(x, atoms, coeff, bias, dy, pad):
    y, pb = dc.atom_conv2d.vjp(x, atoms, coeff, bias, padding=pad)
    return y, pb(dy)


def dynconv_chunked(x, atoms, coeff, bias, dy, pad):
    """atom_conv2d with a one-sample workspace budget: Z is recomputed in the backward."""
    per_sample = x.shape[1] * atoms.shape[1] * atoms.shape[4] * atoms.shape[5] * x.itemsize
    old = cpu.set_workspace_bytes(per_sample)
    try:
        return dynconv(x, atoms, coeff, bias, dy, pad)
    finally:
        cpu.set_workspace_bytes(old)


def measure(fn, args, repeat):
    fn(*args)                                           # JIT compile / warm caches
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    try:
        fn(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return float(np.median(times)), float(np.min(times)), peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--size", type=int, nargs=6, default=[8, 64, 32, 3, 6, 64],
                   metavar=("N", "C", "HW", "k", "M", "O"))
    a = p.parse_args()
    N, C, HW, k, M, O = a.size
    pad = k // 2
    rng = np.random.default_rng(0)
    f32 = np.float32
    x = rng.standard_normal((N, C, HW, HW)).astype(f32)
    atoms = rng.standard_normal((N, M, k, k, HW, HW)).astype(f32)
    coeff = (rng.standard_normal((O, C, M)) / np.sqrt(C * M)).astype(f32)
    bias = rng.standard_normal(O).astype(f32)
    dy = rng.standard_normal((N, O, HW, HW)).astype(f32)
    args = (x, atoms, coeff, bias, dy, pad)

    y1, g1 = dynconv(*args)
    y2, g2 = unfold_einsum(*args)
    err = max(float(np.abs(p - q).max() / max(1.0, np.abs(q).max())) for p, q in zip((y1, *g1), (y2, *g2)))

    unfolded = N * C * k * k * HW * HW * 4
    print(f"atom_conv2d forward+backward, float32, N={N} C={C} {HW}x{HW} k={k} M={M} O={O}, padding={pad}")
    print(f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'default')}, cpus={os.cpu_count()}, "
          f"numpy {np.__version__}; max relative difference between the two: {err:.1e}")
    print(f"unfolded input (N, C, k*k, Ho, Wo) float32: {unfolded / 2**20:.1f} MiB")
    print(f"{'BLAS threads':<13} {'implementation':<28} {'median s':>9} {'min s':>9} {'tracemalloc peak MiB':>21}")
    for blas in ("default", 1):
        # OpenBLAS worker threads keep spinning after a GEMM and compete with the Numba
        # threads of the next kernel: on a small machine one BLAS thread can be faster.
        with threadpool_limits(limits=None if blas == "default" else blas, user_api="blas"):
            for name, fn in (("dynconv_np.atom_conv2d", dynconv),
                             ("  same, 1-sample chunks", dynconv_chunked),
                             ("numpy unfold + einsum", unfold_einsum)):
                med, best, peak = measure(fn, args, a.repeat)
                print(f"{blas!s:<13} {name:<28} {med:9.3f} {best:9.3f} {peak / 2**20:21.1f}")


if __name__ == "__main__":
    main()
