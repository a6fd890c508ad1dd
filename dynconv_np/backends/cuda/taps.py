"""CUDA tap engine and centre taps: per-pixel filters applied tap by tap, on device arrays
(the contract is :meth:`dynconv_np.backends.interface.KernelAPI.taps_forward`).

One thread per element written, no unfolded input, no atomics:

- forward: the thread of ``out[n, c*M + m, i, j]`` sums its taps in order;
- input gradient, a gather: the thread of ``dx[n, c, h, w]`` visits, in a fixed order,
  every (tap, output pixel, output slot) that read it, found with the index routine of
  col2im (:func:`~dynconv_np.backends._index.window_output`);
- filter gradient: the thread of ``dfilt[n, f, t, i, j]`` sums the filter's channels in order.

Centre taps (dynamic convolution decomposition): output pixel ``(i, j)`` reads its centre
tap ``(kh//2, kw//2)``; distinct output pixels read distinct inputs, so both directions
are one thread per output pixel with single ownership.
"""

from __future__ import annotations

from numba import cuda

from ... import _args
from .array import contiguous, empty
from .index import split, unravel4, window_input, window_output
from .launch import launch, per_element


@cuda.jit(device=True)
def _slot(dout, cm, n, o, i, j):
    # dout[n, o, i, j], or dout[o, n, i, j] when channel-major
    return dout[o, n, i, j] if cm else dout[n, o, i, j]


@per_element
def _forward(e, x, filt, out, cm, M, cdiv, window, zero):
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
            acc += filt[n, f, tap, i, j] * x[n, c, ih, iw]
    out[p0, p1, i, j] = acc


@per_element
def _backward_input(e, filt, dout, dx, cm, M, cdiv, window, zero):
    # Gather: the thread of dx[n, c, h, w] visits every (tap, output pixel, slot m) that
    # read it, in this order; it is that element's only writer.
    n, c, h, w = unravel4(e, dx.shape[1], dx.shape[2], dx.shape[3])
    fbase = (c // cdiv) * M
    acc = zero
    for tap in range(filt.shape[2]):
        i, j = window_output(h, w, tap, window)
        if i >= 0:
            for m in range(M):
                acc += filt[n, fbase + m, tap, i, j] * _slot(dout, cm, n, c * M + m, i, j)
    dx[n, c, h, w] = acc


@per_element
def _backward_filter(e, x, dout, dfilt, cm, M, cdiv, window, zero):
    # The element dfilt[n, f, tap, i, j]: the filter's channels summed in order.
    nf, tap, i, j = unravel4(e, dfilt.shape[2], window[8], window[9])
    n, f = split(nf, dfilt.shape[1])
    grp, m = split(f, M)
    ih, iw = window_input(i, j, tap, window)
    acc = zero
    if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
        for c in range(grp * cdiv, (grp + 1) * cdiv):
            acc += _slot(dout, cm, n, c * M + m, i, j) * x[n, c, ih, iw]
    dfilt[n, f, tap, i, j] = acc


def taps_forward(x, filt, g, M: int, cdiv: int, out=None, channel_major: bool = False):
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
    launch(_forward, g.N * g.C * M * g.P, x, filt, out, int(channel_major), M, cdiv, g.window, x.dtype.type(0))
    return out


def taps_backward_input(filt, dout, g, M: int, cdiv: int, out=None, channel_major: bool = False):
    """The gradient of :func:`taps_forward` with respect to x, dx (N, C, H, W) (a gather),
    from the filters filt (N, F, kh*kw, Ho, Wo) and the cotangent dout (N, C*M, Ho, Wo),
    or (C*M, N, Ho, Wo) if `channel_major`. `out` (N, C, H, W), C-contiguous, when
    given, is overwritten and returned."""
    filt = contiguous(filt)
    dout = contiguous(dout)
    _args.tap_filters(g, M, cdiv, filt)
    dx = empty((g.N, g.C, g.H, g.W), dout.dtype) if out is None else out
    launch(_backward_input, g.N * g.C * g.H * g.W, filt, dout, dx, int(channel_major), M, cdiv, g.window,
           dout.dtype.type(0))
    return dx


def taps_backward_filter(x, dout, g, M: int, cdiv: int, out=None, channel_major: bool = False):
    """The gradient of :func:`taps_forward` with respect to the filters, dfilt (N, F,
    kh*kw, Ho, Wo) with ``F = (C // cdiv) * M``, from x (N, C, H, W) and the cotangent
    dout (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`. `out`, C-contiguous,
    when given, is overwritten and returned."""
    x = contiguous(x)
    dout = contiguous(dout)
    F = _args.tap_filters(g, M, cdiv)
    dfilt = empty((g.N, F, g.taps, g.Ho, g.Wo), x.dtype) if out is None else out
    launch(_backward_filter, g.N * F * g.taps * g.P, x, dout, dfilt, int(channel_major), M, cdiv, g.window,
           x.dtype.type(0))
    return dfilt


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
