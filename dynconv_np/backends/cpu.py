"""CPU backend: Numba-parallel data movement around BLAS GEMMs.

Layout of the column buffer (Chainer's, flattened): ``cols[n, (c*kh + u)*kw + v, i*Wo + j]
= xpad[n, c, i*sh + u*dh, j*sw + v*dw]``.

Two paths for the convolution template (``conv_forward``/``conv_backward``), chosen from
the shapes alone:

* batches of :data:`MIN_BATCH` samples or more go to the *slot kernels*
  (``_fwd_slots``, ``_bwd_slots``): one Numba region per pass, parallel over
  :data:`SLOTS` sample slots. A slot takes its samples one at a time and, tile of output
  rows by tile, unfolds the tile into its own cache-sized buffer (:data:`TILE_BYTES`,
  so the columns are written and read back from L2, never from memory) and runs
  single-threaded BLAS GEMMs on it (``np.dot`` inside Numba; BLAS is held at one thread
  meanwhile, so Numba's and BLAS's threads never compete). The backward computes the
  kernel gradient, the input gradient (col2im of each tile into the sample's ``dx``)
  and the bias gradient in the same sweep, with one unfold per tile.
* smaller batches (batch 1 has nothing to spread over threads) and pointwise layers (no
  unfold to keep in cache) unfold whole chunks with the parallel ``_im2col`` and hand
  the GEMMs to multithreaded BLAS via ``np.matmul``.

Determinism: every thread owns what it writes (a slot owns its samples' outputs, an
``_im2col``/``_col2im`` thread owns an ``(n, c)`` plane); shared-kernel gradients are
summed per slot in sample order and then over slots in slot order; tile, chunk and slot
counts depend on the shapes and budgets, never on the thread count. Results are bitwise
identical whatever ``NUMBA_NUM_THREADS`` is (tests/test_cpu_backend.py).

Inner loops index flat arrays with unsigned integers: without Numba's negative-index
wraparound check, LLVM vectorises the copies (measured 2.5 to 4x faster).
"""

from __future__ import annotations

import contextlib

import numpy as np
from numba import njit, prange

#: Upper bound, in bytes, on the workspace of one batch chunk (the im2col column buffer
#: of the conv template, the atom features ``Z`` of ``atom_conv2d``).
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


def _is_pointwise(g) -> bool:
    # A 1x1, stride-1, unpadded window: the columns are x itself.
    return g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.ph == 0 and g.pw == 0


def im2col(x: np.ndarray, g, out: np.ndarray | None = None) -> np.ndarray:
    """Unfold ``x (n, C, H, W)`` into ``cols (n, C*kh*kw, Ho*Wo)``."""
    n = x.shape[0]
    x = np.ascontiguousarray(x)
    if _is_pointwise(g):
        return x.reshape(n, g.C, g.P)
    if out is None or not out.flags.c_contiguous:
        res = np.empty((n, g.C * g.taps, g.P), dtype=x.dtype)
        _im2col(x, res, *g.ints())
        if out is None:
            return res
        out[...] = res
        return out
    _im2col(x, out, *g.ints())
    return out


def col2im(cols: np.ndarray, g, out: np.ndarray) -> np.ndarray:
    """Fold ``cols (n, C*kh*kw, Ho*Wo)`` back into ``out (n, C, H, W)``, summing overlaps."""
    if _is_pointwise(g):
        out[...] = cols.reshape(out.shape)
        return out
    cols = np.ascontiguousarray(cols)
    if not out.flags.c_contiguous:
        res = np.empty(out.shape, dtype=out.dtype)
        _col2im(cols, res, *g.ints())
        out[...] = res
        return out
    _col2im(cols, out, *g.ints())
    return out


