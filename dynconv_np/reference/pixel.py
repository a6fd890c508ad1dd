"""Per-pixel depthwise ops: Involution, DDF, the 1-D involution, and the layers' branch helpers.

Each op builds its per-channel, per-pixel filters ``F (N, C, kh*kw, Ho, Wo)`` explicitly
(the memory the fast ops avoid) and applies them with one generic loop over the taps,
:func:`per_pixel_conv2d`; its backward gives ``(dx, dF)``, and each op's gradients
follow from ``dF`` by the chain rule of its own filter construction.
"""

from __future__ import annotations

import numpy as np

from .. import _args
from .conv import _f64, pad_input, tap_slice, unpad_input

__all__ = ["per_pixel_conv2d", "per_pixel_conv2d_backward", "involution2d", "involution2d_backward",
           "ddf_filters", "ddf_conv2d", "ddf_conv2d_backward", "involution1d", "involution1d_backward",
           "centre_pool", "centre_pool_backward", "filter_norm", "filter_norm_backward"]


def _geom(x, taps, stride, padding, dilation, kernel_size):
    kh, kw = _args.per_pixel_window("F", taps, kernel_size)
    return _args.geometry(x.shape, kh, kw, stride, padding, dilation)


# ----------------------------------------------------------------------------- the generic loop
def _taps(g):
    """``(t, (rows, cols))`` for every tap ``t = u*kw + v``: the padded input it reads at every output pixel."""
    return [(u * g.kw + v, tap_slice(g, u, v)) for u in range(g.kh) for v in range(g.kw)]


def per_pixel_conv2d(x, F, stride=1, padding=0, dilation=1, kernel_size=None):
    """``y[n,c,i,j] = sum_t F[n,c,t,i,j] * xpad[n, c, tap t of (i, j)]``: x (N, C, H, W),
    F (N, C, kh*kw, Ho, Wo) -> (N, C, Ho, Wo), tap by tap."""
    x, F = _f64(x, F)
    g = _geom(x, F.shape[2], stride, padding, dilation, kernel_size)
    xp = pad_input(x, g)
    y = np.zeros((x.shape[0], x.shape[1], g.Ho, g.Wo))
    for t, window in _taps(g):
        y += F[:, :, t] * xp[(slice(None), slice(None), *window)]
    return y


def per_pixel_conv2d_backward(dy, x, F, stride=1, padding=0, dilation=1, kernel_size=None):
    """Reference ``(dx, dF)`` of :func:`per_pixel_conv2d`."""
    dy, x, F = _f64(dy, x, F)
    g = _geom(x, F.shape[2], stride, padding, dilation, kernel_size)
    xp = pad_input(x, g)
    dxp, dF = np.zeros_like(xp), np.zeros_like(F)
    for t, window in _taps(g):
        at = (slice(None), slice(None), *window)
        dxp[at] += F[:, :, t] * dy
        dF[:, :, t] = dy * xp[at]
    return unpad_input(dxp, g), dF


