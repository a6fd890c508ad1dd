"""CUDA backend: the CPU backend's primitives as numba.cuda kernels, on device arrays.

The conv template, GEMM, tap engine and DCD helpers of ``backends/cpu.py``, and the
array-level primitives of ``backends/cpu_array.py`` (elementwise maps, per-row softmax,
per-channel block reductions, layout changes and optimiser updates; the last section of
this file) that the routing ops, ``atom_conv2d`` and the ``nn`` layers are written against.

This is the only module that imports ``numba.cuda``; :func:`dynconv_np.backends.get`
imports it lazily, the first time device arrays reach an op. Every primitive takes
numba device arrays or any object with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA
tensors) and returns numba device arrays on the same device. Nothing inside an op
copies to or from the host.

Geometry legend (as in :mod:`dynconv_np._args`): ``kh, kw`` kernel size, ``sh, sw``
stride, ``ph, pw`` top/left padding, ``dh, dw`` dilation, ``Ho, Wo`` output size,
``P = Ho*Wo``. Column layout, the CPU backend's: ``cols[n, (c*kh + u)*kw + v, i*Wo + j]
= xpad[n, c, i*sh + u*dh, j*sw + v*dw]``.

Determinism: every output element is written by exactly one thread, which sums its terms
in a fixed order (the GEMM over shared-memory tiles in ascending ``k``, col2im as a
gather over taps in ascending order, the reductions serially or, per channel, as a fixed
tree over a block's partial sums). There are no atomics, so the same call on the same
inputs gives bitwise the same result on every run.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the kernels run as Python threads:
each CUDA thread is a Python thread, so tests there use tiny grids, and the tile and block
sizes shrink (:data:`TPB`, :data:`THREADS`, :data:`RED_THREADS`); the kernels are the same.
"""

from __future__ import annotations

import contextlib
import functools
import math
from types import SimpleNamespace

import numpy as np
from numba import config as _numba_config
from numba import cuda
from numba import float32 as _nb_float32
from numba import float64 as _nb_float64

from .. import _args

#: True when the kernels run in the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).
SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)

#: Side of the square shared-memory tiles of the GEMM (threads per block: TPB*TPB). The
#: simulator pays for every thread and every barrier in Python, so it gets smaller tiles;
#: the kernels are written for any TPB and the tests cross tile edges at both sizes.
TPB = 8 if SIMULATOR else 16

#: Threads per block of the one-thread-per-element kernels (fewer idle threads in the
#: simulator's last block).
THREADS = 32 if SIMULATOR else 256

#: Upper bound, in bytes, on the column buffer of one batch chunk (as the CPU backend's).
WORKSPACE_BYTES = 256 * 2**20

# CUDA caps gridDim.y and gridDim.z at 65535.
_MAX_GRID_YZ = 65535

_NB_TYPES = {np.dtype(np.float32): _nb_float32, np.dtype(np.float64): _nb_float64}


def set_workspace_bytes(nbytes: int) -> int:
    """Set the column-buffer budget of one batch chunk; returns the previous value."""
    global WORKSPACE_BYTES
    if int(nbytes) < 1:
        raise ValueError(f"nbytes must be positive, got {nbytes!r}")
    old, WORKSPACE_BYTES = WORKSPACE_BYTES, int(nbytes)
    return old


# ----------------------------------------------------------------------------- arrays
class _HostInterface:
    """Expose a ``__cuda_array_interface__`` as NumPy's ``__array_interface__``.

    Only for the simulator, whose "device" memory is host memory: a foreign object's
    device pointer is then a host address. Holding `owner` keeps that memory alive for
    as long as the NumPy view that NumPy builds from this object.
    """

    def __init__(self, owner):
        cai = owner.__cuda_array_interface__
        self._owner = owner
        self.__array_interface__ = {
            "shape": tuple(cai["shape"]),
            "typestr": cai["typestr"],
            "data": tuple(cai["data"]),
            "strides": cai.get("strides"),
            "version": 3,
        }


def is_device_array(a) -> bool:
    """True for a numba device array (real or simulated), the type this backend returns."""
    return bool(getattr(a, "__cuda_ndarray__", False))


def as_device_array(a):
    """A numba device array viewing `a`'s memory (no copy).

    Parameters
    ----------
    a : numba device array or object with ``__cuda_array_interface__``

    Returns
    -------
    numba device array with `a`'s shape, strides and dtype
    """
    if is_device_array(a):
        return a
    if not hasattr(a, "__cuda_array_interface__"):
        raise TypeError(f"expected a CUDA device array, got {type(a).__name__}")
    if SIMULATOR:
        return cuda.devicearray.FakeCUDAArray(np.asarray(_HostInterface(a)))
    return cuda.as_cuda_array(a)


def empty(shape, dtype):
    """An uninitialised C-contiguous device array."""
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))


def to_device(a):
    """A C-contiguous device array with `a`'s contents: host arrays are copied over,
    device arrays (any ``__cuda_array_interface__``) stay where they are."""
    if is_device_array(a) or hasattr(a, "__cuda_array_interface__"):
        return contiguous(a)
    return cuda.to_device(np.ascontiguousarray(a))


def to_host(a) -> np.ndarray:
    """A host (NumPy) array with `a`'s contents: device arrays are copied back."""
    if isinstance(a, np.ndarray):
        return a
    return contiguous(a).copy_to_host()


