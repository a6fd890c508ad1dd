"""CPU conv template: ``Y_n = Wt_n @ X_n + bt_n`` and its backward, Numba-parallel data
movement around single-threaded BLAS GEMMs, each pass by the strategy the planner picks
(:mod:`.plan`: a cost model over the shapes, or what ``dynconv_np.strategy`` forces).

Every GEMM runs as a single-threaded BLAS call inside one Numba region per pass, with
BLAS held at one thread meanwhile (:func:`~dynconv_np.backends.cpu.products.blas_single_thread`),
so Numba's and BLAS's threads never compete. Unfolding is the code of
:mod:`~dynconv_np.backends.cpu.unfold`: runs of output rows, or, for whole samples of
narrow outputs (``Wo <= GATHER_MAX_WO``), a gather through zero-padded channel planes
(the same columns, bitwise, without a run's set-up per output row).

Strategies ``tiles`` and ``batched`` are one pair of kernels with two layouts:

* forward (``_fwd_items``): work items are (block of B samples, tile of R output rows)
  pairs, spread over all threads. ``tiles``: B = 1, a sample's tile in its thread's
  cache-sized buffer (:data:`TILE_BYTES`, so the columns are written and read back from
  L2, never from memory), multiplied by the sample's kernel; small batches are cut into
  more, smaller tiles. ``batched`` (a shared kernel only): R = Ho and B samples' columns
  side by side (:data:`BATCH_BYTES`), one GEMM per block.
* backward, batches of :data:`MIN_BATCH` samples or more (``_bwd_samples``): an item is
  done whole, tile by tile: the kernel gradient, the input gradient (col2im of each tile
  into the samples' ``dx``) and the bias gradient with one unfold per tile. Per-sample
  kernels spread the samples over all threads; a shared kernel's gradient is summed
  over :data:`SLOTS` fixed slots of items (samples, or ``batched``'s blocks, whose
  gradient is one GEMM over the block's columns), formed transposed where a group has
  more columns than output channels (:data:`TRANSPOSED_GRADIENT`).
* backward of ``tiles``, smaller batches (``_bwd_blocks``): work items are blocks of
  input channels. An item unfolds its block over the whole image and owns its columns
  of the kernel gradient and its planes of ``dx``.

``winograd2`` / ``winograd4`` call the Winograd module (``winograd.forward`` and
``winograd.backward``, same contract as :func:`conv_forward` and :func:`conv_backward`),
``shifted`` the shifted-views module (:mod:`.shifted`, stride 1 without an unfold); both
are imported on first use.

The template's buffers are per thread (a column tile or block each), so the batch is
never chunked here: the workspace bound of ``set_workspace_bytes`` does not apply.
Pointwise windows (1x1, stride 1, no padding) skip the unfold of a single sample: the
columns are x.

Determinism: every work item owns what it writes (a tile its outputs, a sample or block
its gradients, a channel block its gradient columns and ``dx`` planes), so which thread
takes it changes nothing, and a thread's scratch buffer is only workspace; a shared
kernel's gradient is summed per slot in item order and then over slots in slot order;
tile, block and slot counts, and the strategy, depend on the shapes and budgets, never
on the thread count. Results are bitwise identical whatever ``NUMBA_NUM_THREADS`` is
(tests/test_cpu_backend.py, tests/test_strategy.py).
"""

from __future__ import annotations

import functools
import math
import mmap
import threading

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange

from . import plan
from .blas import dot_into
from .index import ceil_div, split
from .products import blas_single_thread
from .unfold import col2im_part, col2im_planes, col2im_rows, im2col_part, im2col_planes, im2col_rows, plane_shape


# ----------------------------------------------------------------------------- batch kernels
# One Numba region per pass. Each work item (a row tile, a sample, a channel block)
# unfolds into a cache-sized buffer and runs single-threaded BLAS GEMMs on it; it owns
# every output it writes, and partial sums are accumulated in an order fixed by the
# shapes alone (see the module docstring).
@njit(inline="always")
def _store_tile(y_n, out, off, Pt, bt, n, p0, inplace):
    # y_n[:, p0:p0+Pt] = out[:, off:off+Pt] (out (O, L)) + bias; with ``inplace`` the GEMM
    # already wrote y_n.
    O, P = y_n.shape
    L = out.shape[1]
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
            src = o * L + off
            if has_bias:
                b = bt[n if bt.shape[0] > 1 else 0, o]
                for p in range(Pt):
                    yf[np.uint64(dst + p)] = of[np.uint64(src + p)] + b
            else:
                for p in range(Pt):
                    yf[np.uint64(dst + p)] = of[np.uint64(src + p)]


