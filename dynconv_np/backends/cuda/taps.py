"""CUDA tap engine and centre taps: per-pixel filters applied tap by tap, on device arrays
(the contract is :meth:`dynconv_np.backends.interface.KernelAPI.taps_forward`).

One thread per element written, no unfolded input, no atomics:

- forward: the thread of ``out[n, c*M + m, i, j]`` sums its taps in order;
- input gradient, a gather: the thread of ``dx[n, c, h, w]`` visits, in a fixed order,
  every (tap, output pixel, output slot) that read it, found with the index routine of
  col2im (:func:`~dynconv_np.backends._index.window_output`);
- filter gradient: the thread of ``dfilt[n, f, t, i, j]`` sums the filter's channels in order;
- tap-scale gradient (DDF's channel filter): the thread of ``dscale[n, c, t]`` sums over
  the output pixels in order.

Centre taps (dynamic convolution decomposition): output pixel ``(i, j)`` reads its centre
tap ``(kh//2, kw//2)``; distinct output pixels read distinct inputs, so both directions
are one thread per output pixel with single ownership.
"""

from __future__ import annotations

from numba import cuda

from ... import _args
from .array import contiguous, empty
from .index import split, unravel3, unravel4, window_input, window_output
from .launch import launch, per_element


@cuda.jit(device=True)
def _slot(dout, cm, n, o, i, j):
    # dout[n, o, i, j], or dout[o, n, i, j] when channel-major
    return dout[o, n, i, j] if cm else dout[n, o, i, j]


@cuda.jit(device=True)
def _tap_scale(scale, scaled, one, n, c, tap):
    # The tap scale of channel c (1 without a scale: a*1 is exactly a, the plain product's bits)
    return scale[n, c, tap] if scaled else one


