"""CPU backend: Numba-parallel data movement around BLAS GEMMs.

Layout of the column buffer (Chainer's, flattened): ``cols[n, (c*kh + u)*kw + v, i*Wo + j]
= xpad[n, c, i*sh + u*dh, j*sw + v*dw]``.

The convolution template (``conv_forward``/``conv_backward``) runs every GEMM as a
single-threaded BLAS call inside one Numba region per pass; BLAS is held at one thread
meanwhile, so Numba's and BLAS's threads never compete (OpenBLAS threads left spinning
after a multithreaded call were measured to halve the speed of the Numba region that
follows).

* forward (``_fwd_items``): work items are (sample, tile of output rows) pairs, spread
  over all threads. An item unfolds its tile into its thread's cache-sized buffer
  (:data:`TILE_BYTES`, so the columns are written and read back from L2, never from
  memory) and multiplies it by the sample's kernel. Small batches are cut into more,
  smaller tiles.
* backward, batches of :data:`MIN_BATCH` samples or more (``_bwd_samples``): a sample is
  done whole, tile by tile: the kernel gradient, the input gradient (col2im of each tile
  into the sample's ``dx``) and the bias gradient with one unfold per tile. Per-sample
  kernels spread the samples over all threads; a shared kernel's gradient is summed
  over :data:`SLOTS` fixed slots of samples.
* backward, smaller batches (``_bwd_blocks``): work items are blocks of input channels.
  An item unfolds its block over the whole image and owns its columns of the kernel
  gradient and its planes of ``dx``.

Pointwise layers (1x1, stride 1, no padding) skip the unfold: the columns are ``x``.

Determinism: every work item owns what it writes (a tile its outputs, a sample its
gradients, a channel block its gradient columns and ``dx`` planes, an
``_im2col``/``_col2im`` thread an ``(n, c)`` plane), so which thread takes it changes
nothing, and a thread's scratch buffer is only workspace; a shared kernel's gradient is
summed per slot in sample order and then over slots in slot order; tile, block and slot
counts depend on the shapes and budgets, never on the thread count. Results are bitwise
identical whatever ``NUMBA_NUM_THREADS`` is (tests/test_cpu_backend.py).

Inner loops index flat arrays with unsigned integers: without Numba's negative-index
wraparound check, LLVM vectorises the copies (measured 2.5 to 4x faster).
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange

#: Upper bound, in bytes, on the workspace of one batch chunk (the atom features ``Z``
#: of ``atom_conv2d``; the conv template's buffers are per thread, :data:`TILE_BYTES`).
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
# One Numba region per pass. Each work item (a row tile, a sample, a channel block)
# unfolds into a cache-sized buffer and runs single-threaded BLAS GEMMs on it; it owns
# every output it writes, and partial sums are accumulated in an order fixed by the
# shapes alone (see the module docstring).
@njit(inline="always")
def _im2col_rows(x, n, cols, i0, i1, c0, c1, kh, kw, sh, sw, ph, pw, dh, dw, Wo):
    # cols ((c1-c0)*kh*kw, (i1-i0)*Wo) <- the window rows i0..i1-1 of sample n, channels c0..c1-1.
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    xf = x.reshape(x.size)
    cf = cols.reshape(cols.size)
    Pt = cols.shape[1]
    for c in range(c0, c1):
        xc = (n * C + c) * H * W
        for u in range(kh):
            ilo, ihi = _valid_range(ph, u * dh, sh, H, i1)
            for v in range(kw):
                r0 = (((c - c0) * kh + u) * kw + v) * Pt
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
    # dx[n, c0:c1] += fold of cols ((c1-c0)*kh*kw, (i1-i0)*Wo), the window rows i0..i1-1.
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    df = dx.reshape(dx.size)
    cf = cols.reshape(cols.size)
    Pt = cols.shape[1]
    for c in range(c0, c1):
        xc = (n * C + c) * H * W
        for u in range(kh):
            ilo, ihi = _valid_range(ph, u * dh, sh, H, i1)
            for v in range(kw):
                r0 = (((c - c0) * kh + u) * kw + v) * Pt
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
        T = kh * kw
        _im2col_rows(x, n, cols[n, c * T:(c + 1) * T], 0, Ho, c, c + 1, kh, kw, sh, sw, ph, pw, dh, dw, Wo)


@njit(parallel=True, cache=True)
def _col2im(cols, dx, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    # Ownership: the thread of plane (n, c) is the only writer of dx[n, c].
    N, C = dx.shape[0], dx.shape[1]
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        dx[n, c, :, :] = 0
        T = kh * kw
        _col2im_rows(cols[n, c * T:(c + 1) * T], dx, n, 0, Ho, c, c + 1, kh, kw, sh, sw, ph, pw, dh, dw, Wo)


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
def _fwd_items(x, wt, bt, y, ws, R, G, pointwise, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    # x (N, C, H, W); wt (N or 1, O, Fg); bt (N or 1, O), or (0, O) for no bias;
    # y (N, O, Ho*Wo); ws (threads, workspace floats). Work items are (sample, row tile)
    # pairs, item t = n * tiles + tile, each owning its part of y: which thread takes
    # which item does not change any result, so each thread works in its own buffer.
    N, C = x.shape[0], x.shape[1]
    O, Fg = wt.shape[1], wt.shape[2]
    Og = O // G
    CT = C * kh * kw
    P = Ho * Wo
    tiles = (Ho + R - 1) // R
    for t in prange(N * tiles):
        buf = ws[get_thread_id()]
        n = t // tiles
        i0 = (t - n * tiles) * R
        i1 = min(Ho, i0 + R)
        Pt = (i1 - i0) * Wo
        w_n = wt[n if wt.shape[0] > 1 else 0]
        y_n = y[n]
        if pointwise:
            cols = x[n].reshape(C, P)
        else:
            cols = buf[:CT * Pt].reshape(CT, Pt)
            _im2col_rows(x, n, cols, i0, i1, 0, C, kh, kw, sh, sw, ph, pw, dh, dw, Wo)
        out = y_n if Pt == P else buf[CT * Pt:CT * Pt + O * Pt].reshape(O, Pt)
        for g in range(G):
            np.dot(w_n[g * Og:(g + 1) * Og], cols[g * Fg:(g + 1) * Fg], out[g * Og:(g + 1) * Og])
        _store_tile(y_n, out, bt, n, i0 * Wo, Pt == P)


@njit(inline="always")
def _bwd_sample(x, w_n, dy, dx, g_n, dbt, buf, n, first, R, G, pointwise, need_dx, need_dw,
                kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    # Sample n of the backward, tile by tile: one unfold per tile, g_n (O, Fg) =
    # (first: set, else: add) dY X^T, the tile's dX folded into dx[n], the bias sums.
    C = x.shape[1]
    O, Fg = w_n.shape
    Og = O // G
    CT = C * kh * kw
    P = Ho * Wo
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
            direct = first and i0 == 0
            tmp = g_n if direct else buf[at:at + O * Fg].reshape(O, Fg)
            for g in range(G):
                np.dot(dyt[g * Og:(g + 1) * Og], cols[g * Fg:(g + 1) * Fg].T,
                       tmp[g * Og:(g + 1) * Og])
            if not direct:
                g_n += tmp
        if need_dx:
            dcols = dx[n].reshape(C, P) if pointwise else buf[:CT * Pt].reshape(CT, Pt)
            for g in range(G):
                np.dot(w_n[g * Og:(g + 1) * Og].T, dyt[g * Og:(g + 1) * Og],
                       dcols[g * Fg:(g + 1) * Fg])
            if not pointwise:
                _col2im_rows(dcols, dx, n, i0, i1, 0, C, kh, kw, sh, sw, ph, pw, dh, dw, Wo)


@njit(parallel=True, cache=True)
def _bwd_samples(x, wt, dy, dx, gw, dbt, ws, S, R, G, pointwise, need_dx, need_dw,
                 kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    # x (N, C, H, W); wt (N or 1, O, Fg); dy (N, O, Ho*Wo); dx (N, C, H, W);
    # gw (N, O, Fg) per sample, or (S, O, Fg) slot partials for a shared kernel;
    # dbt (N, O), the pixel sums of dy, accumulated in float64 in a fixed order.
    N = x.shape[0]
    if wt.shape[0] == 1:
        # A shared kernel's gradient sums over samples: slot s sums samples s, s+S, ...
        # in order into gw[s] (S fixed by the shapes), so the sum's order never depends
        # on the threads. ws (S, workspace floats).
        for s in prange(S):
            if need_dw:
                gw[s, :, :] = 0
            for n in range(s, N, S):
                _bwd_sample(x, wt[0], dy, dx, gw[s], dbt, ws[s], n, False, R, G, pointwise,
                            need_dx, need_dw, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
    else:
        # Per-sample kernels: a sample owns all it writes, so any thread may take it,
        # working in its own buffer. ws (threads, workspace floats).
        for n in prange(N):
            _bwd_sample(x, wt[n], dy, dx, gw[n], dbt, ws[get_thread_id()], n, True, R, G,
                        pointwise, need_dx, need_dw, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)


@njit(parallel=True, cache=True)
def _bwd_blocks(x, wt, dy, dx, gw, dbt, ws, blocks, G, pointwise, need_dx, need_dw,
                kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo):
    # The backward for batches too small to spread over samples. Work items are channel
    # blocks, ``blocks[b] = (group, c0, c1)`` with c0..c1-1 inside one group; an item
    # unfolds its block over the whole image, one sample after the other, and owns all
    # it writes: the block's columns of the kernel gradient and its planes of dx. Any
    # thread may take any block, in its own buffer (ws (threads, workspace floats)).
    # x (N, C, H, W); wt (N or 1, O, Fg); dy (N, O, Ho*Wo); dx (N, C, H, W);
    # gw (N or 1, O, Fg) (a shared kernel's gradient summed over n in order); dbt (N, O).
    N, C = x.shape[0], x.shape[1]
    O = wt.shape[1]
    Og = O // G
    Cg = C // G
    T = kh * kw
    P = Ho * Wo
    shared = wt.shape[0] == 1
    for n in prange(N):
        _pixel_sums(dy, dbt, n)
    for b in prange(blocks.shape[0]):
        buf = ws[get_thread_id()]
        gi, c0, c1 = blocks[b, 0], blocks[b, 1], blocks[b, 2]
        rows = (c1 - c0) * T
        f0 = (c0 - gi * Cg) * T
        o0 = gi * Og
        at = 0 if pointwise else rows * P
        blk = buf[:at].reshape(rows, at // rows)
        tmp = buf[at:at + Og * rows].reshape(Og, rows)
        for n in range(N):
            dyg = dy[n, o0:o0 + Og]                                  # (Og, P)
            if need_dw:
                if pointwise:
                    cols = x[n, c0:c1].reshape(rows, P)
                else:
                    cols = blk
                    _im2col_rows(x, n, cols, 0, Ho, c0, c1, kh, kw, sh, sw, ph, pw, dh, dw, Wo)
                np.dot(dyg, cols.T, tmp)
                g_n = gw[0 if shared else n]
                if shared and n > 0:
                    g_n[o0:o0 + Og, f0:f0 + rows] += tmp
                else:
                    g_n[o0:o0 + Og, f0:f0 + rows] = tmp
            if need_dx:
                # the block's kernel columns, copied: BLAS needs unit stride in one axis
                tmp[:, :] = wt[0 if shared else n, o0:o0 + Og, f0:f0 + rows]
                if pointwise:
                    np.dot(tmp.T, dyg, dx[n, c0:c1].reshape(rows, P))
                else:
                    np.dot(tmp.T, dyg, blk)
                    dx[n, c0:c1] = 0
                    _col2im_rows(blk, dx, n, 0, Ho, c0, c1, kh, kw, sh, sw, ph, pw, dh, dw, Wo)


# ----------------------------------------------------------------------------- template
#: A shared kernel's gradient is summed over this many slots of samples (a constant, so
#: that the order of every partial sum is the same whatever the thread count).
SLOTS = 8
#: Budget, in bytes, of one work item's column tile: small enough to stay in a core's L2.
TILE_BYTES = 1 * 2**20
#: Smallest batch whose backward is split over samples; smaller ones are split over
#: channel blocks instead (``_bwd_blocks``).
MIN_BATCH = 4
#: The forward splits a small batch into at least this many (sample, row tile) items.
MIN_ITEMS = 4

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


def _use_blocks(g) -> bool:
    # A batch smaller than MIN_BATCH has too few samples to keep the threads busy.
    return g.N < MIN_BATCH


def _rows_per_tile(g, itemsize: int) -> int:
    if _is_pointwise(g):
        return g.Ho
    R = max(1, min(g.Ho, TILE_BYTES // (g.C * g.taps * g.Wo * itemsize)))
    # a small batch is cut into more, smaller tiles so that every thread has work
    per_sample = -(-MIN_ITEMS // max(1, g.N))
    return max(1, min(R, -(-g.Ho // per_sample)))


_scratch_store = threading.local()


def _scratch(rows: int, cols: int, dtype) -> np.ndarray:
    """A ``(rows, cols)`` work buffer of the calling thread, reused from call to call.

    Its contents are garbage. Fresh buffers cost page faults on every call (measured
    about a fifth of resnet3x3's forward+backward when the allocator had handed the
    memory back to the system); one buffer per thread and dtype, grown to the largest
    request, is kept instead. Each Python thread has its own, so concurrent calls from
    several threads never share one.
    """
    store = _scratch_store.__dict__
    key = np.dtype(dtype).str
    buf = store.get(key)
    if buf is None or buf.size < rows * cols:
        buf = store[key] = np.empty(rows * cols, dtype=dtype)
    return buf[:rows * cols].reshape(rows, cols)


def _tile_workspace(g, R, dtype, rows, extra):
    # (rows, column tile + extra): one row per slot or thread; `extra` floats each for
    # GEMM outputs
    cols = 0 if _is_pointwise(g) else g.C * g.taps * R * g.Wo
    return _scratch(rows, cols + extra, dtype)


def _channel_blocks(g, G: int, itemsize: int) -> np.ndarray:
    """``(B, 3)`` rows ``(group, c0, c1)``: channel blocks of about equal size, none
    straddling a group, each block's unfolded image within :data:`TILE_BYTES`, and at
    least :data:`SLOTS` of them where there are channels enough (a constant, not the
    thread count: the blocks decide the GEMM shapes, hence the rounding)."""
    Cg = g.C // G
    cb = max(1, min(Cg, TILE_BYTES // (g.taps * g.P * itemsize)))
    nb = max(-(-Cg // cb), min(Cg, -(-SLOTS // G)))
    cb = -(-Cg // nb)
    return np.array([(gi, gi * Cg + c, gi * Cg + min(Cg, c + cb))
                     for gi in range(G) for c in range(0, Cg, cb)], dtype=np.int64)


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
    O, F = wt.shape[-2], wt.shape[-1]
    y = np.empty((g.N, O, g.Ho, g.Wo), dtype=x.dtype)
    if g.N == 0:
        return y
    R = _rows_per_tile(g, x.dtype.itemsize)
    ws = _tile_workspace(g, R, x.dtype, get_num_threads(), O * R * g.Wo)
    w3 = wt.reshape(1, O, F) if wt.ndim == 2 else wt
    b2 = np.zeros((0, O), x.dtype) if bt is None else bt.reshape(-1, O)
    with blas_single_thread():
        _fwd_items(x, w3, contiguous(b2), y.reshape(g.N, O, g.P), ws, R, groups,
                   _is_pointwise(g), *g.ints())
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
    shared = wt.ndim == 2
    w3 = wt.reshape(1, O, F) if shared else wt
    dx = np.empty((g.N, g.C, g.H, g.W), dtype=x.dtype) if need_dx else None
    if g.N == 0:
        gw = np.zeros(wt.shape if shared else (0, O, F), dtype=x.dtype) if need_dw else None
        return dx, gw, np.zeros((O,) if shared else (0, O), dtype=x.dtype)
    dx_ = dx if need_dx else np.empty((0, g.C, g.H, g.W), dtype=x.dtype)
    dbt = np.empty((g.N, O), dtype=x.dtype)
    dyr = dy.reshape(g.N, O, g.P)
    pointwise = _is_pointwise(g)
    if _use_blocks(g):
        blocks = _channel_blocks(g, G, x.dtype.itemsize)
        rows = int((blocks[:, 2] - blocks[:, 1]).max()) * g.taps
        ws = _scratch(get_num_threads(), (0 if pointwise else rows * g.P) + O // G * rows, x.dtype)
        gw = np.empty((1 if shared else g.N, O, F), dtype=x.dtype)
        with blas_single_thread():
            _bwd_blocks(x, w3, dyr, dx_, gw, dbt, ws, blocks, G, pointwise, need_dx, need_dw, *g.ints())
        gw = gw[0] if shared else gw
    else:
        R = _rows_per_tile(g, x.dtype.itemsize)
        S = min(g.N, SLOTS)
        ws = _tile_workspace(g, R, x.dtype, S if shared else get_num_threads(), O * R * g.Wo + O * F)
        gw = np.empty((S if shared else g.N, O, F), dtype=x.dtype)
        with blas_single_thread():
            _bwd_samples(x, w3, dyr, dx_, gw, dbt, ws, S, R, G, pointwise, need_dx, need_dw, *g.ints())
        if shared:
            # Slot partials summed in slot order: a fixed order, whatever the threads.
            gw = np.add.reduce(gw, axis=0)
    if not need_dw:
        gw = None  # never written by the kernels
    if shared:
        dbt = np.add.reduce(dbt, axis=0)
    return dx, gw, dbt


# ----------------------------------------------------------------------------- dense helpers
# The kernel-mixing products of dynamic_conv2d (``pi @ W`` and ``pi^T @ G``) have a short
# side (K, N) and a long one (O*F, up to millions): they stream memory, and BLAS runs
# them on one core. ``_thin_nn`` splits the long side into fixed chunks over the threads
# (results independent of the thread count): 0.9 against 1.7 ms for stride2's mixing.
# (``G @ W^T`` stays in BLAS: a chunked Numba reduction was slower.)

#: Column chunk of the thin-product kernels (floats): a chunk of every row fits in L2.
THIN_CHUNK = 2048
#: Products whose short sides are at most this and whose long side is at least
#: :data:`THIN_MIN_LONG` go to ``_thin_nn``; others to BLAS.
THIN_MAX_SHORT = 64
THIN_MIN_LONG = 8192


@njit(parallel=True, cache=True)
def _thin_nn(a, b, out):
    # out (M, D) = a (M, J) @ b (J, D), b and out C-contiguous: each column chunk by one
    # thread, the sum over j in order.
    M, J = a.shape
    D = b.shape[1]
    bf = b.reshape(b.size)
    of = out.reshape(out.size)
    for c in prange((D + THIN_CHUNK - 1) // THIN_CHUNK):
        d0 = c * THIN_CHUNK
        w = min(D, d0 + THIN_CHUNK) - d0
        for m in range(M):
            o = np.uint64(m * D + d0)
            a0 = a[m, 0]
            src = np.uint64(d0)
            for d in range(w):
                of[o + np.uint64(d)] = a0 * bf[src + np.uint64(d)]
            for j in range(1, J):
                amj = a[m, j]
                src = np.uint64(j * D + d0)
                for d in range(w):
                    of[o + np.uint64(d)] += amj * bf[src + np.uint64(d)]


def _is_thin(short: int, long: int) -> bool:
    return 1 <= short <= THIN_MAX_SHORT and long >= THIN_MIN_LONG


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (NumPy's rules): through BLAS, or the thin-product kernel for
    ``(M, J) @ (J, D)`` with small M, J and long D."""
    if a.ndim == 2 and b.ndim == 2 and _is_thin(max(a.shape), b.shape[1]) and a.dtype == b.dtype:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
        _thin_nn(a, np.ascontiguousarray(b), out)
        return out
    with blas_single_thread():
        # single-threaded: OpenBLAS threads left spinning after a call slow the Numba
        # regions that follow (resnet3x3's forward: 91 ms after, 47 ms without)
        return np.matmul(a, b)