@njit(inline="always")
def _load_tile(dyt, off, Pt, dy_n, p0):
    # dyt[:, off:off+Pt] (dyt (O, L)) <- dy_n[:, p0:p0+Pt]
    O, P = dy_n.shape
    L = dyt.shape[1]
    tf = dyt.reshape(dyt.size)
    df = dy_n.reshape(dy_n.size)
    for o in range(O):
        for p in range(Pt):
            tf[np.uint64(o * L + off + p)] = df[np.uint64(o * P + p0 + p)]


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


@njit(inline="always")
def _plane(buf, x, idx, window):
    # The padded-plane work space at the end of a thread's buffer (empty without idx).
    Hp, Wp = plane_shape(x, window)
    size = Hp * Wp if idx.shape[0] > 0 else 0
    return buf[buf.shape[0] - size:]


@njit
def _unfold_walk(x, cols, n0, nb, Pt, i0, i1, window, plane, idx):
    # cols (C*kh*kw, nb*Pt) <- the output rows i0..i1-1 of samples n0..n0+nb-1, side by
    # side; with idx (whole samples only), gathered through padded planes.
    if idx.shape[0] > 0:
        for b in range(nb):
            im2col_planes(x, n0 + b, cols, b * Pt, plane, idx, window)
    elif nb == 1:
        im2col_rows(x, n0, cols, i0, i1, 0, window)
    else:
        for b in range(nb):
            im2col_part(x, n0 + b, cols, b * Pt, i0, i1, window)


@njit
def _fold_walk(dcols, dx, n0, nb, Pt, i0, i1, window, plane, idx):
    # dx[n0..n0+nb-1] += the fold of their columns in dcols (the adjoint of _unfold_walk)
    if idx.shape[0] > 0:
        for b in range(nb):
            col2im_planes(dcols, dx, n0 + b, b * Pt, plane, idx, window)
    elif nb == 1:
        col2im_rows(dcols, dx, n0, i0, i1, 0, window)
    else:
        for b in range(nb):
            col2im_part(dcols, dx, n0 + b, b * Pt, i0, i1, window)


@njit(inline="always")
def _unfold_item(x, cols, n0, nb, Pt, i0, i1, window, plane, idx):
    # _unfold_walk called with int64 integers, not inlined: compiled once for every
    # kernel that unfolds (inlined, each kernel compiled its three variants again).
    _unfold_walk(x, cols, np.int64(n0), np.int64(nb), np.int64(Pt), np.int64(i0), np.int64(i1), window, plane, idx)


@njit(inline="always")
def _fold_item(dcols, dx, n0, nb, Pt, i0, i1, window, plane, idx):
    # _fold_walk, called as _unfold_walk is
    _fold_walk(dcols, dx, np.int64(n0), np.int64(nb), np.int64(Pt), np.int64(i0), np.int64(i1), window, plane, idx)


