"""CPU array primitives in NumPy: the array API (allocation, copies, host moves,
elementwise arithmetic) and the elementwise, per-row, per-channel, layout and optimiser
primitives of the kernel API (their contracts are in :mod:`dynconv_np.backends.interface`).

Each function is the NumPy expression the ops and layers used before they were written
against backend primitives, so host results are bitwise what they were, except batch
statistics, batch normalisation and the ReLU gradient, which are Numba kernels in
:mod:`.channels`. Elementwise
results are arrays at every shape: a 0-d input gives a 0-d array (``np.asarray``), never
the NumPy scalar an operator on 0-d arrays returns. "Per channel"
means axis 1 (``(N, C)`` or ``(N, C, H, W)`` arrays, or an ``(A, C, B)`` view).
"""

from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------- arrays
def empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array."""
    return np.empty(tuple(shape), dtype=dtype)


def zeros(shape, dtype) -> np.ndarray:
    """A C-contiguous array of zeros."""
    return np.zeros(tuple(shape), dtype=dtype)


def astype(a: np.ndarray, dtype) -> np.ndarray:
    """`a` in `dtype`: `a` itself when it already has it, else a converted copy."""
    return a.astype(dtype, copy=False)


def copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `a`."""
    return np.array(a, copy=True, order="C")


def fill(a: np.ndarray, value: float) -> np.ndarray:
    """Set every entry of `a` (which the caller owns) to `value`, in place; returns `a`."""
    a.fill(value)
    return a


def copy_into(dst: np.ndarray, src) -> np.ndarray:
    """``dst[...] = src`` in place (`src` host data of dst's shape, cast as needed); returns `dst`."""
    np.copyto(dst, src, casting="unsafe")
    return dst


