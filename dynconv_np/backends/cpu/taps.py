"""CPU tap engine: per-pixel filters applied tap by tap, without an unfolded input
(the contract is :meth:`dynconv_np.backends.interface.KernelAPI.taps_forward`).

Each kernel reads ``x`` at the tap positions directly and keeps no workspace beyond its
inputs and outputs. Work items are rows that one thread alone writes:

- forward: the output rows ``out[n, c*M:(c+1)*M, i, :]``, taps summed in order;
- :func:`taps_backward_input`, a gather: the input row ``dx[n, c, h, :]``, whose thread
  finds the output rows that read it (:func:`~dynconv_np.backends._index.tap_output`);
- :func:`taps_backward_filter`: the row ``dfilt[n, f, :, i, :]``, the filter's channels
  summed inside in order;
- :func:`taps_backward_scale`: the row ``dscale[n, c, :]`` of the optional tap scale (DDF's
  channel filter), a reduction over the output pixels that one thread owns.

So the results are bitwise identical whatever ``NUMBA_NUM_THREADS`` is: no atomics, no
racy scatter. Accumulation is in the inputs' dtype (``float32`` inputs accumulate in
``float32``, as BLAS does).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uintp

from ... import _args
from .index import split, tap_input, tap_output, unravel3, valid_range


# The row helpers index with unsigned integers: Numba then drops its negative-index
# wraparound, and LLVM can vectorise the unit-stride case. Vectorising these
# element-wise loops does not change any element's arithmetic, so results stay bitwise
# identical to the scalar loop. The tap scale ``s`` is 1 without a `scale`: ``a*1`` is
# exactly ``a``, so that path keeps the plain product's bits.
@njit(inline="always")
def _muladd_gather(o, a, s, b, b0, bstep, cnt):
    """``o[k] += a[k] * s * b[b0 + k*bstep]`` for ``k < cnt``."""
    if bstep == 1:
        for k in range(uintp(cnt)):
            o[k] += a[k] * s * b[uintp(b0) + k]
    else:
        for k in range(uintp(cnt)):
            o[k] += a[k] * s * b[uintp(b0) + k * uintp(bstep)]


@njit(inline="always")
def _muladd_scatter(o, o0, ostep, a, s, b, cnt):
    """``o[o0 + k*ostep] += a[k] * s * b[k]`` for ``k < cnt`` (one thread owns ``o``)."""
    if ostep == 1:
        for k in range(uintp(cnt)):
            o[uintp(o0) + k] += a[k] * s * b[k]
    else:
        for k in range(uintp(cnt)):
            o[uintp(o0) + k * uintp(ostep)] += a[k] * s * b[k]


@njit(inline="always")
def _mul3add(o, a, f, b, b0, bstep, cnt):
    """``o[k] += a[k] * f[k] * b[b0 + k*bstep]`` for ``k < cnt``."""
    if bstep == 1:
        for k in range(uintp(cnt)):
            o[k] += a[k] * f[k] * b[uintp(b0) + k]
    else:
        for k in range(uintp(cnt)):
            o[k] += a[k] * f[k] * b[uintp(b0) + k * uintp(bstep)]


@njit(inline="always")
def _tap_cols(i, t, window, H, W):
    # For output row i at tap t: the input row ih, the output columns [jlo, jhi) whose
    # tap reads inside x (empty when row ih is padding), and the input column of jlo.
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = window
    u, v = split(t, kw)
    ih = tap_input(i, sh, ph, u * dh)
    if ih < 0 or ih >= H:
        return 0, 0, 0, 0
    jlo, jhi = valid_range(pw, v * dw, sw, W, Wo)
    return ih, jlo, jhi, tap_input(jlo, sw, pw, v * dw)


@njit(parallel=True, cache=True)
def _taps_forward(x, filt, scale, scaled, one, out, cm, M, cdiv, window):
    N, C, H, W = x.shape
    Ho, sw = window[8], window[3]
    for item in prange(N * C * Ho):
        n, c, i = unravel3(item, C, Ho)
        for m in range(M):
            orow = out[c * M + m, n, i] if cm else out[n, c * M + m, i]
            orow[:] = 0
            f = (c // cdiv) * M + m
            for t in range(filt.shape[2]):
                ih, jlo, jhi, b0 = _tap_cols(i, t, window, H, W)
                if jhi > jlo:
                    s = scale[n, c, t] if scaled else one
                    _muladd_gather(orow[jlo:], filt[n, f, t, i, jlo:], s, x[n, c, ih], b0, sw, jhi - jlo)


@njit(parallel=True, cache=True)
def _taps_backward_input(filt, dout, scale, scaled, one, dx, cm, M, cdiv, window):
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = window
    N, C, H, W = dx.shape
    for item in prange(N * C * H):
        n, c, h = unravel3(item, C, H)
        dxrow = dx[n, c, h]
        dxrow[:] = 0
        fbase = (c // cdiv) * M
        for u in range(kh):
            i = tap_output(h, sh, ph, u * dh, Ho)
            if i < 0:
                continue
            for m in range(M):
                drow = dout[c * M + m, n, i] if cm else dout[n, c * M + m, i]
                for v in range(kw):
                    jlo, jhi = valid_range(pw, v * dw, sw, W, Wo)
                    if jhi > jlo:
                        s = scale[n, c, u * kw + v] if scaled else one
                        _muladd_scatter(dxrow, tap_input(jlo, sw, pw, v * dw), sw,
                                        filt[n, fbase + m, u * kw + v, i, jlo:], s, drow[jlo:], jhi - jlo)


@njit(parallel=True, cache=True)
def _taps_backward_filter(x, dout, scale, scaled, one, dfilt, cm, M, cdiv, window):
    N, C, H, W = x.shape
    F, T = dfilt.shape[1], dfilt.shape[2]
    Ho, sw = window[8], window[3]
    for item in prange(N * F * Ho):
        n, f, i = unravel3(item, F, Ho)
        grp, m = split(f, M)
        for t in range(T):
            dfilt[n, f, t, i, :] = 0
        for c in range(grp * cdiv, (grp + 1) * cdiv):
            drow = dout[c * M + m, n, i] if cm else dout[n, c * M + m, i]
            for t in range(T):
                ih, jlo, jhi, b0 = _tap_cols(i, t, window, H, W)
                if jhi > jlo:
                    s = scale[n, c, t] if scaled else one
                    _muladd_gather(dfilt[n, f, t, i, jlo:], drow[jlo:], s, x[n, c, ih], b0, sw, jhi - jlo)


@njit(parallel=True, cache=True)
def _taps_backward_scale(x, filt, dout, dscale, cm, M, cdiv, window):
    # One owner per (n, c) row: the products are summed into a (T, Wo) buffer over the
    # output rows (element-wise, vectorised), then each tap's row is summed in order.
    N, C, H, W = x.shape
    T = filt.shape[2]
    Ho, Wo, sw = window[8], window[9], window[3]
    for item in prange(N * C):
        n, c = split(item, C)
        acc = np.zeros((T, Wo), dtype=x.dtype)
        for m in range(M):
            f = (c // cdiv) * M + m
            for i in range(Ho):
                drow = dout[c * M + m, n, i] if cm else dout[n, c * M + m, i]
                for t in range(T):
                    ih, jlo, jhi, b0 = _tap_cols(i, t, window, H, W)
                    if jhi > jlo:
                        _mul3add(acc[t, jlo:], drow[jlo:], filt[n, f, t, i, jlo:], x[n, c, ih], b0, sw, jhi - jlo)
        for t in range(T):
            tot = acc[t, 0]
            for j in range(1, Wo):
                tot += acc[t, j]
            dscale[n, c, t] = tot


# ----------------------------------------------------------------------------- wrappers
def _scale_args(scale, g, dtype):
    """``(scale, scaled, one)`` as the kernels take them: an empty stand-in without a scale."""
    if scale is None:
        return np.empty((0, 0, 0), dtype=dtype), False, dtype.type(1)
    _args.tap_scale(g, scale)
    return scale, True, dtype.type(1)


def taps_forward(x: np.ndarray, filt: np.ndarray, g, M: int, cdiv: int,
                 out: np.ndarray | None = None, channel_major: bool = False,
                 scale: np.ndarray | None = None) -> np.ndarray:
    """Apply per-pixel filters tap by tap.

    Parameters
    ----------
    x : ndarray (N, C, H, W), C-contiguous
    filt : ndarray (N, F, kh*kw, Ho, Wo), C-contiguous, ``F = (C // cdiv) * M``
    g : Geometry
    M, cdiv : int
        Outputs per input channel; input channels per filter group.
    out : ndarray, optional
        C-contiguous destination of the result's shape (overwritten).
    channel_major : bool
        Lay the result out as ``(C*M, N, Ho, Wo)``.
    scale : ndarray (N, C, kh*kw), C-contiguous, optional
        Per-sample, per-channel tap scale multiplying the filters.

    Returns
    -------
    out : ndarray (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`
    """
    _args.tap_filters(g, M, cdiv, filt)
    if out is None:
        shape = (g.C * M, g.N) if channel_major else (g.N, g.C * M)
        out = np.empty(shape + (g.Ho, g.Wo), dtype=x.dtype)
    _taps_forward(x, filt, *_scale_args(scale, g, x.dtype), out, channel_major, M, cdiv, g.window)
    return out


def taps_backward_input(filt: np.ndarray, dout: np.ndarray, g, M: int, cdiv: int,
                        out: np.ndarray | None = None, channel_major: bool = False,
                        scale: np.ndarray | None = None) -> np.ndarray:
    """The gradient of :func:`taps_forward` with respect to x, dx (N, C, H, W), from the
    filters filt (N, F, kh*kw, Ho, Wo), the cotangent dout (N, C*M, Ho, Wo), or
    (C*M, N, Ho, Wo) if `channel_major`, and the forward's `scale` (N, C, kh*kw) if it
    had one; all C-contiguous. `out` (N, C, H, W), when given, is overwritten and
    returned."""
    _args.tap_filters(g, M, cdiv, filt)
    dx = np.empty((g.N, g.C, g.H, g.W), dtype=dout.dtype) if out is None else out
    _taps_backward_input(filt, dout, *_scale_args(scale, g, dout.dtype), dx, channel_major, M, cdiv, g.window)
    return dx


def taps_backward_filter(x: np.ndarray, dout: np.ndarray, g, M: int, cdiv: int,
                         out: np.ndarray | None = None, channel_major: bool = False,
                         scale: np.ndarray | None = None) -> np.ndarray:
    """The gradient of :func:`taps_forward` with respect to the filters, dfilt (N, F,
    kh*kw, Ho, Wo) with ``F = (C // cdiv) * M``, from x (N, C, H, W), the cotangent
    dout (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`, and the forward's
    `scale` (N, C, kh*kw) if it had one; all C-contiguous. `out`, when given, is
    overwritten and returned."""
    F = _args.tap_filters(g, M, cdiv)
    dfilt = np.empty((g.N, F, g.taps, g.Ho, g.Wo), dtype=x.dtype) if out is None else out
    _taps_backward_filter(x, dout, *_scale_args(scale, g, x.dtype), dfilt, channel_major, M, cdiv, g.window)
    return dfilt


def taps_backward_scale(x: np.ndarray, filt: np.ndarray, dout: np.ndarray, g, M: int, cdiv: int,
                        out: np.ndarray | None = None, channel_major: bool = False) -> np.ndarray:
    """The gradient of :func:`taps_forward` with respect to its `scale`, dscale (N, C,
    kh*kw), from x (N, C, H, W), the filters filt (N, F, kh*kw, Ho, Wo) and the
    cotangent dout (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`; all
    C-contiguous. `out`, when given, is overwritten and returned."""
    _args.tap_filters(g, M, cdiv, filt)
    dscale = np.empty((g.N, g.C, g.taps), dtype=x.dtype) if out is None else out
    _taps_backward_scale(x, filt, dout, dscale, channel_major, M, cdiv, g.window)
    return dscale
