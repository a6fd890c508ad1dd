"""CPU matrix products: ``gemm`` (the ops' one GEMM entry point), ``gemm_nt_sum``, and the
BLAS threading policy of the whole CPU backend (the kernels' own GEMMs: :mod:`.blas`).

BLAS runs on one thread (:func:`blas_single_thread`) in every product of this backend,
and the conv template holds it there while its Numba region runs single-threaded BLAS
calls: OpenBLAS threads left spinning after a multithreaded call were measured to halve
the speed of the Numba region that follows (resnet3x3's forward: 91 ms after, 47 ms
without). No op or layer sets BLAS threads.

The kernel-mixing products of dynamic_conv2d (``pi @ W`` and ``pi^T @ G``) have a short
side (K, N) and a long one (O*F, up to millions): they stream memory, and BLAS runs them
on one core. :func:`gemm` sends such thin products to ``_thin_nn``, which splits the
long side into fixed chunks over the Numba threads (results independent of the thread
count): 0.9 against 1.7 ms for stride2's mixing. (``G @ W^T`` stays in BLAS: a chunked
Numba reduction was slower.)
"""

from __future__ import annotations

import contextlib

import numpy as np
from numba import njit, prange

from .index import ceil_div

#: Column chunk of the thin-product kernel (floats): a chunk of every row fits in L2.
THIN_CHUNK = 2048
#: Products ``(M, J) @ (J, D)`` with a long side D of at least :data:`THIN_MIN_LONG` go
#: to ``_thin_nn`` when both short sides are at most :data:`THIN_MAX_SHORT`, or one is at
#: most :data:`THIN_NARROW` (the experts) and the other at most :data:`THIN_MAX_WIDE`
#: (the batch); others to BLAS. With 4 or 8 experts and a batch of 128 to 512, the
#: kernel beat single-threaded BLAS by 1.0 to 2.4x at one thread (1.7 to 3.6x at two); with
#: 16 rows against 256, BLAS was as fast or faster at one thread (a /tmp timing of
#: ``gemm``; the presets' products: ``benchmarks/primitives.py``, docs/performance.md,
#: "Memory-bound primitives").
THIN_MAX_SHORT = 64
THIN_NARROW = 8
THIN_MAX_WIDE = 512
THIN_MIN_LONG = 8192

_blas_libraries = None


class _SingleThread:
    """Holds the given BLAS libraries at one thread: on entry each library that runs more
    sets one (its count kept), on exit it gets its count back. A library already at one
    costs a query (about a microsecond); ``threadpoolctl``'s ``limit`` took some 12 us a
    use, re-reading every library's state (about 1.5 ms of an 18 ms training step of the
    dynamic digits net, whose ops call BLAS some 40 times). Nested uses find one thread
    and change nothing."""

    __slots__ = ("libs", "restore")

    def __init__(self, libs):
        self.libs = libs
        self.restore = ()

    def __enter__(self):
        self.restore = [(lib, n) for lib in self.libs if (n := lib.get_num_threads()) != 1]
        for lib, _ in self.restore:
            lib.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        for lib, n in self.restore:
            lib.set_num_threads(n)
        return False


def blas_single_thread():
    """Context in which BLAS runs on one thread (the caller parallelises around it)."""
    global _blas_libraries
    if _blas_libraries is None:
        try:
            # SciPy's BLAS too: the kernels' fallback (.blas), and what NumPy code around
            # the engine may call
            import scipy.linalg.cython_blas  # noqa: F401
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_libraries = ()
        else:
            _blas_libraries = tuple(ThreadpoolController().select(user_api="blas").lib_controllers)
    if not _blas_libraries:
        return contextlib.nullcontext()
    return _SingleThread(_blas_libraries)


@njit(inline="always")
def _rows4(o, first, a, m, j, b, d0, w):
    # o[:w] = (first: 0, else o) + a[m, j] b[j] + ... + a[m, j+3] b[j+3], columns d0.. of
    # b, added one row after the other in a register: the order of rows added one by
    # one, without a pass over o for each row
    a0, a1, a2, a3 = a[m, j], a[m, j + 1], a[m, j + 2], a[m, j + 3]
    b0, b1, b2, b3 = b[j, d0:d0 + w], b[j + 1, d0:d0 + w], b[j + 2, d0:d0 + w], b[j + 3, d0:d0 + w]
    if first:
        for d in range(w):
            s = a0 * b0[d]
            s += a1 * b1[d]
            s += a2 * b2[d]
            s += a3 * b3[d]
            o[d] = s
    else:
        for d in range(w):
            s = o[d]
            s += a0 * b0[d]
            s += a1 * b1[d]
            s += a2 * b2[d]
            s += a3 * b3[d]
            o[d] = s


