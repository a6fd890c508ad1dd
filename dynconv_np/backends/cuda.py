"""CUDA backend: the CPU backend's primitives as numba.cuda kernels, on device arrays.

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
gather over taps in ascending order, the reductions serially). There are no atomics, so
the same call on the same inputs gives bitwise the same result on every run.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the kernels run as Python threads:
each CUDA thread is a Python thread, so tests there use tiny grids, and the tile and block
sizes shrink (:data:`TPB`, :data:`THREADS`); the kernels are the same.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
from numba import config as _numba_config
from numba import cuda
from numba import float32 as _nb_float32
from numba import float64 as _nb_float64

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


@cuda.jit
def _add(a, b, out):
    t = cuda.grid(1)
    if t < out.size:
        out[t] = a[t] + b[t]


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


def add(a, b):
    """Elementwise ``a + b`` of two device arrays of one shape and dtype (a new array)."""
    a = contiguous(a)
    b = contiguous(b)
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
        raise ValueError(f"add needs one shape and dtype, got {tuple(a.shape)} {a.dtype} and "
                         f"{tuple(b.shape)} {b.dtype}")
    out = empty(a.shape, a.dtype)
    size = int(np.prod(a.shape))
    _launch(_add, size, a.reshape(size), b.reshape(size), out.reshape(size))
    return out


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
def _taps_filters(g, M: int, cdiv: int, filt=None) -> int:
    if M < 1 or cdiv < 1 or g.C % cdiv:
        raise ValueError(f"tap engine: need M >= 1 and cdiv dividing C, got M={M}, cdiv={cdiv}, C={g.C}")
    F = (g.C // cdiv) * M
    if filt is not None and tuple(filt.shape) != (g.N, F, g.taps, g.Ho, g.Wo):
        raise ValueError(f"tap engine: filt must be {(g.N, F, g.taps, g.Ho, g.Wo)}, got {tuple(filt.shape)}")
    return F


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
    _taps_filters(g, M, cdiv, filt)
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
    _taps_filters(g, M, cdiv, filt)
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
    F = _taps_filters(g, M, cdiv)
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
