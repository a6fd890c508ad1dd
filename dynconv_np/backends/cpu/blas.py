"""The BLAS the CPU kernels call: :func:`dot_into` and :func:`gemm_view`, single GEMMs from
compiled code (the conv template, Winograd and shifted views run one per work item).

Which library: NumPy's own OpenBLAS where its ILP64 CBLAS ``gemm`` can be found (the
NumPy wheels' ``scipy_cblas_sgemm64_``; ``cblas_sgemm64_`` of older ones), else the
BLAS that Numba's ``np.dot`` calls (SciPy's, through ``numba.np.linalg``). Numba's
``np.dot`` always calls SciPy's. On the 2-core machine of docs/performance.md NumPy's
(OpenBLAS 0.3.31) ran the conv template's GEMMs 1.04 to 1.96x as fast as SciPy's
(0.3.30), bitwise the same results, and the Winograd kernel gradient's 6 to 8 % slower
(``python benchmarks/primitives.py --parts blas``; "The kernels' BLAS").
``DYNCONV_BLAS=scipy`` in the environment (read at import) picks SciPy's.

How: the kernels call two external symbols, ``dynconv_np_sgemm`` and
``dynconv_np_dgemm``, with the CBLAS ILP64 signature; at import this module binds them
(``llvmlite.binding.add_symbol``) to NumPy's functions, or to two C callbacks compiled
here around Numba's SciPy binding. Compiled code refers to the symbols by name, so
Numba's on-disk cache stays valid whichever library is bound.

Every call runs on the calling thread: callers hold the BLAS libraries at one thread
(``products.blas_single_thread``) and parallelise around them.
"""

from __future__ import annotations

import ctypes
import os

import llvmlite.binding as llvm
import numpy as np
from numba import cfunc, njit, types
from numba.extending import overload