@njit(parallel=True, cache=True)
def _thin_nn(a, b, out):
    # out (M, D) = a (M, J) @ b (J, D), all C-contiguous: each column chunk by one
    # thread, the sum over j in order. Rows of b are added eight (then four, then one)
    # at a time in a register: one row a pass over the chunk did not vectorise and
    # re-read the chunk of out for every row (1.5 to 2x slower, and slower than BLAS).
    M, J = a.shape
    D = b.shape[1]
    for c in prange(ceil_div(D, THIN_CHUNK)):
        d0 = c * THIN_CHUNK
        w = min(D, d0 + THIN_CHUNK) - d0
        for m in range(M):
            o = out[m, d0:d0 + w]
            if J >= 8:
                a0, a1, a2, a3 = a[m, 0], a[m, 1], a[m, 2], a[m, 3]
                a4, a5, a6, a7 = a[m, 4], a[m, 5], a[m, 6], a[m, 7]
                b0, b1, b2, b3 = b[0, d0:d0 + w], b[1, d0:d0 + w], b[2, d0:d0 + w], b[3, d0:d0 + w]
                b4, b5, b6, b7 = b[4, d0:d0 + w], b[5, d0:d0 + w], b[6, d0:d0 + w], b[7, d0:d0 + w]
                for d in range(w):
                    s = a0 * b0[d]
                    s += a1 * b1[d]
                    s += a2 * b2[d]
                    s += a3 * b3[d]
                    s += a4 * b4[d]
                    s += a5 * b5[d]
                    s += a6 * b6[d]
                    s += a7 * b7[d]
                    o[d] = s
                j = 8
            elif J >= 4:
                _rows4(o, True, a, m, 0, b, d0, w)
                j = 4
            else:
                a0 = a[m, 0]
                b0 = b[0, d0:d0 + w]
                for d in range(w):
                    o[d] = a0 * b0[d]
                j = 1
            while j + 4 <= J:
                _rows4(o, False, a, m, j, b, d0, w)
                j += 4
            while j < J:
                aj = a[m, j]
                bj = b[j, d0:d0 + w]
                for d in range(w):
                    o[d] += aj * bj[d]
                j += 1


def _is_thin(a: np.ndarray, b: np.ndarray) -> bool:
    # (M, J) @ (J, D) with short M, J and a long D
    return (a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype
            and b.shape[1] >= THIN_MIN_LONG and min(a.shape) >= 1
            and (max(a.shape) <= THIN_MAX_SHORT or (min(a.shape) <= THIN_NARROW and max(a.shape) <= THIN_MAX_WIDE)))


def _transposed(name: str, a: np.ndarray, t: bool) -> np.ndarray:
    if not t:
        return a
    if a.ndim == 1:
        raise ValueError(f"gemm: t{name} transposes the last two axes, but {name} is 1-D")
    return np.swapaxes(a, -1, -2)


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.ndim > 3 and b.ndim == 2:
        # Several batch axes over one matrix: one GEMM over the flattened rows (np.matmul
        # would loop over the batch). Up to one batch axis, np.matmul's own result.
        rows = a.reshape(-1, a.shape[-1])
        return _product(rows, b).reshape(a.shape[:-1] + (b.shape[1],))
    if _is_thin(a, b):
        out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
        # both C-contiguous (a is small): a transposed `a` would compile another _thin_nn
        _thin_nn(np.ascontiguousarray(a), np.ascontiguousarray(b), out)
        return out
    with blas_single_thread():
        return np.matmul(a, b)


def gemm(a: np.ndarray, b: np.ndarray, ta: bool = False, tb: bool = False, out: np.ndarray | None = None,
         accumulate: bool = False) -> np.ndarray:
    """``op(a) @ op(b)`` with NumPy's matmul rules, ``op`` transposing the last two axes
    when `ta` / `tb`.

    Parameters
    ----------
    a : ndarray (K,), (M, K) or (..., M, K); (..., K, M) when `ta`
    b : ndarray (K,), (K, N) or (..., K, N); (..., N, K) when `tb`
    out : ndarray (..., M, N), optional
        Receives the product (one ``np.matmul`` into it), or, with `accumulate`, has it
        added.

    Returns
    -------
    ndarray (..., M, N), vector axes dropped as NumPy does (`out` when given)

    Thin products go to the thin-product kernel, the rest to BLAS on one thread; an `a`
    with several batch axes times a matrix `b` is one GEMM over a's flattened rows.
    """
    a = _transposed("a", a, ta)
    b = _transposed("b", b, tb)
    if out is None:
        return _product(a, b)
    with blas_single_thread():
        if accumulate:
            out += np.matmul(a, b)
        else:
            np.matmul(a, b, out=out)
    return out


def gemm_nt_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_n a[n] @ b[n]^T``: a (N, M, K), b (N, J, K) -> (M, J), as one GEMM over ``N*K``."""
    N, M, K = a.shape
    J = b.shape[1]
    a2 = np.ascontiguousarray(a.transpose(1, 0, 2)).reshape(M, N * K)
    b2 = np.ascontiguousarray(b.transpose(1, 0, 2)).reshape(J, N * K)
    return np.matmul(a2, b2.T)
