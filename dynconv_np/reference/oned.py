"""The 1-D convolutions: twins of ``conv1d`` and ``dynamic_conv1d`` through the 2-D
references, on ``(N, C, 1, L)`` with ``(1, k)`` kernels."""

from __future__ import annotations

import numpy as np

from .conv import conv2d, conv2d_backward, dynamic_conv2d, dynamic_conv2d_backward


def _one(v):
    return v[0] if isinstance(v, (tuple, list)) else v


def _geo2d(stride, padding, dilation):
    pad = padding if isinstance(padding, str) else (0, _one(padding))
    return dict(stride=(1, _one(stride)), padding=pad, dilation=(1, _one(dilation)))


def _up(a):
    return None if a is None else np.asarray(a, dtype=np.float64)[..., None, :]


def _down(a):
    return None if a is None else a[..., 0, :]


def conv1d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference 1-D convolution. x (N, C, L), w (O, C//groups, k) -> (N, O, Lo)."""
    return _down(conv2d(_up(x), _up(w), bias, groups=groups, **_geo2d(stride, padding, dilation)))


def conv1d_backward(dy, x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference gradients ``(dx, dw, dbias)`` of :func:`conv1d`."""
    dx, dw, db = conv2d_backward(_up(dy), _up(x), _up(w), bias, groups=groups,
                                 **_geo2d(stride, padding, dilation))
    return _down(dx), _down(dw), db


def dynamic_conv1d(x, W, pi, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference 1-D kernel mixing. x (N, C, L), W (K, O, C//groups, k) -> (N, O, Lo)."""
    return _down(dynamic_conv2d(_up(x), _up(W), pi, bias, groups=groups, **_geo2d(stride, padding, dilation)))


def dynamic_conv1d_backward(dy, x, W, pi, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference gradients ``(dx, dW, dpi, dbias)`` of :func:`dynamic_conv1d`."""
    dx, dW, dpi, db = dynamic_conv2d_backward(_up(dy), _up(x), _up(W), pi, bias, groups=groups,
                                              **_geo2d(stride, padding, dilation))
    return _down(dx), _down(dW), dpi, db
