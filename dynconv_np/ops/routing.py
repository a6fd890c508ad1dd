"""Routing building blocks: the small ops that compute mixing weights and attentions.

GAP -> linear -> ReLU / BN -> linear -> sigmoid or softmax (with temperature), plus the
DCD code's hard sigmoid and tanh. Each op is ``f(...)`` and ``f.vjp(...)``; they are
cheap (a few (N, C) matrices), so they are plain NumPy on the host: CUDA arrays are
copied to the host and the results (and gradients) copied back to the device.

Numerical care: softmax subtracts the row maximum; sigmoid evaluates ``exp(-|u|)`` only,
so no overflow warning at any finite input; batch normalisation refuses a batch with
one value per channel (its variance is 0 and the output would be meaningless).
"""

from __future__ import annotations

import numpy as np

from .. import _args, backends
from .._op import op


def _host(device: str, *arrays):
    """The arrays as NumPy arrays: CUDA arrays are copied to the host (None stays None)."""
    be = backends.get(device)
    if device == "cpu":
        return arrays
    return tuple(None if a is None else be.to_host(a) for a in arrays)


def _back(device: str, y: np.ndarray, pullback):
    """``(y, pullback)`` on the caller's device: host results are copied back for CUDA callers."""
    if device == "cpu":
        return y, pullback
    be = backends.get(device)
    y_dev = be.to_device(y)

    def device_pullback(dy):
        _args.check_cotangent(dy, y_dev)
        grads = pullback(be.to_host(dy))
        return tuple(None if g is None else be.to_device(g) for g in grads)

    return y_dev, device_pullback


@op("x")
def global_avg_pool(x: np.ndarray):
    """Global average pooling over the spatial axes.

    Parameters
    ----------
    x : ndarray (N, C, H, W)

    Returns
    -------
    y : ndarray (N, C)
        ``y[n, c] = mean(x[n, c])``. pullback -> ``(dx (N, C, H, W),)``.
    """
    _, device = _args.check_arrays({"x": x})
    _args.check_ndim("x", x, 4, "(N, C, H, W)")
    _args.check_nonempty("x", x, (2, 3), "row and column")
    (x,) = _host(device, x)
    shape, dtype = x.shape, x.dtype
    HW = shape[2] * shape[3]
    y = x.mean(axis=(2, 3))                                   # (N, C)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dx = np.empty(shape, dtype=dtype)
        dx[...] = (dy / HW)[:, :, None, None]                 # (N, C, H, W)
        return (dx,)

    return _back(device, y, pullback)


@op("a", "w", "b")
def linear(a: np.ndarray, w: np.ndarray, b: np.ndarray | None = None):
    """Fully connected map ``a @ w.T + b`` (torch.nn.functional.linear).

    Parameters
    ----------
    a : ndarray (..., in)
        At least 1-D; leading axes are batch axes.
    w : ndarray (out, in)
    b : ndarray (out,), optional

    Returns
    -------
    y : ndarray (..., out)
        pullback -> ``(da (..., in), dw (out, in), db (out,) or None)``.
    """
    _, device = _args.check_arrays({"a": a, "w": w, "b": b}, optional=("b",))
    a, w, b = _host(device, a, w, b)
    if a.ndim < 1:
        raise ValueError("a must be at least 1-D (..., in), got a 0-D array")
    _args.check_ndim("w", w, 2, "(out, in)")
    n_out, n_in = w.shape
    if a.shape[-1] != n_in:
        raise ValueError(f"w has {n_in} input features (shape {tuple(w.shape)}), "
                         f"but a has {a.shape[-1]} (shape {tuple(a.shape)})")
    if b is not None:
        _args.check_shape("b", b, (n_out,), "(out,)")
    y = a @ w.T                                               # (..., out)
    if b is not None:
        y = y + b

    def pullback(dy):
        _args.check_cotangent(dy, y)
        a2 = a.reshape(-1, n_in)                              # (M, in)
        dy2 = dy.reshape(-1, n_out)                           # (M, out)
        da = dy @ w                                           # (..., in)
        dw = dy2.T @ a2                                       # (out, in)
        db = None if b is None else dy2.sum(axis=0)           # (out,)
        return da, dw, db

    return _back(device, y, pullback)


def _elementwise(z) -> tuple[np.ndarray, str]:
    _, device = _args.check_arrays({"z": z})
    return _host(device, z)[0], device


@op("z")
def relu(z: np.ndarray):
    """``max(z, 0)``, any shape. pullback -> ``(dz,)`` with the gradient 0 at ``z == 0``."""
    z, device = _elementwise(z)
    y = np.maximum(z, 0)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        return (np.where(z > 0, dy, 0).astype(y.dtype, copy=False),)

    return _back(device, y, pullback)


