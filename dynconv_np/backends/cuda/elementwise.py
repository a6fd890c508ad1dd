"""CUDA elementwise primitives, per-row and per-channel broadcasts, optimiser updates.

Each elementwise primitive is a scalar function turned into its own kernel by
:func:`scalar_map` (one thread per entry, compiled once per dtype), written as the NumPy
expression of the CPU backend's function of the same name, in the same order of
operations. Its scalars (a temperature, a learning rate) arrive in the arrays' dtype.
An output may be one of the inputs: each thread reads its entries before writing them.
"""

from __future__ import annotations

import math

from numba import cuda

from .array import contiguous, copy, empty
from .index import split, unravel3
from .launch import launch, per_dtype, per_element, size_of


# ----------------------------------------------------------------------------- the map factory
def _kernel1(f):
    @per_element
    def k(t, a, out, s):
        out[t] = f(a[t], *s)
    return k


def _kernel2(f):
    @per_element
    def k(t, a, b, out, s):
        out[t] = f(a[t], b[t], *s)
    return k


def _kernel3(f):
    @per_element
    def k(t, a, b, c, out, s):
        out[t] = f(a[t], b[t], c[t], *s)
    return k


_TEMPLATES = {1: _kernel1, 2: _kernel2, 3: _kernel3}


def scalar_map(nin: int):
    """Decorator over ``build(t) -> f``: `f` maps `nin` entries and then the scalars to one
    entry, with constants built from the scalar type `t`. Returns ``run(*arrays,
    scalars=(), out=None)``, which applies `f` to every entry of the arrays (one size
    and dtype) into `out` (a new array of a's shape when None) and returns `out`."""

    def wrap(build):
        kernel = per_dtype(lambda t, nbtype: _TEMPLATES[nin](cuda.jit(device=True)(build(t))))

        def run(*arrays, scalars=(), out=None):
            a = [contiguous(x) for x in arrays]
            size = size_of(a[0])
            if out is None:
                out = empty(a[0].shape, a[0].dtype)
            for name, x in zip(("b", "c")[:nin - 1] + ("out",), a[1:] + [out]):
                if size_of(x) != size or x.dtype != a[0].dtype:
                    raise ValueError(f"{build.__name__.lstrip('_')}: {name} has shape {tuple(x.shape)} and dtype "
                                     f"{x.dtype}, a has {tuple(a[0].shape)} and {a[0].dtype}")
            t = a[0].dtype.type
            launch(kernel(a[0].dtype), size, *(x.reshape(size) for x in a), out.reshape(size),
                   tuple(t(v) for v in scalars))
            return out

        run.__name__ = build.__name__
        return run

    return wrap


# ----------------------------------------------------------------------------- scalar maps
@scalar_map(1)
def _relu(t):
    zero = t(0)
    return lambda z: zero if z < zero else z


@scalar_map(2)
def _relu_backward(t):
    zero = t(0)
    return lambda z, dy: dy if z > zero else zero


@scalar_map(1)
def _sigmoid(t):
    zero, one = t(0), t(1)

    def f(z, tau):
        # exp only of non-positive numbers: no overflow for any finite input
        u = z / tau
        e = math.exp(-abs(u))
        return one / (one + e) if u >= zero else e / (one + e)
    return f


@scalar_map(2)
def _sigmoid_backward(t):
    one = t(1)
    return lambda y, dy, tau: dy * (y * (one - y)) / tau


@scalar_map(1)
def _hard_sigmoid(t):
    zero, three, six = t(0), t(3), t(6)
    return lambda z, scale: min(max(z + three, zero), six) / scale


@scalar_map(2)
def _hard_sigmoid_backward(t):
    zero, three = t(0), t(3)
    return lambda z, dy, scale: dy / scale if -three < z < three else zero


@scalar_map(1)
def _tanh(t):
    return lambda z: math.tanh(z)


@scalar_map(2)
def _tanh_backward(t):
    one = t(1)
    return lambda y, dy: dy * (one - y * y)


@scalar_map(1)
def _exp(t):
    return lambda a: math.exp(a)


@scalar_map(2)
def _add(t):
    return lambda a, b: a + b


@scalar_map(2)
def _sub(t):
    return lambda a, b: a - b


@scalar_map(2)
def _mul(t):
    return lambda a, b: a * b


@scalar_map(1)
def _scale(t):
    return lambda a, s: a * s


@scalar_map(1)
def _fill(t):
    return lambda a, value: value


@scalar_map(2)
def _lerp(t):
    one = t(1)
    return lambda r, batch, m: (one - m) * r + m * batch


@scalar_map(2)
def _axpy(t):
    # a + alpha*b; with alpha = -lr, p + (-lr) g is p - lr g bit for bit
    return lambda a, b, alpha: a + alpha * b


@scalar_map(2)
def _axpby(t):
    return lambda a, b, alpha, beta: alpha * a + beta * b


@scalar_map(2)
def _axpbyy(t):
    return lambda a, b, alpha, beta: alpha * a + beta * (b * b)


@scalar_map(3)
def _adam_update(t):
    return lambda p, m, v, lr_c1, c2, eps: p - lr_c1 * m / (math.sqrt(v / c2) + eps)


# ----------------------------------------------------------------------------- arrays
def zeros(shape, dtype):
    """A C-contiguous device array of zeros."""
    a = empty(shape, dtype)
    return _fill(a, scalars=(0,), out=a)


def fill(a, value: float):
    """Set every entry of `a` (a C-contiguous device array the caller owns) to `value`; returns `a`."""
    return _fill(a, scalars=(value,), out=a)


def add_into(dst, src):
    """``dst += src`` in place, `src` of dst's size (a gradient accumulator); returns `dst`."""
    return _add(dst, src, out=dst)