def matmul_tn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^T @ b`` over the last two axes: a (K, M) or (B, K, M), b (K, N) or (B, K, N)."""
    return matmul(np.swapaxes(a, -1, -2), b)


def matmul_nt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b^T`` over the last two axes: a (M, K) or (B, M, K), b (N, K) or (B, N, K)."""
    return matmul(a, np.swapaxes(b, -1, -2))


def gemm(a: np.ndarray, b: np.ndarray, ta: bool = False, tb: bool = False, out: np.ndarray | None = None,
         accumulate: bool = False) -> np.ndarray:
    """``op(a) @ op(b)`` (NumPy's matmul rules), op transposing the last two axes when `ta`/`tb`.

    The one GEMM entry point of the ops: thin products go to the thin-product kernel,
    the rest to BLAS on one thread (see :func:`matmul`). With `out`, the product is
    written (or, with `accumulate`, added) into it.
    """
    a = np.swapaxes(a, -1, -2) if ta else a
    b = np.swapaxes(b, -1, -2) if tb else b
    if out is None:
        return matmul(a, b)
    with blas_single_thread():
        if accumulate:
            out += np.matmul(a, b)
        else:
            np.matmul(a, b, out=out)
    return out


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


gemm_nt_sum = matmul_nt_sum


# Array-level primitives (routing ops, atom_conv2d, layers) live in their own module.
from .cpu_array import *  # noqa: E402,F401,F403