def _sigmoid(u: np.ndarray) -> np.ndarray:
    # exp only of non-positive numbers: no overflow for any finite u
    e = np.exp(-np.abs(u))
    return np.where(u >= 0, 1 / (1 + e), e / (1 + e)).astype(u.dtype, copy=False)


@op("z")
def sigmoid(z: np.ndarray, tau: float = 1.0):
    """Logistic function with temperature, ``1 / (1 + exp(-z / tau))``, any shape.

    Parameters
    ----------
    z : ndarray (...)
    tau : float
        Positive temperature (ODConv's attentions use tau > 1 early in training).

    Returns
    -------
    y : ndarray (...)
        pullback -> ``(dz,)`` with ``dz = dy * y * (1 - y) / tau``.
    """
    z, device = _elementwise(z)
    tau = _args.positive_float("tau", tau)
    y = _sigmoid(z / z.dtype.type(tau))

    def pullback(dy):
        _args.check_cotangent(dy, y)
        return (dy * (y * (1 - y)) / y.dtype.type(tau),)

    return _back(device, y, pullback)


@op("z")
def softmax(z: np.ndarray, tau: float = 1.0, axis: int = -1):
    """Softmax with temperature, ``softmax(z / tau)`` along `axis`.

    Parameters
    ----------
    z : ndarray (...), at least 1-D
    tau : float
        Positive temperature (DynamicConv anneals it from 30 to 1).
    axis : int

    Returns
    -------
    y : ndarray (...)
        Sums to 1 along `axis`. pullback -> ``(dz,)`` with
        ``dz = y * (dy - sum(dy * y, axis)) / tau``.
    """
    z, device = _elementwise(z)
    if z.ndim < 1:
        raise ValueError("z must be at least 1-D for softmax, got a 0-D array")
    tau = _args.positive_float("tau", tau)
    ax = _args.axis("axis", axis, z.ndim)
    if z.shape[ax] < 1:
        raise ValueError(f"z must have at least one entry along axis {ax}, got shape {tuple(z.shape)}")
    u = z / z.dtype.type(tau)
    u = u - u.max(axis=ax, keepdims=True)                     # largest exponent is 0
    e = np.exp(u)
    y = e / e.sum(axis=ax, keepdims=True)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        s = (dy * y).sum(axis=ax, keepdims=True)
        return (y * (dy - s) / y.dtype.type(tau),)

    return _back(device, y, pullback)


@op("z")
def hard_sigmoid(z: np.ndarray, scale: float = 3.0):
    """Hard sigmoid ``relu6(z + 3) / scale``, any shape.

    ``scale=3`` (the default) is the DCD code's ``h_sigmoid`` (range [0, 2], 1 at 0);
    ``scale=6`` is the usual ``[0, 1]`` hard sigmoid of MobileNetV3. pullback ->
    ``(dz,)`` with slope ``1/scale`` on the open interval ``(-3, 3)``, 0 elsewhere.
    """
    z, device = _elementwise(z)
    scale = _args.positive_float("scale", scale)
    t = z.dtype.type
    y = np.clip(z + t(3), t(0), t(6)) / t(scale)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        inside = (z > -3) & (z < 3)
        return (np.where(inside, dy / t(scale), 0).astype(y.dtype, copy=False),)

    return _back(device, y, pullback)


@op("z")
def tanh(z: np.ndarray):
    """Hyperbolic tangent, any shape. pullback -> ``(dz,)`` with ``dz = dy * (1 - y**2)``."""
    z, device = _elementwise(z)
    y = np.tanh(z)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        return (dy * (1 - y * y),)

    return _back(device, y, pullback)


def _bn_checks(x, gamma, beta, running_mean, running_var):
    _, device = _args.check_arrays(
        {"x": x, "gamma": gamma, "beta": beta, "running_mean": running_mean, "running_var": running_var},
        optional=("running_mean", "running_var"))
    x, gamma, beta, running_mean, running_var = _host(device, x, gamma, beta, running_mean, running_var)
    if x.ndim not in (2, 4):
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got {x.ndim}-D array of shape {tuple(x.shape)}")
    C = x.shape[1]
    for name, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if a is not None:
            _args.check_shape(name, a, (C,), f"(C,) with x's C={C}")
    return C, device, (x, gamma, beta, running_mean, running_var)


