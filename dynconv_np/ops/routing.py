"""Routing building blocks: the small ops that compute mixing weights and attentions.

GAP -> linear -> ReLU / BN -> linear -> sigmoid or softmax (with temperature), plus the
DCD code's hard sigmoid and tanh. Each op is ``f(...)`` and ``f.vjp(...)``, written once
against the backend's kernel API (``be.softmax``, ``be.batch_stats``, ``be.gemm``, ...),
so device arrays stay on the device (no host round trip inside an op) and results come
back on the inputs' device.

Numerical care: softmax subtracts the row maximum; sigmoid evaluates ``exp(-|u|)`` only,
so no overflow warning at any finite input; batch normalisation refuses a batch with
one value per channel (its variance is 0 and the output would be meaningless); the
per-channel statistics are two-pass (mean, then the squared deviations), as NumPy's.
"""

from __future__ import annotations

import numpy as np

from .. import _args, backends
from .._op import op


def _size(a) -> int:
    return int(np.prod(a.shape))


def _one_input(y, grad):
    """``(y, pullback)`` of a one-input op whose pullback is ``(grad(dy),)``."""

    def pullback(dy):
        _args.check_cotangent(dy, y)
        return (grad(dy),)

    return y, pullback


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
    be = backends.get(device)
    H, W = x.shape[2], x.shape[3]
    y = be.mean_pool(x)                                       # (N, C)

    return _one_input(y, lambda dy: be.mean_pool_backward(dy, H, W))   # dx (N, C, H, W)


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
    shape = tuple(a.shape)
    if len(shape) < 1:
        raise ValueError("a must be at least 1-D (..., in), got a 0-D array")
    _args.check_ndim("w", w, 2, "(out, in)")
    n_out, n_in = w.shape
    if shape[-1] != n_in:
        raise ValueError(f"w has {n_in} input features (shape {tuple(w.shape)}), "
                         f"but a has {shape[-1]} (shape {shape})")
    if b is not None:
        _args.check_shape("b", b, (n_out,), "(out,)")
    be = backends.get(device)
    rows = int(np.prod(shape[:-1]))
    y = be.gemm(a, w, tb=True)                                # (..., out)
    if b is not None:
        be.add_channel_bias(y.reshape(rows, n_out, 1), b)     # y is ours: in place

    def pullback(dy):
        _args.check_cotangent(dy, y)
        da = be.gemm(dy, w)                                   # (..., in)
        dy2 = be.contiguous(dy).reshape(rows, n_out)          # (M, out)
        dw = be.gemm(dy2, be.contiguous(a).reshape(rows, n_in), ta=True)   # (out, in)
        db = None if b is None else be.channel_sum(dy2.reshape(rows, n_out, 1))   # (out,)
        return da, dw, db

    return y, pullback


def _backend(z):
    _, device = _args.check_arrays({"z": z})
    return backends.get(device)


@op("z")
def relu(z: np.ndarray):
    """``max(z, 0)``, any shape. pullback -> ``(dz,)`` with the gradient 0 at ``z == 0``."""
    be = _backend(z)
    y = be.relu(z)

    return _one_input(y, lambda dy: be.relu_backward(z, dy))


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
    be = _backend(z)
    tau = _args.positive_float("tau", tau)
    y = be.sigmoid(z, tau)

    return _one_input(y, lambda dy: be.sigmoid_backward(y, dy, tau))


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
    be = _backend(z)
    ndim = len(z.shape)
    if ndim < 1:
        raise ValueError("z must be at least 1-D for softmax, got a 0-D array")
    tau = _args.positive_float("tau", tau)
    ax = _args.axis("axis", axis, ndim)
    if z.shape[ax] < 1:
        raise ValueError(f"z must have at least one entry along axis {ax}, got shape {tuple(z.shape)}")
    y = be.softmax(z, tau, ax)

    return _one_input(y, lambda dy: be.softmax_backward(y, dy, tau, ax))


@op("z")
def hard_sigmoid(z: np.ndarray, scale: float = 3.0):
    """Hard sigmoid ``relu6(z + 3) / scale``, any shape.

    ``scale=3`` (the default) is the DCD code's ``h_sigmoid`` (range [0, 2], 1 at 0);
    ``scale=6`` is the usual ``[0, 1]`` hard sigmoid of MobileNetV3. pullback ->
    ``(dz,)`` with slope ``1/scale`` on the open interval ``(-3, 3)``, 0 elsewhere.
    """
    be = _backend(z)
    scale = _args.positive_float("scale", scale)
    y = be.hard_sigmoid(z, scale)

    return _one_input(y, lambda dy: be.hard_sigmoid_backward(z, dy, scale))


@op("z")
def tanh(z: np.ndarray):
    """Hyperbolic tangent, any shape. pullback -> ``(dz,)`` with ``dz = dy * (1 - y**2)``."""
    be = _backend(z)
    y = be.tanh(z)

    return _one_input(y, lambda dy: be.tanh_backward(y, dy))


