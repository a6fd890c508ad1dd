"""CPU unfold and fold: im2col, col2im and the row-tile helpers of the conv template.

Column layout (Chainer's, flattened): ``cols[n, (c*kh + u)*kw + v, i*Wo + j] =
xpad[n, c, i*sh + u*dh, j*sw + v*dw]``. A column tile holds the output rows ``i0..i1-1``
of channels ``c0..c1-1``: its row ``r = ((c - c0)*kh + u)*kw + v`` has ``(i1 - i0)*Wo``
entries. A tile of several samples' columns side by side (:func:`im2col_part`) holds
sample b's at the column offset ``b*(i1 - i0)*Wo`` of every row.

Determinism: in :func:`col2im` the thread of plane ``(n, c)`` is the only writer of
``dx[n, c]`` and sums its taps in ascending order. Inner loops index flat arrays with
unsigned integers: without Numba's negative-index wraparound check, LLVM vectorises the
copies (measured 2.5 to 4x faster).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .index import split, tap_input, unravel3, valid_range


@njit(inline="always")
def _tap_row(img, n, r, c0, i1, window):
    # Row r of a column tile of channels c0.. over img (N, C, H, W): the output rows
    # [ilo, ihi) (below i1) and columns [jlo, jhi) whose tap reads inside img, and the
    # flat index in img of the input that output pixel (0, 0) reads at this tap.
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = window
    C, H, W = img.shape[1], img.shape[2], img.shape[3]
    c, u, v = unravel3(r, kh, kw)
    ilo, ihi = valid_range(ph, u * dh, sh, H, i1)
    jlo, jhi = valid_range(pw, v * dw, sw, W, Wo)
    base = ((n * C + c0 + c) * H + tap_input(0, sh, ph, u * dh)) * W + tap_input(0, sw, pw, v * dw)
    return ilo, ihi, jlo, jhi, base


@njit(inline="always")
def _unfold_run(imgf, at, sw, cf, d, jlo, jhi, Wo):
    # One row of columns: cf[d + j] = imgf[at + j*sw] for jlo <= j < jhi, zero elsewhere
    # in [0, Wo). The unit-stride loop is the one LLVM vectorises.
    for j in range(jlo):
        cf[np.uint64(d + j)] = 0
    if sw == 1:
        for j in range(jlo, jhi):
            cf[np.uint64(d + j)] = imgf[np.uint64(at + j)]
    else:
        for j in range(jlo, jhi):
            cf[np.uint64(d + j)] = imgf[np.uint64(at + j * sw)]
    for j in range(jhi, Wo):
        cf[np.uint64(d + j)] = 0


@njit(inline="always")
def _fold_run(imgf, at, sw, cf, d, jlo, jhi):
    # One row of columns folded back: imgf[at + j*sw] += cf[d + j] for jlo <= j < jhi.
    if sw == 1:
        for j in range(jlo, jhi):
            imgf[np.uint64(at + j)] += cf[np.uint64(d + j)]
    else:
        for j in range(jlo, jhi):
            imgf[np.uint64(at + j * sw)] += cf[np.uint64(d + j)]


@njit
def _walk(img, n, cf, rows, ld, off, i0, i1, c0, window, fold):
    # Every row of a column tile of sample n's output rows i0..i1-1 and channels c0..:
    # row r's (i1-i0)*Wo columns at cf[r*ld + off:] (cf flat; ld = (i1-i0)*Wo and off = 0
    # for a tile of its own, wider for several samples' columns side by side), unfolded
    # from img or (fold != 0) folded into img (an output row whose tap reads padding has
    # no columns inside), taps in ascending order.
    sh, sw, Wo = window[2], window[3], window[9]
    step = sh * img.shape[3]
    imgf = img.reshape(img.size)
    for r in range(rows):
        ilo, ihi, jlo, jhi, base = _tap_row(img, n, r, c0, i1, window)
        for i in range(i0, i1):
            d = r * ld + off + (i - i0) * Wo
            at, lo, hi = (base + i * step, jlo, jhi) if ilo <= i < ihi else (0, 0, 0)
            if fold:
                _fold_run(imgf, at, sw, cf, d, lo, hi)
            else:
                _unfold_run(imgf, at, sw, cf, d, lo, hi, Wo)


@njit(inline="always")
def _rows(img, n, cols, off, i0, i1, c0, window, fold):
    # _walk over cols (rows, L), called with every integer as an int64: the kernels'
    # literals and unsigned loop indices would each compile another _walk. _walk itself is
    # a plain function, compiled once per dtype and shared by every kernel that unfolds
    # (inlined into each, it multiplied their compile time).
    _walk(img, np.int64(n), cols.reshape(cols.size), np.int64(cols.shape[0]), np.int64(cols.shape[1]),
          np.int64(off), np.int64(i0), np.int64(i1), np.int64(c0), window, np.int64(fold))


@njit(inline="always")
def im2col_rows(x, n, cols, i0, i1, c0, window):
    """cols (rows, (i1-i0)*Wo) <- the output rows i0..i1-1 of sample n, channels c0..c0 + rows/(kh*kw) - 1."""
    _rows(x, n, cols, 0, i0, i1, c0, window, 0)


@njit(inline="always")
def col2im_rows(cols, dx, n, i0, i1, c0, window):
    """dx[n, c0:...] += the fold of cols (rows, (i1-i0)*Wo), the output rows i0..i1-1."""
    _rows(dx, n, cols, 0, i0, i1, c0, window, 1)


@njit(inline="always")
def im2col_part(x, n, cols, off, i0, i1, window):
    """Sample n's part of a tile of several samples' columns: cols (C*kh*kw, L), the
    columns ``off .. off + (i1-i0)*Wo - 1`` of every row <- the output rows i0..i1-1."""
    _rows(x, n, cols, off, i0, i1, 0, window, 0)


@njit(inline="always")
def col2im_part(cols, dx, n, off, i0, i1, window):
    """dx[n] += the fold of sample n's part of cols (C*kh*kw, L) (see :func:`im2col_part`)."""
    _rows(dx, n, cols, off, i0, i1, 0, window, 1)


