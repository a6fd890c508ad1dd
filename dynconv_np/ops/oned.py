"""The 1-D convolutions on sequences ``(N, C, L)``: ``conv1d`` and ``dynamic_conv1d``.

A 1-D convolution is the 2-D one on ``(N, C, 1, L)`` with a ``(1, k)`` kernel, stride
``(1, s)``, padding ``(0, p)`` and dilation ``(1, d)``: each op checks its arguments as a
1-D user writes them (:func:`dynconv_np._args.conv1d_args`), then runs the 2-D op on views
with ``H = 1`` and reshapes the results back. There is no second copy of any kernel::

    x (N, C, L)            -> (N, C, 1, L)
    w (..., O, Cg, k)      -> (..., O, Cg, 1, k)
    y (N, O, 1, Lo)        -> (N, O, Lo)        and the gradients of x and w likewise
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np

from .. import _args, backends
from .._op import Op, op
from .conv import conv2d
from .mixing import dynamic_conv2d


def _lift(be: ModuleType, a):
    # (..., L) -> (..., 1, L), a view of a contiguous array
    shape = tuple(a.shape)
    return be.contiguous(a).reshape(shape[:-1] + (1, shape[-1]))


def _drop(a):
    # (..., 1, L) -> (..., L)
    shape = tuple(a.shape)
    return a.reshape(shape[:-2] + (shape[-1],))


def _on_2d(op2d: Op, be: ModuleType, args: Sequence, lifted: tuple[int, ...], kwargs: dict):
    """``op2d.vjp`` on `args`, those at the positions `lifted` lifted to ``H = 1``; returns
    ``(y, pullback)`` in 1-D shapes (the gradients of the lifted arrays dropped back)."""
    y, pb = op2d.vjp(*(_lift(be, a) if i in lifted else a for i, a in enumerate(args)), **kwargs)
    y1 = _drop(y)

    def pullback(dy):
        _args.check_cotangent(dy, y1)
        grads = pb(_lift(be, dy))
        return tuple(_drop(d) if i in lifted else d for i, d in enumerate(grads))

    return y1, pullback


@op("x", "w", "bias")
def conv1d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1):
    """1-D convolution (cross-correlation) of sequences, NCL.

    Parameters
    ----------
    x : ndarray (N, C, L)
    w : ndarray (O, C//groups, k)
    bias : ndarray (O,), optional
    stride, dilation : int or (int,)
    padding : int, (int,), "valid" or "same"
    groups : int

    Returns
    -------
    y : ndarray (N, O, Lo)
        ``Lo = (L + 2*p - d*(k-1) - 1)//s + 1``.

    ``conv1d.vjp(...)`` returns ``(y, pullback)``; ``pullback(dy)`` gives
    ``(dx (N, C, L), dw (O, C//groups, k), dbias (O,) or None)``.
    """
    _, device = _args.check_arrays({"x": x, "w": w, "bias": bias}, optional=("bias",))
    groups, geo = _args.conv1d_args(x, w, bias, groups, stride, padding, dilation, w_name="w",
                                    w_layout="(O, C//groups, k)", channels="output and input channel",
                                    bias_layout="(O,)")
    return _on_2d(conv2d, backends.get(device), (x, w, bias), (0, 1), dict(groups=groups, **geo))


@op("x", "W", "pi", "bias")
def dynamic_conv1d(x: np.ndarray, W: np.ndarray, pi: np.ndarray, bias: np.ndarray | None = None,
                   stride=1, padding=0, dilation=1, groups: int = 1):
    """1-D kernel-mixing dynamic convolution (CondConv, DY-CNN and the static mixture on sequences).

    Parameters
    ----------
    x : ndarray (N, C, L)
    W : ndarray (K, O, C//groups, k)
        The K expert kernels.
    pi : ndarray (N, K) or (K,)
        Mixing weights per sample, or one set shared by the batch (taken as given).
    bias : ndarray (K, O), optional
        Expert biases, mixed with the same weights.
    stride, padding, dilation, groups
        As in :func:`conv1d`.

    Returns
    -------
    y : ndarray (N, O, Lo)
        ``y[n] = conv1d(x[n], sum_k pi[n,k] W[k]) + sum_k pi[n,k] bias[k]``.

    ``dynamic_conv1d.vjp(...)`` returns ``(y, pullback)``; ``pullback(dy)`` gives
    ``(dx, dW, dpi, dbias)`` with the shapes of ``x, W, pi, bias`` (dbias None if no bias).
    """
    _, device = _args.check_arrays({"x": x, "W": W, "pi": pi, "bias": bias}, optional=("bias",))
    groups, geo = _args.conv1d_args(x, W, bias, groups, stride, padding, dilation, w_name="W",
                                    w_layout="(K, O, C//groups, k)",
                                    channels="expert, output and input channel", bias_layout="(K, O)")
    return _on_2d(dynamic_conv2d, backends.get(device), (x, W, pi, bias), (0, 1), dict(groups=groups, **geo))
