"""ODConv: the naive twin of ``odconv2d``, sample by sample with the input scaled and each
sample's kernel built explicitly."""

from __future__ import annotations

import numpy as np

from .conv import _f64, conv2d, conv2d_backward


def odconv_kernels(W, a_w, a_s):
    """Explicit per-sample kernels ``(N, O, C//groups, kh, kw)``:
    ``sum_k a_w[n, k] * (a_s[n] * W[k])``, looping over samples and experts."""
    W, a_w, a_s = _f64(W, a_w, a_s)
    Wn = np.zeros((a_w.shape[0],) + W.shape[1:])
    for n in range(a_w.shape[0]):
        for k in range(W.shape[0]):
            Wn[n] += a_w[n, k] * (a_s[n] * W[k])
    return Wn


def odconv2d(x, W, a_w, a_s, a_c, a_f, stride=1, padding=0, dilation=1, groups=1):
    """Reference ODConv: ``a_f[n] * conv2d(a_c[n] * x[n], W_n)``, one explicit conv per sample."""
    x, a_c, a_f = _f64(x, a_c, a_f)
    Wn = odconv_kernels(W, a_w, a_s)
    ys = []
    for n in range(x.shape[0]):
        xs = a_c[n][:, None, None] * x[n]
        z = conv2d(xs[None], Wn[n], None, stride, padding, dilation, groups)[0]
        ys.append(a_f[n][:, None, None] * z)
    return np.stack(ys)


def odconv2d_backward(dy, x, W, a_w, a_s, a_c, a_f, stride=1, padding=0, dilation=1, groups=1):
    """Reference gradients ``(dx, dW, da_w, da_s, da_c, da_f)`` of :func:`odconv2d`.

    Per sample: the output scale's gradient from the unscaled conv, then the explicit
    conv's gradients (input ``xs = a_c x``, kernel ``W_n``), then the chain rule of the
    input scale and of the kernel construction.
    """
    dy, x, W, a_w, a_s, a_c, a_f = _f64(dy, x, W, a_w, a_s, a_c, a_f)
    Wn = odconv_kernels(W, a_w, a_s)
    dx, dW, da_w, da_s, da_c, da_f = (np.zeros_like(a) for a in (x, W, a_w, a_s, a_c, a_f))
    for n in range(x.shape[0]):
        xs = a_c[n][:, None, None] * x[n]
        z = conv2d(xs[None], Wn[n], None, stride, padding, dilation, groups)[0]
        da_f[n] = np.sum(dy[n] * z, axis=(1, 2))
        dz = a_f[n][:, None, None] * dy[n]
        dxs, Gn, _ = conv2d_backward(dz[None], xs[None], Wn[n], None, stride, padding, dilation, groups)
        dx[n] = a_c[n][:, None, None] * dxs[0]
        da_c[n] = np.sum(dxs[0] * x[n], axis=(1, 2))
        for k in range(W.shape[0]):
            dW[k] += a_w[n, k] * a_s[n] * Gn
            da_w[n, k] = np.sum(Gn * a_s[n] * W[k])
            da_s[n] += a_w[n, k] * np.sum(Gn * W[k], axis=(0, 1))
    return dx, dW, da_w, da_s, da_c, da_f