@njit(inline="always")
def plane_shape(img, window):
    """``(Hp, Wp)``: a channel plane of img (N, C, H, W) with its padding, top/left ``ph, pw``
    and as far down/right as any tap reads (as ``reference.pad_input``)."""
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = window
    Hp = max(img.shape[2] + ph, (Ho - 1) * sh + (kh - 1) * dh + 1)
    Wp = max(img.shape[3] + pw, (Wo - 1) * sw + (kw - 1) * dw + 1)
    return Hp, Wp


@njit(inline="always")
def _plane_copy(imgf, at, pf, H, W, ph, pw, Wp, into_plane):
    # The H x W plane of img at flat offset `at` <-> the interior of the padded plane pf:
    # into_plane: copy it in; else add the plane's interior to it.
    for h in range(H):
        src = at + h * W
        dst = (h + ph) * Wp + pw
        if into_plane:
            for w in range(W):
                pf[np.uint64(dst + w)] = imgf[np.uint64(src + w)]
        else:
            for w in range(W):
                imgf[np.uint64(src + w)] += pf[np.uint64(dst + w)]


@njit(inline="always")
def _planes(img, n, cols, off, plane, idx, window, unfold):
    # unfold: cols' columns of sample n <- img[n] through padded planes; else img[n] +=
    # their fold, summed in a zeroed padded plane per channel, taps in ascending order.
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = window
    C, H, W = img.shape[1], img.shape[2], img.shape[3]
    Wp = plane_shape(img, window)[1]
    P, L = idx.shape[0], cols.shape[1]
    imgf = img.reshape(img.size)
    cf = cols.reshape(cols.size)
    plane[:] = 0
    for c in range(C):
        if unfold:
            _plane_copy(imgf, (n * C + c) * H * W, plane, H, W, ph, pw, Wp, True)
        elif c > 0:
            plane[:] = 0
        for t in range(kh * kw):
            u, v = split(t, kw)
            at = u * dh * Wp + v * dw
            d = (c * kh * kw + t) * L + off
            if unfold:
                for p in range(P):
                    cf[np.uint64(d + p)] = plane[np.uint64(idx[p] + at)]
            else:
                for p in range(P):
                    plane[np.uint64(idx[p] + at)] += cf[np.uint64(d + p)]
        if not unfold:
            _plane_copy(imgf, (n * C + c) * H * W, plane, H, W, ph, pw, Wp, False)


