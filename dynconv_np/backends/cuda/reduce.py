"""CUDA reductions: per-row sums and softmaxes, per-channel statistics, batch norm, channel mixing.

Determinism: each sum has one writer and a fixed order. A per-row sum is one thread's
serial loop; a per-channel sum is one block per channel whose threads stride over the
channel's entries (neighbouring threads on neighbouring entries) and whose partial sums
are added as a fixed tree in shared memory (:func:`_block_sum`). No atomics.
"""

from __future__ import annotations

import math

from numba import cuda

from .array import contiguous, empty
from .elementwise import mul, scalar_map
from .index import split, unravel3
from .launch import SIMULATOR, launch, per_dtype, per_element, size_of

#: Threads per block of the per-channel reductions, a power of two. The simulator pays
#: for every thread and barrier in Python, so it gets small blocks; the tree is the same.
RED_THREADS = 8 if SIMULATOR else 256

_device = cuda.jit(device=True)


def _three(a, axis: int):
    # a C-contiguous (A, L, B) view of `a` around `axis`
    s = tuple(a.shape)
    return a.reshape(int(math.prod(s[:axis])), s[axis], int(math.prod(s[axis + 1:])))


def _channels(a):
    # (N, C) or (N, C, ...) as a C-contiguous (N, C, B) view
    return _three(contiguous(a), 1)


# ----------------------------------------------------------------------------- rows
def _row_reducer(term):
    """The kernel ``out[n, o] = sum_p term(a[n, o, p], b[n, o, p])`` over a, b (N, O, P),
    one thread per row, serially in p from `zero`."""

    @per_element
    def row(r, a, b, out, zero):
        n, o = split(r, out.shape[1])
        acc = zero
        for p in range(a.shape[2]):
            acc += term(a[n, o, p], b[n, o, p])
        out[n, o] = acc

    return row


_row_sums = _row_reducer(_device(lambda x, y: x))
_row_dots = _row_reducer(_device(lambda x, y: x * y))


def row_sums(a):
    """``sum_p a[n, o, p]``: a (N, O, P) C-contiguous -> (N, O)."""
    out = empty(a.shape[:2], a.dtype)
    launch(_row_sums, size_of(out), a, a, out, a.dtype.type(0))
    return out


def rowdot(a, b):
    """``sum_p a[n, o, p] * b[n, o, p]`` -> (N, O)."""
    a = contiguous(a)
    out = empty(a.shape[:2], a.dtype)
    launch(_row_dots, size_of(out), a, contiguous(b), out, a.dtype.type(0))
    return out


@per_element
def _column_sums(o, a, out, zero):
    # out[o] = sum_n a[n, o], serially in n.
    acc = zero
    for n in range(a.shape[0]):
        acc += a[n, o]
    out[o] = acc


def column_sums(a):
    """``sum_n a[n, o]``: a (N, O) C-contiguous -> (O,)."""
    out = empty((a.shape[1],), a.dtype)
    launch(_column_sums, a.shape[1], a, out, a.dtype.type(0))
    return out


@_device
def _row_max_sum(a, i, j, tau):
    # The maximum m of row a[i, :, j] / tau and sum_k exp(a[i, k, j] / tau - m), in order.
    L = a.shape[1]
    m = a[i, 0, j] / tau
    for k in range(1, L):
        m = max(m, a[i, k, j] / tau)
    s = math.exp(a[i, 0, j] / tau - m)
    for k in range(1, L):
        s += math.exp(a[i, k, j] / tau - m)
    return m, s


def _softmax_kernel(prep, finish):
    """The kernel that maps row r = (i, j) of a (A, L, B), a[i, :, j], to
    ``finish(a / tau - m, prep(s))`` (m and s as :func:`_row_max_sum`), one thread per row."""

    @per_element
    def row(r, a, out, tau):
        i, j = split(r, a.shape[2])
        m, s = _row_max_sum(a, i, j, tau)
        c = prep(s)
        for q in range(a.shape[1]):
            out[i, q, j] = finish(a[i, q, j] / tau - m, c)

    return row


_softmax_rows = _softmax_kernel(_device(lambda s: s), _device(lambda u, s: math.exp(u) / s))
_log_softmax_rows = _softmax_kernel(_device(lambda s: math.log(s)), _device(lambda u, ls: u - ls))


@per_element
def _softmax_backward_rows(r, y, dy, out, tau, zero):
    # One thread per row: y * (dy - sum(dy * y)) / tau, entries in order.
    i, j = split(r, y.shape[2])
    s = zero
    for q in range(y.shape[1]):
        s += dy[i, q, j] * y[i, q, j]
    for q in range(y.shape[1]):
        out[i, q, j] = y[i, q, j] * (dy[i, q, j] - s) / tau