def add_into(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """``dst += src`` in place, `src` reshaped to dst's shape (a gradient accumulator); returns `dst`."""
    dst += np.asarray(src).reshape(dst.shape)
    return dst


def contiguous(a: np.ndarray) -> np.ndarray:
    """`a` as a C-contiguous array (a view when it already is one; `a` is never modified;
    a 0-d array stays 0-d, unlike ``np.ascontiguousarray``)."""
    return np.asarray(a, order="C")


def to_device(a: np.ndarray) -> np.ndarray:
    """The CPU backend's arrays are host arrays: `a` as a C-contiguous array (0-d stays 0-d)."""
    return np.asarray(a, order="C")


def to_host(a: np.ndarray) -> np.ndarray:
    """The CPU backend's arrays are host arrays: `a` itself."""
    return np.asarray(a)


# ----------------------------------------------------------------------------- elementwise
def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` (a new array)."""
    return np.asarray(np.add(a, b))


def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` (a new array)."""
    return np.asarray(a - b)


def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a * b`` (a new array)."""
    return np.asarray(a * b)


def scale(a: np.ndarray, s: float) -> np.ndarray:
    """``a * s``, `s` taken in a's dtype (a new array)."""
    return np.asarray(a * a.dtype.type(s))


def exp(a: np.ndarray) -> np.ndarray:
    """``exp(a)`` (a new array)."""
    return np.asarray(np.exp(a))


def total(a: np.ndarray):
    """The sum of every entry, as a host scalar of a's dtype."""
    return a.sum()


def sigmoid(z: np.ndarray, tau: float) -> np.ndarray:
    """``1 / (1 + exp(-z / tau))``, evaluating ``exp(-|u|)`` only (no overflow at any finite z)."""
    u = z / z.dtype.type(tau)
    e = np.exp(-np.abs(u))
    return np.where(u >= 0, 1 / (1 + e), e / (1 + e)).astype(u.dtype, copy=False)


def sigmoid_backward(y: np.ndarray, dy: np.ndarray, tau: float) -> np.ndarray:
    """``dy * y * (1 - y) / tau`` from the forward's output `y`."""
    return np.asarray(dy * (y * (1 - y)) / y.dtype.type(tau))


def hard_sigmoid(z: np.ndarray, scale: float) -> np.ndarray:
    """``relu6(z + 3) / scale``."""
    t = z.dtype.type
    return np.asarray(np.clip(z + t(3), t(0), t(6)) / t(scale))


def hard_sigmoid_backward(z: np.ndarray, dy: np.ndarray, scale: float) -> np.ndarray:
    """``dy / scale`` on the open interval ``-3 < z < 3``, else 0."""
    t = z.dtype.type
    inside = (z > -3) & (z < 3)
    return np.asarray(np.where(inside, dy / t(scale), 0), dtype=z.dtype)


def tanh(z: np.ndarray) -> np.ndarray:
    """``tanh(z)``."""
    return np.asarray(np.tanh(z))


def tanh_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``dy * (1 - y**2)`` from the forward's output `y`."""
    return np.asarray(dy * (1 - y * y))


# ----------------------------------------------------------------------------- rows
def softmax(z: np.ndarray, tau: float, axis: int) -> np.ndarray:
    """``softmax(z / tau)`` along `axis` (non-negative), the row maximum subtracted first."""
    u = z / z.dtype.type(tau)
    u = u - u.max(axis=axis, keepdims=True)                   # largest exponent is 0
    e = np.exp(u)
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(y: np.ndarray, dy: np.ndarray, tau: float, axis: int) -> np.ndarray:
    """``y * (dy - sum(dy * y, axis)) / tau`` from the forward's output `y`."""
    s = (dy * y).sum(axis=axis, keepdims=True)
    return y * (dy - s) / y.dtype.type(tau)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """``log(softmax(z))`` along the last axis: ``(z - max) - log(sum(exp(z - max)))``."""
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- channels
def mean_pool(x: np.ndarray) -> np.ndarray:
    """``(N, C, H, W) -> (N, C)``: the mean of each plane."""
    return x.mean(axis=(2, 3))


def mean_pool_backward(dy: np.ndarray, H: int, W: int) -> np.ndarray:
    """``(N, C) -> (N, C, H, W)``: ``dy / (H*W)`` spread over each plane."""
    dx = np.empty(tuple(dy.shape) + (H, W), dtype=dy.dtype)
    dx[...] = (dy / (H * W))[:, :, None, None]
    return dx


def running_update(r: np.ndarray, batch: np.ndarray, momentum: float) -> np.ndarray:
    """``(1 - momentum) * r + momentum * batch`` (a new array)."""
    m = r.dtype.type(momentum)
    return np.asarray((1 - m) * r + m * batch)


def channel_sum(a: np.ndarray) -> np.ndarray:
    """``a (A, C, B)`` summed over A and B: (C,)."""
    return a.sum(axis=(0, 2))


def add_channel_bias(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a (A, C, B) += b (C,)`` per channel, in place (the caller owns `a`); returns `a`."""
    a += b.reshape(1, -1, 1)
    return a


def _letters(W: np.ndarray) -> str:
    # einsum subscripts of W's trailing axes (after K, O)
    return "abcdefgh"[:W.ndim - 2]


def channel_mix(a: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``out[o, ...] = sum_k a[k, o] * W[k, o, ...]``: a (K, O), W (K, O, ...) -> (O, ...)."""
    s = _letters(W)
    return np.einsum(f"ko,ko{s}->o{s}", a, W)


def channel_mix_backward(a: np.ndarray, W: np.ndarray, G: np.ndarray):
    """Gradients of :func:`channel_mix` for the cotangent ``G (O, ...)``.

    Returns
    -------
    dW : (K, O, ...)
        ``a[k, o] * G[o, ...]``.
    da : (K, O)
        ``sum_... G[o, ...] * W[k, o, ...]``.
    """
    dW = a.reshape(a.shape + (1,) * (W.ndim - 2)) * G
    s = _letters(W)
    return dW, np.einsum(f"o{s},ko{s}->ko", G, W)


def scale_rows(a: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``a (N, O, P) * s (N, O)[:, :, None]`` (a new array)."""
    return a * s[:, :, None]


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_p a[n, o, p] * b[n, o, p]`` -> (N, O)."""
    return np.einsum("nop,nop->no", a, b)


def add_eye(a: np.ndarray) -> np.ndarray:
    """``a (N, L, L) + I`` (a new array)."""
    return np.eye(a.shape[1], dtype=a.dtype) + a


# ----------------------------------------------------------------------------- layout
def swap01(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a (A, B, P) -> (B, A, P)``, C-contiguous (into `out` when given)."""
    if out is None:
        return np.ascontiguousarray(a.transpose(1, 0, 2))
    out[...] = a.transpose(1, 0, 2)
    return out


# ----------------------------------------------------------------------------- optimisers
def sgd_step(p: np.ndarray, g: np.ndarray, buf: np.ndarray | None, lr: float, momentum: float,
             weight_decay: float, nesterov: bool) -> np.ndarray | None:
    """One SGD update of `p` in place (PyTorch's rule); returns the momentum buffer.

    ``g += weight_decay * p``; ``buf = momentum * buf + g`` (``g`` at the first step, when
    `buf` is None); ``p -= lr * (g + momentum * buf if nesterov else buf)``.
    """
    t = p.dtype.type
    if weight_decay:
        g = g + t(weight_decay) * p
    if momentum:
        buf = g.copy() if buf is None else t(momentum) * buf + g
        g = g + t(momentum) * buf if nesterov else buf
    p -= t(lr) * g
    return buf


def adam_step(p: np.ndarray, g: np.ndarray, m: np.ndarray | None, v: np.ndarray | None, lr_c1: float,
              b1: float, b2: float, c2: float, eps: float, weight_decay: float):
    """One Adam update of `p` in place; returns the new moments ``(m, v)``.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2`` (zeros before the first step),
    ``p -= lr_c1 * m / (sqrt(v / c2) + eps)`` with the bias corrections ``lr_c1 = lr / c1``
    and ``c2`` of the caller.
    """
    t = p.dtype.type
    if weight_decay:
        g = g + t(weight_decay) * p
    if m is None:
        m, v = np.zeros_like(p), np.zeros_like(p)
    m = t(b1) * m + t(1 - b1) * g
    v = t(b2) * v + t(1 - b2) * (g * g)
    p -= t(lr_c1) * m / (np.sqrt(v / t(c2)) + t(eps))
    return m, v