@njit(inline="always")
def im2col_planes(x, n, cols, off, plane, idx, window):
    """Sample n's columns, every output row, at the column offset `off` of cols
    (C*kh*kw, L), gathered from a zero-padded copy of each channel plane.

    plane (Hp*Wp,) is work space (:func:`plane_shape`); idx (Ho*Wo,) the offset in the
    padded plane of each output pixel's first tap, ``i*sh*Wp + j*sw``. One gather per
    row, without bounds: faster than :func:`im2col_rows`'s runs of Wo for narrow outputs,
    slower for wide ones; the same columns."""
    _planes(x, n, cols, off, plane, idx, window, True)


@njit(inline="always")
def col2im_planes(cols, dx, n, off, plane, idx, window):
    """dx[n] += the fold of sample n's columns at offset `off` of cols (C*kh*kw, L)
    (every output row), summed in a zero-padded plane per channel: the adjoint of
    :func:`im2col_planes`. Each input element sums its taps in ascending order, as
    :func:`col2im_rows` does, so a zeroed dx[n] gets bitwise the same result."""
    _planes(dx, n, cols, off, plane, idx, window, False)


@njit(inline="always")
def _plane(img, cols, nc, window, fold):
    # Work item nc = (n, c): plane c of sample n of img (N, C, H, W) and its kh*kw rows of
    # cols (N, C*kh*kw, Ho*Wo), unfolded or folded; when folding, the item is the only
    # writer of img[n, c].
    T, Ho = window[0] * window[1], window[8]
    n, c = split(nc, img.shape[1])
    if fold:
        img[n, c, :, :] = 0
    _rows(img, n, cols[n, c * T:(c + 1) * T], 0, 0, Ho, c, window, fold)


@njit(parallel=True, cache=True)
def _im2col(x, cols, window):
    for nc in prange(x.shape[0] * x.shape[1]):
        _plane(x, cols, nc, window, 0)


@njit(parallel=True, cache=True)
def _col2im(cols, dx, window):
    for nc in prange(dx.shape[0] * dx.shape[1]):
        _plane(dx, cols, nc, window, 1)


def im2col(x: np.ndarray, g, out: np.ndarray | None = None) -> np.ndarray:
    """Unfold x (n, C, H, W) into cols (n, C*kh*kw, Ho*Wo) (into `out` when given).

    A pointwise window returns a view of x: its columns are x itself.
    """
    n = x.shape[0]
    x = np.ascontiguousarray(x)
    if g.pointwise:
        return x.reshape(n, g.C, g.P)
    if out is None or not out.flags.c_contiguous:
        res = np.empty((n, g.C * g.taps, g.P), dtype=x.dtype)
        _im2col(x, res, g.window)
        if out is None:
            return res
        out[...] = res
        return out
    _im2col(x, out, g.window)
    return out


def col2im(cols: np.ndarray, g, out: np.ndarray) -> np.ndarray:
    """Fold cols (n, C*kh*kw, Ho*Wo) into `out` (n, C, H, W), summing overlaps; returns `out`."""
    if g.pointwise:
        out[...] = cols.reshape(out.shape)
        return out
    cols = np.ascontiguousarray(cols)
    if not out.flags.c_contiguous:
        res = np.empty(out.shape, dtype=out.dtype)
        _col2im(cols, res, g.window)
        out[...] = res
        return out
    _col2im(cols, out, g.window)
    return out
