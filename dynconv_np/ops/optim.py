"""Optimiser updates: one SGD or Adam step of a parameter array, in place.

Not differentiable: plain validated functions over the backends' fused updates
(``be.sgd_step``, ``be.adam_step``), on the parameter's device. PyTorch's rules, with
L2 weight decay added to the gradient.
"""

from __future__ import annotations

import numpy as np

from .. import _args, backends


def _state(p, grad, **state) -> str:
    """Check `grad` and the optimiser state (None before the first step) against `p`; its device."""
    _, device = _args.check_arrays({"p": p, "grad": grad, **state}, optional=tuple(state))
    for name, a in {"grad": grad, **state}.items():
        if a is not None:
            _args.check_shape(name, a, tuple(p.shape), "(p's shape)")
    return device


def sgd_update(p: np.ndarray, grad: np.ndarray, buf: np.ndarray | None = None, lr: float = 0.01,
               momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
    """One SGD step of `p`, in place.

    ``g = grad + weight_decay * p``; ``buf = momentum * buf + g`` (``buf = g`` at the first
    step); ``p -= lr * (g + momentum * buf if nesterov else buf)`` (``lr * g`` without momentum).

    Parameters
    ----------
    p : ndarray (...)
        Updated in place.
    grad : ndarray, p's shape
    buf : ndarray, p's shape, or None
        The momentum buffer of the previous step (None at the first).
    lr : float >= 0 (a schedule may reach 0)
    momentum : float in [0, 1)
    weight_decay : float >= 0
    nesterov : bool

    Returns
    -------
    buf : ndarray (p's shape) or None
        The new momentum buffer (None without momentum), on p's device.
    """
    device = _state(p, grad, buf=buf)
    lr = _args.non_negative_float("lr", lr)
    momentum = _args.below_one("momentum", momentum)
    weight_decay = _args.non_negative_float("weight_decay", weight_decay)
    nesterov = _args.flag("nesterov", nesterov)
    return backends.get(device).sgd_step(p, grad, buf, lr, momentum, weight_decay, nesterov)


def adam_update(p: np.ndarray, grad: np.ndarray, m: np.ndarray | None, v: np.ndarray | None, step: int,
                lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                weight_decay: float = 0.0):
    """One Adam step of `p` (Kingma and Ba, with bias correction), in place.

    ``g = grad + weight_decay * p``; ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``p -= lr / (1 - b1**step) * m / (sqrt(v / (1 - b2**step)) + eps)``.

    Parameters
    ----------
    p : ndarray (...)
        Updated in place.
    grad : ndarray, p's shape
    m, v : ndarray, p's shape, or None
        The moments of the previous step (both None at the first).
    step : int
        This step's number, from 1.
    lr : float >= 0 (a schedule may reach 0)
    betas : (float, float), each in [0, 1)
    eps : float
    weight_decay : float >= 0

    Returns
    -------
    m, v : ndarray (p's shape)
        The new moments, on p's device.
    """
    device = _state(p, grad, m=m, v=v)
    if (m is None) != (v is None):
        raise ValueError("m and v must both be arrays or both be None (before the first step)")
    step = _args.positive_int("step", step)
    lr = _args.non_negative_float("lr", lr)
    if len(betas) != 2:
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    b1, b2 = _args.below_one("betas[0]", betas[0]), _args.below_one("betas[1]", betas[1])
    eps = _args.positive_float("eps", eps)
    weight_decay = _args.non_negative_float("weight_decay", weight_decay)
    c1, c2 = 1 - b1 ** step, 1 - b2 ** step
    return backends.get(device).adam_step(p, grad, m, v, lr / c1, b1, b2, c2, eps, weight_decay)
