"""CPU Winograd conv for 3x3, stride-1 windows: F(2x2, 3x3) and F(4x4, 3x3).

The same contract as the conv template (:func:`~dynconv_np.backends.cpu.conv.conv_forward`,
:func:`~dynconv_np.backends.cpu.conv.conv_backward`) with fewer multiplications: an m x m
output tile of one channel pair costs ``(m+2)^2`` products instead of ``9 m^2`` (16
against 36 for m = 2, 36 against 144 for m = 4). Over the channels the elementwise
products of the transformed tiles are ``alpha^2 = (m+2)^2`` independent GEMMs,
``M_xi (O, tiles) = U_xi (O, C) @ V_xi (C, tiles)`` per group. The tile transforms are
in :mod:`.winograd_transforms`.

* forward (``_fwd_blocks``): work items are blocks of output tiles (``_blocks``): whole
  tile rows (parts of one where a row is wider than a block), sized so that the block's
  transformed input ``V`` and products ``M`` take about :data:`BLOCK_BYTES`. Each tile row
  carries one gap tile, so that the transforms run over the whole block at a stride the
  compiler vectorises (see :mod:`.winograd_transforms`). An item transforms its input
  tiles into its thread's buffer, runs the alpha^2 GEMMs with single-threaded BLAS and
  transforms the products into its tiles of ``y``. A shared kernel's blocks may span
  samples; a per-sample kernel's never do. The kernels are transformed first
  (``_kernels``; in a parallel region from :data:`PARALLEL_KERNELS` kernels on), once
  per sample for per-sample kernels; in batches of :data:`FUSED_MIN_SAMPLES` or more
  (:func:`fused`), per-sample kernels are instead transformed in the work item that uses
  them (``_fwd_samples``, a sample an item, into its thread's buffer), so that the
  batch's transformed kernels are never written out whole.
* input gradient: the forward on ``dy``, top/left padding ``2 - p``, with the kernels
  rotated by 180 degrees and their input and output channels swapped: in F(2x2)
  (:data:`REVERSED`) on the forward's own transformed kernels, used transposed, with the
  tiles reversed (:func:`~.winograd_transforms.reversed_tiles`) on a grid that ends at
  ``dx``'s end; the forward keeps them in the ``saved`` dict for it. In F(4x4) on the
  rotated kernels' transforms (reversed tiles lose accuracy there).
* kernel gradient (``_dw_blocks``): in the transformed domain, ``dU_xi = sum_tiles dM_xi
  V_xi^T`` with ``dM = A dY A^T`` (zero for a gap tile), then ``dg = G^T dU G``. Work
  items are fixed slots of blocks, each summing its blocks in order into its own ``dU``
  (BLAS accumulating in place,
  :func:`~dynconv_np.backends.cpu.blas.gemm_view`) and transforming the sum into its own
  partial kernel gradient: one slot per sample for per-sample kernels in batches of
  :data:`~dynconv_np.backends.cpu.conv.SLOTS` or more (more, in order, for smaller
  batches); :data:`~dynconv_np.backends.cpu.conv.SLOTS` slots over the whole batch for a
  shared kernel. Partials are summed in slot order. The slots also sum ``dy`` for the
  bias gradient, as the conv template does (bitwise the same ``dbt``).
* one block of every tile (``_fwd_whole``, ``_dw_whole``; :func:`whole`): a shared kernel
  (or a batch of one) whose transformed tiles fit :data:`WHOLE_BYTES`
  (:data:`WHOLE_GRAD_BYTES` for the kernel gradient) runs in parallel regions whose
  items own what they write: the tile transforms by channel chunks, then the alpha^2
  GEMMs, each over every tile of the batch, by (xi, group), then the output transform by
  channel chunks; the kernel gradient forms ``dU`` by blocks of output channels
  (:data:`DU_BLOCK_BYTES`, in the thread's buffer) and transforms each block back. Blocks of a
  few tile rows made the GEMMs thin where there are few tiles (a batch of one, late
  layers), and the kernel gradient's slots each wrote a whole ``dU``.
* dilated windows (padding a multiple of the dilation): by phases, the same kernels on
  rearranged inputs (:mod:`.phases`): a shared kernel's phases as one batch of
  ``N*dh*dw`` samples (:func:`phase_geometry`), per-sample kernels on a mosaic of each
  sample's phases (:func:`mosaic_geometry`); the rearranged arrays in the thread's
  ``"phases"`` scratch.
* kept tiles (:func:`keeps_tiles`): a forward whose kernel gradient runs as one block
  and whose transformed input ``V`` takes at most :data:`KEEP_TILES_BYTES` runs as one
  block too, and keeps ``V`` (in an array of its own) for a backward by the same strategy
  (a ``saved`` dict given): the kernel gradient transforms only ``dy``. The same values
  as transforming ``x`` again, and the same forward with or without ``saved``, so the
  results are bitwise the same either way.

BLAS holds at one thread meanwhile, as in the conv template
(:func:`~dynconv_np.backends.cpu.products.blas_single_thread`), and the buffers are the
template's per-thread scratch (:func:`~dynconv_np.backends.cpu.conv._scratch`). Each
parallel region wakes the threads (milliseconds where the cores are busy with other
work), so there are few: the forward has one (two for per-sample kernels, whose
transform is shared out too), the backward two or three.

Determinism: every work item owns what it writes (a block its tiles of ``y``, a slot its
partial gradient and its samples' ``dbt``), sums in an order fixed by the shapes, and its
thread's buffer is only workspace; block and slot sizes depend on the shapes and budgets,
never on the thread count, so results are bitwise identical whatever
``NUMBA_NUM_THREADS`` is (tests/test_winograd.py).

Accuracy: the transforms run in the input dtype. In float32, F(2x2, 3x3) is as accurate
as the conv template; F(4x4, 3x3) loses about a decimal digit to its larger
interpolation points (max error about 5e-6 of max|y| at 64 channels, 1e-5 at 256, with
unit-variance inputs and Kaiming-scaled weights).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange

from . import phases
from .blas import dot_into, gemm_view
from .conv import SLOTS, _pixel_sums, _scratch, empty_backward
from .index import ceil_div, split
from .products import blas_single_thread
from .winograd_transforms import (
    gather_kernels,
    gradient_tiles,
    grid_tiles,
    input_tiles,
    kernel_gradient_rows,
    matrices,
    output_tiles,
    reversed_tiles,
    transform_kernels,
)

#: Budget, in bytes, of one block's transformed input and products (``V`` and ``M``).
BLOCK_BYTES = 2**20
#: Floats per run of the tile transforms' loops: ``ceil(CHUNK / tiles)`` channels of a
#: block are transformed together, so that the loops are long enough to vectorise.
CHUNK = 512
#: Grid tiles a block holds at least, however many the channels: the GEMMs' short side.
MIN_TILES = 32
#: The forward splits a small problem into at least this many blocks.
MIN_ITEMS = 4
#: Output tile sizes implemented.
TILE_SIZES = (2, 4)
#: A shared kernel whose every transformed tile (``V`` and ``M``, all samples) fits in
#: this many bytes runs as one block of every tile (``_fwd_whole`` for the forward and
#: the input gradient, ``_dw_whole`` for the kernel gradient): its GEMMs span every tile,
#: where blocks of a few tile rows made them thin. The kernel gradient gains most (a
#: batch of one 14x14 image, 256 channels: rank-8 updates of a 4 MiB ``dU`` per slot,
#: 14.0 ms, against 5.6 ms whole; still ahead at 12 MiB); the forward loses the blocks'
#: cache residence beyond a few MiB (measured in docs/performance.md, "Winograd, one
#: block").
WHOLE_BYTES = 2 * 2**20
WHOLE_GRAD_BYTES = 16 * 2**20
#: The one-block kernel gradient's transformed gradient ``dU`` is formed this many bytes
#: at a time (blocks of output channels, each in its thread's buffer): the whole ``dU``
#: of a 256-channel layer (4 MiB in F(2x2)) had made the batch of one's peak memory
#: exceed PyTorch's.
DU_BLOCK_BYTES = 2**20
#: Per-sample kernels are transformed in the work item that uses them (``_fwd_samples``)
#: in batches of at least this many samples (a work item a sample)...
FUSED_MIN_SAMPLES = 4
#: ... when one sample's transformed kernels take at most this many bytes (in the
#: thread's buffer).
FUSED_KERNEL_BYTES = 2**20
#: Tile sizes whose input gradient runs on the forward's transformed kernels, with the
#: tiles reversed (winograd_transforms.reversed_tiles), so that a forward keeps them for
#: its backward. F(2x2)'s interpolation points (0, 1, -1, infinity) are as accurate either
#: way round; F(4x4)'s (0, +-1, +-2, infinity) are not: on the reversed tiles its input
#: gradient's largest float32 errors grew by 1.14x (geometric mean over 33 layers, up to
#: 2.9x; calibrate.py --errors), so it keeps transforming the rotated kernels.
REVERSED = (2,)
#: Tile rows of at most this many tiles (by output tile size) have no gap tile in ``V``
#: and ``M``: their input rows are staged with one as ever, then each tile's alpha
#: columns gathered (``gather_columns``) into a grid without it. The gap had cost a third
#: of the work of an 8x8 image in F(4x4) (2 tiles a row). Without it, forward+backward at
#: one thread ran 1.24x as fast on cifar8 and 1.13x on cifar16 (4 tiles a row); on
#: cifar32 (8 a row, 32 channels) 0.94x, on resnet3x3 (14) the same. In F(2x2) it ran
#: 0.80 to 0.85x as fast at 2 to 6 tiles a row (the gather moves alpha = 2m columns a
#: tile, twice the de-interleave's): F(2x2) keeps the gap.
NO_GAP_TILES = {2: 0, 4: 4}
#: A forward keeps its transformed input tiles ``V`` for the backward's kernel gradient
#: (see :func:`keeps_tiles`) when they take at most this many bytes: memory held from the
#: forward to the backward, about (m+2)^2/m^2 times x's (2.25x in F(4x4) without gap
#: tiles). The kernel gradient then skips x's transform: on the digits net's third conv
#: (64 samples of 8x8, 32 channels, F(4x4), 1.2 MiB of tiles) that was 0.4 ms of its
#: 1.9 ms backward at one thread. Such a forward runs as one block with or without a
#: backward to keep them for, so that its result never depends on that. By output tile
#: size: F(2x2)'s input transform is cheap (batch1's 256 channels of 14x14: 0.99 and
#: 1.02x as fast with its tiles kept, at one and two threads), so it keeps none.
KEEP_TILES_BYTES = {2: 0, 4: 2 * 2**20}
#: A shared kernel's gradient partials (one a slot, :data:`~.conv.SLOTS` of them, each
#: the kernels' size) take at most about this many bytes at once: the slots run in waves
#: (at least a wave a thread), each wave's partials summed before the next. Eight
#: partials of a 128-channel layer's kernels took 4.5 MiB, a quarter of cifar8's peak.
PARTIALS_BYTES = 2**20
#: Kernels transformed together, about (and kernel gradients transformed back): whole
#: rows of ``U``, one pass of the transform's loops over them all (a row of a 64-channel
#: layer's kernels is 64 long: F(4x4) took 17.6 ns a kernel in rows of 64, 10.5 in runs
#: of 256; F(2x2) 5.9 and 4.0).
KERNEL_RUN = 256
#: Kernels transformed in a parallel region from this many on (about 8 ns a kernel at
#: one thread: a 256-channel layer's 65536 took 0.45 ms, 0.8 ms rotated, on the calling
#: thread alone, a fifth of a batch of one's step).
PARALLEL_KERNELS = 8192


# ----------------------------------------------------------------------------- kernels
@njit(cache=True)
def _kernel_rows(wt, k, U, ku, G, tr, flip, buf, r0, r1):
    # Rows r0..r1-1 of U[ku], the transforms of the kernels wt[k, r] (see _kernels), side
    # by side, in one pass (U's rows follow each other: the transform's loops run the
    # length of all of them); with `tr`, of U[ku] transposed by group, (alpha^2, C, Og):
    # row r = gi*Cg + c the kernels wt[k, gi*Og + oo, c*9:] for oo < Og, rotated by 180
    # degrees with `flip`. buf: scratch of (9 + 3*alpha)*S*(r1 - r0) floats,
    # S = U.shape[3].
    O, F = wt.shape[1], wt.shape[2]
    A2, R, S = U.shape[1], U.shape[2], U.shape[3]
    L = (r1 - r0) * S
    gs = buf[:9 * L]
    wf = wt.reshape(wt.size)
    if tr:
        for r in range(r0, r1):
            gi, c = split(r, F // 9)
            gather_kernels(wf, (k * O + gi * S) * F + c * 9, F, flip, S, gs, (r - r0) * S, L)
    else:
        gather_kernels(wf, (k * O + r0) * F, 9, False, L, gs, 0, L)
    transform_kernels(G, gs, L, U.reshape(U.size), (ku * A2 * R + r0) * S, R * S, buf[9 * L:])


@njit(parallel=True, cache=True)
def _kernels(wt, U, G, rot, ws, run):
    # wt (K, O, Cg*9) -> U (K, alpha^2, O, Cg): U[k, :, o, c] = G g G^T, g = wt[k, o, c*9:];
    # with `rot`, U (K, alpha^2, C, Og) of the kernels rotated by 180 degrees, input and
    # output channels swapped (_kernel_rows with tr and flip). A work item is a run of
    # `run` rows of U; ws (threads, (9 + 3*alpha)*U.shape[3]*run) scratch.
    R = U.shape[2]
    n = (R + run - 1) // run
    for kr in prange(U.shape[0] * n):
        k, j = split(kr, n)
        _kernel_rows(wt, k, U, k, G, rot, rot, ws[get_thread_id()], j * run, min(R, (j + 1) * run))


@njit(cache=True)
def _kernels_serial(wt, U, G, rot, ws, run):
    # _kernels on the calling thread (a few kernels are not worth a parallel region)
    R = U.shape[2]
    for k in range(U.shape[0]):
        for r0 in range(0, R, run):
            _kernel_rows(wt, k, U, k, G, rot, rot, ws[0], r0, min(R, r0 + run))


def _row_run(R: int, S: int) -> int:
    # rows of U (R of them, S kernels each) transformed together: about KERNEL_RUN kernels
    return max(1, min(R, -(-KERNEL_RUN // S)))


def _kernel_scratch(R: int, S: int, alpha: int) -> int:
    # floats of _kernel_rows' scratch for runs of _row_run(R, S) rows
    return (9 + 3 * alpha) * S * _row_run(R, S)


@njit(inline="always")
def _buffers(buf, at, m, cb, nb, ob):
    # three transform buffers from buf[at:], each of _buffer_size floats
    sz = _buffer_size(m, cb, nb, ob)
    return buf[at:at + sz], buf[at + sz:at + 2 * sz], buf[at + 2 * sz:at + 3 * sz]


@njit(inline="always")
def _groups(C, O, u, tk):
    # (Cg, groups, Og) of a correlation of C input with O output channels on the
    # transformed kernels u (.., O, Cg), or with `tk` u (.., C, Og): the input gradient's
    # correlation on the forward's kernels, transposed
    if tk:
        Og = u.shape[u.ndim - 1]
        return C // (O // Og), O // Og, Og
    Cg = u.shape[u.ndim - 1]
    return Cg, C // Cg, O // (C // Cg)


@njit(inline="always")
def _products(u, V, M, xi, g, Cg, Og, tk):
    # M[xi] (O, nb), group g's rows = the group's kernels (u[xi]'s rows, transposed with
    # `tk`: (Cg, Og) -> (Og, Cg)) @ V[xi] (C, nb), group g's rows
    if tk:
        dot_into(u[xi, g * Cg:(g + 1) * Cg].T, V[xi, g * Cg:(g + 1) * Cg], M[xi, g * Og:(g + 1) * Og])
    else:
        dot_into(u[xi, g * Og:(g + 1) * Og], V[xi, g * Cg:(g + 1) * Cg], M[xi, g * Og:(g + 1) * Og])


@njit(parallel=True, cache=True)
def _fwd_blocks(x, U, bt, y, ws, pieces, blocks, BT, AT, h0, w0, cb, ob, tk, end):
    # y = the 3x3 correlation of x with the transformed kernels U, plus bt.
    # x (N, C, H, W); U (N or 1, alpha^2, O, Cg), or with `tk` (N or 1, alpha^2, C, Og)
    # used transposed; bt (N or 1, O), or (0, O) for no bias;
    # y (N, O, Ho, Wo); ws (threads, workspace floats); pieces (P, 5) rectangles of tiles
    # (n, ti0, ti1, tj0, tj1); blocks (B, 2) ranges of pieces. Tile (ti, tj) reads x from
    # row h0 + ti*m, column w0 + tj*m; the tiles are transformed cb input / ob output
    # channels at a time.
    for it in prange(blocks.shape[0]):
        p0 = blocks[it, 0]
        _fwd_block(x, U[pieces[p0, 0] if U.shape[0] > 1 else 0], bt, y, ws[get_thread_id()], 0, pieces, p0,
                   blocks[it, 1], BT, AT, h0, w0, cb, ob, tk, end)


@njit(inline="always")
def _block_input(x, O, buf, at, pieces, p0, p1, BT, m, h0, w0, cb, ob):
    # A block's buffers carved from buf[at:] (V (alpha^2, C, nb), M (alpha^2, O, nb), two
    # transform buffers) and its input tiles transformed into V, cb channels at a time
    A2 = (m + 2) * (m + 2)
    C = x.shape[1]
    nb = grid_tiles(pieces, p0, p1)
    V = buf[at:at + A2 * C * nb].reshape(A2, C, nb)
    M = buf[at + A2 * C * nb:at + A2 * (C + O) * nb].reshape(A2, O, nb)
    s1, s2, s3 = _buffers(buf, at + A2 * (C + O) * nb, m, cb, nb, ob)
    for c0 in range(0, C, cb):
        input_tiles(x, pieces, p0, p1, h0, w0, BT, m, V, c0, min(C, c0 + cb), s1, s2, s3)
    return V, M, s1, s2


@njit(inline="always")
def _fwd_block(x, u, bt, y, buf, at, pieces, p0, p1, BT, AT, h0, w0, cb, ob, tk, end):
    # one block of _fwd_blocks (pieces p0..p1-1) with the transformed kernels u
    # (alpha^2, O, Cg), or with `tk` (alpha^2, C, Og) transposed, in buf[at:]; `end`:
    # the grid ends at y's end (output_tiles)
    m = AT[0].shape[0]
    A2 = (m + 2) * (m + 2)
    C, O = x.shape[1], y.shape[1]
    Cg, G, Og = _groups(C, O, u, tk)
    V, M, s1, s2 = _block_input(x, O, buf, at, pieces, p0, p1, BT, m, h0, w0, cb, ob)
    for xi in range(A2):
        for g in range(G):
            _products(u, V, M, xi, g, Cg, Og, tk)
    for o0 in range(0, O, ob):
        output_tiles(M, y, bt, pieces, p0, p1, AT, o0, min(O, o0 + ob), s1, s2, end)


@njit(parallel=True, cache=True)
def _fwd_samples(x, wt, GK, bt, y, ws, pieces, blocks, first, BT, AT, h0, w0, cb, ob, tk, flip, end, run):
    # _fwd_blocks for per-sample kernels wt (N, O', F), a sample a work item: its kernels
    # transformed into the thread's buffer (U_n (alpha^2, O, Cg) of the correlation: as
    # _kernels makes them, or for the input gradient (`tk`) transposed by group, and
    # rotated with `flip`, so that its GEMMs take them untransposed, faster than the
    # transposed forward's on per-sample GEMMs; GK the kernel transform), then its
    # blocks first[n]..first[n+1]-1 in order, `end` as in output_tiles. The transformed
    # kernels of the whole batch (N times 16/9 or 4 times the kernels) were written out
    # and read back, the step's largest memory traffic.
    # run: rows of U_n transformed together; ws (threads, alpha^2*O*Cg + _kernel_scratch(O,
    # Cg, alpha) + a block's floats).
    m = AT[0].shape[0]
    alpha = m + 2
    A2 = alpha * alpha
    O = y.shape[1]
    Cg = wt.shape[1] * (wt.shape[2] // 9) // O if tk else wt.shape[2] // 9
    at = A2 * O * Cg + (9 + 3 * alpha) * Cg * run
    for n in prange(x.shape[0]):
        buf = ws[get_thread_id()]
        U = buf[:A2 * O * Cg].reshape(1, A2, O, Cg)
        for r0 in range(0, O, run):
            _kernel_rows(wt, n, U, 0, GK, tk, flip, buf[A2 * O * Cg:at], r0, min(O, r0 + run))
        for b in range(first[n], first[n + 1]):
            _fwd_block(x, U[0], bt, y, buf, at, pieces, blocks[b, 0], blocks[b, 1], BT, AT, h0, w0, cb, ob, False,
                       end)


@njit(parallel=True, cache=True)
def _bias_sums(dy, dbt):
    # dbt (N, O) = dy (N, O, P) summed over pixels, as the conv template sums it
    for n in prange(dy.shape[0]):
        _pixel_sums(dy, dbt, n)


@njit(parallel=True, cache=True)
def _dw_blocks(x, dy, part, dbt, ws, pieces, blocks, slots, s0, S, BT, A, GT, h0, w0, cb, ob, run):
    # part[i] (O, Cg*9) = the kernel gradient of the tiles of slot s = s0 + i: blocks
    # slots[i, 0]..slots[i, 1]-1 (pieces and blocks as in _fwd_blocks), summed in order;
    # dbt (N, O) = dy summed over pixels, slot s of S summing samples n with
    # n*S // N == s. x (N, C, H, W); dy (N, O, Ho, Wo); ws (threads, workspace floats);
    # run: rows of dU transformed back together.
    alpha = A[0].shape[0]
    m = alpha - 2
    A2 = alpha * alpha
    C = x.shape[1]
    O = dy.shape[1]
    F = part.shape[2]
    Cg = F // 9
    G = C // Cg
    Og = O // G
    pf = part.reshape(part.size)
    N = x.shape[0]
    dy3 = dy.reshape(N, O, dy.shape[2] * dy.shape[3])
    for i in prange(slots.shape[0]):
        s = s0 + i
        for n in range(ceil_div(s * N, S), ceil_div((s + 1) * N, S)):
            _pixel_sums(dy3, dbt, n)
        buf = ws[get_thread_id()]
        dUf = buf[:A2 * O * Cg]                               # dU (alpha^2, O, Cg)
        at = A2 * O * Cg
        ts, gs = buf[at:at + 3 * alpha * Cg * run], buf[at + 3 * alpha * Cg * run:at + (3 * alpha + 9) * Cg * run]
        at += (3 * alpha + 9) * Cg * run
        for b in range(slots[i, 0], slots[i, 1]):
            p0, p1 = blocks[b, 0], blocks[b, 1]
            V, dM, s1, s2 = _block_input(x, O, buf, at, pieces, p0, p1, BT, m, h0, w0, cb, ob)
            nb = V.shape[2]
            for o0 in range(0, O, ob):
                gradient_tiles(dy, pieces, p0, p1, A, dM, o0, min(O, o0 + ob), s1, s2)
            # dU[xi] (+)= dM[xi] V[xi]^T, group by group: the slot's first block sets
            beta = 0.0 if b == slots[i, 0] else 1.0
            for xi in range(A2):
                for g in range(G):
                    gemm_view(False, True, Og, Cg, nb, buf, at + A2 * C * nb + (xi * O + g * Og) * nb, nb,
                              buf, at + (xi * C + g * Cg) * nb, nb, dUf, (xi * O + g * Og) * Cg, Cg, beta)
        for o0 in range(0, O, run):
            L = (min(O, o0 + run) - o0) * Cg
            kernel_gradient_rows(dUf, o0 * Cg, O * Cg, L, alpha, GT, pf, (i * O + o0) * F, ts, gs)


@njit(parallel=True, cache=True)
def _fwd_whole(x, U, bt, y, V, M, ws, pieces, BT, AT, h0, w0, cb, ob, tk, end):
    # _fwd_blocks for a shared kernel with every tile in one block (pieces 0..P-1), in
    # three parallel regions whose items own what they write: the input transform by
    # chunks of cb channels into V (alpha^2, C, nb), the alpha^2 GEMMs into M
    # (alpha^2, O, nb) by (xi, group), the output transform by chunks of ob channels.
    m = AT[0].shape[0]
    A2 = (m + 2) * (m + 2)
    C, O = x.shape[1], y.shape[1]
    Cg, G, Og = _groups(C, O, U, tk)
    P = pieces.shape[0]
    nb = V.shape[2]
    for it in prange(ceil_div(C, cb)):
        s1, s2, s3 = _buffers(ws[get_thread_id()], 0, m, cb, nb, ob)
        input_tiles(x, pieces, 0, P, h0, w0, BT, m, V, it * cb, min(C, (it + 1) * cb), s1, s2, s3)
    u = U[0]
    for it in prange(A2 * G):
        xi, g = split(it, G)
        _products(u, V, M, xi, g, Cg, Og, tk)
    for it in prange(ceil_div(O, ob)):
        s1, s2, s3 = _buffers(ws[get_thread_id()], 0, m, cb, nb, ob)
        output_tiles(M, y, bt, pieces, 0, P, AT, it * ob, min(O, (it + 1) * ob), s1, s2, end)


@njit(parallel=True, cache=True)
def _dw_whole(x, dy, part, dbt, V, dM, ws, pieces, BT, A, GT, h0, w0, cb, ob, OB, run, kept):
    # _dw_blocks for a shared kernel (or one sample) with every tile in one block: the
    # tiles' transforms by channel chunks (x's only when V is not `kept` from the
    # forward) and dy's pixel sums by sample, then, by
    # blocks of at most OB output channels within a group, dU (alpha^2, OB, Cg) =
    # dM V^T, one GEMM a xi over all the tiles, into the thread's buffer, and the block's
    # rows of part[0] (O, Cg*9) = G^T dU G. Every item owns what it writes.
    # V (alpha^2, C, nb), dM (alpha^2, O, nb); ws (threads, floats).
    alpha = A[0].shape[0]
    m = alpha - 2
    A2 = alpha * alpha
    N, C = x.shape[0], x.shape[1]
    O = dy.shape[1]
    F = part.shape[2]
    Cg = F // 9
    G = C // Cg
    Og = O // G
    P = pieces.shape[0]
    nb = V.shape[2]
    nc, no = 0 if kept else ceil_div(C, cb), ceil_div(O, ob)
    dy3 = dy.reshape(N, O, dy.shape[2] * dy.shape[3])
    for it in prange(N + nc + no):
        if it < N:
            _pixel_sums(dy3, dbt, it)
            continue
        s1, s2, s3 = _buffers(ws[get_thread_id()], 0, m, cb, nb, ob)
        if it < N + nc:
            c0 = (it - N) * cb
            input_tiles(x, pieces, 0, P, h0, w0, BT, m, V, c0, min(C, c0 + cb), s1, s2, s3)
        else:
            o0 = (it - N - nc) * ob
            gradient_tiles(dy, pieces, 0, P, A, dM, o0, min(O, o0 + ob), s1, s2)
    Vf, dMf = V.reshape(V.size), dM.reshape(dM.size)
    pf = part.reshape(part.size)
    nob = ceil_div(Og, OB)
    for it in prange(G * nob):
        g, blk = split(it, nob)
        o0 = g * Og + blk * OB
        rows = min(g * Og + Og, o0 + OB) - o0
        buf = ws[get_thread_id()]
        dU = buf[:A2 * rows * Cg]
        ts = buf[A2 * rows * Cg:A2 * rows * Cg + 3 * alpha * Cg * run]
        gs = buf[A2 * rows * Cg + 3 * alpha * Cg * run:A2 * rows * Cg + (3 * alpha + 9) * Cg * run]
        for xi in range(A2):
            gemm_view(False, True, rows, Cg, nb, dMf, (xi * O + o0) * nb, nb, Vf, (xi * C + g * Cg) * nb, nb,
                      dU, xi * rows * Cg, Cg, 0.0)
        for r0 in range(0, rows, run):
            L = (min(rows, r0 + run) - r0) * Cg
            kernel_gradient_rows(dU, r0 * Cg, rows * Cg, L, alpha, GT, pf, (o0 + r0) * F, ts, gs)


# ----------------------------------------------------------------------------- plans
def supports(g, groups) -> bool:
    """True for the windows this module computes: 3x3, stride 1, any groups; dilated
    ones (by phases, :func:`phase_geometry`) where the top and left paddings are
    multiples of the dilation (``"same"`` and unpadded layers are).

    Parameters
    ----------
    g : Geometry
    groups : int
    """
    return (g.kh, g.kw, g.sh, g.sw) == (3, 3, 1, 1) and g.ph % g.dh == 0 and g.pw % g.dw == 0


def phase_geometry(g):
    """The undilated window of a dilated 3x3 layer's phases, one batch of ``N*dh*dw``
    samples (see :mod:`.phases`): phase ``(a, b)`` of the output (rows ``a + dh*i``,
    columns ``b + dw*j``) is the correlation of the same phase of the input with the
    kernels, padded by ``ph // dh`` and ``pw // dw``. The phases are ``ceil(H/dh) x
    ceil(W/dw)``, their outputs ``ceil(Ho/dh) x ceil(Wo/dw)`` (shorter phases
    zero-filled, the extra outputs dropped). A kernel shared by the batch runs so.

    Parameters
    ----------
    g : Geometry
        Dilated, with ``supports(g, groups)``.

    Returns
    -------
    Geometry
    """
    return dataclasses.replace(
        g, N=g.N * g.dh * g.dw, H=ceil_div(g.H, g.dh), W=ceil_div(g.W, g.dw),
        ph=g.ph // g.dh, pw=g.pw // g.dw, dh=1, dw=1, Ho=ceil_div(g.Ho, g.dh), Wo=ceil_div(g.Wo, g.dw))


def mosaic_geometry(g):
    """The undilated window of a dilated 3x3 layer on the mosaic of each sample's phases
    (see :mod:`.phases`), and the mosaic's block steps. Per-sample kernels run so.

    Along each axis (dilation d, padding p): the phases are ``q = ceil(size/d)`` long and
    padded by ``p' = p // d``, and the blocks are ``q + gap`` apart, with ``gap =
    max(p', 2p' - 2)`` zeros between them: the padding each phase's windows read on
    either side, and room for a phase's ``q + 2p' - 2`` outputs. The mosaic is
    ``d*q + (d - 1)*gap`` long, its output ``2p' - 2`` longer; output phase ``a`` starts
    where input phase ``a`` does, at ``a*(q + gap)``.

    Parameters
    ----------
    g : Geometry
        Dilated, with ``supports(g, groups)``.

    Returns
    -------
    gm : Geometry
        The mosaic's: ``N`` and ``C`` as `g`'s, ``dh = dw = 1``.
    steps : tuple of int
        ``(sh, sw)``: block ``(a, b)`` starts at ``(a*sh, b*sw)``.
    """
    sizes, steps, pads = [], [], []
    for size, d, p in ((g.H, g.dh, g.ph), (g.W, g.dw, g.pw)):
        q, pp = ceil_div(size, d), p // d
        gap = max(pp, 2 * pp - 2)
        sizes.append(d * q + (d - 1) * gap)
        steps.append(q + gap)
        pads.append(pp)
    (Hm, Wm), (ph, pw) = sizes, pads
    gm = dataclasses.replace(g, H=Hm, W=Wm, ph=ph, pw=pw, dh=1, dw=1, Ho=Hm + 2 * ph - 2, Wo=Wm + 2 * pw - 2)
    return gm, tuple(steps)


def _dilated(g) -> bool:
    return g.dh > 1 or g.dw > 1


def _absent(shape, dtype) -> np.ndarray:
    # an input the call does not read (x of a backward without the kernel gradient, or
    # whose transformed tiles were kept): C-contiguous, of its shape and dtype (the
    # kernels take their loop bounds from it), never written, so never resident
    return np.empty(shape, dtype)


def _check_m(m: int) -> int:
    if m not in TILE_SIZES:
        raise ValueError(f"m must be one of {TILE_SIZES} (the output tile size), got {m!r}")
    return m


def _tiles(Ho: int, Wo: int, m: int) -> tuple[int, int]:
    # (tile rows, tiles a row)
    return ceil_div(Ho, m), ceil_div(Wo, m)


def _budget(C: int, O: int, m: int, itemsize: int) -> int:
    # Grid tiles a block: its V (alpha^2, C, tiles) and M (alpha^2, O, tiles) within
    # BLOCK_BYTES, but at least MIN_TILES.
    return max(MIN_TILES, BLOCK_BYTES // ((m + 2) ** 2 * (C + O) * itemsize))


def _cuts(total: int, parts: int) -> list[int]:
    # 0 = c_0 <= c_1 <= ... <= c_parts = total, about equal steps
    return [p * total // parts for p in range(parts + 1)]


@functools.lru_cache(maxsize=64)
def _blocks(N: int, tH: int, tW: int, tb: int, per_sample: bool, min_blocks: int, gap: int):
    """Blocks of tiles of about `tb` grid tiles (at least `min_blocks` where there are
    units enough; for per-sample kernels ``ceil(min_blocks / N)`` a sample, none across
    samples). The units cut into blocks are tile rows (or equal parts of one where a row
    is wider than a block); a block's consecutive whole rows of one sample form one piece.
    `gap`: gap tiles a tile row (1, or 0 for rows of at most :data:`NO_GAP_TILES`, see
    :func:`_gap`; parts of rows keep the gap).

    Returns
    -------
    pieces : ndarray (P, 6) int64
        ``(n, ti0, ti1, tj0, tj1, gap)``: tile rows ti0..ti1-1, columns tj0..tj1-1 of
        sample n, with `gap` gap tiles a row.
    blocks : ndarray (B, 2) int64
        Ranges ``[p0, p1)`` of pieces, in order.

    Plans are kept (they depend on the shapes alone) and never written to.
    """
    gap = 1 if tW + gap > tb else gap
    parts = 1 if tW + gap <= tb else ceil_div(tW, tb - 1)
    cols = _cuts(tW, parts)
    units = [(ti, cols[k], cols[k + 1]) for ti in range(tH) for k in range(parts)]
    size = (ceil_div(tW, parts) + gap) * len(units)              # grid tiles of one sample
    if parts > 1:
        # parts of rows: one a block (the pieces of a block have one width)
        groups = [(n, n + 1, len(units)) for n in range(N)]
    elif per_sample:
        groups = [(n, n + 1, max(ceil_div(size, tb), ceil_div(min_blocks, N))) for n in range(N)]
    else:
        groups = [(0, N, max(ceil_div(N * size, tb), min_blocks))]
    pieces, blocks = [], []
    for n0, n1, nblocks in groups:
        seq = [(n,) + u for n in range(n0, n1) for u in units]
        cuts = _cuts(len(seq), min(nblocks, len(seq)))
        for a, b in zip(cuts[:-1], cuts[1:]):
            p0 = len(pieces)
            for n, ti, tj0, tj1 in seq[a:b]:
                last = pieces[-1] if len(pieces) > p0 else None
                if last is not None and last[0] == n and last[2] == ti and (last[3], last[4]) == (tj0, tj1) == (0, tW):
                    last[2] = ti + 1
                else:
                    pieces.append([n, ti, ti + 1, tj0, tj1, gap])
            blocks.append((p0, len(pieces)))
    return np.array(pieces, dtype=np.int64), np.array(blocks, dtype=np.int64)


def _largest_block(pieces: np.ndarray, blocks: np.ndarray) -> int:
    # the largest block's grid tiles (a sum a block in Python cost 2 ms a step on
    # cifar16's per-sample layer, 256 blocks)
    per_piece = (pieces[:, 2] - pieces[:, 1]) * (pieces[:, 4] - pieces[:, 3] + pieces[:, 5])
    ends = np.concatenate(([0], np.cumsum(per_piece)))
    return int((ends[blocks[:, 1]] - ends[blocks[:, 0]]).max())


@functools.lru_cache(maxsize=64)
def _slots(nblocks: int, per: int, k: int) -> np.ndarray:
    # (S, 2) ranges of blocks: each run of `per` blocks cut into k slots (kept, never
    # written to)
    cuts = _cuts(per, k)
    return np.array([(s * per + a, s * per + b) for s in range(nblocks // per)
                     for a, b in zip(cuts[:-1], cuts[1:])], dtype=np.int64)


def _chunk(C: int, nb: int) -> int:
    # Channels transformed together: runs of about CHUNK floats per transform loop.
    return max(1, min(C, ceil_div(CHUNK, nb)))


@njit(inline="always")
def _buffer_size(m, cb, nb, ob):
    # floats of each transform buffer: the input transform's of cb channels of nb grid
    # tiles (alpha^2 a tile gathered without the gap, alpha*m a staged tile, up to two
    # staged a tile), the output transform's of ob channels
    return (m + 2) * max(m + 2, 2 * m) * max(cb, ob) * nb + 1


def _workspace(C: int, O: int, m: int, pieces: np.ndarray, blocks: np.ndarray) -> tuple[int, int, int]:
    # (cb, ob, floats of a block's V, M and transform buffers)
    nb = _largest_block(pieces, blocks)
    cb, ob = _chunk(C, nb), _chunk(O, nb)
    return cb, ob, (m + 2) ** 2 * (C + O) * nb + 3 * _buffer_size(m, cb, nb, ob)


def _transformed(wt, m, dtype, groups=1, rot=False):
    # wt (O, F) or (N, O, F) -> U (1 or N, alpha^2, O, F//9); with `rot` the rotated
    # kernels' U (1 or N, alpha^2, C, O//groups)
    w3 = wt.reshape((1,) + wt.shape) if wt.ndim == 2 else wt
    K, O, F = w3.shape
    shape = (K, (m + 2) ** 2) + ((F // 9 * groups, O // groups) if rot else (O, F // 9))
    U = np.empty(shape, dtype=dtype)
    ws = _scratch(get_num_threads(), _kernel_scratch(shape[2], shape[3], m + 2), dtype)
    # every parallel region costs a wake-up of the threads: a few kernels are transformed
    # on this one (every kernel is computed alike either way, so the result is the same)
    parallel = K * O * (F // 9) >= PARALLEL_KERNELS
    (_kernels if parallel else _kernels_serial)(np.ascontiguousarray(w3), U, matrices(m, dtype)[1], rot, ws,
                                                _row_run(shape[2], shape[3]))
    return U


def _gap(tW: int, m: int) -> int:
    # gap tiles a tile row of tW tiles: none for rows of at most NO_GAP_TILES[m]
    return 0 if tW <= NO_GAP_TILES[m] else 1


def _grid(N: int, Ho: int, Wo: int, m: int) -> int:
    # grid tiles of the whole batch (a gap tile a tile row, see _gap)
    tH, tW = _tiles(Ho, Wo, m)
    return N * tH * (tW + _gap(tW, m))


def whole(N: int, C: int, O: int, Ho: int, Wo: int, m: int, itemsize: int, shared: bool,
          gradient: bool = False) -> bool:
    """True when a call runs as one block of every tile: a shared kernel (or a batch of
    one) whose transformed tiles ``V`` and ``M`` fit :data:`WHOLE_BYTES` (the kernel
    gradient: :data:`WHOLE_GRAD_BYTES`). A function of the shapes only (the plan, hence
    the result, never depends on the thread count); the input gradient's correlation has
    C and O swapped, the same footprint."""
    budget = WHOLE_GRAD_BYTES if gradient else WHOLE_BYTES
    return (shared or N == 1) and (m + 2) ** 2 * (C + O) * _grid(N, Ho, Wo, m) * itemsize <= budget


def keeps_tiles(N: int, C: int, O: int, Ho: int, Wo: int, m: int, itemsize: int, shared: bool) -> bool:
    """True when a forward runs as one block and keeps its transformed input tiles for
    a kernel gradient by the same F(m x m): that gradient runs as one block
    (:func:`whole`) and the tiles take at most :data:`KEEP_TILES_BYTES` (by `m`). A
    function of the shapes only."""
    return (whole(N, C, O, Ho, Wo, m, itemsize, shared, gradient=True)
            and (m + 2) ** 2 * C * _grid(N, Ho, Wo, m) * itemsize <= KEEP_TILES_BYTES[m])


def tiles_shape(N: int, C: int, Ho: int, Wo: int, m: int) -> tuple[int, int, int]:
    # V (alpha^2, C, grid tiles) of one block of every tile
    return (m + 2) ** 2, C, _grid(N, Ho, Wo, m)


def _du_rows(Og: int, G: int, Cg: int, alpha: int, itemsize: int) -> int:
    # output channels a block of the one-block kernel gradient: its dU within
    # DU_BLOCK_BYTES, and at least MIN_ITEMS blocks where there are channels enough (one
    # block of a 32-channel layer ran on one thread)
    return max(1, min(Og, DU_BLOCK_BYTES // (alpha * alpha * Cg * itemsize), ceil_div(Og, ceil_div(MIN_ITEMS, G))))


def _whole_space(V, C: int, O: int, nb: int, alpha: int, per_thread: int, dtype):
    # (V (alpha^2, C, nb), M (alpha^2, O, nb), ws (threads, per_thread)) of one block of
    # every tile, carved from one scratch (two _scratch calls of one dtype would return
    # the same memory); a V given (the forward's kept tiles) is used as it is
    T, A2 = get_num_threads(), alpha * alpha
    vs = 0 if V is not None else A2 * C * nb
    buf = _scratch(1, vs + A2 * O * nb + T * per_thread, dtype)[0]
    V = buf[:vs].reshape(A2, C, nb) if V is None else V
    return V, buf[vs:vs + A2 * O * nb].reshape(A2, O, nb), buf[vs + A2 * O * nb:].reshape(T, per_thread)


def _one_block(N: int, Ho: int, Wo: int, m: int) -> np.ndarray:
    # the pieces of one block of every tile (a piece a sample)
    tH, tW = _tiles(Ho, Wo, m)
    return _blocks(N, tH, tW, _grid(N, Ho, Wo, m) + 1, False, 1, _gap(tW, m))[0]


def fused(N: int, O: int, Cg: int, m: int, itemsize: int, per_sample: bool) -> bool:
    """True when a per-sample correlation transforms each sample's kernels in the work
    item that uses them (``_fwd_samples``): a batch of :data:`FUSED_MIN_SAMPLES` or more
    whose transformed kernels of one sample fit :data:`FUSED_KERNEL_BYTES`. O and Cg are
    the kernels' (O and C//groups; the input gradient runs on the forward's kernels). A
    function of the shapes only."""
    return per_sample and N >= FUSED_MIN_SAMPLES and (m + 2) ** 2 * O * Cg * itemsize <= FUSED_KERNEL_BYTES


def _correlate(x, wt, tk, b2, out, h0, w0, m, U=None, groups=1, one=False, V=None):
    # out (N, O, Ho, Wo) = x correlated with the kernels wt (O, F) or (N, O, F)
    # transformed, plus b2. With `tk` (the input gradient: x is dy, out dx), x convolved
    # with them: for m in REVERSED on their transforms, used transposed, with the tiles
    # reversed (reversed_tiles) on a grid that ends at out's end (output_tiles); for
    # other m on the transforms of the rotated kernels. U: wt's transforms, when the
    # forward kept them (else made here, or in the work items). `one`: one block of
    # every tile, whatever the budget; V: (alpha^2, C, grid tiles) to hold the
    # transformed input then (the forward keeps it). Returns the transforms the forward
    # may keep, or None.
    N, C = x.shape[:2]
    O, Ho, Wo = out.shape[1:]
    BT, GK, _, AT, _ = matrices(m, x.dtype)
    rev = tk and m in REVERSED
    rot = tk and not rev
    if rev:
        BT, AT = reversed_tiles(m, x.dtype)
        h0, w0 = h0 - (-Ho) % m, w0 - (-Wo) % m
    per_sample = wt.ndim == 3 and wt.shape[0] > 1
    Ok, Cgk = wt.shape[-2], wt.shape[-1] // 9
    tH, tW = _tiles(Ho, Wo, m)
    if U is None and fused(N, Ok, Cgk, m, x.dtype.itemsize, per_sample):
        pieces, blocks = _blocks(N, tH, tW, _budget(C, O, m, x.dtype.itemsize), True, MIN_ITEMS, _gap(tW, m))
        first = np.searchsorted(pieces[blocks[:, 0], 0], np.arange(N + 1)).astype(np.int64)
        cb, ob, floats = _workspace(C, O, m, pieces, blocks)
        Cg = Ok * Cgk // O if tk else Cgk                   # the correlation's input channels a group
        ws = _scratch(get_num_threads(), (m + 2) ** 2 * O * Cg + _kernel_scratch(O, Cg, m + 2) + floats, x.dtype)
        with blas_single_thread():
            _fwd_samples(x, np.ascontiguousarray(wt), GK, b2, out, ws, pieces, blocks, first, BT, AT, h0, w0, cb, ob,
                         tk, rot, rev, _row_run(O, Cg))
        return None
    if U is None:
        U = _transformed(wt, m, x.dtype, groups, rot)
    if one or whole(N, C, O, Ho, Wo, m, x.dtype.itemsize, U.shape[0] == 1):
        pieces = _one_block(N, Ho, Wo, m)
        nb = _grid(N, Ho, Wo, m)
        cb, ob = _chunk(C, nb), _chunk(O, nb)
        V, M, ws = _whole_space(V, C, O, nb, m + 2, 3 * _buffer_size(m, cb, nb, ob), x.dtype)
        with blas_single_thread():
            _fwd_whole(x, U, b2, out, V, M, ws, pieces, BT, AT, h0, w0, cb, ob, rev, rev)
    else:
        pieces, blocks = _blocks(N, tH, tW, _budget(C, O, m, x.dtype.itemsize), U.shape[0] > 1, MIN_ITEMS,
                                 _gap(tW, m))
        cb, ob, floats = _workspace(C, O, m, pieces, blocks)
        ws = _scratch(get_num_threads(), floats, x.dtype)
        with blas_single_thread():
            _fwd_blocks(x, U, b2, out, ws, pieces, blocks, BT, AT, h0, w0, cb, ob, rev, rev)
    return None if rot else U


#: The key of the transformed kernels a forward keeps for its backward in `saved`.
SAVED_KEY = "winograd"
#: The key of the transformed input tiles a forward keeps for its backward in `saved`
#: (:func:`keeps_tiles`).
TILES_KEY = "winograd_tiles"


def kept_tiles(saved) -> int:
    """The output tile size m of the transformed input tiles a forward kept in `saved`
    for its backward (:func:`keeps_tiles`), 0 when none (or no `saved`)."""
    return saved[TILES_KEY][0] if saved is not None and TILES_KEY in saved else 0


def forward(x, wt, bt, g, groups, m=2, saved=None, out=None):
    """``y = conv(x, w) + b`` for a 3x3, stride-1 window by Winograd's F(m x m, 3 x 3).

    Parameters
    ----------
    x : ndarray (N, C, H, W), C-contiguous
    wt : ndarray (O, C//groups*9) shared, or (N, O, C//groups*9) per sample
    bt : ndarray (O,) or (N, O) or None
    g : Geometry
        With ``supports(g, groups)``.
    groups : int
    m : int
        Output tile size, 2 or 4.
    saved : dict, optional
        Where the transformed kernels are kept (under :data:`SAVED_KEY`, when they were
        made whole rather than in the work items) for :func:`backward`'s input gradient
        with the same `wt` and `m`, and the transformed input tiles (under
        :data:`TILES_KEY`, where :func:`keeps_tiles`) for its kernel gradient with the
        same `x`. Give it only when that backward runs F(m x m) too.
    out : ndarray (N, O, Ho, Wo), optional
        Where to write y (C-contiguous; an undilated window).

    Returns
    -------
    y : ndarray (N, O, Ho, Wo)
    """
    m = _check_m(m)
    O = wt.shape[-2]
    if g.N > 0 and _dilated(g):
        return _phased_forward(x, wt, bt, g, groups, m, saved)
    y = np.empty((g.N, O, g.Ho, g.Wo), dtype=x.dtype) if out is None else out
    if g.N == 0:
        return y
    b2 = np.zeros((0, O), x.dtype) if bt is None else np.ascontiguousarray(bt.reshape(-1, O))
    one = keeps_tiles(g.N, g.C, O, g.Ho, g.Wo, m, x.dtype.itemsize, wt.ndim == 2)
    V = np.empty(tiles_shape(g.N, g.C, g.Ho, g.Wo, m), dtype=x.dtype) if one and saved is not None else None
    U = _correlate(x, wt, False, b2, y, -g.ph, -g.pw, m, one=one, V=V)
    if saved is not None and U is not None and m in REVERSED:
        saved[SAVED_KEY] = (m, U)
    if V is not None:
        saved[TILES_KEY] = (m, V)
    return y


class _Phased:
    """How a dilated layer runs as an undilated one (:mod:`.phases`): a shared kernel's
    phases as one batch of ``N*dh*dw`` samples (:func:`phase_geometry`), per-sample
    kernels on each sample's mosaic (:func:`mosaic_geometry`). ``ga`` is the undilated
    problem's geometry; :meth:`into` lays an image out for it, :meth:`back` takes one
    back."""

    def __init__(self, g, shared: bool):
        self.g, self.shared = g, shared
        self.ga, self.steps = (phase_geometry(g), None) if shared else mosaic_geometry(g)

    def into(self, a, H: int, W: int, out):
        # a (N, ch, ., .) -> (ga.N, ch, H, W), written into out (a flat buffer that size)
        g, ch = self.g, a.shape[1]
        if self.shared:
            r = phases.split(a, g.dh, g.dw, H, W, out.reshape(g.dh * g.dw, g.N, ch, H, W))
        else:
            r = phases.to_mosaic(a, g.dh, g.dw, *self.steps, H, W, out.reshape(g.N, ch, H, W))
        return r.reshape(self.ga.N, ch, H, W)

    def back(self, a, H: int, W: int):
        # a (ga.N, ch, ., .) laid out by into -> (N, ch, H, W)
        g = self.g
        if self.shared:
            return phases.merge(a.reshape((g.dh * g.dw, g.N) + a.shape[1:]), g.dh, g.dw, H, W)
        return phases.from_mosaic(a, g.dh, g.dw, *self.steps, H, W)


def _phased_forward(x, wt, bt, g, groups, m, saved):
    # a dilated layer as its undilated problem (_Phased), keeping in `saved` what that
    # forward keeps. The rearranged x and y live in the thread's "phases" scratch:
    # fresh, they had cost some 1400 page faults a forward (a third of it on 16 samples
    # of 16x16, 128 channels).
    r = _Phased(g, wt.ndim == 2)
    ga, O = r.ga, wt.shape[-2]
    nx = ga.N * g.C * ga.H * ga.W
    buf = _scratch(1, nx + ga.N * O * ga.Ho * ga.Wo, x.dtype, "phases")[0]
    xa = r.into(x, ga.H, ga.W, buf[:nx])
    ya = buf[nx:].reshape(ga.N, O, ga.Ho, ga.Wo)
    if ga.N > g.N and bt is not None and bt.ndim == 2 and bt.shape[0] > 1:
        bt = np.tile(bt, (ga.N // g.N, 1))                           # a bias row a sample, phase-major
    forward(xa, wt, bt, ga, groups, m, saved, ya)
    return r.back(ya, g.Ho, g.Wo)


def _phased_backward(x, wt, dy, g, groups, need_dx, need_dw, m, saved):
    # backward of _phased_forward: dy rearranged; x too for a kernel gradient that did
    # not keep its transformed tiles; dx rearranged back. In the "phases" scratch: dy's,
    # and one x-sized room that holds dx's and then, once dx is out, x's (both gradients
    # from x's phases: the input gradient first, then the kernel gradient, the same
    # values as in one call; the room held both at first, a third more memory for the
    # phases).
    r = _Phased(g, wt.ndim == 2)
    ga, O = r.ga, wt.shape[-2]
    x_shape = (ga.N, g.C, ga.H, ga.W)
    reads_x = need_dw and kept_tiles(saved) != m
    nd, nx = ga.N * O * ga.Ho * ga.Wo, math.prod(x_shape)
    buf = _scratch(1, nd + nx * (reads_x or need_dx), x.dtype, "phases")[0]
    dya = r.into(dy, ga.Ho, ga.Wo, buf[:nd])
    room = buf[nd:nd + nx].reshape(x_shape) if reads_x or need_dx else None
    dx = None
    if need_dx:
        # the input gradient (and the kernel gradient too where x's tiles were kept)
        _, gw, dbt = backward(_absent(x_shape, x.dtype), wt, dya, ga, groups, True, need_dw and not reads_x, m,
                              saved, room)
        dx = r.back(room, g.H, g.W)
    if reads_x:
        xa = r.into(x, ga.H, ga.W, room)
        _, gw, dbt = backward(xa, wt, dya, ga, groups, False, True, m, None if need_dx else saved)
    elif not need_dx:
        # the bias sums alone, or a kernel gradient on kept tiles
        _, gw, dbt = backward(_absent(x_shape, x.dtype), wt, dya, ga, groups, False, need_dw, m, saved)
    return dx, gw, dbt


def _kernel_gradient(x, dy, dbt, g, groups, shared, m, V=None):
    # gw (O, F) shared or (N, O, F): the slots' partials summed in slot order; dbt (N, O)
    # the pixel sums of dy. V: x's transformed tiles, kept by the forward (one block)
    N, C = x.shape[:2]
    O = dy.shape[1]
    Cg = C // groups
    F = Cg * 9
    alpha = m + 2
    if V is not None or whole(N, C, O, g.Ho, g.Wo, m, x.dtype.itemsize, shared, gradient=True):
        pieces = _one_block(N, g.Ho, g.Wo, m)
        nb, A2 = _grid(N, g.Ho, g.Wo, m), alpha * alpha
        cb, ob = _chunk(C, nb), _chunk(O, nb)
        OB = _du_rows(O // groups, groups, Cg, alpha, x.dtype.itemsize)
        run = _row_run(OB, Cg)
        kept = V is not None
        V, dM, ws = _whole_space(V, C, O, nb, alpha,
                                 max(3 * _buffer_size(m, cb, nb, ob), (A2 * OB + (3 * alpha + 9) * run) * Cg), x.dtype)
        part = np.empty((1, O, F), dtype=x.dtype)
        BT, _, GT, _, A = matrices(m, x.dtype)
        with blas_single_thread():
            _dw_whole(x, dy, part, dbt, V, dM, ws, pieces, BT, A, GT, -g.ph, -g.pw, cb, ob, OB, run, kept)
        return part[0] if shared else part
    tH, tW = _tiles(g.Ho, g.Wo, m)
    pieces, blocks = _blocks(N, tH, tW, _budget(C, O, m, x.dtype.itemsize), not shared, SLOTS, _gap(tW, m))
    # slots: ranges of blocks, SLOTS over the batch or ceil(SLOTS / N) a sample
    per = len(blocks) if shared else len(blocks) // N
    k = min(per, SLOTS if shared else ceil_div(SLOTS, N))
    slots = _slots(len(blocks), per, k)
    cb, ob, floats = _workspace(C, O, m, pieces, blocks)
    run = _row_run(O, Cg)
    T = get_num_threads()
    ws = _scratch(T, (alpha * alpha * O + (3 * alpha + 9) * run) * Cg + floats, x.dtype)
    S = len(slots)
    BT, _, GT, _, A = matrices(m, x.dtype)
    args = (BT, A, GT, -g.ph, -g.pw, cb, ob, run)
    if shared:
        # the slots in waves of at least T (the threads), fewer than S where S partials
        # would pass PARTIALS_BYTES; each wave's partials added to gw in slot order, the
        # order of summing them all at the end: bitwise the same whatever the waves
        wave = min(S, max(T, PARTIALS_BYTES // (O * F * x.dtype.itemsize)))
        part = np.empty((wave, O, F), dtype=x.dtype)
        gw = None
        with blas_single_thread():
            for s0 in range(0, S, wave):
                w = min(wave, S - s0)
                _dw_blocks(x, dy, part[:w], dbt, ws, pieces, blocks, slots[s0:s0 + w], s0, S, *args)
                for p in part[:w]:
                    gw = p.copy() if gw is None else np.add(gw, p, out=gw)
        return gw
    part = np.empty((S, O, F), dtype=x.dtype)
    with blas_single_thread():
        _dw_blocks(x, dy, part, dbt, ws, pieces, blocks, slots, 0, S, *args)
    if k == 1:
        return part
    return np.add.reduce(part.reshape(N, k, O, F), axis=1)


def backward(x, wt, dy, g, groups, need_dx=True, need_dw=True, m=2, saved=None, dx_out=None):
    """Backward of :func:`forward`.

    Parameters
    ----------
    x : ndarray (N, C, H, W), C-contiguous
    wt : ndarray (O, F) shared or (N, O, F) per sample, ``F = C//groups*9``
    dy : ndarray (N, O, Ho, Wo), C-contiguous
    g : Geometry
    groups : int
    need_dx, need_dw : bool
        Whether to compute the input and the kernel gradient.
    m : int
        Output tile size, 2 or 4.
    saved : dict, optional
        :func:`forward`'s, for the same `x` and `wt`: its transformed kernels and input
        tiles, if kept with this `m`, are taken out of it (a second backward transforms
        them again, to the same values).
    dx_out : ndarray (N, C, H, W), optional
        Where to write dx (C-contiguous; an undilated window).

    Returns
    -------
    dx : ndarray (N, C, H, W) or None
    gw : ndarray (O, F) for shared kernels (``sum_n dY_n X_n^T``), (N, O, F) per sample,
        or None
    dbt : ndarray (O,) shared or (N, O) per sample: ``dY`` summed over pixels
    """
    m = _check_m(m)
    O = wt.shape[-2]
    shared = wt.ndim == 2
    if g.N == 0:
        return empty_backward(g, wt, x.dtype, need_dx, need_dw)
    if _dilated(g):
        return _phased_backward(x, wt, dy, g, groups, need_dx, need_dw, m, saved)
    kernels, tiles = (None if saved is None else saved.pop(key, None) for key in (SAVED_KEY, TILES_KEY))
    U = kernels[1] if kernels is not None and kernels[0] == m else None
    V = tiles[1] if tiles is not None and tiles[0] == m else None
    del kernels, tiles
    dbt = np.empty((g.N, O), dtype=x.dtype)
    gw = None
    if need_dw and V is not None:
        # on the forward's tiles, first: they are gone before the input gradient's
        # buffers come (the kernel gradient's own are then dM's alone)
        gw = _kernel_gradient(x, dy, dbt, g, groups, shared, m, V)
    V = None
    dx = (np.empty((g.N, g.C, g.H, g.W), dtype=x.dtype) if dx_out is None else dx_out) if need_dx else None
    if need_dx:
        # the input gradient: dy convolved with the kernels, on their transforms
        _correlate(dy, wt, True, np.zeros((0, g.C), x.dtype), dx, g.ph - 2, g.pw - 2, m, U, groups)
    # the transformed kernels ((m+2)^2/9 times the kernels) are gone before the kernel
    # gradient's buffers come: a batch of one's peak memory is otherwise theirs summed
    U = None
    if need_dw and gw is None:
        gw = _kernel_gradient(x, dy, dbt, g, groups, shared, m)
    elif not need_dw:
        _bias_sums(dy.reshape(g.N, O, g.P), dbt)
    return dx, gw, np.add.reduce(dbt, axis=0) if shared else dbt
