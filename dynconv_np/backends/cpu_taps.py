"""CPU tap engine: per-pixel filters applied tap by tap, without an unfolded input.

Per-pixel dynamic convolutions (ACDA atoms, DDF, Involution) apply, at every output
pixel, a small filter that changes from pixel to pixel. An im2col formulation would
build the unfolded input ``(N, C, kh*kw, Ho, Wo)``, ``kh*kw`` times the input; this
engine never does: each kernel reads ``x`` at the tap positions directly and keeps no
workspace beyond its inputs and outputs.

Contract
--------
Geometry ``g`` is an :class:`dynconv_np._args.Geometry` (``kh, kw, sh, sw, ph, pw, dh,
dw, Ho, Wo``; padding is implicit zeros, and the bottom/right padding is whatever makes
``Ho, Wo`` come out). Taps are numbered ``t = u*kw + v``. Two integers describe how
channels meet filters:

- ``M``: outputs per input channel. Output channel ``c*M + m`` belongs to input channel
  ``c``.
- ``cdiv``: input channels per filter group (a divisor of ``C``). Input channel ``c``
  and output slot ``m`` use filter ``f(c, m) = (c // cdiv)*M + m``, so there are
  ``F = (C // cdiv) * M`` filters.

With ``filt (N, F, kh*kw, Ho, Wo)`` and ``xpad`` the zero-padded input, the forward is::

    out[n, c*M + m, i, j] = sum_t filt[n, f(c, m), t, i, j] * xpad[n, c, i*sh + u*dh, j*sw + v*dw]

The three users:

- ACDA ``atom_conv2d``: ``filt`` = the atoms ``(N, M, kh*kw, Ho, Wo)``, ``cdiv = C``
  (every channel shares the atoms); ``out`` is ``Z (N, C*M, Ho, Wo)``.
- DDF (depthwise): ``filt (N, C, kh*kw, Ho, Wo)``, ``M = 1``, ``cdiv = 1``.
- Involution: ``filt (N, G, kh*kw, Ho, Wo)``, ``M = 1``, ``cdiv = C // G``.

The backward has two kernels, both gathers with single ownership of what they write:

- :func:`taps_backward_input`: ``dx[n, c, h, w] = sum_{m, t, (i, j) -> (h, w)}
  filt[n, f(c,m), t, i, j] * dout[n, c*M+m, i, j]``; each thread owns one input row
  ``dx[n, c, h, :]`` and finds the output rows that read it.
- :func:`taps_backward_filter`: ``dfilt[n, f, t, i, j] = sum_{c in group of f}
  dout[n, c*M+m, i, j] * xpad[n, c, tap t of (i, j)]``; each thread owns one output
  row ``dfilt[n, f, :, i, :]``.

Every kernel parallelises over rows it alone writes and sums in a fixed order, so the
results are bitwise identical whatever ``NUMBA_NUM_THREADS`` is. No atomics, no racy
scatter. Inputs must be C-contiguous arrays of one float dtype; accumulation is in that
dtype (``float32`` inputs accumulate in ``float32``, as BLAS does). Samples are
independent, so a caller bounds its workspace by passing batch slices (with
``dataclasses.replace(g, N=nb)``) and ``out=`` views of its result arrays. With
``channel_major=True`` the per-channel arrays (``out`` forward, ``dout`` backward) are
laid out ``(C*M, N, Ho, Wo)``: a 1x1 GEMM over channels is then one BLAS call for the
whole batch instead of one per sample.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uintp

from .. import _args


@njit(inline="always", cache=True)
def _span(off, stride, size, out):
    """Output indices j in [lo, hi) whose input index j*stride + off lies in [0, size)."""
    lo = max(0, -(off // stride))
    hi = min(out, (size - 1 - off) // stride + 1)
    return lo, max(lo, hi)


# The row helpers index with unsigned integers: Numba then drops its negative-index
# wraparound, and LLVM can vectorise the unit-stride case. Vectorising these
# element-wise loops does not change any element's arithmetic, so results stay bitwise
# identical to the scalar loop.
@njit(inline="always", cache=True)
def _muladd_gather(o, a, b, b0, bstep, cnt):
    """``o[k] += a[k] * b[b0 + k*bstep]`` for ``k < cnt``."""
    if bstep == 1:
        for k in range(uintp(cnt)):
            o[k] += a[k] * b[uintp(b0) + k]
    else:
        for k in range(uintp(cnt)):
            o[k] += a[k] * b[uintp(b0) + k * uintp(bstep)]


@njit(inline="always", cache=True)
def _muladd_scatter(o, o0, ostep, a, b, cnt):
    """``o[o0 + k*ostep] += a[k] * b[k]`` for ``k < cnt`` (one thread owns ``o``)."""
    if ostep == 1:
        for k in range(uintp(cnt)):
            o[uintp(o0) + k] += a[k] * b[k]
    else:
        for k in range(uintp(cnt)):
            o[uintp(o0) + k * uintp(ostep)] += a[k] * b[k]


@njit(parallel=True, cache=True)
def _taps_forward(x, filt, out, cm, M, cdiv, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    N, C, H, W = x.shape
    # One work item per output row out[n, c*M:(c+1)*M, i, :], owned by one thread.
    for item in prange(N * C * Ho):
        n = item // (C * Ho)
        rem = item - n * C * Ho
        c = rem // Ho
        i = rem - c * Ho
        fbase = (c // cdiv) * M
        for m in range(M):
            orow = out[c * M + m, n, i] if cm else out[n, c * M + m, i]
            orow[:] = 0
            f = fbase + m
            for u in range(kh):
                ih = i * sh - ph + u * dh
                if ih < 0 or ih >= H:
                    continue
                xrow = x[n, c, ih]
                for v in range(kw):
                    off = v * dw - pw
                    jlo, jhi = _span(off, sw, W, Wo)
                    if jhi > jlo:
                        _muladd_gather(orow[jlo:], filt[n, f, u * kw + v, i, jlo:], xrow,
                                    jlo * sw + off, sw, jhi - jlo)


@njit(parallel=True, cache=True)
def _taps_backward_input(filt, dout, dx, cm, M, cdiv, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    N, C, H, W = dx.shape
    # Gather: the thread of input row dx[n, c, h, :] visits the (output row, tap row)
    # pairs that read it; nobody else writes that row.
    for item in prange(N * C * H):
        n = item // (C * H)
        rem = item - n * C * H
        c = rem // H
        h = rem - c * H
        dxrow = dx[n, c, h]
        dxrow[:] = 0
        fbase = (c // cdiv) * M
        for u in range(kh):
            num = h + ph - u * dh
            if num < 0 or num % sh != 0:
                continue
            i = num // sh
            if i >= Ho:
                continue
            for m in range(M):
                drow = dout[c * M + m, n, i] if cm else dout[n, c * M + m, i]
                f = fbase + m
                for v in range(kw):
                    off = v * dw - pw
                    jlo, jhi = _span(off, sw, W, Wo)
                    if jhi > jlo:
                        _muladd_scatter(dxrow, jlo * sw + off, sw, filt[n, f, u * kw + v, i, jlo:],
                                     drow[jlo:], jhi - jlo)


@njit(parallel=True, cache=True)
def _taps_backward_filter(x, dout, dfilt, cm, M, cdiv, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    N, C, H, W = x.shape
    F = dfilt.shape[1]
    # One work item per row dfilt[n, f, :, i, :]: the channel sum runs inside, in order.
    for item in prange(N * F * Ho):
        n = item // (F * Ho)
        rem = item - n * F * Ho
        f = rem // Ho
        i = rem - f * Ho
        grp = f // M
        m = f - grp * M
        for t in range(kh * kw):
            dfilt[n, f, t, i, :] = 0
        for c in range(grp * cdiv, (grp + 1) * cdiv):
            drow = dout[c * M + m, n, i] if cm else dout[n, c * M + m, i]
            for u in range(kh):
                ih = i * sh - ph + u * dh
                if ih < 0 or ih >= H:
                    continue
                xrow = x[n, c, ih]
                for v in range(kw):
                    off = v * dw - pw
                    jlo, jhi = _span(off, sw, W, Wo)
                    if jhi > jlo:
                        _muladd_gather(dfilt[n, f, u * kw + v, i, jlo:], drow[jlo:], xrow,
                                    jlo * sw + off, sw, jhi - jlo)


# ----------------------------------------------------------------------------- wrappers
def taps_forward(x: np.ndarray, filt: np.ndarray, g, M: int, cdiv: int,
                 out: np.ndarray | None = None, channel_major: bool = False) -> np.ndarray:
    """Apply per-pixel filters tap by tap.

    Parameters
    ----------
    x : ndarray (N, C, H, W), C-contiguous
    filt : ndarray (N, F, kh*kw, Ho, Wo), C-contiguous, ``F = (C // cdiv) * M``
    g : Geometry
    M, cdiv : int
        Outputs per input channel; input channels per filter group.
    out : ndarray (N, C*M, Ho, Wo), optional
        C-contiguous destination (overwritten).
    channel_major : bool
        Lay `out` out as ``(C*M, N, Ho, Wo)`` instead, so that a following 1x1 GEMM over
        the channels is one BLAS call on a ``(C*M, N*Ho*Wo)`` matrix.

    Returns
    -------
    out : ndarray (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`
    """
    _args.tap_filters(g, M, cdiv, filt)
    if out is None:
        shape = (g.C * M, g.N) if channel_major else (g.N, g.C * M)
        out = np.empty(shape + (g.Ho, g.Wo), dtype=x.dtype)
    _taps_forward(x, filt, out, channel_major, M, cdiv, *g.ints())
    return out


def taps_backward_input(filt: np.ndarray, dout: np.ndarray, g, M: int, cdiv: int,
                        out: np.ndarray | None = None, channel_major: bool = False) -> np.ndarray:
    """Gradient of :func:`taps_forward` with respect to ``x``.

    Parameters
    ----------
    filt : ndarray (N, F, kh*kw, Ho, Wo), C-contiguous
    dout : ndarray (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`; C-contiguous
    out : ndarray (N, C, H, W), optional
        C-contiguous destination (overwritten).

    Returns
    -------
    dx : ndarray (N, C, H, W)
    """
    _args.tap_filters(g, M, cdiv, filt)
    dx = np.empty((g.N, g.C, g.H, g.W), dtype=dout.dtype) if out is None else out
    _taps_backward_input(filt, dout, dx, channel_major, M, cdiv, *g.ints())
    return dx


def taps_backward_filter(x: np.ndarray, dout: np.ndarray, g, M: int, cdiv: int,
                         out: np.ndarray | None = None, channel_major: bool = False) -> np.ndarray:
    """Gradient of :func:`taps_forward` with respect to ``filt``.

    Parameters
    ----------
    x : ndarray (N, C, H, W), C-contiguous
    dout : ndarray (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) if `channel_major`; C-contiguous
    out : ndarray (N, F, kh*kw, Ho, Wo), optional
        C-contiguous destination (overwritten).

    Returns
    -------
    dfilt : ndarray (N, F, kh*kw, Ho, Wo), ``F = (C // cdiv) * M``
    """
    F = _args.tap_filters(g, M, cdiv)
    dfilt = np.empty((g.N, F, g.taps, g.Ho, g.Wo), dtype=x.dtype) if out is None else out
    _taps_backward_filter(x, dout, dfilt, channel_major, M, cdiv, *g.ints())
    return dfilt