def _per_row(kernel, z, tau: float, axis: int):
    z = contiguous(z)
    out = empty(z.shape, z.dtype)
    z3 = _three(z, axis)
    launch(kernel, z3.shape[0] * z3.shape[2], z3, _three(out, axis), z.dtype.type(tau))
    return out


def softmax(z, tau: float, axis: int):
    """``softmax(z / tau)`` along `axis` (non-negative): one thread per row, the row maximum subtracted."""
    return _per_row(_softmax_rows, z, tau, axis)


def log_softmax(z):
    """``log(softmax(z))`` along the last axis: ``(z - max) - log(sum(exp(z - max)))``."""
    return _per_row(_log_softmax_rows, z, 1.0, len(z.shape) - 1)


def softmax_backward(y, dy, tau: float, axis: int):
    """``y * (dy - sum(dy * y, axis)) / tau`` from the forward's output `y`."""
    y3 = _three(contiguous(y), axis)
    out = empty(y.shape, y3.dtype)
    t = y3.dtype.type
    launch(_softmax_backward_rows, y3.shape[0] * y3.shape[2], y3, _three(contiguous(dy), axis), _three(out, axis),
           t(tau), t(0))
    return out


# ----------------------------------------------------------------------------- channels
@_device
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


def _channel_reducer(term):
    """The kernel ``out[c] = sum term(a, b, shift[c]) / d`` over channel c of a, b (A, C, B):
    block c owns channel c (launched with one block of RED_THREADS per channel)."""

    @per_dtype
    def build(t, nbtype):
        zero = t(0)

        @cuda.jit
        def kernel(a, b, shift, out, d):
            buf = cuda.shared.array(RED_THREADS, nbtype)
            c = cuda.blockIdx.x
            tid = cuda.threadIdx.x
            s = zero
            for e in range(tid, a.shape[0] * a.shape[2], RED_THREADS):
                i, j = split(e, a.shape[2])
                s += term(a[i, c, j], b[i, c, j], shift[c])
            s = _block_sum(buf, s)
            if tid == 0:
                out[c] = s / d
        return kernel

    return build


_channel_sums = _channel_reducer(_device(lambda x, y, m: x))
_channel_sq_devs = _channel_reducer(_device(lambda x, y, m: (x - m) * (x - m)))
_channel_dots = _channel_reducer(_device(lambda x, y, m: x * y))


def _per_channel(reducer, a3, b3=None, shift=None, d=1):
    # (C,): the reducer's sums over each channel of a3 (A, C, B), divided by d
    C = a3.shape[1]
    out = empty((C,), a3.dtype)
    if C:
        reducer(a3.dtype)[C, RED_THREADS](a3, a3 if b3 is None else b3, out if shift is None else shift, out,
                                          a3.dtype.type(d))
    return out


def total(a):
    """The sum of every entry, as a host scalar of a's dtype (one block's tree; copies one number back)."""
    a = contiguous(a)
    return _per_channel(_channel_sums, a.reshape(1, 1, size_of(a))).copy_to_host()[0]


def channel_sum(a):
    """``a (A, C, B)`` summed over A and B: (C,), a block per channel."""
    return _per_channel(_channel_sums, contiguous(a))


def mean_pool(x):
    """``(N, C, H, W) -> (N, C)``: the mean of each plane (a block per plane)."""
    x = contiguous(x)
    N, C, H, W = x.shape
    return _per_channel(_channel_sums, x.reshape(1, N * C, H * W), d=H * W).reshape(N, C)


def batch_stats(x, ddof=0):
    """Per-channel mean and variance (divisor ``count - ddof``) of x (N, C) or (N, C, H, W):
    two (C,), the variance a second pass over the deviations, as NumPy's. With a tuple
    `ddof`: ``(mean, (var for each ddof))``."""
    x3 = _channels(x)
    M = x3.shape[0] * x3.shape[2]
    mean = _per_channel(_channel_sums, x3, d=M)
    vs = tuple(_per_channel(_channel_sq_devs, x3, shift=mean, d=M - d)
               for d in (ddof if isinstance(ddof, tuple) else (ddof,)))
    return mean, (vs if isinstance(ddof, tuple) else vs[0])


# ----------------------------------------------------------------------------- batch norm
@scalar_map(1)
def _rsqrt_eps(t):
    one = t(1)
    return lambda var, eps: one / math.sqrt(var + eps)


@scalar_map(1)
def _div(t):
    return lambda a, d: a / d


@scalar_map(2)
def _neg_mul(t):
    return lambda a, b: -a * b


@scalar_map(3)
def _bn_drv(t):
    half = t(0.5)
    # d xhat / d var = -xhat * inv**2 / 2
    return lambda gamma, inv, dgamma: -half * gamma * inv * inv * dgamma