#: The environment variable read at import: ``numpy`` (the default: NumPy's OpenBLAS
#: where found) or ``scipy`` (the BLAS of Numba's ``np.dot``).
ENV = "DYNCONV_BLAS"
#: CBLAS constants.
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
#: Names of an ILP64 CBLAS sgemm and dgemm, in the order they are looked for.
_ILP64_NAMES = (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_"), ("cblas_sgemm64_", "cblas_dgemm64_"))


def _gemm_type(dtype, p=types.voidptr):
    # the CBLAS ILP64 gemm: (order, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta,
    # C, ldc); p: the matrices' pointer type (void*, or the same pointer typed)
    i32, i64 = types.int32, types.int64
    return types.void(i32, i32, i32, i64, i64, i64, dtype, p, i64, p, i64, dtype, p, i64)


_SGEMM = types.ExternalFunction("dynconv_np_sgemm", _gemm_type(types.float32))
_DGEMM = types.ExternalFunction("dynconv_np_dgemm", _gemm_type(types.float64))


def _numpy_blas() -> tuple[str, int, int] | None:
    # (path, sgemm, dgemm addresses) of the first loaded BLAS with ILP64 CBLAS gemms,
    # NumPy's first
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    infos.sort(key=lambda i: "numpy" not in i["filepath"])
    for info in infos:
        try:
            lib = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for s, d in _ILP64_NAMES:
            if hasattr(lib, s) and hasattr(lib, d):
                addr = [ctypes.cast(getattr(lib, n), ctypes.c_void_p).value for n in (s, d)]
                return info["filepath"], addr[0], addr[1]
    return None


def _scipy_callbacks():
    # C callbacks with the CBLAS signature around Numba's binding of SciPy's BLAS
    # (compiled at import, about a second: only where NumPy's BLAS is not used)
    from numba.np.linalg import _BLAS, get_blas_kind

    def make(dtype, nbtype):
        xxgemm = _BLAS().numba_xxgemm(nbtype)
        kind = ord(get_blas_kind(nbtype))

        @cfunc(_gemm_type(nbtype, types.CPointer(nbtype)))
        def gemm(order, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc):
            # row-major only (order is always _ROW_MAJOR: cblas_gemm passes it)
            scal = np.empty(2, dtype)
            scal[0] = alpha
            scal[1] = beta
            # row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T
            xxgemm(kind, ord("t") if tb == _TRANS else ord("n"), ord("t") if ta == _TRANS else ord("n"), N, M, K,
                   scal[0:].ctypes, b, ldb, a, lda, scal[1:].ctypes, c, ldc)
        return gemm

    return make(np.float32, types.float32), make(np.float64, types.float64)


def _bind() -> str:
    choice = os.environ.get(ENV, "").strip().lower() or "numpy"
    if choice not in ("numpy", "scipy"):
        raise ValueError(f"{ENV} must be 'numpy' or 'scipy', got {os.environ[ENV]!r}")
    found = None if choice == "scipy" else _numpy_blas()
    if found is not None:
        path, s, d = found
        llvm.add_symbol("dynconv_np_sgemm", s)
        llvm.add_symbol("dynconv_np_dgemm", d)
        return path
    global _callbacks
    _callbacks = _scipy_callbacks()                     # kept alive: the symbols point into them
    llvm.add_symbol("dynconv_np_sgemm", _callbacks[0].address)
    llvm.add_symbol("dynconv_np_dgemm", _callbacks[1].address)
    return "scipy (numba.np.linalg)"


_callbacks = None
#: The library the kernels' GEMMs run in (a path, or ``"scipy (numba.np.linalg)"``).
LIBRARY = _bind()


def cblas_gemm(ta, tb, M, N, K, a, lda, b, ldb, beta, c, ldc):
    """``C = op(A) @ op(B) + beta*C``, row-major, in compiled code only: A, B, C are
    arrays whose first elements start the matrices (``a[a0:]`` for an offset), `ta` /
    `tb` transpose, `lda` / `ldb` / `ldc` the row strides in elements."""
    raise TypeError("cblas_gemm runs in compiled code only")


@overload(cblas_gemm)
def _cblas_gemm(ta, tb, M, N, K, a, lda, b, ldb, beta, c, ldc):
    fn = _SGEMM if c.dtype == types.float32 else _DGEMM
    dt = np.float32 if c.dtype == types.float32 else np.float64

    def impl(ta, tb, M, N, K, a, lda, b, ldb, beta, c, ldc):
        fn(_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS, M, N, K, dt(1.0), a.ctypes, lda,
           b.ctypes, ldb, dt(beta), c.ctypes, ldc)
    return impl


@njit(inline="always")
def gemm_view(ta, tb, M, N, K, a, a0, lda, b, b0, ldb, c, c0, ldc, beta):
    """``C = op(A) @ op(B) + beta*C`` on row-major matrices inside flat arrays, one BLAS
    call: A stored ``(M, K)`` (``(K, M)`` with `ta`, transposed) from ``a[a0]`` with row
    stride `lda`; B stored ``(K, N)`` (``(N, K)`` with `tb`) from ``b[b0]`` (`ldb`); C
    ``(M, N)`` at ``c[c0]`` (`ldc`).

    ``np.dot`` takes whole arrays and cannot accumulate: the Winograd kernel gradient
    sums its blocks' products in place (``beta = 1``; a temporary and an extra pass over
    ``dU`` each measured a fifth of the kernel gradient on cifar8), and the
    shifted-views strategy reads and writes views of a padded plane whose row stride is
    the plane's.
    """
    cblas_gemm(ta, tb, M, N, K, a[a0:], lda, b[b0:], ldb, beta, c[c0:], ldc)


@njit(inline="always")
def _order(a):
    # (1 for column-major, else 0; leading dimension) of a 2-D view with a unit stride,
    # (-1, 0) without one
    r, k = a.shape
    s0, s1 = a.strides[0] // a.itemsize, a.strides[1] // a.itemsize
    if k <= 1 or s1 == 1:
        ld = s0 if r > 1 else max(k, 1)
        if ld >= max(k, 1):
            return 0, ld
    if r <= 1 or s0 == 1:
        ld = s1 if k > 1 else max(r, 1)
        if ld >= max(r, 1):
            return 1, ld
    return -1, 0


@njit
def dot_into(a, b, out, beta=0.0):
    """``out = a @ b + beta*out`` in one BLAS call (``np.dot(a, b, out)`` for beta 0):
    a (M, K), b (K, N), out (M, N), each 2-D view with a unit stride along one axis
    (row slices of C-contiguous arrays, and their transposes)."""
    # not inlined: its raise would give a prange loop calling it a second exit, and
    # Numba then runs that loop serially
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:
        if beta == 0.0:
            out[:, :] = 0
        return
    tc, ldc = _order(out)
    if tc == 0:
        ta, lda = _order(a)
        tb, ldb = _order(b)
        if ta < 0 or tb < 0:
            raise ValueError("dot_into: an operand has no unit stride")
        cblas_gemm(ta == 1, tb == 1, M, N, K, a, lda, b, ldb, beta, out, ldc)
        return
    if tc < 0:
        raise ValueError("dot_into: out has no unit stride")
    # out column-major: out^T (N, M) row-major = b^T a^T
    ta, lda = _order(b.T)
    tb, ldb = _order(a.T)
    if ta < 0 or tb < 0:
        raise ValueError("dot_into: an operand has no unit stride")
    cblas_gemm(ta == 1, tb == 1, N, M, K, b.T, lda, a.T, ldb, beta, out.T, ldc)
