"""Static convolution (cross-correlation, as in every DL framework)."""

from __future__ import annotations

import numpy as np

from .. import _args, backends
from .._op import op


@op("x", "w", "bias")
def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride=1,
           padding=0, dilation=1, groups: int = 1):
    """2-D convolution, NCHW.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    w : ndarray (O, C//groups, kh, kw)
    bias : ndarray (O,), optional
    stride, dilation : int or (int, int)
    padding : int, (int, int), "valid" or "same"
    groups : int

    Returns
    -------
    y : ndarray (N, O, Ho, Wo)

    ``conv2d.vjp(...)`` returns ``(y, pullback)``; ``pullback(dy)`` gives
    ``(dx (N, C, H, W), dw (O, C//groups, kh, kw), dbias (O,) or None)``.
    """
    _, device = _args.check_arrays({"x": x, "w": w, "bias": bias}, optional=("bias",))
    groups, g = _args.conv_args(x, w, bias, groups, stride, padding, dilation, w_name="w",
                                w_layout="(O, C//groups, kh, kw)", channels="output and input channel",
                                bias_layout="(O,)")
    O, F = w.shape[0], g.C // groups * g.taps
    be = backends.get(device)

    x_ = be.contiguous(x)
    wt = be.contiguous(w).reshape(O, F)                     # (O, F)
    saved = {}                                              # what the backward reuses
    y = be.conv_forward(x_, wt, bias, g, groups, saved)     # (N, O, Ho, Wo)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dx, gw, dbt = be.conv_backward(x_, wt, be.contiguous(dy), g, groups, saved=saved)
        return dx, gw.reshape(w.shape), (dbt if bias is not None else None)

    return y, pullback