# ----------------------------------------------------------------------------- batch kernels
# The fast path: one Numba region per pass, parallel over a fixed number of sample
# slots. Slot s handles samples s, s+S, s+2S, ... in order, each sample entirely
# (im2col of a row tile into the slot's own cache-sized buffer, then single-threaded
# BLAS GEMMs on it), so every output a slot writes is owned by it, and partial sums
# are accumulated in an order fixed by the shapes alone.
@njit(inline="always")
def _im2col_rows(x, n, cols, i0, i1, c0, c1, kh, kw, sh, sw, ph, pw, dh, dw, Wo):
    # cols (C*kh*kw, (i1-i0)*Wo) <- the window rows i0..i1-1 of sample n, channels c0..c1-1.
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    xf = x.reshape(x.size)
    cf = cols.reshape(cols.size)
    Pt = cols.shape[1]
    for c in range(c0, c1):
        xc = (n * C + c) * H * W
        for u in range(kh):
            ilo, ihi = _valid_range(ph, u * dh, sh, H, i1)
            for v in range(kw):
                r0 = ((c * kh + u) * kw + v) * Pt
                jlo, jhi = _valid_range(pw, v * dw, sw, W, Wo)
                for i in range(i0, i1):
                    d = r0 + (i - i0) * Wo
                    if i < ilo or i >= ihi:
                        for j in range(Wo):
                            cf[np.uint64(d + j)] = 0
                        continue
                    src = xc + (i * sh - ph + u * dh) * W + v * dw - pw
                    for j in range(jlo):
                        cf[np.uint64(d + j)] = 0
                    if sw == 1:
                        for j in range(jlo, jhi):
                            cf[np.uint64(d + j)] = xf[np.uint64(src + j)]
                    else:
                        for j in range(jlo, jhi):
                            cf[np.uint64(d + j)] = xf[np.uint64(src + j * sw)]
                    for j in range(jhi, Wo):
                        cf[np.uint64(d + j)] = 0


@njit(inline="always")
def _col2im_rows(cols, dx, n, i0, i1, c0, c1, kh, kw, sh, sw, ph, pw, dh, dw, Wo):
    # dx[n, c0:c1] += fold of cols (C*kh*kw, (i1-i0)*Wo), the window rows i0..i1-1.
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    df = dx.reshape(dx.size)
    cf = cols.reshape(cols.size)
    Pt = cols.shape[1]
    for c in range(c0, c1):
        xc = (n * C + c) * H * W
        for u in range(kh):
            ilo, ihi = _valid_range(ph, u * dh, sh, H, i1)
            for v in range(kw):
                r0 = ((c * kh + u) * kw + v) * Pt
                jlo, jhi = _valid_range(pw, v * dw, sw, W, Wo)
                for i in range(max(i0, ilo), ihi):
                    d = r0 + (i - i0) * Wo
                    dst = xc + (i * sh - ph + u * dh) * W + v * dw - pw
                    if sw == 1:
                        for j in range(jlo, jhi):
                            df[np.uint64(dst + j)] += cf[np.uint64(d + j)]
                    else:
                        for j in range(jlo, jhi):
                            df[np.uint64(dst + j * sw)] += cf[np.uint64(d + j)]


