"""Routing building blocks: GAP, linear, activations, softmax, batch norm."""

from __future__ import annotations

import numpy as np

from .conv import _f64


# ----------------------------------------------------------------------------- routing ops
def _rows(z, axis):
    """``z`` with `axis` moved last and flattened to rows ``(M, L)``, plus the undo."""
    zm = np.moveaxis(z, axis, -1)
    shape = zm.shape

    def back(r):
        return np.moveaxis(r.reshape(shape), -1, axis)

    return zm.reshape(-1, shape[-1]), back


def global_avg_pool(x):
    """Reference GAP: ``(N, C, H, W) -> (N, C)`` by explicit sums over pixels."""
    (x,) = _f64(x)
    N, C, H, W = x.shape
    y = np.zeros((N, C))
    for i in range(H):
        for j in range(W):
            y += x[:, :, i, j]
    return y / (H * W)


def global_avg_pool_backward(dy, x):
    """Reference ``(dx,)`` of :func:`global_avg_pool`."""
    dy, x = _f64(dy, x)
    N, C, H, W = x.shape
    dx = np.zeros((N, C, H, W))
    for i in range(H):
        for j in range(W):
            dx[:, :, i, j] = dy / (H * W)
    return (dx,)


def linear(a, w, b=None):
    """Reference ``a @ w.T + b`` by loops over output features; a ``(..., in)``."""
    a, w, b = _f64(a, w, b)
    y = np.zeros(a.shape[:-1] + (w.shape[0],))
    for o in range(w.shape[0]):
        for i in range(w.shape[1]):
            y[..., o] += a[..., i] * w[o, i]
        if b is not None:
            y[..., o] += b[o]
    return y


def linear_backward(dy, a, w, b=None):
    """Reference ``(da, dw, db)`` of :func:`linear`."""
    dy, a, w, b = _f64(dy, a, w, b)
    da = np.zeros(a.shape)
    dw = np.zeros(w.shape)
    for o in range(w.shape[0]):
        for i in range(w.shape[1]):
            da[..., i] += dy[..., o] * w[o, i]
            dw[o, i] = np.sum(dy[..., o] * a[..., i])
    db = None if b is None else dy.reshape(-1, w.shape[0]).sum(axis=0)
    return da, dw, db


def _map(fn, z):
    out = np.empty(z.shape)
    for idx in np.ndindex(z.shape):
        out[idx] = fn(float(z[idx]))
    return out


def relu(z):
    """Reference ``max(z, 0)``, element by element."""
    (z,) = _f64(z)
    return _map(lambda v: v if v > 0 else 0.0, z)


def relu_backward(dy, z):
    """Reference ``(dz,)`` of :func:`relu` (slope 0 at 0)."""
    dy, z = _f64(dy, z)
    return (dy * _map(lambda v: 1.0 if v > 0 else 0.0, z),)


def _logistic(v):
    import math

    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def sigmoid(z, tau=1.0):
    """Reference ``1 / (1 + exp(-z / tau))``, element by element."""
    (z,) = _f64(z)
    return _map(lambda v: _logistic(v / tau), z)


def sigmoid_backward(dy, z, tau=1.0):
    """Reference ``(dz,)`` of :func:`sigmoid`."""
    dy, z = _f64(dy, z)
    s = sigmoid(z, tau)
    return (dy * s * (1.0 - s) / tau,)


def softmax(z, tau=1.0, axis=-1):
    """Reference ``softmax(z / tau)`` along `axis`, one row at a time."""
    (z,) = _f64(z)
    rows, back = _rows(z, axis)
    out = np.empty(rows.shape)
    for r in range(rows.shape[0]):
        u = rows[r] / tau
        e = np.exp(u - u.max())
        out[r] = e / e.sum()
    return back(out)