def _bn_axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _per_channel(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


@op("x", "gamma", "beta", "running_mean", "running_var")
def batch_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray | None = None,
               running_var: np.ndarray | None = None, training: bool = True, momentum: float = 0.1,
               eps: float = 1e-5):
    """Batch normalisation over the batch (and spatial) axes, per channel.

    Parameters
    ----------
    x : ndarray (N, C, H, W) or (N, C)
    gamma, beta : ndarray (C,)
        Scale and shift.
    running_mean, running_var : ndarray (C,), optional
        Used (and required) when ``training=False``; ignored by the training forward,
        which normalises with the batch statistics. Never modified: the updated running
        statistics come from :func:`batch_norm_update_stats`.
    training : bool
        Batch statistics (biased variance, as PyTorch) or running statistics.
    momentum : float
        Only validated here; used by :func:`batch_norm_update_stats`.
    eps : float
        Added to the variance.

    Returns
    -------
    y : ndarray, x's shape
        ``gamma * (x - mean) / sqrt(var + eps) + beta``. pullback -> ``(dx, dgamma, dbeta,
        drunning_mean, drunning_var)``; the last two are zeros in training mode (the output
        does not depend on them) and None when they were not given.

    Raises
    ------
    ValueError
        In training mode when there is only one value per channel (``N*H*W == 1``).
    """
    C, device, (x, gamma, beta, running_mean, running_var) = _bn_checks(x, gamma, beta, running_mean,
                                                                         running_var)
    training = _args.flag("training", training)
    _args.unit_interval("momentum", momentum)
    eps = _args.positive_float("eps", eps)
    axes = _bn_axes(x)
    M = x.size // max(C, 1)
    t = x.dtype.type
    if training and M < 2:
        raise ValueError(f"batch_norm in training mode needs more than one value per channel, "
                         f"got x of shape {tuple(x.shape)} (N*H*W = {M}); use a larger batch or eval mode")
    if not training and (running_mean is None or running_var is None):
        missing = "running_mean" if running_mean is None else "running_var"
        raise ValueError(f"batch_norm with training=False needs {missing}, got None")

    if training:
        mean = x.mean(axis=axes)                              # (C,)
        var = x.var(axis=axes)                                # (C,), biased
    else:
        mean, var = running_mean, running_var
    inv = 1 / np.sqrt(var + t(eps))                           # (C,)
    xhat = (x - _per_channel(mean, x)) * _per_channel(inv, x)  # x's shape
    y = xhat * _per_channel(gamma, x) + _per_channel(beta, x)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dbeta = dy.sum(axis=axes)                             # (C,)
        dgamma = (dy * xhat).sum(axis=axes)                   # (C,)
        gi = gamma * inv                                      # (C,)
        drm = drv = None
        if training:
            # the batch statistics depend on x: the usual three-term formula
            dx = _per_channel(gi / M, x) * (M * dy - _per_channel(dbeta, x) - xhat * _per_channel(dgamma, x))
            if running_mean is not None:
                drm = np.zeros_like(running_mean)
            if running_var is not None:
                drv = np.zeros_like(running_var)
        else:
            dx = dy * _per_channel(gi, x)
            drm = -gi * dbeta                                 # (C,)
            drv = -t(0.5) * gamma * inv * inv * dgamma        # (C,): d xhat / d var = -xhat * inv**2 / 2
        return dx.astype(y.dtype, copy=False), dgamma, dbeta, drm, drv

    return _back(device, y, pullback)


def batch_norm_update_stats(x: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray,
                            momentum: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """New running statistics after one training batch (PyTorch's rule); inputs untouched.

    Parameters
    ----------
    x : ndarray (N, C, H, W) or (N, C)
    running_mean, running_var : ndarray (C,)
    momentum : float in [0, 1]

    Returns
    -------
    new_mean, new_var : ndarray (C,)
        ``(1 - momentum) * running + momentum * batch``, with the unbiased batch variance.
    """
    _, device = _args.check_arrays({"x": x, "running_mean": running_mean, "running_var": running_var})
    x, running_mean, running_var = _host(device, x, running_mean, running_var)
    if x.ndim not in (2, 4):
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got {x.ndim}-D array of shape {tuple(x.shape)}")
    C = x.shape[1]
    _args.check_shape("running_mean", running_mean, (C,), f"(C,) with x's C={C}")
    _args.check_shape("running_var", running_var, (C,), f"(C,) with x's C={C}")
    m = x.dtype.type(_args.unit_interval("momentum", momentum))
    M = x.size // max(C, 1)
    if M < 2:
        raise ValueError(f"x must have more than one value per channel to update running statistics, "
                         f"got shape {tuple(x.shape)}")
    axes = _bn_axes(x)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes, ddof=1)
    new_mean, new_var = (1 - m) * running_mean + m * mean, (1 - m) * running_var + m * var
    if device == "cpu":
        return new_mean, new_var
    be = backends.get(device)
    return be.to_device(new_mean), be.to_device(new_var)