@per_element
def _bn_apply(t, x, mean, inv, gamma, beta, xhat, y):
    # One thread per entry of x (A, C, B): xhat = (x - mean) * inv, y = xhat * gamma + beta.
    i, c, j = unravel3(t, x.shape[1], x.shape[2])
    h = (x[i, c, j] - mean[c]) * inv[c]
    xhat[i, c, j] = h
    y[i, c, j] = h * gamma[c] + beta[c]


@per_element
def _bn_dx_batch(t, dy, xhat, gm, dbeta, dgamma, dx, M):
    # Batch statistics: dx = gm * (M dy - dbeta - xhat dgamma), gm = gamma * inv / M.
    i, c, j = unravel3(t, dy.shape[1], dy.shape[2])
    dx[i, c, j] = gm[c] * (M * dy[i, c, j] - dbeta[c] - xhat[i, c, j] * dgamma[c])


@per_element
def _bn_dx_running(t, dy, gm, dx):
    # Running statistics: dx = dy * gm, gm = gamma * inv.
    i, c, j = unravel3(t, dy.shape[1], dy.shape[2])
    dx[i, c, j] = dy[i, c, j] * gm[c]


def batch_norm_forward(x, mean, var, gamma, beta, eps: float):
    """Normalise x (N, C[, H, W]) per channel: ``(y, xhat, inv)`` (x's shape, x's shape, (C,))."""
    x = contiguous(x)
    inv = _rsqrt_eps(var, scalars=(eps,))
    y = empty(x.shape, x.dtype)
    xhat = empty(x.shape, x.dtype)
    launch(_bn_apply, size_of(x), _channels(x), contiguous(mean), inv, contiguous(gamma), contiguous(beta),
           _channels(xhat), _channels(y))
    return y, xhat, inv


def batch_norm_backward(dy, xhat, gamma, inv, training: bool):
    """Backward of :func:`batch_norm_forward`: ``(dx, dgamma, dbeta, drm, drv)``, the last
    two (running statistics, eval mode) None when `training`."""
    dy3, xhat3 = _channels(dy), _channels(xhat)
    M = dy3.shape[0] * dy3.shape[2]
    dbeta = _per_channel(_channel_sums, dy3)
    dgamma = _per_channel(_channel_dots, dy3, xhat3)
    gi = mul(gamma, inv)
    dx = empty(dy.shape, dy3.dtype)
    if training:
        launch(_bn_dx_batch, size_of(dy3), dy3, xhat3, _div(gi, scalars=(M,)), dbeta, dgamma, _channels(dx),
               dy3.dtype.type(M))
        return dx, dgamma, dbeta, None, None
    launch(_bn_dx_running, size_of(dy3), dy3, gi, _channels(dx))
    return dx, dgamma, dbeta, _neg_mul(gi, dbeta), _bn_drv(gamma, inv, dgamma)


# ----------------------------------------------------------------------------- channel mixing
@per_element
def _channel_mix(t, a, W, out):
    # out[o, f] = sum_k a[k, o] * W[k, o, f], k in order
    o, f = split(t, W.shape[2])
    acc = a[0, o] * W[0, o, f]
    for k in range(1, W.shape[0]):
        acc += a[k, o] * W[k, o, f]
    out[o, f] = acc


@per_element
def _channel_mix_back(t, a, W, G, dW, da):
    # The thread of (k, o) owns dW[k, o, :] = a[k, o] * G[o, :] and da[k, o] = sum_f
    # G[o, f] * W[k, o, f], f in order.
    k, o = split(t, W.shape[1])
    s = a[k, o]
    acc = G[o, 0] * W[k, o, 0]
    dW[k, o, 0] = s * G[o, 0]
    for f in range(1, W.shape[2]):
        acc += G[o, f] * W[k, o, f]
        dW[k, o, f] = s * G[o, f]
    da[k, o] = acc


def channel_mix(a, W):
    """``out[o, ...] = sum_k a[k, o] * W[k, o, ...]``: a (K, O), W (K, O, ...) -> (O, ...)."""
    W = contiguous(W)
    K, O = W.shape[0], W.shape[1]
    F = size_of(W) // max(1, K * O)
    out = empty(tuple(W.shape[1:]), W.dtype)
    launch(_channel_mix, O * F, contiguous(a), W.reshape(K, O, F), out.reshape(O, F))
    return out


def channel_mix_backward(a, W, G):
    """Gradients of :func:`channel_mix` for ``G (O, ...)``: ``(dW (K, O, ...), da (K, O))``."""
    W = contiguous(W)
    K, O = W.shape[0], W.shape[1]
    F = size_of(W) // max(1, K * O)
    dW = empty(W.shape, W.dtype)
    da = empty((K, O), W.dtype)
    if F:
        launch(_channel_mix_back, K * O, contiguous(a), W.reshape(K, O, F), contiguous(G).reshape(O, F),
               dW.reshape(K, O, F), da)
    return dW, da
