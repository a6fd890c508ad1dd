"""CUDA conv template: im2col, the tiled GEMM and col2im, on device arrays.

Column layout: ``cols[n, (c*kh + u)*kw + v, i*Wo + j] = xpad[n, c, i*sh + u*dh, j*sw +
v*dw]``. The batch runs in chunks whose column buffer stays within the workspace bound
(``set_workspace_bytes``); chunk sizes depend on the shapes and the bound only.

Determinism: im2col writes each column entry once; col2im is a gather, the thread of an
input element summing, taps in ascending order, every column entry that read it (the
index routine :func:`~dynconv_np.backends._index.window_output` is the tap engine's
too); the GEMMs sum in a fixed order (:mod:`~dynconv_np.backends.cuda.products`); the
bias gradient is a serial sum per row. No atomics.
"""

from __future__ import annotations

from .array import contiguous, copy_into, empty
from .elementwise import add_rows
from .index import split, unravel3, unravel4, window_input, window_output
from .launch import MAX_GRID_YZ, launch, per_element, workspace
from .products import gemm3
from .reduce import column_sums, row_sums


@per_element
def _im2col(t, x, cols, window):
    # The column entry (n, r = c*kh*kw + tap, p = i*Wo + j).
    n, r, p = unravel3(t, cols.shape[1], cols.shape[2])
    c, tap = split(r, window[0] * window[1])
    i, j = split(p, window[9])
    ih, iw = window_input(i, j, tap, window)
    if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
        cols[n, r, p] = x[n, c, ih, iw]
    else:
        cols[n, r, p] = 0


@per_element
def _col2im(e, cols, dx, window, zero):
    # Gather: the thread of input element (n, c, h, w) sums, taps in order, every column
    # entry that read it; it is that element's only writer.
    n, c, h, w = unravel4(e, dx.shape[1], dx.shape[2], dx.shape[3])
    T, Wo = window[0] * window[1], window[9]
    acc = zero
    for tap in range(T):
        i, j = window_output(h, w, tap, window)
        if i >= 0:
            acc += cols[n, c * T + tap, i * Wo + j]
    dx[n, c, h, w] = acc


def im2col(x, g, out=None):
    """Unfold x (n, C, H, W) into cols (n, C*kh*kw, Ho*Wo) on the device (into `out` when
    given); a pointwise window returns a view of x."""
    x = contiguous(x)
    n = x.shape[0]
    if g.pointwise:
        return x.reshape(n, g.C, g.P)
    if out is None:
        out = empty((n, g.C * g.taps, g.P), x.dtype)
    launch(_im2col, n * g.C * g.taps * g.P, x, out, g.window)
    return out


def col2im(cols, g, out):
    """Fold cols (n, C*kh*kw, Ho*Wo) into `out` (n, C, H, W), summing overlaps (a gather); returns `out`."""
    cols = contiguous(cols)
    if g.pointwise:
        return copy_into(out, cols.reshape(out.shape))
    launch(_col2im, out.shape[0] * g.C * g.H * g.W, cols, out, g.window, out.dtype.type(0))
    return out