@njit(parallel=True, cache=True)
def _fwd_items(x, wt, bt, y, ws, R, B, G, pointwise, window, idx):
    # x (N, C, H, W); wt (N or 1, O, Fg); bt (N or 1, O), or (0, O) for no bias;
    # y (N, O, Ho*Wo); ws (threads, workspace floats). Work items are (block of B
    # samples, row tile) pairs, item t = block * tiles + tile, each owning its part of y:
    # which thread takes which item does not change any result, so each thread works in
    # its own buffer. B = 1: a sample's tile of R rows (tiles); B > 1 (a shared kernel,
    # R = Ho): the block's columns side by side, one GEMM for the block (batched).
    # idx (P,) or (0,): whole-sample items unfold through padded planes (see unfold.py).
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = window
    N, C = x.shape[0], x.shape[1]
    O, Fg = wt.shape[1], wt.shape[2]
    Og = O // G
    CT = C * kh * kw
    P = Ho * Wo
    tiles = ceil_div(Ho, R)
    for t in prange(ceil_div(N, B) * tiles):
        buf = ws[get_thread_id()]
        plane = _plane(buf, x, idx, window)
        blk, tile = split(t, tiles)
        n0 = blk * B
        nb = min(N, n0 + B) - n0
        i0 = tile * R
        i1 = min(Ho, i0 + R)
        Pt = (i1 - i0) * Wo
        L = nb * Pt
        w_n = wt[n0 if wt.shape[0] > 1 else 0]
        inplace = L == P
        if pointwise and nb == 1:
            cols = x[n0].reshape(C, P)
        else:
            cols = buf[:CT * L].reshape(CT, L)
            _unfold_item(x, cols, n0, nb, Pt, i0, i1, window, plane, idx)
        at = 0 if pointwise and nb == 1 else CT * L
        out = y[n0] if inplace else buf[at:at + O * L].reshape(O, L)
        for g in range(G):
            dot_into(w_n[g * Og:(g + 1) * Og], cols[g * Fg:(g + 1) * Fg], out[g * Og:(g + 1) * Og])
        for b in range(nb):
            _store_tile(y[n0 + b], out, b * Pt, Pt, bt, n0 + b, i0 * Wo, inplace)


@njit
def _bwd_item(x, w_n, dy, dx, g_n, dbt, buf, n0, nb, first, transposed, R, G, pointwise, need_dx, need_dw,
              window, idx):
    # Samples n0..n0+nb-1 of the backward (nb = 1: one sample, tile by tile; nb > 1: the
    # block's columns side by side, R = Ho): one unfold per tile, g_n (O, Fg) =
    # (first: set, else: add) dY X^T, the tile's dX folded into dx, the bias sums.
    # transposed (a shared kernel's slot): g_n is (G*Fg, Og), group gi's rows
    # gi*Fg.. holding its gradient transposed, and each tile adds X_g dY_g^T to them in
    # BLAS (dY transposed into the buffer first): with Fg > Og this product ran 15 to
    # 40 % faster than dY X^T into a temporary added to the slot's sum.
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = window
    C = x.shape[1]
    O, Fg = w_n.shape
    Og = O // G
    CT = C * kh * kw
    P = Ho * Wo
    direct_x = pointwise and nb == 1          # the columns are x[n0], dX is dx[n0]
    plane = _plane(buf, x, idx, window)
    for b in range(nb):
        _pixel_sums(dy, dbt, n0 + b)
        if need_dx and not direct_x:
            dx[n0 + b, :, :, :] = 0
    for i0 in range(0, Ho, R):
        i1 = min(Ho, i0 + R)
        Pt = (i1 - i0) * Wo
        L = nb * Pt
        at = 0 if direct_x else CT * L
        if L == P:
            dyt = dy[n0]
        else:
            dyt = buf[at:at + O * L].reshape(O, L)
            for b in range(nb):
                _load_tile(dyt, b * Pt, Pt, dy[n0 + b], i0 * Wo)
            at += O * L
        if need_dw:
            if direct_x:
                cols = x[n0].reshape(C, P)
            else:
                cols = buf[:CT * L].reshape(CT, L)
                _unfold_item(x, cols, n0, nb, Pt, i0, i1, window, plane, idx)
            if transposed:
                dyT = buf[at:at + L * O]
                _transpose_into(dyt, dyT)
                dT = dyT.reshape(L, O)
                for g in range(G):
                    dot_into(cols[g * Fg:(g + 1) * Fg], dT[:, g * Og:(g + 1) * Og], g_n[g * Fg:(g + 1) * Fg], 1.0)
            else:
                direct = first and i0 == 0
                tmp = g_n if direct else buf[at:at + O * Fg].reshape(O, Fg)
                for g in range(G):
                    dot_into(dyt[g * Og:(g + 1) * Og], cols[g * Fg:(g + 1) * Fg].T,
                             tmp[g * Og:(g + 1) * Og])
                if not direct:
                    g_n += tmp
        if need_dx:
            dcols = dx[n0].reshape(C, P) if direct_x else buf[:CT * L].reshape(CT, L)
            for g in range(G):
                dot_into(w_n[g * Og:(g + 1) * Og].T, dyt[g * Og:(g + 1) * Og],
                         dcols[g * Fg:(g + 1) * Fg])
            if not direct_x:
                _fold_item(dcols, dx, n0, nb, Pt, i0, i1, window, plane, idx)


