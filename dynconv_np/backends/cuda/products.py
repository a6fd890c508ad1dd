"""CUDA matrix products: one tiled GEMM kernel behind ``gemm`` and ``gemm_nt_sum`` (and the
conv template's products, through :func:`gemm3`).

Determinism: every output element is summed by one thread over shared-memory tiles in
ascending ``k`` (and, over a batch of products, in ascending batch order), without
atomics: the same call gives bitwise the same result on every run.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._index import ceil_div
from .array import contiguous, empty
from .launch import MAX_GRID_YZ, SIMULATOR, per_dtype

#: Side of the square shared-memory tiles of the GEMM (threads per block: TPB*TPB). The
#: simulator pays for every thread and every barrier in Python, so it gets smaller tiles;
#: the kernel is written for any TPB and the tests cross tile edges at both sizes (the
#: simulator reads TPB when the kernel runs, so a test may set it).
TPB = 8 if SIMULATOR else 16


@cuda.jit(device=True)
def _fetch(X, b, r0, c0, rows, cols, trans, zero):
    # This thread's entry of the TPB x TPB tile of op(X[b]) at (r0, c0), op transposing
    # when `trans`, op(X[b]) being (rows, cols): (p, q, op(X[b])[r0 + p, c0 + q]), zero
    # outside. threadIdx.x runs along X's contiguous last axis (coalesced global reads);
    # a transposed operand is stored transposed in shared.
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    p, q = (tx, ty) if trans else (ty, tx)
    r, c = r0 + p, c0 + q
    if r >= rows or c >= cols:
        return p, q, zero
    return p, q, (X[b, c, r] if trans else X[b, r, c])


@per_dtype
def _gemm_kernel(t, nbtype):
    zero = t(0)

    @cuda.jit
    def gemm(A, B, C, ta, tb, R, accumulate):
        # C[c] (+)= sum_{r<R} op(A[(r*BC + c) % BA]) @ op(B[(r*BC + c) % BB]), op = transpose
        # when ta/tb. The modulo lets one launch broadcast a shared operand (batch 1, or
        # one kernel per group) and, with R > 1, sum per-sample products in sample order.
        # Tiles: sa[i, k] = op(A)[row0 + i, k0 + k], sb[k, j] = op(B)[k0 + k, col0 + j].
        sa = cuda.shared.array((TPB, TPB), nbtype)
        sb = cuda.shared.array((TPB, TPB), nbtype)
        c = cuda.blockIdx.z
        row0 = cuda.blockIdx.y * TPB
        col0 = cuda.blockIdx.x * TPB
        row = row0 + cuda.threadIdx.y
        col = col0 + cuda.threadIdx.x
        BC, M, N = C.shape
        K = A.shape[1] if ta else A.shape[2]
        acc = zero
        for r in range(R):
            ba = (r * BC + c) % A.shape[0]
            bb = (r * BC + c) % B.shape[0]
            for k0 in range(0, K, TPB):
                p, q, v = _fetch(A, ba, row0, k0, M, K, ta, zero)
                sa[p, q] = v
                p, q, v = _fetch(B, bb, k0, col0, K, N, tb, zero)
                sb[p, q] = v
                cuda.syncthreads()
                for kk in range(TPB):
                    acc += sa[cuda.threadIdx.y, kk] * sb[kk, cuda.threadIdx.x]
                cuda.syncthreads()
        if row < M and col < N:
            if accumulate:
                acc += C[c, row, col]
            C[c, row, col] = acc

    return gemm


def gemm3(A, B, C, ta=False, tb=False, R=1, accumulate=False) -> None:
    """Launch the tiled GEMM on C-contiguous 3-D operands (see the kernel's comment):
    ``C[c] (+)= sum_{r<R} op(A[(r*BC + c) % BA]) @ op(B[(r*BC + c) % BB])``."""
    BC, M, N = C.shape
    if BC * M * N == 0:
        return
    if BC > MAX_GRID_YZ or ceil_div(M, TPB) > MAX_GRID_YZ:
        raise ValueError(f"GEMM of {BC} batches of {M}x{N} exceeds the CUDA grid limits")
    grid = (ceil_div(N, TPB), ceil_div(M, TPB), BC)
    _gemm_kernel(C.dtype)[grid, (TPB, TPB)](A, B, C, int(ta), int(tb), int(R), int(accumulate))


def _as3(name: str, a, t: bool):
    # a as (batch, rows, cols) and its batch shape; NumPy's rule for vectors: a row
    # vector on the left, a column vector on the right.
    if a.ndim == 0:
        raise ValueError(f"gemm: {name} must be at least 1-D, got a 0-D array")
    if t and a.ndim == 1:
        raise ValueError(f"gemm: t{name} transposes the last two axes, but {name} is 1-D")
    if a.ndim == 1:
        return a.reshape((1, 1, a.shape[0]) if name == "a" else (1, a.shape[0], 1)), ()
    *batch, rows, cols = tuple(a.shape)  # (the simulator's shapes refuse negative indices)
    return a.reshape(int(np.prod(batch)), rows, cols), tuple(batch)


def _batch(a_batch: tuple, b_batch: tuple) -> tuple:
    # The result's batch shape: the operands' batches are equal (after padding with
    # leading ones), or one of them is a single product broadcast over the other.
    n = max(len(a_batch), len(b_batch))
    pa = (1,) * (n - len(a_batch)) + a_batch
    pb = (1,) * (n - len(b_batch)) + b_batch
    if pa == pb or int(np.prod(pb)) == 1:
        return pa
    if int(np.prod(pa)) == 1:
        return pb
    raise ValueError(f"gemm broadcasts a batch of one only, got batch shapes {a_batch} and {b_batch}")


def gemm(a, b, ta: bool = False, tb: bool = False, out=None, accumulate: bool = False):
    """``op(a) @ op(b)`` with NumPy's matmul rules, as a tiled device GEMM, ``op``
    transposing the last two axes when `ta` / `tb`.

    Parameters
    ----------
    a : device array (K,), (M, K) or (..., M, K); (..., K, M) when `ta`
    b : device array (K,), (K, N) or (..., K, N); (..., N, K) when `tb`
        Leading batch axes of any rank; the two batches are equal or one of them is a
        single product (broadcast). Strided operands are copied to C order on the
        device first.
    out : device array (..., M, N), C-contiguous, optional
        Receives the product, or, with `accumulate`, has it added inside the kernel (no
        temporary). Without `out`, `accumulate` is ignored.

    Returns
    -------
    device array (..., M, N), vector axes dropped as NumPy does (`out` when given)
    """
    a = contiguous(a)
    b = contiguous(b)
    if a.dtype != b.dtype:
        raise TypeError(f"gemm operands must share one dtype, got {a.dtype} and {b.dtype}")
    a3, a_batch = _as3("a", a, ta)
    b3, b_batch = _as3("b", b, tb)
    M, Ka = (a3.shape[2], a3.shape[1]) if ta else (a3.shape[1], a3.shape[2])
    N, Kb = (b3.shape[1], b3.shape[2]) if tb else (b3.shape[2], b3.shape[1])
    if Ka != Kb:
        raise ValueError(f"gemm shapes {tuple(a.shape)} and {tuple(b.shape)} do not align "
                         f"(transposed: {ta}, {tb})")
    batch = _batch(a_batch, b_batch)
    # (two vectors give a (1,) array: numba device arrays keep an axis)
    shape = (batch + (() if a.ndim == 1 else (M,)) + (() if b.ndim == 1 else (N,))) or (1,)
    if out is None:
        accumulate = False
        out = empty(shape, a.dtype)
    elif tuple(out.shape) != shape:
        raise ValueError(f"gemm: out has shape {tuple(out.shape)}, the product {shape}")
    BC = int(np.prod(batch))
    o3 = out.reshape(BC, M, N)
    # Batches beyond the grid's z limit run in chunks of it.
    for c0 in range(0, BC, MAX_GRID_YZ):
        c1 = min(BC, c0 + MAX_GRID_YZ)
        gemm3(a3 if a3.shape[0] == 1 else a3[c0:c1], b3 if b3.shape[0] == 1 else b3[c0:c1], o3[c0:c1],
              ta, tb, accumulate=accumulate)
    return out


def gemm_nt_sum(a, b):
    """``sum_n a[n] @ b[n]^T``: a (N, M, K), b (N, J, K) -> (M, J), summed over n in order
    inside one launch."""
    a = contiguous(a)
    b = contiguous(b)
    out = empty((1, a.shape[1], b.shape[1]), a.dtype)
    gemm3(a, b, out, tb=True, R=a.shape[0])
    return out.reshape(a.shape[1], b.shape[1])

