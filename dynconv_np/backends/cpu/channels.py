"""CPU per-channel statistics, batch normalisation, the ReLU and its gradient as Numba kernels.

The NumPy expressions these replace made one pass over the array per operator and
temporary (about ten for a batch-norm forward and backward), and ``np.where`` with a
scalar runs at a tenth of memory speed here: in a digits-scale training step (batch 64,
16 to 32 channels of 16x16 and 8x8) batch norm and the ReLU gradient took more time than
the convolutions (``benchmarks/train_step.py``; docs/performance.md, "Training step").
Each kernel here makes the fewest passes its data dependencies allow: statistics two
(mean, then squared deviations), the normalisation one, the backward two (the channel
sums, then ``dx``).

Sums run in float64 whatever the input dtype, in a fixed order: a channel's ``N`` rows
of ``P`` pixels are added pixel by pixel, in ``n`` order, into a float64 row of ``P``
(a loop over contiguous pixels, which vectorises), then that row is summed with eight
interleaved accumulators. A channel is one work item, so the result is bitwise the same
for every thread count; the error is that of ``N + P`` sequential float64 additions,
below NumPy's float32 pairwise sums for float32 input and comparable to them for
float64. (Summing each row ``(n, c)`` on its own first, eight scalar accumulators a
row, did not vectorise: 3 to 4x slower on the digits net's layers, 1.3 to 6x on
CIFAR-scale ones; docs/performance.md, "Memory-bound primitives".)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


# The sum of a row in eight interleaved float64 accumulators, combined pairwise: a fixed
# order (the row's length decides it) with eight independent additions in flight, where
# one running sum is bound by the latency of each addition (measured 2.3x slower).
@njit(cache=True)
def _rsum(a):
    # sum of a (P,)
    P = a.shape[0]
    P8 = P - P % 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for p in range(0, P8, 8):
        s0 += a[p]
        s1 += a[p + 1]
        s2 += a[p + 2]
        s3 += a[p + 3]
        s4 += a[p + 4]
        s5 += a[p + 5]
        s6 += a[p + 6]
        s7 += a[p + 7]
    r = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for p in range(P8, P):
        r += a[p]
    return r


@njit(parallel=True, cache=True)
def _stats(x, mean, var, ddofs):
    # x (N, C, P) -> mean (C,), var (D, C): var[j] with divisor N*P - ddofs[j]
    N, C, P = x.shape
    for c in prange(C):
        acc = np.zeros(P)
        for n in range(N):
            r = x[n, c]
            for p in range(P):
                acc[p] += r[p]
        mu = _rsum(acc) / (N * P)
        acc[:] = 0.0
        for n in range(N):
            r = x[n, c]
            for p in range(P):
                acc[p] += (r[p] - mu) ** 2
        q = _rsum(acc)
        mean[c] = mu
        for j in range(ddofs.shape[0]):
            var[j, c] = q / (N * P - ddofs[j])


@njit(parallel=True, cache=True)
def _normalise(x, mean, inv, gamma, beta, y, xhat):
    # xhat = (x - mean) * inv, y = xhat * gamma + beta, per channel; x, y, xhat (N, C, P)
    N, C, P = x.shape
    for r in prange(N * C):
        n, c = r // C, r % C
        mu, k, g, b = mean[c], inv[c], gamma[c], beta[c]
        xr, hr, yr = x[n, c], xhat[n, c], y[n, c]
        for p in range(P):
            h = (xr[p] - mu) * k
            hr[p] = h
            yr[p] = h * g + b


@njit(parallel=True, cache=True)
def _grad_sums(dy, xhat, dbeta, dgamma):
    # dbeta (C,) = sum dy, dgamma (C,) = sum dy * xhat over N and P
    N, C, P = dy.shape
    for c in prange(C):
        ab = np.zeros(P)
        ag = np.zeros(P)
        for n in range(N):
            d, h = dy[n, c], xhat[n, c]
            for p in range(P):
                ab[p] += d[p]
                ag[p] += d[p] * h[p]
        dbeta[c] = _rsum(ab)
        dgamma[c] = _rsum(ag)


@njit(parallel=True, cache=True)
def _train_dx(dy, xhat, k, dbeta, dgamma, M, dx):
    # dx = k * (M * dy - dbeta - xhat * dgamma), per channel (k = gamma * inv / M)
    N, C, P = dy.shape
    for r in prange(N * C):
        n, c = r // C, r % C
        kc, b, g = k[c], dbeta[c], dgamma[c]
        dr, hr, xr = dy[n, c], xhat[n, c], dx[n, c]
        for p in range(P):
            xr[p] = kc * (M * dr[p] - b - hr[p] * g)


@njit(parallel=True, cache=True)
def _masked(z, dy, out, chunk):
    # out = dy where z > 0, else 0 (flat arrays), in chunks of `chunk` entries. Slices and
    # a conditional expression: the loop then vectorises (a branch on z costs 10x here).
    n = z.shape[0]
    for b in prange((n + chunk - 1) // chunk):
        lo, hi = b * chunk, min(n, (b + 1) * chunk)
        zs, ds, os = z[lo:hi], dy[lo:hi], out[lo:hi]
        for i in range(hi - lo):
            os[i] = ds[i] if zs[i] > 0 else 0.0


@njit(parallel=True, cache=True)
def _relu(z, out, chunk):
    # out = max(z, 0) as np.maximum(z, 0) gives it (0 for -0.0, NaN for NaN), flat
    # arrays in chunks of `chunk` entries (np.maximum ran at a quarter of copy speed)
    n = z.shape[0]
    for b in prange((n + chunk - 1) // chunk):
        lo, hi = b * chunk, min(n, (b + 1) * chunk)
        zs, os = z[lo:hi], out[lo:hi]
        for i in range(hi - lo):
            v = zs[i]
            os[i] = 0.0 if v <= 0 else v


#: Entries a work item of the ReLU and its gradient takes: big enough to amortise the scheduling
#: of a parallel loop, small enough to share a 64 x 16 x 16 x 16 batch among threads.
CHUNK = 1 << 15


def _rows(a: np.ndarray) -> np.ndarray:
    # (N, C[, ...]) -> a C-contiguous (N, C, P) view (a copy only when a is not contiguous)
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0], a.shape[1], -1)


def batch_stats(x: np.ndarray, ddof: int | tuple = 0) -> tuple:
    """Per-channel mean and variance (divisor ``count - ddof``) of x (N, C) or (N, C, H, W): two (C,).
    With a tuple `ddof`: ``(mean, (var for each ddof))`` from one pass of the deviations."""
    ddofs = np.array(ddof if isinstance(ddof, tuple) else (ddof,), dtype=np.int64)
    x3 = _rows(x)
    C = x3.shape[1]
    mean, var = np.empty(C), np.empty((len(ddofs), C))
    if x3.size:
        _stats(x3, mean, var, ddofs)
    else:
        mean[:] = var[:] = np.nan
    vs = tuple(v.astype(x.dtype) for v in var)
    return mean.astype(x.dtype), (vs if isinstance(ddof, tuple) else vs[0])


def batch_norm_forward(x, mean, var, gamma, beta, eps: float):
    """Normalise x (N, C[, H, W]) per channel.

    Returns
    -------
    y, xhat : x's shape
        ``xhat = (x - mean) * inv``, ``y = xhat * gamma + beta``.
    inv : (C,)
        ``1 / sqrt(var + eps)``.
    """
    t = x.dtype.type
    inv = (1 / np.sqrt(var + t(eps))).astype(x.dtype, copy=False)
    x3 = _rows(x)
    y, xhat = np.empty(x3.shape, x.dtype), np.empty(x3.shape, x.dtype)
    cast = [np.ascontiguousarray(v, dtype=x.dtype) for v in (mean, inv, gamma, beta)]
    _normalise(x3, *cast, y, xhat)
    return y.reshape(x.shape), xhat.reshape(x.shape), inv


def batch_norm_backward(dy, xhat, gamma, inv, training: bool):
    """Backward of :func:`batch_norm_forward` (statistics of the batch when `training`).

    Returns
    -------
    dx : dy's shape
    dgamma, dbeta : (C,)
    drm, drv : (C,) or None
        Gradients w.r.t. the running mean and variance (eval mode); None when `training`.
    """
    t = dy.dtype.type
    d3, h3 = _rows(dy), _rows(xhat)
    N, C, P = d3.shape
    M = N * P
    sb, sg = np.empty(C), np.empty(C)
    _grad_sums(d3, h3, sb, sg)
    dbeta, dgamma = sb.astype(dy.dtype), sg.astype(dy.dtype)
    gi = gamma * inv
    drm = drv = None
    dx = np.empty(d3.shape, dy.dtype)
    if training:
        # the batch statistics depend on x: the usual three-term formula
        k = np.ascontiguousarray(gi / t(M), dtype=dy.dtype)
        _train_dx(d3, h3, k, dbeta, dgamma, t(M), dx)
    else:
        np.multiply(d3, gi.astype(dy.dtype, copy=False).reshape(1, C, 1), out=dx)
        drm = -gi * dbeta
        drv = -t(0.5) * gamma * inv * inv * dgamma            # d xhat / d var = -xhat * inv**2 / 2
    return dx.reshape(dy.shape), dgamma, dbeta, drm, drv


def relu(z: np.ndarray) -> np.ndarray:
    """``max(z, 0)``, as ``np.maximum(z, 0)`` (a new array)."""
    z = np.asarray(z)
    out = np.empty(z.shape, dtype=z.dtype)
    if z.dtype.kind != "f":
        np.maximum(z, 0, out=out)
    elif out.size:
        _relu(np.ascontiguousarray(z).reshape(-1), out.reshape(-1), CHUNK)
    return out


def relu_backward(z: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``dy`` where ``z > 0``, else 0 (a NaN in `dy` where ``z <= 0`` gives 0, as ``np.where``)."""
    out = np.empty(np.shape(z), dtype=z.dtype)
    zf = np.ascontiguousarray(z).reshape(-1)
    df = np.ascontiguousarray(dy, dtype=out.dtype).reshape(-1)
    if out.size:
        _masked(zf, df, out.reshape(-1), CHUNK)
    return out
