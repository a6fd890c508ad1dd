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
    _args.check_ndim("x", x, 4, "(N, C, H, W)")
    _args.check_ndim("w", w, 4, "(O, C//groups, kh, kw)")
    _args.check_nonempty("w", w, (0, 1), "output and input channel")
    O, Cg, kh, kw = w.shape
    groups = _args.check_groups(groups, x.shape[1], O, Cg, "w")
    if bias is not None:
        _args.check_shape("bias", bias, (O,), "(O,)")
    g = _args.geometry(x.shape, kh, kw, stride, padding, dilation)
    be = backends.get(device)

    x_ = be.contiguous(x)
    wt = be.contiguous(w).reshape(O, Cg * kh * kw)          # (O, F)
    y = be.conv_forward(x_, wt, bias, g, groups)            # (N, O, Ho, Wo)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dx, gw, dbt = be.conv_backward(x_, wt, be.contiguous(dy), g, groups)
        return dx, gw.reshape(w.shape), (dbt if bias is not None else None)

    return y, pullback