@njit(parallel=True, cache=True)
def _im2col(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    N, C = x.shape[0], x.shape[1]
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        _im2col_rows(x, n, cols[n], 0, Ho, c, c + 1, kh, kw, sh, sw, ph, pw, dh, dw, Wo)


@njit(parallel=True, cache=True)
def _col2im(cols, dx, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    # Ownership: the thread of plane (n, c) is the only writer of dx[n, c].
    N, C = dx.shape[0], dx.shape[1]
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        dx[n, c, :, :] = 0
        _col2im_rows(cols[n], dx, n, 0, Ho, c, c + 1, kh, kw, sh, sw, ph, pw, dh, dw, Wo)


@njit(inline="always")
def _store_tile(y_n, out, bt, n, p0, inplace):
    # y_n[:, p0:p0+Pt] = out (O, Pt) + bias; with ``inplace`` the GEMM already wrote y_n.
    O, P = y_n.shape
    Pt = out.shape[1]
    yf = y_n.reshape(y_n.size)
    of = out.reshape(out.size)
    has_bias = bt.shape[0] > 0
    for o in range(O):
        dst = o * P + p0
        if inplace:
            if has_bias:
                b = bt[n if bt.shape[0] > 1 else 0, o]
                for p in range(Pt):
                    yf[np.uint64(dst + p)] += b
        else:
            src = o * Pt
            if has_bias:
                b = bt[n if bt.shape[0] > 1 else 0, o]
                for p in range(Pt):
                    yf[np.uint64(dst + p)] = of[np.uint64(src + p)] + b
            else:
                for p in range(Pt):
                    yf[np.uint64(dst + p)] = of[np.uint64(src + p)]


@njit(inline="always")
def _load_tile(dyt, dy_n, p0):
    # dyt (O, Pt) <- dy_n[:, p0:p0+Pt]
    O, P = dy_n.shape
    Pt = dyt.shape[1]
    tf = dyt.reshape(dyt.size)
    df = dy_n.reshape(dy_n.size)
    for o in range(O):
        for p in range(Pt):
            tf[np.uint64(o * Pt + p)] = df[np.uint64(o * P + p0 + p)]


@njit(inline="always")
def _pixel_sums(dy, dbt, n):
    # dbt[n, o] = sum_p dy[n, o, p] in float64, four interleaved partial sums (for
    # instruction-level parallelism) combined in a fixed order.
    O, P = dy.shape[1], dy.shape[2]
    df = dy.reshape(dy.size)
    P4 = P - P % 4
    for o in range(O):
        base = (n * O + o) * P
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        for p in range(0, P4, 4):
            q = np.uint64(base + p)
            a0 += df[q]
            a1 += df[q + 1]
            a2 += df[q + 2]
            a3 += df[q + 3]
        for p in range(P4, P):
            a0 += df[np.uint64(base + p)]
        dbt[n, o] = (a0 + a1) + (a2 + a3)


@njit(parallel=True, cache=True)
def _fwd_slots(x, wt, bt, y, ws, S, R, G, pointwise, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    # x (N, C, H, W); wt (N or 1, O, Fg); bt (N or 1, O), or (0, O) for no bias;
    # y (N, O, Ho*Wo); ws (S, workspace floats).
    N, C = x.shape[0], x.shape[1]
    O, Fg = wt.shape[1], wt.shape[2]
    Og = O // G
    CT = C * kh * kw
    P = Ho * Wo
    for s in prange(S):
        buf = ws[s]
        for n in range(s, N, S):
            w_n = wt[n if wt.shape[0] > 1 else 0]
            y_n = y[n]
            for i0 in range(0, Ho, R):
                i1 = min(Ho, i0 + R)
                Pt = (i1 - i0) * Wo
                if pointwise:
                    cols = x[n].reshape(C, P)
                else:
                    cols = buf[:CT * Pt].reshape(CT, Pt)
                    _im2col_rows(x, n, cols, i0, i1, 0, C, kh, kw, sh, sw, ph, pw, dh, dw, Wo)
                out = y_n if Pt == P else buf[CT * Pt:CT * Pt + O * Pt].reshape(O, Pt)
                for g in range(G):
                    np.dot(w_n[g * Og:(g + 1) * Og], cols[g * Fg:(g + 1) * Fg], out[g * Og:(g + 1) * Og])
                _store_tile(y_n, out, bt, n, i0 * Wo, Pt == P)


@njit(parallel=True, cache=True)
def _bwd_slots(x, wt, dy, dx, gw, dbt, ws, S, R, G, pointwise, need_dx, need_dw,
               kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    # x (N, C, H, W); wt (N or 1, O, Fg); dy (N, O, Ho*Wo); dx (N, C, H, W);
    # gw (N, O, Fg) per sample, or (S, O, Fg) slot partials for a shared kernel;
    # dbt (N, O), the pixel sums of dy, accumulated in float64 in a fixed order.
    N, C = x.shape[0], x.shape[1]
    O, Fg = wt.shape[1], wt.shape[2]
    Og = O // G
    CT = C * kh * kw
    P = Ho * Wo
    shared = wt.shape[0] == 1
    for s in prange(S):
        buf = ws[s]
        if need_dw and shared:
            gw[s, :, :] = 0
        for n in range(s, N, S):
            w_n = wt[0 if shared else n]
            g_n = gw[s] if shared else gw[n]
            _pixel_sums(dy, dbt, n)
            if need_dx and not pointwise:
                dx[n, :, :, :] = 0
            for i0 in range(0, Ho, R):
                i1 = min(Ho, i0 + R)
                Pt = (i1 - i0) * Wo
                at = 0 if pointwise else CT * Pt
                if Pt == P:
                    dyt = dy[n]
                else:
                    dyt = buf[at:at + O * Pt].reshape(O, Pt)
                    _load_tile(dyt, dy[n], i0 * Wo)
                    at += O * Pt
                if need_dw:
                    if pointwise:
                        cols = x[n].reshape(C, P)
                    else:
                        cols = buf[:CT * Pt].reshape(CT, Pt)
                        _im2col_rows(x, n, cols, i0, i1, 0, C, kh, kw, sh, sw, ph, pw, dh, dw, Wo)
                    direct = Pt == P and not shared
                    tmp = g_n if direct else buf[at:at + O * Fg].reshape(O, Fg)
                    for g in range(G):
                        np.dot(dyt[g * Og:(g + 1) * Og], cols[g * Fg:(g + 1) * Fg].T,
                               tmp[g * Og:(g + 1) * Og])
                    if not direct:
                        if i0 == 0 and not shared:
                            g_n[:, :] = tmp
                        else:
                            g_n += tmp
                if need_dx:
                    dcols = dx[n].reshape(C, P) if pointwise else buf[:CT * Pt].reshape(CT, Pt)
                    for g in range(G):
                        np.dot(w_n[g * Og:(g + 1) * Og].T, dyt[g * Og:(g + 1) * Og],
                               dcols[g * Fg:(g + 1) * Fg])
                    if not pointwise:
                        _col2im_rows(dcols, dx, n, i0, i1, 0, C, kh, kw, sh, sw, ph, pw, dh, dw, Wo)


# ----------------------------------------------------------------------------- template
#: Samples are spread over this many slots by the batch kernels (a constant, so that the
#: order of every partial sum is the same whatever the thread count).
SLOTS = 8
#: Budget, in bytes, of one slot's column tile: small enough to stay in a core's L2.
TILE_BYTES = 1 * 2**20
#: Smallest batch that goes to the batch kernels; smaller ones use multithreaded BLAS.
MIN_BATCH = 4

_blas_controller = None


def blas_single_thread():
    """Context in which BLAS runs on one thread (the caller parallelises around it)."""
    global _blas_controller
    if _blas_controller is None:
        try:
            import scipy.linalg.cython_blas  # noqa: F401  (Numba's np.dot calls this BLAS)
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_controller = False
        else:
            _blas_controller = ThreadpoolController()
    if _blas_controller is False:
        return contextlib.nullcontext()
    return _blas_controller.limit(limits=1, user_api="blas")


def _use_slots(g) -> bool:
    # Pointwise layers have no unfold to keep in cache; their small GEMMs ran faster as
    # NumPy's batched matmul (measured 35 against 52 ms on mbv2_1x1, interleaved).
    return g.N >= MIN_BATCH and not _is_pointwise(g)


def _rows_per_tile(g, itemsize: int) -> int:
    if _is_pointwise(g):
        return g.Ho
    return max(1, min(g.Ho, TILE_BYTES // (g.C * g.taps * g.Wo * itemsize)))


def _slot_workspace(g, O, F, R, dtype):
    S = min(g.N, SLOTS)
    Pt = R * g.Wo
    cols = 0 if _is_pointwise(g) else g.C * g.taps * Pt
    return S, np.empty((S, cols + O * Pt + O * F), dtype=dtype)


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
    if _use_slots(g):
        R = _rows_per_tile(g, x.dtype.itemsize)
        S, ws = _slot_workspace(g, O, F, R, x.dtype)
        w3 = wt.reshape(1, O, F) if shared else wt
        b2 = np.zeros((0, O), x.dtype) if bt is None else bt.reshape(-1, O)
        with blas_single_thread():
            _fwd_slots(x, w3, contiguous(b2), y.reshape(g.N, O, g.P), ws, S, R, G,
                       _is_pointwise(g), *g.ints())
        return y
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
    dx = np.empty((g.N, g.C, g.H, g.W), dtype=x.dtype) if need_dx else None
    if _use_slots(g):
        R = _rows_per_tile(g, x.dtype.itemsize)
        S, ws = _slot_workspace(g, O, F, R, x.dtype)
        w3 = wt.reshape(1, O, F) if shared else wt
        gw = np.empty((S if shared else g.N, O, F), dtype=x.dtype)
        dbt = np.empty((g.N, O), dtype=x.dtype)
        dx_ = dx if need_dx else np.empty((0, g.C, g.H, g.W), dtype=x.dtype)
        with blas_single_thread():
            _bwd_slots(x, w3, dy.reshape(g.N, O, g.P), dx_, gw, dbt, ws, S, R, G,
                       _is_pointwise(g), need_dx, need_dw, *g.ints())
        if not need_dw:
            gw = None  # never written by the kernel
        if shared:
            # Slot partials summed in slot order: a fixed order, whatever the threads.
            gw = None if gw is None else np.add.reduce(gw, axis=0)
            dbt = np.add.reduce(dbt, axis=0)
        return dx, gw, dbt
    w4 = wt.reshape(G, Og, F) if shared else wt.reshape(g.N, G, Og, F)
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
#: Products whose inner dimension is at most this are summed by broadcasting, not BLAS.
THIN_INNER = 2


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # An outer product (the batch-1 mixing gradient ``pi^T @ G``, inner dimension 1) is
    # memory-bound, and BLAS's gemm with k = 1 was measured 4x slower than broadcasting.
    if a.ndim == 2 and b.ndim == 2 and a.shape[1] <= THIN_INNER and a.shape[1] >= 1:
        out = a[:, 0:1] * b[0]
        for q in range(1, a.shape[1]):
            out += a[:, q:q + 1] * b[q]
        return out
    return np.matmul(a, b)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` through BLAS (or broadcasting, when the inner dimension is tiny)."""
    return _product(a, b)


def matmul_tn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^T @ b`` over the last two axes: a (K, M) or (B, K, M), b (K, N) or (B, K, N)."""
    return _product(np.swapaxes(a, -1, -2), b)


def matmul_nt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b^T`` over the last two axes: a (M, K) or (B, M, K), b (N, K) or (B, N, K)."""
    return _product(a, np.swapaxes(b, -1, -2))


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise ``a + b`` (a new array)."""
    return np.add(a, b)


def to_device(a: np.ndarray) -> np.ndarray:
    """The CPU backend's arrays are host arrays: ``a`` as a C-contiguous array."""
    return np.ascontiguousarray(a)


def to_host(a: np.ndarray) -> np.ndarray:
    """The CPU backend's arrays are host arrays: ``a`` itself."""
    return np.asarray(a)


# ----------------------------------------------------------------------------- DCD helpers
def _centre_span(g, axis: int) -> tuple[int, int, int]:
    # Output indices [lo, hi) whose centre tap falls inside x, and the first input index.
    k, s, p, d, size, out = ((g.kh, g.sh, g.ph, g.dh, g.H, g.Ho) if axis == 0
                             else (g.kw, g.sw, g.pw, g.dw, g.W, g.Wo))
    off = (k // 2) * d
    lo = max(0, -((off - p) // s))
    hi = min(out, (size - 1 + p - off) // s + 1)
    hi = max(lo, hi)
    return lo, hi, lo * s - p + off


def centre_taps(x: np.ndarray, g) -> np.ndarray:
    """``xs (N, C, Ho, Wo)``: x at every output pixel's centre tap, zero in the padding."""
    xs = np.zeros((g.N, g.C, g.Ho, g.Wo), dtype=x.dtype)
    i0, i1, h0 = _centre_span(g, 0)
    j0, j1, w0 = _centre_span(g, 1)
    if i1 > i0 and j1 > j0:
        xs[:, :, i0:i1, j0:j1] = x[:, :, h0:h0 + (i1 - i0 - 1) * g.sh + 1:g.sh,
                                   w0:w0 + (j1 - j0 - 1) * g.sw + 1:g.sw]
    return xs


def add_centre_taps(dx: np.ndarray, dxs: np.ndarray, g) -> np.ndarray:
    """``dx (N, C, H, W) += dxs (N, C, Ho, Wo)`` at the centre-tap positions, in place; returns `dx`."""
    i0, i1, h0 = _centre_span(g, 0)
    j0, j1, w0 = _centre_span(g, 1)
    if i1 > i0 and j1 > j0:
        # Distinct output pixels have distinct centre taps: no index repeats.
        dx[:, :, h0:h0 + (i1 - i0 - 1) * g.sh + 1:g.sh,
           w0:w0 + (j1 - j0 - 1) * g.sw + 1:g.sw] += dxs[:, :, i0:i1, j0:j1]
    return dx


def scale_rows(a: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``a (N, O, P) * s (N, O)[:, :, None]`` (a new array)."""
    return a * s[:, :, None]


def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_p a[n, o, p] * b[n, o, p]`` -> (N, O)."""
    return np.einsum("nop,nop->no", a, b)


def matmul_nt_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_n a[n] @ b[n]^T``: a (N, M, K), b (N, J, K) -> (M, J), as one GEMM over ``N*K``."""
    N, M, K = a.shape
    J = b.shape[1]
    a2 = np.ascontiguousarray(a.transpose(1, 0, 2)).reshape(M, N * K)
    b2 = np.ascontiguousarray(b.transpose(1, 0, 2)).reshape(J, N * K)
    return np.matmul(a2, b2.T)


# Array-level primitives (routing ops, atom_conv2d, layers) live in their own module.
from .cpu_array import *  # noqa: E402,F401,F403
