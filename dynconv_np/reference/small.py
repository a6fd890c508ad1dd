"""Small ops of the layers: linear algebra, the DCD pieces, the loss."""

from __future__ import annotations

import numpy as np

from .. import _args
from .conv import _f64, pad_input, tap_slice, unpad_input


# ----------------------------------------------------------------------------- small linear algebra
def _left(a, n, ta):
    """The left factor of sample n: a shared (2-D) or per-sample (3-D) matrix, transposed when `ta`."""
    m = a if a.ndim == 2 else a[n]
    return m.T if ta else m


def matmul(a, b, ta=False):
    """Reference ``c[n] = op(a) @ b[n]`` (op transposes when `ta`; a shared 2-D or per-sample 3-D)."""
    a, b = _f64(a, b)
    return np.stack([_left(a, n, ta) @ b[n] for n in range(b.shape[0])])


def matmul_backward(dc, a, b, ta=False):
    """Reference ``(da, db)`` of :func:`matmul`, sample by sample (a shared `a` sums them)."""
    dc, a, b = _f64(dc, a, b)
    da = [(dc[n] @ b[n].T).T if ta else dc[n] @ b[n].T for n in range(b.shape[0])]
    db = np.stack([_left(a, n, ta).T @ dc[n] for n in range(b.shape[0])])
    return (sum(da) if a.ndim == 2 else np.stack(da)), db


def scale_channels(a, s):
    """Reference ``a[n, c, ...] * s[n, c]``."""
    a, s = _f64(a, s)
    return np.array([[s[n, c] * a[n, c] for c in range(a.shape[1])] for n in range(a.shape[0])])


def scale_channels_backward(dy, a, s):
    """Reference ``(da, ds)`` of :func:`scale_channels`."""
    dy, a, s = _f64(dy, a, s)
    ds = np.array([[np.sum(dy[n, c] * a[n, c]) for c in range(a.shape[1])] for n in range(a.shape[0])])
    return scale_channels(dy, s), ds


def channel_mix(a, W):
    """Reference ``y[o] = sum_k a[k, o] W[k, o]``: the scaled kernels summed over k."""
    return scale_channels(W, a).sum(axis=0)


def channel_mix_backward(dy, a, W):
    """Reference ``(da, dW)`` of :func:`channel_mix`: ``dW[k, o] = a[k, o] dy[o]`` and
    ``da[k, o] = <dy[o], W[k, o]>``, scale_channels' backward with dy repeated over k."""
    dy, W = _f64(dy, W)
    dW, da = scale_channels_backward(np.broadcast_to(dy, W.shape), W, a)
    return da, dW


def add_bias(x, b):
    """Reference ``x[:, c] + b[c]``."""
    x, b = _f64(x, b)
    return np.stack([x[:, c] + b[c] for c in range(x.shape[1])], axis=1)


def add_bias_backward(dy, x, b):
    """Reference ``(dx, db)`` of :func:`add_bias`."""
    (dy,) = _f64(dy)
    return dy.copy(), np.array([dy[:, c].sum() for c in range(dy.shape[1])])


def add_eye(a):
    """Reference ``I + a[n]``."""
    (a,) = _f64(a)
    return np.stack([np.eye(a.shape[1]) + m for m in a])


def add_eye_backward(dy, a):
    """Reference ``(da,)`` of :func:`add_eye`."""
    return tuple(_f64(dy))


# ----------------------------------------------------------------------------- DCD pieces
def _centre(x, kernel_size, stride, padding, dilation):
    """The geometry, the padded input and the index of the centre tap at every output pixel."""
    kh, kw = _args.kernel_pair("kernel_size", kernel_size)
    g = _args.geometry(x.shape, kh, kw, stride, padding, dilation)
    return g, pad_input(x, g), (slice(None), slice(None)) + tap_slice(g, kh // 2, kw // 2)


def centre_projection(x, Q, kernel_size, stride=1, padding=0, dilation=1):
    """Reference ``Q^T x`` at every output pixel's centre tap: (N, L, Ho, Wo)."""
    x, Q = _f64(x, Q)
    g, xpad, centre = _centre(x, kernel_size, stride, padding, dilation)
    xs = xpad[centre]
    return np.stack([sum(Q[c, j] * xs[:, c] for c in range(g.C)) for j in range(Q.shape[1])], axis=1)


def centre_projection_backward(dz, x, Q, kernel_size, stride=1, padding=0, dilation=1):
    """Reference ``(dx, dQ)`` of :func:`centre_projection`."""
    dz, x, Q = _f64(dz, x, Q)
    g, xpad, centre = _centre(x, kernel_size, stride, padding, dilation)
    dQ = np.array([[np.sum(xpad[centre][:, c] * dz[:, j]) for j in range(Q.shape[1])] for c in range(g.C)])
    dxp = np.zeros(xpad.shape)
    for c in range(g.C):
        dxp[centre][:, c] = sum(Q[c, j] * dz[:, j] for j in range(Q.shape[1]))
    return unpad_input(dxp, g), dQ


def dcd_combine(r, lam, P, v):
    """Reference ``lam[n, o] * r[n, o] + sum_j P[o, j] v[n, j]``."""
    r, lam, P, v = _f64(r, lam, P, v)
    return scale_channels(r, lam) + np.stack([sum(P[o, j] * v[:, j] for j in range(P.shape[1]))
                                              for o in range(P.shape[0])], axis=1)


def dcd_combine_backward(dy, r, lam, P, v):
    """Reference ``(dr, dlam, dP, dv)`` of :func:`dcd_combine`."""
    dy, r, lam, P, v = _f64(dy, r, lam, P, v)
    dr, dlam = scale_channels_backward(dy, r, lam)
    dP = np.array([[np.sum(dy[:, o] * v[:, j]) for j in range(P.shape[1])] for o in range(P.shape[0])])
    dv = np.stack([sum(P[o, j] * dy[:, o] for o in range(P.shape[0])) for j in range(P.shape[1])], axis=1)
    return dr, dlam, dP, dv


# ----------------------------------------------------------------------------- loss
def _log_softmax_rows(z):
    return np.stack([row - row.max() - np.log(np.sum(np.exp(row - row.max()))) for row in z])


def softmax_cross_entropy(logits, target):
    """Reference ``-sum(target * log_softmax(logits)) / N``."""
    logits, target = _f64(logits, target)
    return -np.sum(target * _log_softmax_rows(logits)) / logits.shape[0]


def softmax_cross_entropy_backward(dloss, logits, target):
    """Reference ``(dlogits, dtarget)`` of :func:`softmax_cross_entropy`."""
    logits, target = _f64(logits, target)
    logp = _log_softmax_rows(logits)
    N = logits.shape[0]
    return float(dloss) * (np.exp(logp) - target) / N, -float(dloss) * logp / N