def add(a, b):
    """``a + b`` of two device arrays of one shape and dtype (a new array)."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add needs one shape and dtype, got {tuple(a.shape)} {a.dtype} and "
                         f"{tuple(b.shape)} {b.dtype}")
    return _add(a, b)


def sub(a, b):
    """``a - b`` (a new array)."""
    return _sub(a, b)


def mul(a, b):
    """``a * b`` (a new array)."""
    return _mul(a, b)


def scale(a, s: float):
    """``a * s``, `s` taken in a's dtype (a new array)."""
    return _scale(a, scalars=(s,))


# ----------------------------------------------------------------------------- elementwise
def exp(a):
    """``exp(a)`` (a new array)."""
    return _exp(a)


def relu(z):
    """``max(z, 0)``."""
    return _relu(z)


def relu_backward(z, dy):
    """``dy`` where ``z > 0``, else 0."""
    return _relu_backward(z, dy)


def sigmoid(z, tau: float):
    """``1 / (1 + exp(-z / tau))``, evaluating ``exp(-|u|)`` only (no overflow at any finite z)."""
    return _sigmoid(z, scalars=(tau,))


def sigmoid_backward(y, dy, tau: float):
    """``dy * y * (1 - y) / tau`` from the forward's output `y`."""
    return _sigmoid_backward(y, dy, scalars=(tau,))


def hard_sigmoid(z, scale: float):
    """``relu6(z + 3) / scale``."""
    return _hard_sigmoid(z, scalars=(scale,))


def hard_sigmoid_backward(z, dy, scale: float):
    """``dy / scale`` on the open interval ``-3 < z < 3``, else 0."""
    return _hard_sigmoid_backward(z, dy, scalars=(scale,))


def tanh(z):
    """``tanh(z)``."""
    return _tanh(z)


def tanh_backward(y, dy):
    """``dy * (1 - y**2)`` from the forward's output `y`."""
    return _tanh_backward(y, dy)


def running_update(r, batch, momentum: float):
    """``(1 - momentum) * r + momentum * batch`` (a new array)."""
    return _lerp(r, batch, scalars=(momentum,))


# ----------------------------------------------------------------------------- broadcasts
@per_element
def _add_rows(t, y, b):
    # y[n, o, p] += b[n % Nb, o]: a bias per channel o, shared (Nb = 1) or per sample.
    n, o, p = unravel3(t, y.shape[1], y.shape[2])
    y[n, o, p] += b[n % b.shape[0], o]


def add_rows(y, b) -> None:
    """``y (N, O, P) += b (N or 1, O)[:, :, None]`` in place (y a C-contiguous device array)."""
    launch(_add_rows, size_of(y), y, b)


def add_channel_bias(a, b):
    """``a (A, C, B) += b (C,)`` per channel, in place (a C-contiguous array the caller owns); returns `a`."""
    add_rows(a, contiguous(b).reshape(1, a.shape[1]))
    return a


@per_element
def _scale_rows(t, a, s, out):
    n, o, p = unravel3(t, a.shape[1], a.shape[2])
    out[n, o, p] = a[n, o, p] * s[n, o]


def scale_rows(a, s):
    """``a (N, O, P) * s (N, O)[:, :, None]`` as a new device array."""
    a = contiguous(a)
    out = empty(a.shape, a.dtype)
    launch(_scale_rows, size_of(a), a, contiguous(s), out)
    return out


@per_element
def _expand_rows(t, a, out, L, d):
    # out[r, l] = a[r] / d over a flat (R*L) out
    r, _ = split(t, L)
    out[t] = a[r] / d


def mean_pool_backward(dy, H: int, W: int):
    """``(N, C) -> (N, C, H, W)``: ``dy / (H*W)`` spread over each plane."""
    dy = contiguous(dy)
    N, C = dy.shape
    dx = empty((N, C, H, W), dy.dtype)
    launch(_expand_rows, N * C * H * W, dy.reshape(N * C), dx.reshape(N * C * H * W), H * W,
           dy.dtype.type(H * W))
    return dx


@per_element
def _add_eye(t, a, out, one):
    n, i, j = unravel3(t, a.shape[1], a.shape[2])
    out[n, i, j] = a[n, i, j] + one if i == j else a[n, i, j]


def add_eye(a):
    """``a (N, L, L) + I`` (a new array)."""
    a = contiguous(a)
    out = empty(a.shape, a.dtype)
    launch(_add_eye, size_of(a), a, out, a.dtype.type(1))
    return out


# ----------------------------------------------------------------------------- optimisers
def sgd_step(p, g, buf, lr: float, momentum: float, weight_decay: float, nesterov: bool):
    """One SGD update of `p` in place (PyTorch's rule, buffers updated in place); returns `buf`."""
    if weight_decay:
        g = _axpy(g, p, scalars=(weight_decay,))
    if momentum:
        buf = copy(g) if buf is None else _axpy(g, buf, scalars=(momentum,), out=buf)
        g = _axpy(g, buf, scalars=(momentum,)) if nesterov else buf
    _axpy(p, g, scalars=(-lr,), out=p)
    return buf


def adam_step(p, g, m, v, lr_c1: float, b1: float, b2: float, c2: float, eps: float, weight_decay: float):
    """One Adam update of `p` in place (moments updated in place); returns ``(m, v)``."""
    if weight_decay:
        g = _axpy(g, p, scalars=(weight_decay,))
    if m is None:
        m, v = zeros(p.shape, p.dtype), zeros(p.shape, p.dtype)
    _axpby(m, g, scalars=(b1, 1 - b1), out=m)
    _axpbyy(v, g, scalars=(b2, 1 - b2), out=v)
    _adam_update(p, m, v, scalars=(lr_c1, c2, eps), out=p)
    return m, v
