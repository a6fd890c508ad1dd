"""CPU backend: Numba-parallel data movement around BLAS GEMMs.

Layout of the column buffer (Chainer's, flattened): ``cols[n, (c*kh + u)*kw + v, i*Wo + j]
= xpad[n, c, i*sh + u*dh, j*sw + v*dw]``. Every kernel parallelises over ``n*c`` planes
so each thread owns the memory it writes: results are race-free by construction and
bitwise identical whatever ``NUMBA_NUM_THREADS`` is. GEMMs go to BLAS via ``np.matmul``.
The batch is processed in chunks whose size depends only on the shapes and
:data:`WORKSPACE_BYTES`, never on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: Upper bound, in bytes, on the im2col column buffer of one batch chunk.
WORKSPACE_BYTES = 64 * 2**20


def set_workspace_bytes(nbytes: int) -> int:
    """Set the column-buffer budget of one batch chunk; returns the previous value."""
    global WORKSPACE_BYTES
    if int(nbytes) < 1:
        raise ValueError(f"nbytes must be positive, got {nbytes!r}")
    old, WORKSPACE_BYTES = WORKSPACE_BYTES, int(nbytes)
    return old


def chunk_size(N: int, bytes_per_sample: int) -> int:
    """Samples per chunk so that a chunk's workspace stays within the budget."""
    return max(1, min(N, WORKSPACE_BYTES // max(1, bytes_per_sample)))


def contiguous(a: np.ndarray) -> np.ndarray:
    """C-contiguous view or copy (never modifies `a`)."""
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------- kernels
@njit(inline="always")
def _ceil_div(a, b):
    return -((-a) // b)


@njit(inline="always")
def _valid_range(pad, off, stride, size, out):
    """Output indices j in [lo, hi) whose input index j*stride - pad + off is in [0, size)."""
    lo = max(0, _ceil_div(pad - off, stride))
    hi = min(out, (size - 1 + pad - off) // stride + 1)
    return lo, max(lo, hi)


@njit(parallel=True, cache=True)
def _im2col(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    N, C, H, W = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        for u in range(kh):
            ilo, ihi = _valid_range(ph, u * dh, sh, H, Ho)
            for v in range(kw):
                r = (c * kh + u) * kw + v
                jlo, jhi = _valid_range(pw, v * dw, sw, W, Wo)
                for i in range(Ho):
                    base = i * Wo
                    if i < ilo or i >= ihi:
                        for j in range(Wo):
                            cols[n, r, base + j] = 0
                        continue
                    ih = i * sh - ph + u * dh
                    for j in range(jlo):
                        cols[n, r, base + j] = 0
                    for j in range(jlo, jhi):
                        cols[n, r, base + j] = x[n, c, ih, j * sw - pw + v * dw]
                    for j in range(jhi, Wo):
                        cols[n, r, base + j] = 0


@njit(parallel=True, cache=True)
def _col2im(cols, dx, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    # Ownership: the thread of plane (n, c) is the only writer of dx[n, c].
    N, C, H, W = dx.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        for ih in range(H):
            for iw in range(W):
                dx[n, c, ih, iw] = 0
        for u in range(kh):
            ilo, ihi = _valid_range(ph, u * dh, sh, H, Ho)
            for v in range(kw):
                r = (c * kh + u) * kw + v
                jlo, jhi = _valid_range(pw, v * dw, sw, W, Wo)
                for i in range(ilo, ihi):
                    ih = i * sh - ph + u * dh
                    base = i * Wo
                    for j in range(jlo, jhi):
                        dx[n, c, ih, j * sw - pw + v * dw] += cols[n, r, base + j]


def _is_pointwise(g) -> bool:
    # A 1x1, stride-1, unpadded window: the columns are x itself.
    return g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.ph == 0 and g.pw == 0


def im2col(x: np.ndarray, g, out: np.ndarray | None = None) -> np.ndarray:
    """Unfold ``x (n, C, H, W)`` into ``cols (n, C*kh*kw, Ho*Wo)``."""
    n = x.shape[0]
    if _is_pointwise(g):
        return x.reshape(n, g.C, g.P)
    if out is None:
        out = np.empty((n, g.C * g.taps, g.P), dtype=x.dtype)
    _im2col(x, out, *g.ints())
    return out


def col2im(cols: np.ndarray, g, out: np.ndarray) -> np.ndarray:
    """Fold ``cols (n, C*kh*kw, Ho*Wo)`` back into ``out (n, C, H, W)``, summing overlaps."""
    if _is_pointwise(g):
        out[...] = cols.reshape(out.shape)
        return out
    _col2im(cols, out, *g.ints())
    return out


# ----------------------------------------------------------------------------- template
def _chunks(g):
    nb = chunk_size(g.N, g.C * g.taps * g.P * 8)
    for n0 in range(0, g.N, nb):
        yield n0, min(g.N, n0 + nb)


def conv_forward(x, wt, bt, g, groups):
    """``Y_n = Wt_n @ X_n + bt_n`` for shared or per-sample kernels.

    Parameters
    ----------
    x : ndarray (N, C, H, W), C-contiguous
    wt : ndarray (O, C//groups*kh*kw) shared, or (N, O, C//groups*kh*kw) per sample
    bt : ndarray (O,) or (N, O) or None
    g : Geometry
    groups : int

    Returns
    -------
    y : ndarray (N, O, Ho, Wo)
    """
    G = groups
    O, F = wt.shape[-2], wt.shape[-1]
    Og = O // G
    y = np.empty((g.N, O, g.Ho, g.Wo), dtype=x.dtype)
    shared = wt.ndim == 2
    w4 = wt.reshape(G, Og, F) if shared else wt.reshape(g.N, G, Og, F)
    for n0, n1 in _chunks(g):
        nb = n1 - n0
        cols = im2col(x[n0:n1], g).reshape(nb, G, F, g.P)
        w = w4 if shared else w4[n0:n1]
        np.matmul(w, cols, out=y[n0:n1].reshape(nb, G, Og, g.P))
    if bt is not None:
        y += bt.reshape(-1 if bt.ndim == 2 else 1, O, 1, 1)
    return y


def conv_backward(x, wt, dy, g, groups, need_dx=True, need_dw=True):
    """Backward of :func:`conv_forward`.

    Parameters
    ----------
    x : ndarray (N, C, H, W), C-contiguous
    wt : ndarray (O, F) shared or (N, O, F) per sample, ``F = C//groups*kh*kw``
    dy : ndarray (N, O, Ho, Wo), C-contiguous

    Returns
    -------
    dx : ndarray (N, C, H, W) or None
    gw : ndarray (O, F) for shared kernels (``sum_n dY_n X_n^T``), (N, O, F) per sample
        (``G_n = dY_n X_n^T``), or None
    dbt : ndarray (O,) shared or (N, O) per sample: ``dY`` summed over pixels
    """
    G = groups
    O, F = wt.shape[-2], wt.shape[-1]
    Og = O // G
    shared = wt.ndim == 2
    w4 = wt.reshape(G, Og, F) if shared else wt.reshape(g.N, G, Og, F)
    dx = np.empty((g.N, g.C, g.H, g.W), dtype=x.dtype) if need_dx else None
    gw = None
    if need_dw:
        gw = np.zeros((O, F), dtype=x.dtype) if shared else np.empty((g.N, O, F), dtype=x.dtype)
    for n0, n1 in _chunks(g):
        nb = n1 - n0
        dyc = dy[n0:n1].reshape(nb, G, Og, g.P)
        if need_dw:
            cols = im2col(x[n0:n1], g).reshape(nb, G, F, g.P)
            colsT = cols.swapaxes(-1, -2)
            if shared:
                gw += np.matmul(dyc, colsT).sum(axis=0).reshape(O, F)
            else:
                np.matmul(dyc, colsT, out=gw[n0:n1].reshape(nb, G, Og, F))
        if need_dx:
            w = w4 if shared else w4[n0:n1]
            dcols = np.matmul(w.swapaxes(-1, -2), dyc)  # (nb, G, F, P)
            col2im(dcols.reshape(nb, G * F, g.P), g, dx[n0:n1])
    dyr = dy.reshape(g.N, O, g.P)
    dbt = dyr.sum(axis=2)
    if shared:
        dbt = dbt.sum(axis=0)
    return dx, gw, dbt


# ----------------------------------------------------------------------------- dense helpers
def matmul(a, b):
    """``a @ b`` through BLAS."""
    return np.matmul(a, b)