def _bn_checks(x, gamma, beta, running_mean, running_var):
    dtype, device = _args.check_arrays(
        {"x": x, "gamma": gamma, "beta": beta, "running_mean": running_mean, "running_var": running_var},
        optional=("running_mean", "running_var"))
    ndim = len(x.shape)
    if ndim not in (2, 4):
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got {ndim}-D array of shape {tuple(x.shape)}")
    C = x.shape[1]
    for name, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if a is not None:
            _args.check_shape(name, a, (C,), f"(C,) with x's C={C}")
    return C, dtype, backends.get(device)


def _two_values_per_channel(x, C: int) -> None:
    # batch statistics need more than one value per channel
    M = _size(x) // max(C, 1)
    if M < 2:
        raise ValueError(f"batch_norm in training mode needs more than one value per channel, "
                         f"got x of shape {tuple(x.shape)} (N*H*W = {M}); use a larger batch or eval mode")


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
    C, dtype, be = _bn_checks(x, gamma, beta, running_mean, running_var)
    training = _args.flag("training", training)
    _args.unit_interval("momentum", momentum)
    eps = _args.positive_float("eps", eps)
    if training:
        _two_values_per_channel(x, C)
    if not training and (running_mean is None or running_var is None):
        missing = "running_mean" if running_mean is None else "running_var"
        raise ValueError(f"batch_norm with training=False needs {missing}, got None")

    if training:
        mean, var = be.batch_stats(x)                         # (C,), biased variance
    else:
        mean, var = running_mean, running_var
    return _normalised(be, x, gamma, beta, mean, var, training, eps, running_mean is not None,
                       running_var is not None)


def _normalised(be, x, gamma, beta, mean, var, training, eps, has_rm, has_rv):
    # batch_norm's (y, pullback) once its statistics are known: mean, var (C,)
    C, dtype = x.shape[1], x.dtype
    y, xhat, inv = be.batch_norm_forward(x, mean, var, gamma, beta, eps)   # x's shape, (C,)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dx, dgamma, dbeta, drm, drv = be.batch_norm_backward(dy, xhat, gamma, inv, training)
        if training:
            # the output does not depend on the running statistics
            drm = be.zeros((C,), dtype) if has_rm else None
            drv = be.zeros((C,), dtype) if has_rv else None
        return dx, dgamma, dbeta, drm, drv

    return y, pullback


def batch_norm_training(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                        running_var: np.ndarray, momentum: float = 0.1, eps: float = 1e-5):
    """A batch-norm layer's training forward: ``batch_norm.vjp(x, gamma, beta,
    training=True, eps=eps)`` and ``batch_norm_update_stats(x, running_mean, running_var,
    momentum)`` from one pass over x for the statistics (the two computed them apart);
    bitwise the same results.

    Parameters
    ----------
    x : ndarray (N, C, H, W) or (N, C)
    gamma, beta, running_mean, running_var : ndarray (C,)
    momentum : float in [0, 1]
    eps : float

    Returns
    -------
    y : ndarray, x's shape
    pullback : callable
        ``pullback(dy) -> (dx, dgamma, dbeta)``.
    new_mean, new_var : ndarray (C,)
        The updated running statistics (inputs untouched).
    """
    x, gamma, beta, running_mean, running_var = (_args.host_array(a) for a in
                                                 (x, gamma, beta, running_mean, running_var))
    C, _, be = _bn_checks(x, gamma, beta, running_mean, running_var)
    m = _args.unit_interval("momentum", momentum)
    eps = _args.positive_float("eps", eps)
    _two_values_per_channel(x, C)
    mean, (var, unbiased) = be.batch_stats(x, ddof=(0, 1))  # (C,) each
    y, pb = _normalised(be, x, gamma, beta, mean, var, True, eps, False, False)

    def pullback(dy):
        return pb(_args.host_array(dy))[:3]

    return y, pullback, be.running_update(running_mean, mean, m), be.running_update(running_var, unbiased, m)


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
        ``(1 - momentum) * running + momentum * batch``, with the unbiased batch variance,
        on the inputs' device.
    """
    _, device = _args.check_arrays({"x": x, "running_mean": running_mean, "running_var": running_var})
    ndim = len(x.shape)
    if ndim not in (2, 4):
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got {ndim}-D array of shape {tuple(x.shape)}")
    C = x.shape[1]
    _args.check_shape("running_mean", running_mean, (C,), f"(C,) with x's C={C}")
    _args.check_shape("running_var", running_var, (C,), f"(C,) with x's C={C}")
    m = _args.unit_interval("momentum", momentum)
    if _size(x) // max(C, 1) < 2:
        raise ValueError(f"x must have more than one value per channel to update running statistics, "
                         f"got shape {tuple(x.shape)}")
    be = backends.get(device)
    mean, var = be.batch_stats(x, ddof=1)
    return be.running_update(running_mean, mean, m), be.running_update(running_var, var, m)