@njit(inline="always")
def _transpose_into(a, out):
    # out (flat, L*O) <- a (O, L) transposed, written in order (a row of a at a time
    # scattered the writes: 2 to 3.5x slower)
    O, L = a.shape
    for p in range(L):
        for o in range(O):
            out[np.uint64(p * O + o)] = a[o, p]


@njit(parallel=True, cache=True)
def _bwd_samples(x, wt, dy, dx, gw, dbt, ws, S, R, B, G, pointwise, need_dx, need_dw, transposed, window, idx):
    # x (N, C, H, W); wt (N or 1, O, Fg); dy (N, O, Ho*Wo); dx (N, C, H, W);
    # gw (N, O, Fg) per sample, or (S, O, Fg) slot partials for a shared kernel
    # ((S, G*Fg, Og), each group's transposed, with `transposed`);
    # dbt (N, O), the pixel sums of dy, accumulated in float64 in a fixed order.
    # _bwd_item is called, not inlined, with the same argument types from both loops:
    # compiled once (inlined twice, it was most of a first run's compile time).
    N = x.shape[0]
    per_sample = wt.shape[0] != 1        # a run-time bool: literal ones type two _bwd_items
    if not per_sample:
        # A shared kernel's gradient sums over blocks of B samples (B = 1: samples): slot
        # s sums blocks s, s+S, ... in order into gw[s] (S and B fixed by the shapes), so
        # the sum's order never depends on the threads. ws (S, workspace floats).
        for s in prange(S):
            if need_dw:
                gw[s, :, :] = 0
            for blk in range(s, ceil_div(N, B), S):
                n0 = blk * B
                _bwd_item(x, wt[0], dy, dx, gw[s], dbt, ws[s], np.int64(n0), np.int64(min(N, n0 + B) - n0),
                          per_sample, transposed, np.int64(R), np.int64(G), pointwise, need_dx, need_dw, window,
                          idx)
    else:
        # Per-sample kernels: a sample owns all it writes, so any thread may take it,
        # working in its own buffer. ws (threads, workspace floats).
        for n in prange(N):
            _bwd_item(x, wt[n], dy, dx, gw[n], dbt, ws[get_thread_id()], np.int64(n), np.int64(1), per_sample,
                      False, np.int64(R), np.int64(G), pointwise, need_dx, need_dw, window, idx)


@njit(parallel=True, cache=True)
def _bwd_blocks(x, wt, dy, dx, gw, dbt, ws, blocks, G, pointwise, need_dx, need_dw, window):
    # The backward for batches too small to spread over samples. Work items are channel
    # blocks, ``blocks[b] = (group, c0, c1)`` with c0..c1-1 inside one group; an item
    # unfolds its block over the whole image, one sample after the other, and owns all
    # it writes: the block's columns of the kernel gradient and its planes of dx. Any
    # thread may take any block, in its own buffer (ws (threads, workspace floats)).
    # x (N, C, H, W); wt (N or 1, O, Fg); dy (N, O, Ho*Wo); dx (N, C, H, W);
    # gw (N or 1, O, Fg) (a shared kernel's gradient summed over n in order); dbt (N, O).
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = window
    N, C = x.shape[0], x.shape[1]
    O = wt.shape[1]
    Og = O // G
    Cg = C // G
    T = kh * kw
    P = Ho * Wo
    shared = wt.shape[0] == 1
    # One parallel region (two cost a first run seconds more of compiling): items 0..N-1
    # sum dy's pixels of sample n, the others are the channel blocks.
    for item in prange(N + blocks.shape[0]):
        if item < N:
            _pixel_sums(dy, dbt, item)
            continue
        b = item - N
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
                    im2col_rows(x, n, cols, 0, Ho, c0, window)
                dot_into(dyg, cols.T, tmp)
                g_n = gw[0 if shared else n]
                if shared and n > 0:
                    g_n[o0:o0 + Og, f0:f0 + rows] += tmp
                else:
                    g_n[o0:o0 + Og, f0:f0 + rows] = tmp
            if need_dx:
                # the block's kernel columns, copied: BLAS needs unit stride in one axis
                tmp[:, :] = wt[0 if shared else n, o0:o0 + Og, f0:f0 + rows]
                if pointwise:
                    dot_into(tmp.T, dyg, dx[n, c0:c1].reshape(rows, P))
                else:
                    dot_into(tmp.T, dyg, blk)
                    dx[n, c0:c1] = 0
                    col2im_rows(blk, dx, n, 0, Ho, c0, window)