def _launch(kernel, size: int, *args) -> None:
    """Run a one-thread-per-element kernel over `size` elements (nothing when empty:
    CUDA refuses a zero-sized grid)."""
    if size > 0:
        kernel[(size + THREADS - 1) // THREADS, THREADS](*args)


# Strided gathers into a flat C-ordered destination, one kernel per rank (numba indexes an
# array with a fixed-length tuple, so the rank must be known when the kernel compiles).
@cuda.jit
def _copy1(src, dst):
    t = cuda.grid(1)
    if t < dst.size:
        dst[t] = src[t]


@cuda.jit
def _copy2(src, dst):
    t = cuda.grid(1)
    if t < dst.size:
        n1 = src.shape[1]
        dst[t] = src[t // n1, t % n1]


@cuda.jit
def _copy3(src, dst):
    t = cuda.grid(1)
    if t < dst.size:
        n1, n2 = src.shape[1], src.shape[2]
        i2 = t % n2
        q = t // n2
        dst[t] = src[q // n1, q % n1, i2]


@cuda.jit
def _copy4(src, dst):
    t = cuda.grid(1)
    if t < dst.size:
        n1, n2, n3 = src.shape[1], src.shape[2], src.shape[3]
        i3 = t % n3
        q = t // n3
        i2 = q % n2
        q //= n2
        dst[t] = src[q // n1, q % n1, i2, i3]


@cuda.jit
def _copy5(src, dst):
    t = cuda.grid(1)
    if t < dst.size:
        n1, n2, n3, n4 = src.shape[1], src.shape[2], src.shape[3], src.shape[4]
        i4 = t % n4
        q = t // n4
        i3 = q % n3
        q //= n3
        i2 = q % n2
        q //= n2
        dst[t] = src[q // n1, q % n1, i2, i3, i4]


@cuda.jit
def _copy6(src, dst):
    t = cuda.grid(1)
    if t < dst.size:
        n1, n2, n3, n4, n5 = src.shape[1], src.shape[2], src.shape[3], src.shape[4], src.shape[5]
        i5 = t % n5
        q = t // n5
        i4 = q % n4
        q //= n4
        i3 = q % n3
        q //= n3
        i2 = q % n2
        q //= n2
        dst[t] = src[q // n1, q % n1, i2, i3, i4, i5]


_COPY = {1: _copy1, 2: _copy2, 3: _copy3, 4: _copy4, 5: _copy5, 6: _copy6}


def contiguous(a):
    """C-contiguous device array with `a`'s contents: `a` itself, or a copy made on device.

    Parameters
    ----------
    a : numba device array or object with ``__cuda_array_interface__``, any strides

    Returns
    -------
    numba device array, C-contiguous (`a` is never modified)
    """
    d = as_device_array(a)
    if d.is_c_contiguous():
        return d
    if d.ndim not in _COPY:
        raise ValueError(f"strided device arrays of {d.ndim} dimensions are not supported (1 to 6)")
    out = empty(d.shape, d.dtype)
    size = int(np.prod(d.shape))
    _launch(_COPY[d.ndim], size, d, out.reshape(size))
    return out


# ----------------------------------------------------------------------------- kernels
@functools.cache
def _kernels(dtype: np.dtype) -> SimpleNamespace:
    """The dtype-specialised kernels: accumulators and shared tiles are in `dtype`.

    Compiled lazily per dtype so a float32 call accumulates in float32 (as BLAS does on
    the CPU backend) instead of being promoted by a float64 literal.
    """
    nbtype = _NB_TYPES[np.dtype(dtype)]
    zero = np.dtype(dtype).type(0)

    @cuda.jit
    def gemm(A, B, C, ta, tb, R, accumulate):
        # C[c] (+)= sum_{r<R} op(A[(r*BC + c) % BA]) @ op(B[(r*BC + c) % BB]), op = transpose
        # when ta/tb. The modulo lets one launch broadcast a shared operand (batch 1, or
        # one kernel per group) and, with R > 1, sum per-sample products in sample order.
        # Tiles: sa[i, k] = op(A)[row0 + i, k0 + k], sb[k, j] = op(B)[k0 + k, col0 + j].
        # Each load lets threadIdx.x run along the operand's contiguous last axis
        # (coalesced global reads); a transposed operand is stored transposed in shared.
        sa = cuda.shared.array((TPB, TPB), nbtype)
        sb = cuda.shared.array((TPB, TPB), nbtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        c = cuda.blockIdx.z
        row0 = cuda.blockIdx.y * TPB
        col0 = cuda.blockIdx.x * TPB
        row = row0 + ty
        col = col0 + tx
        BC = C.shape[0]
        M = C.shape[1]
        N = C.shape[2]
        K = A.shape[1] if ta else A.shape[2]
        acc = zero
        for r in range(R):
            ba = (r * BC + c) % A.shape[0]
            bb = (r * BC + c) % B.shape[0]
            for k0 in range(0, K, TPB):
                if ta:  # A is (K, M): x runs along M
                    i = row0 + tx
                    k = k0 + ty
                    sa[tx, ty] = A[ba, k, i] if i < M and k < K else zero
                else:  # A is (M, K): x runs along K
                    i = row0 + ty
                    k = k0 + tx
                    sa[ty, tx] = A[ba, i, k] if i < M and k < K else zero
                if tb:  # B is (N, K): x runs along K
                    j = col0 + ty
                    k = k0 + tx
                    sb[tx, ty] = B[bb, j, k] if j < N and k < K else zero
                else:  # B is (K, N): x runs along N
                    j = col0 + tx
                    k = k0 + ty
                    sb[ty, tx] = B[bb, k, j] if j < N and k < K else zero
                cuda.syncthreads()
                for kk in range(TPB):
                    acc += sa[ty, kk] * sb[kk, tx]
                cuda.syncthreads()
        if row < M and col < N:
            if accumulate:
                acc += C[c, row, col]
            C[c, row, col] = acc

    @cuda.jit
    def col2im(cols, dx, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
        # Gather: the thread of input element (n, c, ih, iw) sums, taps in order, every
        # column entry that read it; it is that element's only writer.
        t = cuda.grid(1)
        N, C, H, W = dx.shape
        if t >= N * C * H * W:
            return
        iw = t % W
        q = t // W
        ih = q % H
        q //= H
        c = q % C
        n = q // C
        acc = zero
        for u in range(kh):
            a = ih + ph - u * dh
            if a < 0:
                break
            if a % sh != 0:
                continue
            i = a // sh
            if i >= Ho:
                continue
            for v in range(kw):
                b = iw + pw - v * dw
                if b < 0:
                    break
                if b % sw != 0:
                    continue
                j = b // sw
                if j >= Wo:
                    continue
                acc += cols[n, (c * kh + u) * kw + v, i * Wo + j]
        dx[n, c, ih, iw] = acc

    @cuda.jit
    def sum_last(a, out):
        # out[n, o] = sum_p a[n, o, p], serially in p.
        t = cuda.grid(1)
        if t >= out.size:
            return
        O = out.shape[1]
        n = t // O
        o = t % O
        acc = zero
        for p in range(a.shape[2]):
            acc += a[n, o, p]
        out[n, o] = acc

    @cuda.jit
    def rowdot(a, b, out):
        # out[n, o] = sum_p a[n, o, p] * b[n, o, p], serially in p.
        t = cuda.grid(1)
        if t >= out.size:
            return
        O = out.shape[1]
        n = t // O
        o = t % O
        acc = zero
        for p in range(a.shape[2]):
            acc += a[n, o, p] * b[n, o, p]
        out[n, o] = acc

    @cuda.jit
    def sum_first(a, out):
        # out[o] = sum_n a[n, o], serially in n.
        o = cuda.grid(1)
        if o >= out.size:
            return
        acc = zero
        for n in range(a.shape[0]):
            acc += a[n, o]
        out[o] = acc

    @cuda.jit
    def taps_forward(x, filt, out, cm, M, cdiv, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
        # One thread per output element (n, o = c*M + m, i, j), taps summed in order.
        t = cuda.grid(1)
        N, C, H, W = x.shape
        if t >= N * C * M * Ho * Wo:
            return
        j = t % Wo
        q = t // Wo
        i = q % Ho
        q //= Ho
        o = q % (C * M)
        n = q // (C * M)
        c = o // M
        f = (c // cdiv) * M + (o - c * M)
        acc = zero
        for u in range(kh):
            ih = i * sh - ph + u * dh
            if ih < 0 or ih >= H:
                continue
            for v in range(kw):
                iw = j * sw - pw + v * dw
                if 0 <= iw < W:
                    acc += filt[n, f, u * kw + v, i, j] * x[n, c, ih, iw]
        if cm:
            out[o, n, i, j] = acc
        else:
            out[n, o, i, j] = acc

    @cuda.jit
    def taps_backward_input(filt, dout, dx, cm, M, cdiv, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
        # Gather: the thread of dx[n, c, h, w] visits every (output slot, tap, pixel) that
        # read it, in a fixed order; it is that element's only writer.
        t = cuda.grid(1)
        N, C, H, W = dx.shape
        if t >= N * C * H * W:
            return
        w = t % W
        q = t // W
        h = q % H
        q //= H
        c = q % C
        n = q // C
        fbase = (c // cdiv) * M
        acc = zero
        for u in range(kh):
            a = h + ph - u * dh
            if a < 0:
                break
            if a % sh != 0:
                continue
            i = a // sh
            if i >= Ho:
                continue
            for v in range(kw):
                b = w + pw - v * dw
                if b < 0:
                    break
                if b % sw != 0:
                    continue
                j = b // sw
                if j >= Wo:
                    continue
                for m in range(M):
                    o = c * M + m
                    d = dout[o, n, i, j] if cm else dout[n, o, i, j]
                    acc += filt[n, fbase + m, u * kw + v, i, j] * d
        dx[n, c, h, w] = acc

    @cuda.jit
    def taps_backward_filter(x, dout, dfilt, cm, M, cdiv, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
        # One thread per dfilt[n, f, t, i, j]: the sum over the filter's channels runs in order.
        t = cuda.grid(1)
        N, F, T = dfilt.shape[0], dfilt.shape[1], dfilt.shape[2]
        H, W = x.shape[2], x.shape[3]
        if t >= N * F * T * Ho * Wo:
            return
        j = t % Wo
        q = t // Wo
        i = q % Ho
        q //= Ho
        tap = q % T
        q //= T
        f = q % F
        n = q // F
        grp = f // M
        m = f - grp * M
        u = tap // kw
        v = tap - u * kw
        ih = i * sh - ph + u * dh
        iw = j * sw - pw + v * dw
        acc = zero
        if 0 <= ih < H and 0 <= iw < W:
            for c in range(grp * cdiv, (grp + 1) * cdiv):
                o = c * M + m
                d = dout[o, n, i, j] if cm else dout[n, o, i, j]
                acc += d * x[n, c, ih, iw]
        dfilt[n, f, tap, i, j] = acc

    return SimpleNamespace(gemm=gemm, col2im=col2im, sum_last=sum_last, sum_first=sum_first, rowdot=rowdot,
                           taps_forward=taps_forward, taps_backward_input=taps_backward_input,
                           taps_backward_filter=taps_backward_filter)


@cuda.jit
def _im2col(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    t = cuda.grid(1)
    nb, R, P = cols.shape
    if t >= nb * R * P:
        return
    p = t % P
    q = t // P
    r = q % R
    n = q // R
    v = r % kw
    q = r // kw
    u = q % kh
    c = q // kh
    i = p // Wo
    j = p - i * Wo
    ih = i * sh - ph + u * dh
    iw = j * sw - pw + v * dw
    if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
        cols[n, r, p] = x[n, c, ih, iw]
    else:
        cols[n, r, p] = 0


@cuda.jit
def _add_rows(y, b):
    # y[n, o, p] += b[n % Nb, o]: a bias per output channel, shared (Nb = 1) or per sample.
    t = cuda.grid(1)
    N, O, P = y.shape
    if t >= N * O * P:
        return
    q = t // P
    o = q % O
    n = q // O
    y[n, o, t % P] += b[n % b.shape[0], o]


# ----------------------------------------------------------------------------- GEMM
def _gemm(A, B, C, ta=False, tb=False, R=1, accumulate=False):
    """Launch the tiled GEMM on C-contiguous 3-D operands (see the kernel's comment)."""
    BC, M, N = C.shape
    if BC * M * N == 0:
        return
    if BC > _MAX_GRID_YZ or (M + TPB - 1) // TPB > _MAX_GRID_YZ:
        raise ValueError(f"GEMM of {BC} batches of {M}x{N} exceeds the CUDA grid limits")
    grid = ((N + TPB - 1) // TPB, (M + TPB - 1) // TPB, BC)
    _kernels(C.dtype).gemm[grid, (TPB, TPB)](A, B, C, int(ta), int(tb), int(R), int(accumulate))


def _as3(a):
    # A C-contiguous operand as (batch, rows, cols); 1-D and 2-D get a batch of one.
    if a.ndim == 2:
        return a.reshape(1, *a.shape)
    return a


def _matmul(a, b, ta: bool, tb: bool):
    a = contiguous(a)
    b = contiguous(b)
    if a.dtype != b.dtype:
        raise TypeError(f"matmul operands must share one dtype, got {a.dtype} and {b.dtype}")
    a_vec, b_vec = a.ndim == 1, b.ndim == 1
    if (a_vec and ta) or (b_vec and tb) or not (1 <= a.ndim <= 3 and 1 <= b.ndim <= 3):
        raise ValueError(f"matmul takes 1-D to 3-D operands, got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    # NumPy's rule for vectors: a row vector on the left, a column vector on the right.
    a3 = a.reshape(1, 1, a.shape[0]) if a_vec else _as3(a)
    b3 = b.reshape(1, b.shape[0], 1) if b_vec else _as3(b)
    M, Ka = (a3.shape[2], a3.shape[1]) if ta else (a3.shape[1], a3.shape[2])
    N, Kb = (b3.shape[1], b3.shape[2]) if tb else (b3.shape[2], b3.shape[1])
    BA, BB = a3.shape[0], b3.shape[0]
    if Ka != Kb or (BA != BB and 1 not in (BA, BB)):
        raise ValueError(f"matmul shapes {tuple(a.shape)} and {tuple(b.shape)} do not align "
                         f"(transposed: {ta}, {tb})")
    batch = max(BA, BB)
    out = empty((batch, M, N), a.dtype)
    _gemm(a3, b3, out, ta, tb)
    shape = (batch,) if 3 in (a.ndim, b.ndim) else ()
    shape += (() if a_vec else (M,)) + (() if b_vec else (N,))
    return out.reshape(*shape) if shape else out.reshape(1)


def matmul(a, b):
    """``a @ b`` with NumPy's rules for 1-D to 3-D operands, as a tiled device GEMM.

    Parameters
    ----------
    a : device array (K,), (M, K) or (B|1, M, K)
    b : device array (K,), (K, N) or (B|1, K, N)

    Returns
    -------
    device array (M, N) (vector axes dropped, batch axis kept as NumPy does)

    Strided operands (transposed views of foreign arrays) are copied to C order on the
    device first; :func:`matmul_tn` and :func:`matmul_nt` transpose without a copy.
    """
    return _matmul(a, b, False, False)


def matmul_tn(a, b):
    """``a^T @ b`` over the last two axes: a (K, M) or (B|1, K, M), b (K, N) or (B|1, K, N)."""
    return _matmul(a, b, True, False)


def matmul_nt(a, b):
    """``a @ b^T`` over the last two axes: a (M, K) or (B|1, M, K), b (N, K) or (B|1, N, K)."""
    return _matmul(a, b, False, True)


# ----------------------------------------------------------------------------- im2col / col2im
def _is_pointwise(g) -> bool:
    # A 1x1, stride-1, unpadded window: the columns are x itself.
    return g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.ph == 0 and g.pw == 0


def im2col(x, g, out=None):
    """Unfold ``x (n, C, H, W)`` into ``cols (n, C*kh*kw, Ho*Wo)`` on the device."""
    x = contiguous(x)
    n = x.shape[0]
    if _is_pointwise(g):
        return x.reshape(n, g.C, g.P)
    if out is None:
        out = empty((n, g.C * g.taps, g.P), x.dtype)
    size = n * g.C * g.taps * g.P
    _launch(_im2col, size, x, out, *g.ints())
    return out


def col2im(cols, g, out):
    """Fold ``cols (n, C*kh*kw, Ho*Wo)`` into ``out (n, C, H, W)``, summing overlaps (a gather)."""
    n = out.shape[0]
    if _is_pointwise(g):
        size = n * g.C * g.P
        _launch(_copy1, size, contiguous(cols).reshape(size), out.reshape(size))
        return out
    size = n * g.C * g.H * g.W
    _launch(_kernels(out.dtype).col2im, size, contiguous(cols), out, *g.ints())
    return out


# ----------------------------------------------------------------------------- conv template
def _chunks(g, groups: int, itemsize: int):
    # Samples per chunk: the column buffer within WORKSPACE_BYTES and n*groups GEMM batches
    # within the grid's z limit. Depends on the shapes only, never on the device.
    per_sample = g.C * g.taps * g.P * itemsize
    nb = max(1, min(g.N, WORKSPACE_BYTES // max(1, per_sample), _MAX_GRID_YZ // groups))
    for n0 in range(0, g.N, nb):
        yield n0, min(g.N, n0 + nb)


def conv_forward(x, wt, bt, g, groups):
    """``Y_n = Wt_n @ X_n + bt_n`` for shared or per-sample kernels, on the device.

    Parameters
    ----------
    x : device array (N, C, H, W)
    wt : device array (O, C//groups*kh*kw) shared, or (N, O, C//groups*kh*kw) per sample
    bt : device array (O,) or (N, O), or None
    g : Geometry
    groups : int

    Returns
    -------
    y : device array (N, O, Ho, Wo)
    """
    x = contiguous(x)
    wt = contiguous(wt)
    G = groups
    O, F = wt.shape[wt.ndim - 2], wt.shape[wt.ndim - 1]  # the simulator's shapes refuse -1
    Og = O // G
    y = empty((g.N, O, g.Ho, g.Wo), x.dtype)
    shared = wt.ndim == 2
    w3 = wt.reshape(G, Og, F) if shared else wt.reshape(g.N * G, Og, F)
    for n0, n1 in _chunks(g, G, x.dtype.itemsize):
        nb = n1 - n0
        cols = im2col(x[n0:n1], g).reshape(nb * G, F, g.P)
        w = w3 if shared else w3[n0 * G:n1 * G]
        _gemm(w, cols, y[n0:n1].reshape(nb * G, Og, g.P))
    if bt is not None:
        bt = contiguous(bt)
        b2 = bt.reshape(1, O) if bt.ndim == 1 else bt
        size = g.N * O * g.P
        _launch(_add_rows, size, y.reshape(g.N, O, g.P), b2)
    return y


def conv_backward(x, wt, dy, g, groups, need_dx=True, need_dw=True):
    """Backward of :func:`conv_forward`, on the device.

    Parameters
    ----------
    x : device array (N, C, H, W)
    wt : device array (O, F) shared or (N, O, F) per sample, ``F = C//groups*kh*kw``
    dy : device array (N, O, Ho, Wo)

    Returns
    -------
    dx : device array (N, C, H, W) or None
    gw : device array (O, F) for shared kernels (``sum_n dY_n X_n^T``), (N, O, F) per
        sample (``G_n = dY_n X_n^T``), or None
    dbt : device array (O,) shared or (N, O) per sample: ``dY`` summed over pixels
    """
    x = contiguous(x)
    wt = contiguous(wt)
    dy = contiguous(dy)
    G = groups
    O, F = wt.shape[wt.ndim - 2], wt.shape[wt.ndim - 1]  # the simulator's shapes refuse -1
    Og = O // G
    shared = wt.ndim == 2
    w3 = wt.reshape(G, Og, F) if shared else wt.reshape(g.N * G, Og, F)
    k = _kernels(x.dtype)
    dx = empty((g.N, g.C, g.H, g.W), x.dtype) if need_dx else None
    gw = None
    if need_dw:
        gw = empty((O, F) if shared else (g.N, O, F), x.dtype)
    for n0, n1 in _chunks(g, G, x.dtype.itemsize):
        nb = n1 - n0
        dy3 = dy[n0:n1].reshape(nb * G, Og, g.P)
        if need_dw:
            cols = im2col(x[n0:n1], g).reshape(nb * G, F, g.P)
            if shared:
                # sum_n dY_n X_n^T inside one launch (R = nb samples, in order); later
                # chunks add onto the earlier ones.
                _gemm(dy3, cols, gw.reshape(G, Og, F), tb=True, R=nb, accumulate=n0 > 0)
            else:
                _gemm(dy3, cols, gw[n0:n1].reshape(nb * G, Og, F), tb=True)
        if need_dx:
            w = w3 if shared else w3[n0 * G:n1 * G]
            if _is_pointwise(g):
                _gemm(w, dy3, dx[n0:n1].reshape(nb * G, F, g.P), ta=True)
            else:
                dcols = empty((nb * G, F, g.P), x.dtype)
                _gemm(w, dy3, dcols, ta=True)
                col2im(dcols.reshape(nb, G * F, g.P), g, dx[n0:n1])
    dbt = empty((g.N, O), x.dtype)
    _launch(k.sum_last, g.N * O, dy.reshape(g.N, O, g.P), dbt)
    if shared:
        summed = empty((O,), x.dtype)
        _launch(k.sum_first, O, dbt, summed)
        dbt = summed
    return dx, gw, dbt


# ----------------------------------------------------------------------------- tap engine
# The CPU tap engine's contract (backends/cpu_taps.py): per-pixel filters
# ``filt (N, F, kh*kw, Ho, Wo)``, ``F = (C // cdiv) * M``; input channel c and output slot
# m use filter ``f = (c // cdiv)*M + m``, and output channel ``c*M + m``. Three gathers,
# one thread per element written, no unfolded input.
def taps_forward(x, filt, g, M: int, cdiv: int, out=None, channel_major: bool = False):
    """Apply per-pixel filters tap by tap, on the device.

    Parameters
    ----------
    x : device array (N, C, H, W)
    filt : device array (N, F, kh*kw, Ho, Wo), ``F = (C // cdiv) * M``
    g : Geometry
    M, cdiv : int
        Outputs per input channel; input channels per filter group.
    out : device array (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`, optional
        C-contiguous destination (overwritten).
    channel_major : bool
        Lay `out` out as ``(C*M, N, Ho, Wo)``.

    Returns
    -------
    out : device array (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`
    """
    x = contiguous(x)
    filt = contiguous(filt)
    _args.tap_filters(g, M, cdiv, filt)
    if out is None:
        shape = (g.C * M, g.N) if channel_major else (g.N, g.C * M)
        out = empty(shape + (g.Ho, g.Wo), x.dtype)
    size = g.N * g.C * M * g.P
    _launch(_kernels(x.dtype).taps_forward, size,
            x, filt, out, int(channel_major), M, cdiv, *g.ints())
    return out


def taps_backward_input(filt, dout, g, M: int, cdiv: int, out=None, channel_major: bool = False):
    """Gradient of :func:`taps_forward` with respect to ``x``, as a gather.

    Parameters
    ----------
    filt : device array (N, F, kh*kw, Ho, Wo)
    dout : device array (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`
    out : device array (N, C, H, W), optional
        C-contiguous destination (overwritten).

    Returns
    -------
    dx : device array (N, C, H, W)
    """
    filt = contiguous(filt)
    dout = contiguous(dout)
    _args.tap_filters(g, M, cdiv, filt)
    dx = empty((g.N, g.C, g.H, g.W), dout.dtype) if out is None else out
    size = g.N * g.C * g.H * g.W
    _launch(_kernels(dout.dtype).taps_backward_input, size,
            filt, dout, dx, int(channel_major), M, cdiv, *g.ints())
    return dx


def taps_backward_filter(x, dout, g, M: int, cdiv: int, out=None, channel_major: bool = False):
    """Gradient of :func:`taps_forward` with respect to ``filt``.

    Parameters
    ----------
    x : device array (N, C, H, W)
    dout : device array (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`
    out : device array (N, F, kh*kw, Ho, Wo), optional
        C-contiguous destination (overwritten).

    Returns
    -------
    dfilt : device array (N, F, kh*kw, Ho, Wo), ``F = (C // cdiv) * M``
    """
    x = contiguous(x)
    dout = contiguous(dout)
    F = _args.tap_filters(g, M, cdiv)
    dfilt = empty((g.N, F, g.taps, g.Ho, g.Wo), x.dtype) if out is None else out
    size = g.N * F * g.taps * g.P
    _launch(_kernels(x.dtype).taps_backward_filter, size,
            x, dout, dfilt, int(channel_major), M, cdiv, *g.ints())
    return dfilt


# ----------------------------------------------------------------------------- DCD helpers
# Dynamic convolution decomposition adds a low-rank term at the centre tap: output pixel
# (i, j) reads x[i*sh - ph + (kh//2)*dh, j*sw - pw + (kw//2)*dw]. Distinct output pixels
# read distinct inputs, so both directions are one-thread-per-pixel with single ownership.
@cuda.jit
def _centre_taps(x, xs, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    t = cuda.grid(1)
    N, C, H, W = x.shape
    if t >= N * C * Ho * Wo:
        return
    j = t % Wo
    q = t // Wo
    i = q % Ho
    q //= Ho
    c = q % C
    n = q // C
    ih = i * sh - ph + (kh // 2) * dh
    iw = j * sw - pw + (kw // 2) * dw
    if 0 <= ih < H and 0 <= iw < W:
        xs[n, c, i, j] = x[n, c, ih, iw]
    else:
        xs[n, c, i, j] = 0


@cuda.jit
def _add_centre_taps(dx, dxs, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    t = cuda.grid(1)
    N, C, H, W = dx.shape
    if t >= N * C * Ho * Wo:
        return
    j = t % Wo
    q = t // Wo
    i = q % Ho
    q //= Ho
    c = q % C
    n = q // C
    ih = i * sh - ph + (kh // 2) * dh
    iw = j * sw - pw + (kw // 2) * dw
    if 0 <= ih < H and 0 <= iw < W:
        dx[n, c, ih, iw] += dxs[n, c, i, j]


@cuda.jit
def _scale_rows(a, s, out):
    t = cuda.grid(1)
    N, O, P = a.shape
    if t >= N * O * P:
        return
    q = t // P
    out[q // O, q % O, t % P] = a[q // O, q % O, t % P] * s[q // O, q % O]


def centre_taps(x, g):
    """``xs (N, C, Ho, Wo)``: x at every output pixel's centre tap, zero in the padding."""
    x = contiguous(x)
    xs = empty((g.N, g.C, g.Ho, g.Wo), x.dtype)
    _launch(_centre_taps, g.N * g.C * g.P, x, xs, *g.ints())
    return xs


def add_centre_taps(dx, dxs, g):
    """``dx (N, C, H, W) += dxs`` at the centre-tap positions, in place; returns `dx`.

    `dx` must be a C-contiguous device array the caller owns (a fresh gradient).
    """
    _launch(_add_centre_taps, g.N * g.C * g.P, dx, contiguous(dxs), *g.ints())
    return dx


def scale_rows(a, s):
    """``a (N, O, P) * s (N, O)[:, :, None]`` as a new device array."""
    a = contiguous(a)
    s = contiguous(s)
    out = empty(a.shape, a.dtype)
    _launch(_scale_rows, int(np.prod(a.shape)), a, s, out)
    return out


def rowdot(a, b):
    """``sum_p a[n, o, p] * b[n, o, p]`` -> (N, O): one thread per row, summed in order."""
    a = contiguous(a)
    b = contiguous(b)
    out = empty(a.shape[:2], a.dtype)
    _launch(_kernels(a.dtype).rowdot, int(out.size), a, b, out)
    return out


def matmul_nt_sum(a, b):
    """``sum_n a[n] @ b[n]^T``: a (N, M, K), b (N, J, K) -> (M, J), summed over n in order."""
    a = contiguous(a)
    b = contiguous(b)
    out = empty((1, a.shape[1], b.shape[1]), a.dtype)
    _gemm(a, b, out, tb=True, R=a.shape[0])
    return out.reshape(a.shape[1], b.shape[1])


gemm_nt_sum = matmul_nt_sum


# ----------------------------------------------------------------------------- array-level primitives
# The counterparts of backends/cpu_array.py, for the routing ops, atom_conv2d and the
# layers: elementwise maps, per-row softmax, per-channel reductions, layout changes and
# optimiser updates. Same names, arguments and results as the CPU functions.

#: Threads per block of the per-channel reductions, a power of two: each block sums its
#: threads' partial sums as a tree in shared memory. The simulator pays for every thread
#: and barrier in Python, so it gets small blocks; the tree is the same.
RED_THREADS = 8 if SIMULATOR else 256


def chunk_size(N: int, bytes_per_sample: int) -> int:
    """Samples per chunk so that a chunk's workspace stays within :data:`WORKSPACE_BYTES`."""
    return max(1, min(N, WORKSPACE_BYTES // max(1, bytes_per_sample)))


def blas_single_thread():
    """A context that does nothing: there is no BLAS here (the CPU backend's holds BLAS at one thread)."""
    return contextlib.nullcontext()


@cuda.jit(device=True)
def _block_sum(buf, v):
    # The sum of every thread's `v` over the block, returned to all of them: a tree over
    # `buf` (shared, RED_THREADS long) with a fixed pairing, so the result is deterministic.
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    s = RED_THREADS // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
        cuda.syncthreads()
        s //= 2
    total = buf[0]
    cuda.syncthreads()  # all have read buf[0] before a later call overwrites it
    return total


# Elementwise maps ``out[t] = f(a[t], b[t], c[t], p, q, r)``: three operands (unused ones
# are passed as `a`) and three scalars in the arrays' dtype. One kernel template
# (_ew_kernel), one device function per op below; each mirrors the NumPy expression of
# the cpu_array function of the same purpose, in the same order of operations.
@functools.cache
def _array_kernels(dtype: np.dtype) -> SimpleNamespace:
    """The dtype-specialised array-level kernels (constants in `dtype`, see :func:`_kernels`)."""
    dt = np.dtype(dtype)
    nbtype = _NB_TYPES[dt]
    zero, one, three, six, half = (dt.type(v) for v in (0, 1, 3, 6, 0.5))

    dev = cuda.jit(device=True)
    ops = {
        "relu": dev(lambda a, b, c, p, q, r: zero if a < zero else a),
        "relu_backward": dev(lambda a, b, c, p, q, r: b if a > zero else zero),
        "sigmoid": dev(_sigmoid_fn(zero, one)),
        "sigmoid_backward": dev(lambda a, b, c, p, q, r: b * (a * (one - a)) / p),
        "hard_sigmoid": dev(lambda a, b, c, p, q, r: min(max(a + three, zero), six) / p),
        "hard_sigmoid_backward": dev(lambda a, b, c, p, q, r: b / p if -three < a < three else zero),
        "tanh": dev(lambda a, b, c, p, q, r: math.tanh(a)),
        "tanh_backward": dev(lambda a, b, c, p, q, r: b * (one - a * a)),
        "exp": dev(lambda a, b, c, p, q, r: math.exp(a)),
        "add": dev(lambda a, b, c, p, q, r: a + b),
        "sub": dev(lambda a, b, c, p, q, r: a - b),
        "mul": dev(lambda a, b, c, p, q, r: a * b),
        "scale": dev(lambda a, b, c, p, q, r: a * p),
        "div": dev(lambda a, b, c, p, q, r: a / p),
        "fill": dev(lambda a, b, c, p, q, r: p),
        "lerp": dev(lambda a, b, c, p, q, r: (one - p) * a + p * b),
        "rsqrt_eps": dev(lambda a, b, c, p, q, r: one / math.sqrt(a + p)),
        "neg_mul": dev(lambda a, b, c, p, q, r: -a * b),
        "bn_drv": dev(lambda a, b, c, p, q, r: -half * a * b * b * c),
        "axpy": dev(lambda a, b, c, p, q, r: a + p * b),
        "axpby": dev(lambda a, b, c, p, q, r: p * a + q * b),
        "axpbyy": dev(lambda a, b, c, p, q, r: p * a + q * (b * b)),
        "adam": dev(lambda a, b, c, p, q, r: a - p * b / (math.sqrt(c / q) + r)),
    }

    @cuda.jit
    def rows(a, b, out, mode, tau):
        # One thread per row a[i, :, j] of a (A, L, B), entries in order. mode 0:
        # softmax(a / tau), the row maximum subtracted; 1: log-softmax of a (tau = 1);
        # 2: softmax backward with a = y, b = dy.
        t = cuda.grid(1)
        A, L, B = a.shape
        if t >= A * B:
            return
        i = t // B
        j = t - i * B
        if mode == 2:
            s = zero
            for k in range(L):
                s += b[i, k, j] * a[i, k, j]
            for k in range(L):
                out[i, k, j] = a[i, k, j] * (b[i, k, j] - s) / tau
            return
        mx = a[i, 0, j] / tau
        for k in range(1, L):
            mx = max(mx, a[i, k, j] / tau)
        s = zero
        for k in range(L):
            s += math.exp(a[i, k, j] / tau - mx)
        if mode == 0:
            for k in range(L):
                out[i, k, j] = math.exp(a[i, k, j] / tau - mx) / s
        else:
            ls = math.log(s)
            for k in range(L):
                out[i, k, j] = (a[i, k, j] / tau - mx) - ls

    @cuda.jit
    def channel_reduce(a, b, out1, out2, mode, d1, d2):
        # Block c owns channel c of a (A, C, B): its threads stride over the channel's
        # A*B entries (neighbouring threads on neighbouring entries) and _block_sum adds
        # their partial sums. out1[c] = sum(a) / d1; mode 1: out2[c] = sum((a -
        # out1[c])**2) / d2, a second pass as NumPy's var; mode 2: out2[c] = sum(a*b) / d2.
        buf = cuda.shared.array(RED_THREADS, nbtype)
        c = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        B = a.shape[2]
        n = a.shape[0] * B
        s = zero
        p = zero
        for k in range(tid, n, RED_THREADS):
            i = k // B
            v = a[i, c, k - i * B]
            s += v
            if mode == 2:
                p += v * b[i, c, k - i * B]
        mean = _block_sum(buf, s) / d1
        if mode == 1:
            for k in range(tid, n, RED_THREADS):
                i = k // B
                dv = a[i, c, k - i * B] - mean
                p += dv * dv
        if mode != 0:
            p = _block_sum(buf, p)
        if tid == 0:
            out1[c] = mean
            if mode != 0:
                out2[c] = p / d2

    @cuda.jit
    def add_eye(a, out):
        t = cuda.grid(1)
        N, L = a.shape[0], a.shape[1]
        if t >= N * L * L:
            return
        j = t % L
        q = t // L
        i = q % L
        n = q // L
        out[n, i, j] = a[n, i, j] + one if i == j else a[n, i, j]

    return SimpleNamespace(ew={k: _ew_kernel(f) for k, f in ops.items()}, rows=rows,
                           channel_reduce=channel_reduce, add_eye=add_eye)


def _sigmoid_fn(zero, one):
    # exp only of non-positive numbers: no overflow for any finite input
    def f(a, b, c, p, q, r):
        u = a / p
        e = math.exp(-abs(u))
        return one / (one + e) if u >= zero else e / (one + e)
    return f


def _ew_kernel(f):
    @cuda.jit
    def k(a, b, c, out, p, q, r):
        t = cuda.grid(1)
        if t < out.size:
            out[t] = f(a[t], b[t], c[t], p, q, r)
    return k


def _size(a) -> int:
    return int(np.prod(a.shape))


def _ew(op: str, a, b=None, c=None, p=0.0, q=0.0, r=0.0, out=None):
    """Run the elementwise map `op` (see ``_EW_DOC``) over C-contiguous operands of one size.

    `out` may be one of the operands (each thread reads its entries before writing them).
    """
    a = contiguous(a)
    size = _size(a)
    b = a if b is None else contiguous(b)
    c = a if c is None else contiguous(c)
    if out is None:
        out = empty(a.shape, a.dtype)
    for name, v in (("b", b), ("c", c), ("out", out)):
        if _size(v) != size or v.dtype != a.dtype:
            raise ValueError(f"{op}: {name} has shape {tuple(v.shape)} and dtype {v.dtype}, "
                             f"a has {tuple(a.shape)} and {a.dtype}")
    t = a.dtype.type
    _launch(_array_kernels(a.dtype).ew[op], size, a.reshape(size), b.reshape(size), c.reshape(size),
            out.reshape(size), t(p), t(q), t(r))
    return out


def _three(a, axis: int):
    # a C-contiguous (A, L, B) view of `a` around `axis`
    s = tuple(a.shape)
    return a.reshape(int(np.prod(s[:axis])), s[axis], int(np.prod(s[axis + 1:])))


def _channels(a):
    # (N, C) or (N, C, ...) as a C-contiguous (N, C, B) view
    return _three(contiguous(a), 1)


def _reduce(a3, mode: int, d1, d2=1, b3=None):
    """Per-channel sums of ``a3 (A, C, B)`` (see the kernel); ``(out1, out2)``, out2 None in mode 0."""
    C = a3.shape[1]
    out1 = empty((C,), a3.dtype)
    out2 = empty((C,), a3.dtype) if mode else out1
    t = a3.dtype.type
    if C:
        _array_kernels(a3.dtype).channel_reduce[C, RED_THREADS](
            a3, a3 if b3 is None else b3, out1, out2, mode, t(d1), t(d2))
    return out1, (out2 if mode else None)


# ---------------------------------------------------------------- arrays
def zeros(shape, dtype):
    """A C-contiguous device array of zeros."""
    return fill(empty(shape, dtype), 0)


def astype(a, dtype):
    """`a` in `dtype`: `a` itself when it already has it, else a converted device copy."""
    a = as_device_array(a)
    if a.dtype == np.dtype(dtype):
        return a
    a = contiguous(a)
    out = empty(a.shape, dtype)
    _launch(_copy1, _size(a), a.reshape(_size(a)), out.reshape(_size(a)))
    return out


def copy(a):
    """A C-contiguous device copy of `a`."""
    a = as_device_array(a)
    out = empty(a.shape, a.dtype)
    size = _size(a)
    if a.is_c_contiguous():
        _launch(_copy1, size, a.reshape(size), out.reshape(size))
    else:
        _launch(_COPY[a.ndim], size, a, out.reshape(size))
    return out


def fill(a, value: float):
    """Set every entry of `a` (a C-contiguous device array the caller owns) to `value`; returns `a`."""
    return _ew("fill", a, p=value, out=a)


def copy_into(dst, src):
    """``dst[...] = src`` in place: `src` a host array (copied over) or a device array of dst's shape."""
    if isinstance(src, np.ndarray) or not (is_device_array(src) or hasattr(src, "__cuda_array_interface__")):
        host = np.ascontiguousarray(np.broadcast_to(np.asarray(src), tuple(dst.shape)), dtype=dst.dtype)
        dst.copy_to_device(host)
        return dst
    src = astype(contiguous(src), dst.dtype)
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"copy_into: src has shape {tuple(src.shape)}, dst {tuple(dst.shape)}")
    size = _size(dst)
    _launch(_copy1, size, src.reshape(size), dst.reshape(size))
    return dst


def add_into(dst, src):
    """``dst += src`` in place, `src` of dst's size (a gradient accumulator); returns `dst`."""
    return _ew("add", dst, src, out=dst)


# ---------------------------------------------------------------- elementwise
def add(a, b):
    """Elementwise ``a + b`` of two device arrays of one shape and dtype (a new array)."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add needs one shape and dtype, got {tuple(a.shape)} {a.dtype} and "
                         f"{tuple(b.shape)} {b.dtype}")
    return _ew("add", a, b)


def sub(a, b):
    """``a - b`` (a new array)."""
    return _ew("sub", a, b)


def mul(a, b):
    """``a * b`` (a new array)."""
    return _ew("mul", a, b)


def scale(a, s: float):
    """``a * s``, `s` taken in a's dtype (a new array)."""
    return _ew("scale", a, p=s)


def exp(a):
    """``exp(a)`` (a new array)."""
    return _ew("exp", a)


def total(a):
    """The sum of every entry, as a host scalar of a's dtype (one block's tree; copies one number back)."""
    a = contiguous(a)
    s, _ = _reduce(a.reshape(1, 1, _size(a)), 0, 1)
    return s.copy_to_host()[0]


def relu(z):
    """``max(z, 0)``."""
    return _ew("relu", z)


def relu_backward(z, dy):
    """``dy`` where ``z > 0``, else 0."""
    return _ew("relu_backward", z, dy)


def sigmoid(z, tau: float):
    """``1 / (1 + exp(-z / tau))``, evaluating ``exp(-|u|)`` only (no overflow at any finite z)."""
    return _ew("sigmoid", z, p=tau)


def sigmoid_backward(y, dy, tau: float):
    """``dy * y * (1 - y) / tau`` from the forward's output `y`."""
    return _ew("sigmoid_backward", y, dy, p=tau)


def hard_sigmoid(z, scale: float):
    """``relu6(z + 3) / scale``."""
    return _ew("hard_sigmoid", z, p=scale)


def hard_sigmoid_backward(z, dy, scale: float):
    """``dy / scale`` on the open interval ``-3 < z < 3``, else 0."""
    return _ew("hard_sigmoid_backward", z, dy, p=scale)


def tanh(z):
    """``tanh(z)``."""
    return _ew("tanh", z)


def tanh_backward(y, dy):
    """``dy * (1 - y**2)`` from the forward's output `y`."""
    return _ew("tanh_backward", y, dy)


# ---------------------------------------------------------------- rows
def _rows(mode: int, a, b, tau: float, axis: int):
    a = contiguous(a)
    a3 = _three(a, axis)
    b3 = a3 if b is None else _three(contiguous(b), axis)
    out = empty(a.shape, a.dtype)
    _launch(_array_kernels(a.dtype).rows, a3.shape[0] * a3.shape[2], a3, b3, _three(out, axis), mode,
            a.dtype.type(tau))
    return out


def softmax(z, tau: float, axis: int):
    """``softmax(z / tau)`` along `axis` (non-negative): one thread per row, the row maximum subtracted."""
    return _rows(0, z, None, tau, axis)


def softmax_backward(y, dy, tau: float, axis: int):
    """``y * (dy - sum(dy * y, axis)) / tau`` from the forward's output `y`."""
    return _rows(2, y, dy, tau, axis)


def log_softmax(z):
    """``log(softmax(z))`` along the last axis: ``(z - max) - log(sum(exp(z - max)))``."""
    return _rows(1, z, None, 1.0, len(z.shape) - 1)


# ---------------------------------------------------------------- channels
@cuda.jit
def _expand_rows(a, out, L, d):
    # out[r, l] = a[r] / d over a flat (R*L) out
    t = cuda.grid(1)
    if t < out.size:
        out[t] = a[t // L] / d


@cuda.jit
def _bn_apply(x, mean, inv, gamma, beta, xhat, y):
    # One thread per entry of x (A, C, B): xhat = (x - mean) * inv, y = xhat * gamma + beta.
    t = cuda.grid(1)
    A, C, B = x.shape
    if t >= A * C * B:
        return
    j = t % B
    q = t // B
    c = q % C
    i = q // C
    h = (x[i, c, j] - mean[c]) * inv[c]
    xhat[i, c, j] = h
    y[i, c, j] = h * gamma[c] + beta[c]


@cuda.jit
def _bn_dx(dy, xhat, gm, dbeta, dgamma, dx, Mf, training):
    # One thread per entry of dy (A, C, B). Training: gm = gamma * inv / M and
    # dx = gm * (M dy - dbeta - xhat dgamma); eval: gm = gamma * inv and dx = dy * gm.
    t = cuda.grid(1)
    A, C, B = dy.shape
    if t >= A * C * B:
        return
    j = t % B
    q = t // B
    c = q % C
    i = q // C
    if training:
        dx[i, c, j] = gm[c] * (Mf * dy[i, c, j] - dbeta[c] - xhat[i, c, j] * dgamma[c])
    else:
        dx[i, c, j] = dy[i, c, j] * gm[c]


@cuda.jit
def _channel_mix(a, W, out):
    # out[o, f] = sum_k a[k, o] * W[k, o, f], k in order
    t = cuda.grid(1)
    K, O, F = W.shape
    if t >= O * F:
        return
    o = t // F
    f = t - o * F
    acc = a[0, o] * W[0, o, f]
    for k in range(1, K):
        acc += a[k, o] * W[k, o, f]
    out[o, f] = acc


@cuda.jit
def _channel_mix_back(a, W, G, dW, da):
    # The thread of (k, o) owns dW[k, o, :] = a[k, o] * G[o, :] and da[k, o] = sum_f
    # G[o, f] * W[k, o, f], f in order.
    t = cuda.grid(1)
    K, O, F = W.shape
    if t >= K * O:
        return
    k = t // O
    o = t - k * O
    s = a[k, o]
    acc = G[o, 0] * W[k, o, 0]
    dW[k, o, 0] = s * G[o, 0]
    for f in range(1, F):
        acc += G[o, f] * W[k, o, f]
        dW[k, o, f] = s * G[o, f]
    da[k, o] = acc


@cuda.jit
def _swap01(a, out):
    # out[j, i, p] = a[i, j, p]; neighbouring threads on neighbouring p (coalesced both ways)
    t = cuda.grid(1)
    A, B, P = a.shape
    if t >= A * B * P:
        return
    p = t % P
    q = t // P
    i = q % A
    j = q // A
    out[j, i, p] = a[i, j, p]


def mean_pool(x):
    """``(N, C, H, W) -> (N, C)``: the mean of each plane (a block per plane)."""
    x = contiguous(x)
    N, C, H, W = x.shape
    m, _ = _reduce(x.reshape(1, N * C, H * W), 0, H * W)
    return m.reshape(N, C)


def mean_pool_backward(dy, H: int, W: int):
    """``(N, C) -> (N, C, H, W)``: ``dy / (H*W)`` spread over each plane."""
    dy = contiguous(dy)
    N, C = dy.shape
    dx = empty((N, C, H, W), dy.dtype)
    size = N * C * H * W
    _launch(_expand_rows, size, dy.reshape(N * C), dx.reshape(size), H * W, dy.dtype.type(H * W))
    return dx


def batch_stats(x, ddof: int = 0):
    """Per-channel mean and variance (divisor ``count - ddof``) of x (N, C) or (N, C, H, W): two (C,)."""
    x3 = _channels(x)
    M = x3.shape[0] * x3.shape[2]
    return _reduce(x3, 1, M, M - ddof)


def batch_norm_forward(x, mean, var, gamma, beta, eps: float):
    """Normalise x (N, C[, H, W]) per channel: ``(y, xhat, inv)`` as the CPU backend's."""
    x = contiguous(x)
    inv = _ew("rsqrt_eps", var, p=eps)
    y = empty(x.shape, x.dtype)
    xhat = empty(x.shape, x.dtype)
    _launch(_bn_apply, _size(x), _channels(x), contiguous(mean), inv, contiguous(gamma), contiguous(beta),
            _channels(xhat), _channels(y))
    return y, xhat, inv


def batch_norm_backward(dy, xhat, gamma, inv, training: bool):
    """Backward of :func:`batch_norm_forward`: ``(dx, dgamma, dbeta, drm, drv)`` as the CPU backend's."""
    dy3, xhat3 = _channels(dy), _channels(xhat)
    C = dy3.shape[1]
    M = dy3.shape[0] * dy3.shape[2]
    dbeta, dgamma = _reduce(dy3, 2, 1, 1, xhat3)
    gi = mul(gamma, inv)
    dx = empty(dy.shape, dy3.dtype)
    drm = drv = None
    if training:
        gm = _ew("div", gi, p=M)
    else:
        gm = gi
        drm = _ew("neg_mul", gi, dbeta)
        drv = _ew("bn_drv", gamma, inv, dgamma)
    if C:
        _launch(_bn_dx, _size(dy3), dy3, xhat3, gm, dbeta, dgamma, _channels(dx), dy3.dtype.type(M),
                int(training))
    return dx, dgamma, dbeta, drm, drv


def running_update(r, batch, momentum: float):
    """``(1 - momentum) * r + momentum * batch`` (a new array)."""
    return _ew("lerp", r, batch, p=momentum)


def channel_sum(a):
    """``a (A, C, B)`` summed over A and B: (C,), a block per channel."""
    s, _ = _reduce(contiguous(a), 0, 1)
    return s


def add_channel_bias(a, b):
    """``a (A, C, B) += b (C,)`` per channel, in place (a C-contiguous array the caller owns); returns `a`."""
    _launch(_add_rows, _size(a), a, contiguous(b).reshape(1, a.shape[1]))
    return a


def channel_mix(a, W):
    """``out[o, ...] = sum_k a[k, o] * W[k, o, ...]``: a (K, O), W (K, O, ...) -> (O, ...)."""
    W = contiguous(W)
    K, O = W.shape[0], W.shape[1]
    F = _size(W) // max(1, K * O)
    out = empty(tuple(W.shape[1:]), W.dtype)
    _launch(_channel_mix, O * F, contiguous(a), W.reshape(K, O, F), out.reshape(O, F))
    return out


def channel_mix_backward(a, W, G):
    """Gradients of :func:`channel_mix` for ``G (O, ...)``: ``(dW (K, O, ...), da (K, O))``."""
    W = contiguous(W)
    K, O = W.shape[0], W.shape[1]
    F = _size(W) // max(1, K * O)
    dW = empty(W.shape, W.dtype)
    da = empty((K, O), W.dtype)
    if F:
        _launch(_channel_mix_back, K * O, contiguous(a), W.reshape(K, O, F), contiguous(G).reshape(O, F),
                dW.reshape(K, O, F), da)
    return dW, da


def add_eye(a):
    """``a (N, L, L) + I`` (a new array)."""
    a = contiguous(a)
    out = empty(a.shape, a.dtype)
    _launch(_array_kernels(a.dtype).add_eye, _size(a), a, out)
    return out


# ---------------------------------------------------------------- layout and GEMM
def gemm(a, b, ta: bool = False, tb: bool = False, out=None, accumulate: bool = False):
    """``op(a) @ op(b)`` with the tiled GEMM (op transposes the last two axes when `ta`/`tb`).

    With `out` (a C-contiguous (M, N) or (B, M, N) device array), the product is written
    into it, or added to it with `accumulate` (inside the kernel: no temporary).
    """
    if out is None:
        return _matmul(a, b, ta, tb)
    a3, b3, o3 = _as3(contiguous(a)), _as3(contiguous(b)), _as3(out)
    M, Ka = (a3.shape[2], a3.shape[1]) if ta else (a3.shape[1], a3.shape[2])
    N, Kb = (b3.shape[1], b3.shape[2]) if tb else (b3.shape[2], b3.shape[1])
    if Ka != Kb or tuple(o3.shape[1:]) != (M, N) or {a3.shape[0], b3.shape[0]} - {1, o3.shape[0]}:
        raise ValueError(f"gemm shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit out {tuple(out.shape)} "
                         f"(transposed: {ta}, {tb})")
    _gemm(a3, b3, o3, ta, tb, accumulate=accumulate)
    return out


def swap01(a, out=None):
    """``a (A, B, P) -> (B, A, P)``, C-contiguous (into `out`, a C-contiguous device array, when given)."""
    a = contiguous(a)
    A, B, P = a.shape
    if out is None:
        out = empty((B, A, P), a.dtype)
    _launch(_swap01, A * B * P, a, out)
    return out


# ---------------------------------------------------------------- optimisers
def sgd_step(p, g, buf, lr: float, momentum: float, weight_decay: float, nesterov: bool):
    """One SGD update of `p` in place, as the CPU backend's (buffers updated in place); returns `buf`."""
    if weight_decay:
        g = _ew("axpy", g, p, p=weight_decay)
    if momentum:
        buf = copy(g) if buf is None else _ew("axpy", g, buf, p=momentum, out=buf)
        g = _ew("axpy", g, buf, p=momentum) if nesterov else buf
    _ew("axpy", p, g, p=-lr, out=p)  # p + (-lr) g is p - lr g, bit for bit
    return buf


def adam_step(p, g, m, v, lr_c1: float, b1: float, b2: float, c2: float, eps: float, weight_decay: float):
    """One Adam update of `p` in place, as the CPU backend's (moments updated in place); returns ``(m, v)``."""
    if weight_decay:
        g = _ew("axpy", g, p, p=weight_decay)
    if m is None:
        m, v = zeros(p.shape, p.dtype), zeros(p.shape, p.dtype)
    _ew("axpby", m, g, p=b1, q=1 - b1, out=m)
    _ew("axpbyy", v, g, p=b2, q=1 - b2, out=v)
    _ew("adam", p, m, v, p=lr_c1, q=c2, r=eps, out=p)
    return m, v