@per_element
def _forward(e, x, filt, scale, scaled, one, out, cm, M, cdiv, window, zero):
    # The output element (n, o = c*M + m, i, j), taps summed in order; threads follow
    # out's memory order, (o, n) when channel-major.
    p0, p1, i, j = unravel4(e, out.shape[1], window[8], window[9])
    n, o = (p1, p0) if cm else (p0, p1)
    c, m = split(o, M)
    f = (c // cdiv) * M + m
    acc = zero
    for tap in range(filt.shape[2]):
        ih, iw = window_input(i, j, tap, window)
        if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
            acc += filt[n, f, tap, i, j] * _tap_scale(scale, scaled, one, n, c, tap) * x[n, c, ih, iw]
    out[p0, p1, i, j] = acc


@per_element
def _backward_input(e, filt, dout, scale, scaled, one, dx, cm, M, cdiv, window, zero):
    # Gather: the thread of dx[n, c, h, w] visits every (tap, output pixel, slot m) that
    # read it, in this order; it is that element's only writer.
    n, c, h, w = unravel4(e, dx.shape[1], dx.shape[2], dx.shape[3])
    fbase = (c // cdiv) * M
    acc = zero
    for tap in range(filt.shape[2]):
        i, j = window_output(h, w, tap, window)
        if i >= 0:
            s = _tap_scale(scale, scaled, one, n, c, tap)
            for m in range(M):
                acc += filt[n, fbase + m, tap, i, j] * s * _slot(dout, cm, n, c * M + m, i, j)
    dx[n, c, h, w] = acc


@per_element
def _backward_filter(e, x, dout, scale, scaled, one, dfilt, cm, M, cdiv, window, zero):
    # The element dfilt[n, f, tap, i, j]: the filter's channels summed in order.
    nf, tap, i, j = unravel4(e, dfilt.shape[2], window[8], window[9])
    n, f = split(nf, dfilt.shape[1])
    grp, m = split(f, M)
    ih, iw = window_input(i, j, tap, window)
    acc = zero
    if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
        for c in range(grp * cdiv, (grp + 1) * cdiv):
            acc += _slot(dout, cm, n, c * M + m, i, j) * _tap_scale(scale, scaled, one, n, c, tap) * x[n, c, ih, iw]
    dfilt[n, f, tap, i, j] = acc


@per_element
def _backward_scale(e, x, filt, dout, dscale, cm, M, cdiv, window, zero):
    # The element dscale[n, c, tap]: the products summed over slots and output pixels in order.
    n, c, tap = unravel3(e, dscale.shape[1], dscale.shape[2])
    acc = zero
    for m in range(M):
        f = (c // cdiv) * M + m
        for i in range(window[8]):
            for j in range(window[9]):
                ih, iw = window_input(i, j, tap, window)
                if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
                    acc += _slot(dout, cm, n, c * M + m, i, j) * filt[n, f, tap, i, j] * x[n, c, ih, iw]
    dscale[n, c, tap] = acc


def _scale_args(scale, like, g):
    """``(scale, scaled, one)`` as the kernels take them. Without a scale, a (1, 1, 1)
    view of `like` stands in (the kernels do not read it)."""
    one = like.dtype.type(1)
    if scale is None:
        return like.reshape(like.size)[:1].reshape(1, 1, 1), 0, one
    scale = contiguous(scale)
    _args.tap_scale(g, scale)
    return scale, 1, one


def taps_forward(x, filt, g, M: int, cdiv: int, out=None, channel_major: bool = False, scale=None):
    """Apply per-pixel filters tap by tap, on the device.

    Parameters
    ----------
    x : device array (N, C, H, W)
    filt : device array (N, F, kh*kw, Ho, Wo), ``F = (C // cdiv) * M``
    g : Geometry
    M, cdiv : int
        Outputs per input channel; input channels per filter group.
    out : device array, optional
        C-contiguous destination of the result's shape (overwritten).
    channel_major : bool
        Lay the result out as ``(C*M, N, Ho, Wo)``.
    scale : device array (N, C, kh*kw), optional
        Per-sample, per-channel tap scale multiplying the filters.

    Returns
    -------
    out : device array (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`
    """
    x = contiguous(x)
    filt = contiguous(filt)
    _args.tap_filters(g, M, cdiv, filt)
    if out is None:
        shape = (g.C * M, g.N) if channel_major else (g.N, g.C * M)
        out = empty(shape + (g.Ho, g.Wo), x.dtype)
    launch(_forward, g.N * g.C * M * g.P, x, filt, *_scale_args(scale, filt, g), out, int(channel_major), M, cdiv,
           g.window, x.dtype.type(0))
    return out


def taps_backward_input(filt, dout, g, M: int, cdiv: int, out=None, channel_major: bool = False, scale=None):
    """The gradient of :func:`taps_forward` with respect to x, dx (N, C, H, W) (a gather),
    from the filters filt (N, F, kh*kw, Ho, Wo), the cotangent dout (N, C*M, Ho, Wo), or
    (C*M, N, Ho, Wo) if `channel_major`, and the forward's `scale` (N, C, kh*kw) if it
    had one. `out` (N, C, H, W), C-contiguous, when given, is overwritten and returned."""
    filt = contiguous(filt)
    dout = contiguous(dout)
    _args.tap_filters(g, M, cdiv, filt)
    dx = empty((g.N, g.C, g.H, g.W), dout.dtype) if out is None else out
    launch(_backward_input, g.N * g.C * g.H * g.W, filt, dout, *_scale_args(scale, filt, g), dx,
           int(channel_major), M, cdiv, g.window, dout.dtype.type(0))
    return dx


def taps_backward_filter(x, dout, g, M: int, cdiv: int, out=None, channel_major: bool = False, scale=None):
    """The gradient of :func:`taps_forward` with respect to the filters, dfilt (N, F,
    kh*kw, Ho, Wo) with ``F = (C // cdiv) * M``, from x (N, C, H, W), the cotangent dout
    (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`, and the forward's `scale`
    (N, C, kh*kw) if it had one. `out`, C-contiguous, when given, is overwritten and
    returned."""
    x = contiguous(x)
    dout = contiguous(dout)
    F = _args.tap_filters(g, M, cdiv)
    dfilt = empty((g.N, F, g.taps, g.Ho, g.Wo), x.dtype) if out is None else out
    launch(_backward_filter, g.N * F * g.taps * g.P, x, dout, *_scale_args(scale, x, g), dfilt,
           int(channel_major), M, cdiv, g.window, x.dtype.type(0))
    return dfilt


def taps_backward_scale(x, filt, dout, g, M: int, cdiv: int, out=None, channel_major: bool = False):
    """The gradient of :func:`taps_forward` with respect to its `scale`, dscale (N, C,
    kh*kw), from x (N, C, H, W), the filters filt (N, F, kh*kw, Ho, Wo) and the cotangent
    dout (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`: one thread per element,
    summing over the output pixels in order. `out`, C-contiguous, when given, is
    overwritten and returned."""
    x = contiguous(x)
    filt = contiguous(filt)
    dout = contiguous(dout)
    _args.tap_filters(g, M, cdiv, filt)
    dscale = empty((g.N, g.C, g.taps), x.dtype) if out is None else out
    launch(_backward_scale, g.N * g.C * g.taps, x, filt, dout, dscale, int(channel_major), M, cdiv, g.window,
           x.dtype.type(0))
    return dscale


# ----------------------------------------------------------------------------- centre taps
@cuda.jit(device=True)
def _centre(i, j, window):
    # the input position of output pixel (i, j)'s centre tap
    kh, kw = window[0], window[1]
    return window_input(i, j, (kh // 2) * kw + kw // 2, window)


@per_element
def _centre_taps(e, x, xs, window):
    n, c, i, j = unravel4(e, xs.shape[1], xs.shape[2], xs.shape[3])
    ih, iw = _centre(i, j, window)
    if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
        xs[n, c, i, j] = x[n, c, ih, iw]
    else:
        xs[n, c, i, j] = 0


@per_element
def _add_centre_taps(e, dx, dxs, window):
    n, c, i, j = unravel4(e, dxs.shape[1], dxs.shape[2], dxs.shape[3])
    ih, iw = _centre(i, j, window)
    if 0 <= ih < dx.shape[2] and 0 <= iw < dx.shape[3]:
        dx[n, c, ih, iw] += dxs[n, c, i, j]


def centre_taps(x, g):
    """xs (N, C, Ho, Wo): x (N, C, H, W) at every output pixel's centre tap, zero in the padding."""
    x = contiguous(x)
    xs = empty((g.N, g.C, g.Ho, g.Wo), x.dtype)
    launch(_centre_taps, g.N * g.C * g.P, x, xs, g.window)
    return xs


def add_centre_taps(dx, dxs, g):
    """``dx (N, C, H, W) += dxs (N, C, Ho, Wo)`` at the centre-tap positions, in place
    (dx a C-contiguous device array the caller owns); returns `dx`."""
    launch(_add_centre_taps, g.N * g.C * g.P, dx, contiguous(dxs), g.window)
    return dx