# ----------------------------------------------------------------------------- budgets
#: A shared kernel's gradient is summed over this many slots of samples (a constant, so
#: that the order of every partial sum is the same whatever the thread count).
SLOTS = 8
#: Budget, in bytes, of one work item's column tile: small enough to stay in a core's L2.
TILE_BYTES = 1 * 2**20
#: Budget, in bytes, of a batched block's columns (its samples' side by side); a block
#: holds two samples at least.
BATCH_BYTES = 512 * 2**10
#: Outputs this narrow or narrower unfold whole samples through padded planes (one
#: gather per column row) instead of runs of Wo (see ``unfold.im2col_planes``).
GATHER_MAX_WO = 16
#: Smallest batch whose backward is split over samples; smaller ones are split over
#: channel blocks instead (``_bwd_blocks``).
MIN_BATCH = 4
#: The forward splits a small batch into at least this many (sample, row tile) items.
MIN_ITEMS = 4
#: A shared kernel's gradient is formed transposed where that is faster (see
#: ``_bwd_item``); False runs the plain product everywhere, for comparison
#: (``benchmarks/primitives.py``). Results differ in rounding only.
TRANSPOSED_GRADIENT = True


# ----------------------------------------------------------------------------- layouts
def _use_blocks(g) -> bool:
    # A batch smaller than MIN_BATCH has too few samples to keep the threads busy.
    return g.N < MIN_BATCH