def _chunks(g, groups: int, itemsize: int):
    # Samples per chunk: the column buffer within the workspace bound and n*groups GEMM
    # batches within the grid's z limit.
    nb = min(workspace.chunk_size(g.N, g.C * g.taps * g.P * itemsize), max(1, MAX_GRID_YZ // groups))
    for n0 in range(0, g.N, nb):
        yield n0, min(g.N, n0 + nb)


def _as_groups(wt, g, G: int):
    # wt (O, F) shared or (N, O, F) per sample as (G or N*G, O//G, F); O; F; shared
    O, F = wt.shape[wt.ndim - 2], wt.shape[wt.ndim - 1]  # the simulator's shapes refuse -1
    shared = wt.ndim == 2
    return wt.reshape(G if shared else g.N * G, O // G, F), O, F, shared


def conv_plan(g, groups, O, K, per_sample, dtype):
    """``"kernel_mixing"``, always: this backend has no cost model, and kernel mixing
    does K times less convolution work. (What :mod:`dynconv_np.strategy` forces applies
    to the CPU backend only.)"""
    return "kernel_mixing"


def conv_forward(x, wt, bt, g, groups, saved=None):
    """``Y_n = Wt_n @ X_n + bt_n`` for shared or per-sample kernels, on the device.

    Parameters
    ----------
    x : device array (N, C, H, W)
    wt : device array (O, C//groups*kh*kw) shared, or (N, O, C//groups*kh*kw) per sample
    bt : device array (O,) or (N, O), or None
    g : Geometry
    groups : int
    saved : dict, optional
        The interface's place for what the backward can reuse; this backend keeps
        nothing in it.

    Returns
    -------
    y : device array (N, O, Ho, Wo)
    """
    x = contiguous(x)
    G = groups
    w3, O, F, shared = _as_groups(contiguous(wt), g, G)
    y = empty((g.N, O, g.Ho, g.Wo), x.dtype)
    for n0, n1 in _chunks(g, G, x.dtype.itemsize):
        nb = n1 - n0
        cols = im2col(x[n0:n1], g).reshape(nb * G, F, g.P)
        gemm3(w3 if shared else w3[n0 * G:n1 * G], cols, y[n0:n1].reshape(nb * G, O // G, g.P))
    if bt is not None:
        bt = contiguous(bt)
        add_rows(y.reshape(g.N, O, g.P), bt.reshape(1, O) if bt.ndim == 1 else bt)
    return y


def conv_backward(x, wt, dy, g, groups, need_dx=True, need_dw=True, saved=None):
    """Backward of :func:`conv_forward`, on the device.

    Parameters
    ----------
    x : device array (N, C, H, W)
    wt : device array (O, F) shared or (N, O, F) per sample, ``F = C//groups*kh*kw``
    dy : device array (N, O, Ho, Wo)

    Returns
    -------
    dx : device array (N, C, H, W) or None
    gw : device array (O, F) for shared kernels (``sum_n dY_n X_n^T``), (N, O, F) per
        sample (``G_n = dY_n X_n^T``), or None
    dbt : device array (O,) shared or (N, O) per sample: ``dY`` summed over pixels
    """
    x = contiguous(x)
    dy = contiguous(dy)
    G = groups
    w3, O, F, shared = _as_groups(contiguous(wt), g, G)
    Og = O // G
    dx = empty((g.N, g.C, g.H, g.W), x.dtype) if need_dx else None
    gw = empty((O, F) if shared else (g.N, O, F), x.dtype) if need_dw else None
    for n0, n1 in _chunks(g, G, x.dtype.itemsize):
        nb = n1 - n0
        dy3 = dy[n0:n1].reshape(nb * G, Og, g.P)
        if need_dw:
            cols = im2col(x[n0:n1], g).reshape(nb * G, F, g.P)
            if shared:
                # sum_n dY_n X_n^T inside one launch (R = nb samples, in order); later
                # chunks add onto the earlier ones.
                gemm3(dy3, cols, gw.reshape(G, Og, F), tb=True, R=nb, accumulate=n0 > 0)
            else:
                gemm3(dy3, cols, gw[n0:n1].reshape(nb * G, Og, F), tb=True)
        if need_dx:
            w = w3 if shared else w3[n0 * G:n1 * G]
            if g.pointwise:
                gemm3(w, dy3, dx[n0:n1].reshape(nb * G, F, g.P), ta=True)
            else:
                dcols = empty((nb * G, F, g.P), x.dtype)
                gemm3(w, dy3, dcols, ta=True)
                col2im(dcols.reshape(nb, G * F, g.P), g, dx[n0:n1])
    dbt = row_sums(dy.reshape(g.N, O, g.P))
    return dx, gw, (column_sums(dbt) if shared else dbt)