def softmax_backward(dy, z, tau=1.0, axis=-1):
    """Reference ``(dz,)`` of :func:`softmax` through the explicit Jacobian of each row."""
    dy, z = _f64(dy, z)
    p, _ = _rows(softmax(z, tau, axis), axis)
    d, back = _rows(dy, axis)
    out = np.empty(p.shape)
    for r in range(p.shape[0]):
        J = (np.diag(p[r]) - np.outer(p[r], p[r])) / tau        # J[i, j] = d p_i / d z_j
        out[r] = J.T @ d[r]
    return (back(out),)


def hard_sigmoid(z, scale=3.0):
    """Reference ``min(max(z + 3, 0), 6) / scale``, element by element."""
    (z,) = _f64(z)
    return _map(lambda v: min(max(v + 3.0, 0.0), 6.0) / scale, z)


def hard_sigmoid_backward(dy, z, scale=3.0):
    """Reference ``(dz,)`` of :func:`hard_sigmoid` (slope 1/scale on the open (-3, 3))."""
    dy, z = _f64(dy, z)
    return (dy * _map(lambda v: 1.0 / scale if -3.0 < v < 3.0 else 0.0, z),)


def tanh(z):
    """Reference hyperbolic tangent from exponentials."""
    (z,) = _f64(z)

    def th(v):
        import math

        e = math.exp(-2.0 * abs(v))
        t = (1.0 - e) / (1.0 + e)
        return t if v >= 0 else -t

    return _map(th, z)


def tanh_backward(dy, z):
    """Reference ``(dz,)`` of :func:`tanh`."""
    dy, z = _f64(dy, z)
    t = tanh(z)
    return (dy * (1.0 - t * t),)


def _channel_values(x, c):
    """All values of channel `c` as a vector (over N, or N, H, W)."""
    return x[:, c].reshape(-1)


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1,
               eps=1e-5):
    """Reference batch normalisation, one channel at a time (biased batch variance)."""
    x, gamma, beta, running_mean, running_var = _f64(x, gamma, beta, running_mean, running_var)
    y = np.empty(x.shape)
    for c in range(x.shape[1]):
        v = _channel_values(x, c)
        if training:
            mean = v.sum() / v.size
            var = ((v - mean) ** 2).sum() / v.size
        else:
            mean, var = running_mean[c], running_var[c]
        y[:, c] = gamma[c] * (x[:, c] - mean) / np.sqrt(var + eps) + beta[c]
    return y


def batch_norm_backward(dy, x, gamma, beta, running_mean=None, running_var=None, training=True,
                        momentum=0.1, eps=1e-5):
    """Reference ``(dx, dgamma, dbeta, drunning_mean, drunning_var)`` of :func:`batch_norm`.

    Training mode builds each channel's Jacobian ``d xhat_i / d x_j =
    inv * (delta_ij - 1/M - xhat_i xhat_j / M)`` explicitly.
    """
    dy, x, gamma, beta, running_mean, running_var = _f64(dy, x, gamma, beta, running_mean, running_var)
    C = x.shape[1]
    dx = np.empty(x.shape)
    dgamma, dbeta = np.zeros(C), np.zeros(C)
    drm = None if running_mean is None else np.zeros(C)
    drv = None if running_var is None else np.zeros(C)
    for c in range(C):
        v = _channel_values(x, c)
        d = _channel_values(dy, c)
        M = v.size
        if training:
            mean = v.sum() / M
            var = ((v - mean) ** 2).sum() / M
        else:
            mean, var = running_mean[c], running_var[c]
        inv = 1.0 / np.sqrt(var + eps)
        xhat = (v - mean) * inv
        dgamma[c] = np.sum(d * xhat)
        dbeta[c] = np.sum(d)
        if training:
            J = inv * (np.eye(M) - 1.0 / M - np.outer(xhat, xhat) / M)
        else:
            J = inv * np.eye(M)
            drm[c] = -gamma[c] * inv * np.sum(d)
            drv[c] = np.sum(d * gamma[c] * (v - mean)) * (-0.5) * inv ** 3
        dx[:, c] = (gamma[c] * (J.T @ d)).reshape(dx[:, c].shape)
    return dx, dgamma, dbeta, drm, drv