def _rows_per_tile(g, itemsize: int) -> int:
    if g.pointwise:
        return g.Ho
    R = max(1, min(g.Ho, TILE_BYTES // (g.C * g.taps * g.Wo * itemsize)))
    # a small batch is cut into more, smaller tiles so that every thread has work
    per_sample = ceil_div(MIN_ITEMS, max(1, g.N))
    return max(1, min(R, ceil_div(g.Ho, per_sample)))


def _samples_per_block(g, itemsize: int) -> int:
    """Samples per block of ``batched``: as many as :data:`BATCH_BYTES` of columns hold
    (2 at least), in at least :data:`SLOTS` blocks of 2 or more where the batch allows
    (so that the threads share the work); blocks of about equal size. A function of the
    shapes only: the blocks decide the GEMM shapes."""
    B = max(2, BATCH_BYTES // (g.C * g.taps * g.P * itemsize))
    blocks = max(ceil_div(g.N, B), min(SLOTS, g.N // 2), 1)
    return ceil_div(g.N, blocks)


def _layout(strategy: str, g, itemsize: int) -> tuple[int, int]:
    # (R, B): rows per tile and samples per work item of the template's kernels
    if strategy == "batched":
        return g.Ho, _samples_per_block(g, itemsize)
    return _rows_per_tile(g, itemsize), 1


_scratch_store = threading.local()


def _mapped(n: int, dtype) -> np.ndarray:
    """An uninitialised ``(n,)`` array in its own anonymous memory map.

    A buffer that lives long and is replaced only by a larger one: from ``malloc``, the
    replaced buffer's pages had stayed resident in the heap (a hole no later array
    filled: 2 to 3 MiB of cifar8's peak at two threads); unmapped, they go back to the
    system when it is freed.
    """
    nbytes = max(1, n) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=n)


def _scratch(rows: int, cols: int, dtype, use: str = "") -> np.ndarray:
    """A ``(rows, cols)`` work buffer of the calling thread, reused from call to call.

    Its contents are garbage. Fresh buffers cost page faults on every call (measured
    about a fifth of resnet3x3's forward+backward when the allocator had handed the
    memory back to the system); one buffer per thread, dtype and `use`, grown to the
    largest request, is kept instead. Each Python thread has its own, so concurrent
    calls from several threads never share one. A caller that holds a buffer while
    calling code that takes its own names another `use` (the Winograd module's phases
    of a dilated layer: ``"phases"``).
    """
    store = _scratch_store.__dict__
    key = use + np.dtype(dtype).str
    buf = store.get(key)
    if buf is None or buf.size < rows * cols:
        del buf
        store.pop(key, None)                            # the old buffer's pages go back now
        buf = store[key] = _mapped(rows * cols, dtype)
    return buf[:rows * cols].reshape(rows, cols)


def _padded_plane(g) -> tuple[int, int]:
    # (Hp, Wp): as unfold.plane_shape
    return (max(g.H + g.ph, (g.Ho - 1) * g.sh + (g.kh - 1) * g.dh + 1),
            max(g.W + g.pw, (g.Wo - 1) * g.sw + (g.kw - 1) * g.dw + 1))


def _plane_index(g, R: int) -> np.ndarray:
    """idx (P,) for whole-sample items of narrow outputs (the padded-plane unfold:
    ``i*sh*Wp + j*sw``), else (0,) (the row runs)."""
    if R < g.Ho or g.Wo > GATHER_MAX_WO:
        return np.zeros(0, np.int64)
    Wp = _padded_plane(g)[1]
    return (np.arange(g.Ho)[:, None] * (g.sh * Wp) + np.arange(g.Wo)[None, :] * g.sw).ravel()


def _item_workspace(g, R, B, idx, dtype, rows, extra):
    # (rows, columns of an item + extra + padded plane): one row per slot or thread;
    # `extra` floats each for GEMM outputs. A pointwise sample alone needs no columns.
    cols = 0 if g.pointwise and B == 1 else g.C * g.taps * B * R * g.Wo
    plane = math.prod(_padded_plane(g)) if len(idx) else 0
    return _scratch(rows, cols + extra + plane, dtype)


def _channel_blocks(g, G: int, itemsize: int) -> np.ndarray:
    """``(B, 3)`` rows ``(group, c0, c1)``: channel blocks of about equal size, none
    straddling a group, each block's unfolded image within :data:`TILE_BYTES`, and at
    least :data:`SLOTS` of them where there are channels enough (a constant, not the
    thread count: the blocks decide the GEMM shapes, hence the rounding)."""
    Cg = g.C // G
    cb = max(1, min(Cg, TILE_BYTES // (g.taps * g.P * itemsize)))
    nb = max(ceil_div(Cg, cb), min(Cg, ceil_div(SLOTS, G)))
    cb = ceil_div(Cg, nb)
    return np.array([(gi, gi * Cg + c, gi * Cg + min(Cg, c + cb))
                     for gi in range(G) for c in range(0, Cg, cb)], dtype=np.int64)


# ----------------------------------------------------------------------------- planning
@functools.cache
def _winograd():
    """The Winograd module (``winograd.supports``, ``forward``, ``backward``), imported on
    first use: it imports this module's helpers."""
    from . import winograd

    return winograd


@functools.cache
def _shifted():
    """The shifted-views module (``shifted.forward``, ``backward``), imported on first use:
    it imports this module's helpers."""
    from . import shifted

    return shifted


def _call(g, groups: int, O: int, shared: bool, itemsize: int) -> plan.ConvCall:
    """What the planner needs of a call: its shapes and this template's layouts for them
    (cached: the layouts' budgets and the Winograd module are part of the key)."""
    return _described(g, groups, O, shared, itemsize, TILE_BYTES, BATCH_BYTES, MIN_BATCH, MIN_ITEMS, GATHER_MAX_WO,
                      _winograd())


@functools.lru_cache(maxsize=1024)
def _described(g, groups, O, shared, itemsize, *budgets_and_winograd) -> plan.ConvCall:
    wino = budgets_and_winograd[-1]
    blocks = _channel_blocks(g, groups, itemsize) if _use_blocks(g) else np.zeros((0, 3), np.int64)
    return plan.ConvCall(
        N=g.N, C=g.C, O=O, H=g.H, W=g.W, Ho=g.Ho, Wo=g.Wo, kh=g.kh, kw=g.kw, stride=(g.sh, g.sw),
        dilation=(g.dh, g.dw), groups=groups, shared=shared, itemsize=itemsize, pointwise=g.pointwise,
        tile_rows=_rows_per_tile(g, itemsize), channel_blocks=len(blocks),
        block_rows=int((blocks[:, 2] - blocks[:, 1]).max(initial=0)) * g.taps,
        block_samples=_samples_per_block(g, itemsize), narrow=g.Wo <= GATHER_MAX_WO,
        winograd=bool(wino.supports(g, groups)))


def conv_plan(g, groups, O, K, per_sample, dtype):
    """The formulation of a kernel-mixing op, ``"kernel_mixing"`` or ``"output_mixing"``
    (see :mod:`.plan`): the forced one, else the one the cost model finds cheaper. Shared
    mixing weights (``per_sample`` False) mix once: always ``"kernel_mixing"``."""
    itemsize = np.dtype(dtype).itemsize
    if not per_sample:
        if plan.forced().mixing == "output_mixing":
            raise ValueError("strategy 'output_mixing' was forced, but it needs per-sample mixing weights "
                             "pi (N, K); shared weights pi (K,) mix the kernels once")
        return "kernel_mixing"
    if g.N == 0:
        return "kernel_mixing"
    return plan.choose_mixing(_call(g, groups, O, False, itemsize), _call(g, groups, K * O, True, itemsize), K)


# ----------------------------------------------------------------------------- template
def conv_forward(x, wt, bt, g, groups, saved=None):
    """``Y_n = Wt_n @ X_n + bt_n`` for shared or per-sample kernels, by the strategy the
    planner picks (:mod:`.plan`).

    Parameters
    ----------
    x : ndarray (N, C, H, W), C-contiguous
    wt : ndarray (O, C//groups*kh*kw) shared, or (N, O, C//groups*kh*kw) per sample
    bt : ndarray (O,) or (N, O) or None
    g : Geometry
    groups : int
    saved : dict, optional
        Filled with what :func:`conv_backward` of the same `x` and `wt` can reuse (pass it
        the same dict): where the forward and the backward both run the same Winograd
        strategy, the transformed kernels (the input gradient then needs no transform of
        its own) and, for small problems, the transformed input (the kernel gradient's).
        Held until that backward. The results are the same with or without it.

    Returns
    -------
    y : ndarray (N, O, Ho, Wo)
    """
    O, F = wt.shape[-2], wt.shape[-1]
    if g.N == 0:
        return np.empty((g.N, O, g.Ho, g.Wo), dtype=x.dtype)
    call = _call(g, groups, O, wt.ndim == 2, x.dtype.itemsize)
    strategy = plan.choose("forward", call)
    if strategy.startswith("winograd"):
        keep = saved is not None and plan.peek("backward", call) == strategy
        return _winograd().forward(x, wt, bt, g, groups, m=int(strategy[-1]), saved=saved if keep else None)
    if strategy == "shifted":
        return _shifted().forward(x, wt, bt, g, groups)
    # y after the branches that make their own (an unused y had been a whole output of
    # peak memory)
    y = np.empty((g.N, O, g.Ho, g.Wo), dtype=x.dtype)
    R, B = _layout(strategy, g, x.dtype.itemsize)
    idx = _plane_index(g, R)
    ws = _item_workspace(g, R, B, idx, x.dtype, get_num_threads(), O * B * R * g.Wo)
    w3 = wt.reshape(1, O, F) if wt.ndim == 2 else wt
    b2 = np.zeros((0, O), x.dtype) if bt is None else bt.reshape(-1, O)
    with blas_single_thread():
        _fwd_items(x, w3, np.ascontiguousarray(b2), y.reshape(g.N, O, g.P), ws, R, B, groups,
                   g.pointwise, g.window, idx)
    return y


def empty_backward(g, wt, dtype, need_dx: bool, need_dw: bool):
    """``(dx, gw, dbt)`` of a backward over an empty batch (``g.N == 0``), as
    :func:`conv_backward` returns them: dx (0, C, H, W) or None, gw zeros of wt's shape
    (shared) or (0, O, F) or None, dbt (O,) zeros or (0, O)."""
    O, F = wt.shape[-2], wt.shape[-1]
    shared = wt.ndim == 2
    dx = np.empty((0, g.C, g.H, g.W), dtype=dtype) if need_dx else None
    gw = np.zeros(wt.shape if shared else (0, O, F), dtype=dtype) if need_dw else None
    return dx, gw, np.zeros((O,) if shared else (0, O), dtype=dtype)


def conv_backward(x, wt, dy, g, groups, need_dx=True, need_dw=True, saved=None):
    """Backward of :func:`conv_forward`, by the strategy the planner picks (:mod:`.plan`).

    Parameters
    ----------
    x : ndarray (N, C, H, W), C-contiguous
    wt : ndarray (O, F) shared or (N, O, F) per sample, ``F = C//groups*kh*kw``
    dy : ndarray (N, O, Ho, Wo), C-contiguous
    saved : dict, optional
        The forward's (see :func:`conv_forward`); what this backward reuses is taken out
        of it, so that it is freed with the backward. The results are the same with or
        without it.

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
    if g.N == 0:
        return empty_backward(g, wt, x.dtype, need_dx, need_dw)
    itemsize = x.dtype.itemsize
    strategy = plan.choose("backward", _call(g, G, O, shared, itemsize), need_dx, need_dw,
                           kept=_winograd().kept_tiles(saved))
    if strategy.startswith("winograd"):
        return _winograd().backward(x, wt, dy, g, G, need_dx=need_dx, need_dw=need_dw, m=int(strategy[-1]),
                                    saved=saved)
    if saved is not None:
        saved.clear()
    if strategy == "shifted":
        return _shifted().backward(x, wt, dy, g, G, need_dx=need_dx, need_dw=need_dw)
    dx = np.empty((g.N, g.C, g.H, g.W), dtype=x.dtype) if need_dx else None
    dx_ = dx if need_dx else np.empty((0, g.C, g.H, g.W), dtype=x.dtype)
    dbt = np.empty((g.N, O), dtype=x.dtype)
    dyr = dy.reshape(g.N, O, g.P)
    pointwise = g.pointwise
    if strategy == "tiles" and _use_blocks(g):
        blocks = _channel_blocks(g, G, itemsize)
        rows = int((blocks[:, 2] - blocks[:, 1]).max()) * g.taps
        ws = _scratch(get_num_threads(), (0 if pointwise else rows * g.P) + O // G * rows, x.dtype)
        gw = np.empty((1 if shared else g.N, O, F), dtype=x.dtype)
        with blas_single_thread():
            _bwd_blocks(x, w3, dyr, dx_, gw, dbt, ws, blocks, G, pointwise, need_dx, need_dw, g.window)
        gw = gw[0] if shared else gw
    else:
        R, B = _layout(strategy, g, itemsize)
        idx = _plane_index(g, R)
        S = min(ceil_div(g.N, B), SLOTS)
        Og = O // G
        # a shared kernel's gradient transposed (see _bwd_item) where that was faster:
        # more columns than output channels a group, an unfold (for a 1x1 layer's own
        # columns it measured 5 % slower)
        transposed = TRANSPOSED_GRADIENT and shared and need_dw and F > Og and not pointwise
        ws = _item_workspace(g, R, B, idx, x.dtype, S if shared else get_num_threads(),
                             (2 if transposed else 1) * O * B * R * g.Wo + O * F)
        gw = np.empty((S, G * F, Og) if transposed else (S if shared else g.N, O, F), dtype=x.dtype)
        with blas_single_thread():
            _bwd_samples(x, w3, dyr, dx_, gw, dbt, ws, S, R, B, G, pointwise, need_dx, need_dw, transposed,
                         g.window, idx)
        if shared and need_dw:
            # Slot partials summed in slot order: a fixed order, whatever the threads.
            # (Without need_dw they were never written: summing them read np.empty's
            # garbage, NaN patterns included, and warned.)
            gw = np.add.reduce(gw, axis=0)
            if transposed:
                # (G*Fg, Og), each group's gradient transposed -> (O, Fg)
                gw = np.ascontiguousarray(gw.reshape(G, F, Og).transpose(0, 2, 1)).reshape(O, F)
    if not need_dw:
        gw = None  # never written by the kernels
    if shared:
        dbt = np.add.reduce(dbt, axis=0)
    return dx, gw, dbt