# ----------------------------------------------------------------------------- Involution
def involution2d(x, kernel, groups, stride=1, padding=0, dilation=1, kernel_size=None):
    """Reference involution: channel c's filter is its group's kernel."""
    x, kernel = _f64(x, kernel)
    F = np.repeat(kernel, x.shape[1] // groups, axis=1)
    return per_pixel_conv2d(x, F, stride, padding, dilation, kernel_size)


def involution2d_backward(dy, x, kernel, groups, stride=1, padding=0, dilation=1, kernel_size=None):
    """Reference ``(dx, dkernel)``: dkernel sums dF over the channels of each group."""
    x, kernel = _f64(x, kernel)
    N, G, T, Ho, Wo = kernel.shape
    F = np.repeat(kernel, x.shape[1] // G, axis=1)
    dx, dF = per_pixel_conv2d_backward(dy, x, F, stride, padding, dilation, kernel_size)
    return dx, dF.reshape(N, G, -1, T, Ho, Wo).sum(axis=2)


def _seq(x, kernel, stride, padding, dilation):
    """The (N, C, 1, L) / (N, G, k, 1, Lo) views and 2-D settings of a 1-D involution."""
    x, kernel = _f64(x, kernel)
    N, G, k, Lo = kernel.shape
    pad = padding if isinstance(padding, str) else (0, padding)
    return (x[:, :, None], kernel[:, :, :, None]), dict(stride=(1, stride), padding=pad,
                                                        dilation=(1, dilation), kernel_size=(1, k))


def involution1d(x, kernel, groups, stride=1, padding=0, dilation=1):
    """Reference 1-D involution, x (N, C, L), kernel (N, groups, k, Lo) -> (N, C, Lo)."""
    (x4, k5), kw = _seq(x, kernel, stride, padding, dilation)
    return involution2d(x4, k5, groups, **kw)[:, :, 0]


def involution1d_backward(dy, x, kernel, groups, stride=1, padding=0, dilation=1):
    """Reference ``(dx, dkernel)`` of :func:`involution1d`."""
    (x4, k5), kw = _seq(x, kernel, stride, padding, dilation)
    dx, dk = involution2d_backward(np.asarray(dy, dtype=np.float64)[:, :, None], x4, k5, groups, **kw)
    return dx[:, :, 0], dk[:, :, :, 0]


# ----------------------------------------------------------------------------- DDF
def ddf_filters(spatial, channel, combine="mul"):
    """The per-pixel filters ``F (N, C, T, Ho, Wo)``: ``spatial[n,t,i,j] * channel[n,c,t]`` (or ``+``)."""
    spatial, channel = _f64(spatial, channel)
    s, c = spatial[:, None], channel[:, :, :, None, None]
    return s * c if combine == "mul" else s + c


def ddf_conv2d(x, spatial, channel, stride=1, padding=0, dilation=1, combine="mul", kernel_size=None):
    """Reference DDF with the materialised per-pixel filters."""
    return per_pixel_conv2d(x, ddf_filters(spatial, channel, combine), stride, padding, dilation, kernel_size)


def ddf_conv2d_backward(dy, x, spatial, channel, stride=1, padding=0, dilation=1, combine="mul",
                        kernel_size=None):
    """Reference ``(dx, dspatial, dchannel)`` through the gradient of the materialised filters."""
    spatial, channel = _f64(spatial, channel)
    dx, dF = per_pixel_conv2d_backward(dy, x, ddf_filters(spatial, channel, combine), stride, padding,
                                       dilation, kernel_size)
    if combine == "mul":
        return dx, (dF * channel[:, :, :, None, None]).sum(axis=1), (dF * spatial[:, None]).sum(axis=(3, 4))
    return dx, dF.sum(axis=1), dF.sum(axis=(3, 4))


# ----------------------------------------------------------------------------- branch helpers
def _pool_blocks(x_shape, kernel_size, stride, padding, dilation, size):
    """``(g, ah, aw, corner)``: the op's window and, per output pixel, its block's top-left entry."""
    kh, kw = _args.kernel_pair("kernel_size", kernel_size)
    ah, aw = _args.pair("size", size, 1)
    g = _args.geometry(x_shape, kh, kw, stride, padding, dilation)

    def corner(i, j):
        return i * g.sh - g.ph + g.dh * (kh // 2), j * g.sw - g.pw + g.dw * (kw // 2)

    return g, ah, aw, corner


def _block(g, ah, aw, r0, c0):
    """The rows and columns of the block at ``(r0, c0)`` that lie inside x."""
    return range(max(r0, 0), min(r0 + ah, g.H)), range(max(c0, 0), min(c0 + aw, g.W))


def centre_pool(x, kernel_size, stride=1, padding=0, dilation=1, size=1):
    """Reference: the mean of the size block at each output pixel's centre tap (outside x: zero)."""
    (x,) = _f64(x)
    g, ah, aw, corner = _pool_blocks(x.shape, kernel_size, stride, padding, dilation, size)
    p = np.zeros((g.N, g.C, g.Ho, g.Wo))
    for i in range(g.Ho):
        for j in range(g.Wo):
            rows, cols = _block(g, ah, aw, *corner(i, j))
            for r in rows:
                for c in cols:
                    p[:, :, i, j] += x[:, :, r, c]
    return p / (ah * aw)


def centre_pool_backward(dp, x, kernel_size, stride=1, padding=0, dilation=1, size=1):
    """Reference ``(dx,)`` of :func:`centre_pool`."""
    (dp,) = _f64(dp)
    g, ah, aw, corner = _pool_blocks(x.shape, kernel_size, stride, padding, dilation, size)
    dx = np.zeros(x.shape)
    for i in range(g.Ho):
        for j in range(g.Wo):
            rows, cols = _block(g, ah, aw, *corner(i, j))
            for r in rows:
                for c in cols:
                    dx[:, :, r, c] += dp[:, :, i, j] / (ah * aw)
    return (dx,)


def filter_norm(z, gain, eps=1e-10):
    """Reference ``gain[a % G] * (z - mean) / (std + eps)`` over axis 1 of z (A, T, B), unbiased std."""
    z, gain = _f64(z, gain)
    c = z - z.mean(axis=1, keepdims=True)
    std = z.std(axis=1, ddof=1, keepdims=True)
    return c / (std + eps) * np.tile(gain, (z.shape[0] // gain.shape[0], 1))[:, :, None]


def filter_norm_backward(dy, z, gain, eps=1e-10):
    """Reference ``(dz, dgain)`` of :func:`filter_norm`, one filter at a time through its
    explicit T x T Jacobian ``d yhat_k / d z_m = inv (delta_km - 1/T) - inv^2 c_k c_m / ((T-1) std)``."""
    dy, z, gain = _f64(dy, z, gain)
    A, T, B = z.shape
    G = gain.shape[0]
    dz = np.zeros_like(z)
    dgain = np.zeros_like(gain)
    for a in range(A):
        for b in range(B):
            c = z[a, :, b] - z[a, :, b].mean()
            std = np.sqrt(c @ c / (T - 1))
            inv = 1 / (std + eps)
            J = inv * (np.eye(T) - 1 / T)
            if std > 0:
                J -= inv**2 * np.outer(c, c) / ((T - 1) * std)
            dz[a, :, b] = J.T @ (gain[a % G] * dy[a, :, b])
            dgain[a % G] += dy[a, :, b] * c * inv
    return dz, dgain
