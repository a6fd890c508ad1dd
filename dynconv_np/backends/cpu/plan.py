"""The CPU conv planner: which strategy runs each pass of a convolution, and which
formulation a kernel-mixing op uses, chosen per call by a cost model.

Strategies of one conv pass (``conv_forward`` or ``conv_backward`` of
:mod:`~dynconv_np.backends.cpu.conv`):

``tiles``
    The row-tile template: one GEMM per (sample, tile of output rows) in the forward, a
    sample at a time in the backward (channel blocks below ``MIN_BATCH`` samples).
``batched``
    Shared kernels only: the columns of a block of samples side by side, one GEMM per
    block (forward, input gradient, and the kernel gradient summed over the block).
    Pays where a sample has few pixels and its own GEMM would be small.
``winograd2``, ``winograd4``
    Winograd F(2x2, 3x3) and F(4x4, 3x3) (:mod:`~dynconv_np.backends.cpu.winograd`): 3x3
    windows, stride 1; dilated ones by phases (the top and left paddings multiples of
    the dilation), estimated as the undilated problem they run as (the phases as a
    batch, or per-sample kernels' mosaics) plus the copies.

Formulations of a kernel-mixing op (``conv_plan``), docs/math.md's two forms of the same math:

``kernel_mixing``
    Mix the K kernels per sample (``K*|W|`` multiply-adds a sample), then one
    convolution with per-sample kernels.
``output_mixing``
    One shared convolution with the K kernels stacked as ``K*O`` outputs over the whole
    batch, then the K outputs mixed per sample: K times the convolution's work, in large
    shared-kernel GEMMs and without the per-sample kernels.

The cost model estimates each candidate's time in seconds on a nominal machine of
:data:`THREADS` cores (the machine it was calibrated on, see docs/performance.md and
``benchmarks/calibrate.py``): GEMMs at a rate that falls off for small dimensions, copies
(unfold, fold, tile stores) per element, in cache or not, and per work item overhead.
Estimates and decisions are functions of the shapes and dtype only, never of the thread
count of the process, so every thread count runs the same strategy (and gives bitwise
the same results).

Forcing: :func:`forced` reads what :mod:`dynconv_np.strategy` set (a context's
:func:`force` or the process default); a forced strategy that does not support a call
raises ``ValueError`` naming it. :func:`recording` collects every decision (with the
estimates) for ``dynconv_np.strategy.explain``; each decision is also logged at DEBUG level
on the ``dynconv_np.strategy`` logger.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import math

#: The strategies of one conv pass, in the order ties are broken.
CONV_STRATEGIES = ("tiles", "batched", "winograd2", "winograd4", "shifted")
#: The formulations of a kernel-mixing op.
MIXINGS = ("kernel_mixing", "output_mixing")
#: Passes a strategy is chosen for.
PASSES = ("forward", "backward")

log = logging.getLogger("dynconv_np.strategy")

# ----------------------------------------------------------------------------- cost constants
# Fitted to measurements on the 2-core machine of docs/performance.md by
# ``python benchmarks/calibrate.py --fit-shifted --fit`` (which prints these lines), wall
# time over 2 threads on a quiet machine (load 0.7 to 1.4, 2026-12-01 21:35 UTC; 16
# shapes, every strategy including ``shifted`` and the one-block Winograd layout);
# GEMM_CALL, ITEM, the GEMM's N half-width, MARGIN and the Winograd block sizes (the
# module's own) are set by hand.
#: Cores of the nominal machine: work items are spread over this many threads.
THREADS = 2
#: Single-thread GEMM rate (flop/s) of large float32 products; float64 runs at half.
GEMM_PEAK = 6.68e10
#: GEMM dimensions at which the rate is half the peak, per dimension (M, K, N of
#: ``(M, K) @ (K, N)``): rate = peak * prod(d / (d + half)).
GEMM_HALF = (0.0271, 20.2, 3.0)
#: Seconds of one GEMM call beyond its flops (dispatch, packing of small operands).
GEMM_CALL = 1.5e-6
#: Seconds per element moved within a work buffer (tile loads and stores, plane copies).
COPY = 3.22e-10
#: Seconds per run of the row unfold (one output row of one column row: its set-up
#: and edges), beyond its elements.
RUN = 6.01e-09
#: Seconds per element of the padded-plane unfold (a gather).
GATHER = 7.32e-12
#: Factor on every copy when a work item's buffer exceeds :data:`L2_BYTES`.
MEM_FACTOR = 1.18
#: Cache size per core below which a work item's buffer stays resident.
L2_BYTES = 2 * 2**20
#: Seconds per work item (scheduling, views, the bias and pixel-sum loops' set-up).
ITEM = 2.0e-7
#: Seconds per multiply-add of the mixing products (``pi @ W``, ``pi^T G``, ``G W^T``,
#: and output mixing's per-sample sums), which stream memory.
STREAM = 3.29e-10
#: Winograd tile transforms: seconds per transformed element, F(2x2) and F(4x4).
WINO_TRANSFORM = {2: 6.72e-10, 4: 9.32e-10}
#: Factor on the estimate of a per-sample Winograd pass whose kernels are transformed in
#: the work item (``winograd.fused``: batches of WINO_FUSED_MIN_SAMPLES or more, a
#: sample's transformed kernels within WINO_FUSED_KERNEL_BYTES). Over the 28 such
#: timings of the 2026-12-02 calibration (two threads) these passes measured 1.74x
#: below their estimates on average, ``tiles``' per-sample passes 1.07x: the shared
#: terms overcount them. The fitted 0.57 would also pick winograd2 for cifar8's forward
#: (1.49x slower there); 0.7 is set by hand inside the range (0.56 to 0.72) where the
#: calibration shapes' per-sample picks improve (cifar16's winograd2, 1.19 and 1.22x
#: faster than ``tiles``) and cifar8's stay (docs/performance.md, "The cost model").
WINO_PER_SAMPLE = 0.7
#: ``winograd.FUSED_MIN_SAMPLES`` and ``winograd.FUSED_KERNEL_BYTES``.
WINO_FUSED_MIN_SAMPLES = 4
WINO_FUSED_KERNEL_BYTES = 2**20
#: Winograd's block budget (bytes of transformed input and products per work item) and
#: the fewest grid tiles a block holds: ``winograd.BLOCK_BYTES`` and ``winograd.MIN_TILES``.
WINO_BLOCK_BYTES = 2**20
WINO_MIN_TILES = 32
#: The fewest blocks of the module's forward (``winograd.MIN_ITEMS``) and kernel gradient
#: (its slots, ``conv.SLOTS``).
WINO_MIN_ITEMS = 4
WINO_SLOTS = 8
#: A shared kernel's (or a batch of one's) transformed tiles up to these many bytes run
#: as one block of every tile, forward and kernel gradient: ``winograd.WHOLE_BYTES`` and
#: ``winograd.WHOLE_GRAD_BYTES``.
WINO_WHOLE_BYTES = 2 * 2**20
WINO_WHOLE_GRAD_BYTES = 16 * 2**20
#: Bytes of the one-block kernel gradient's dU a work item forms: ``winograd.DU_BLOCK_BYTES``.
WINO_DU_BLOCK_BYTES = 2**20
#: Tile rows laid out without a gap tile, at most this many tiles: ``winograd.NO_GAP_TILES``.
WINO_NO_GAP_TILES = {2: 0, 4: 4}
#: A forward keeps its transformed input tiles for the backward's kernel gradient up to
#: this many bytes (by output tile size): ``winograd.KEEP_TILES_BYTES`` (see
#: :func:`_winograd_keeps`).
WINO_KEEP_TILES_BYTES = {2: 0, 4: 2 * 2**20}
#: A dilated layer's phases, rearranged (Winograd on dilated windows, :mod:`.phases`):
#: seconds per element copied, plus per run of a phase's row (``W/dw`` elements long),
#: over two threads; set by hand from ``to_mosaic`` and ``from_mosaic`` timed alone
#: (0.5 to 0.75 ns an element at dilation 2 on 28 to 32 wide images, 1.5 to 1.9 at
#: dilations 4 and 6 on 16 and 33 wide ones; the phase-major split and merge alike).
MOSAIC_ELEMENT = 2.7e-10
MOSAIC_RUN = 5.3e-09
#: K half-width of the shifted-views GEMMs (``shifted``): kh*kw GEMMs accumulate into
#: one output with the input channels as their inner dimension, a short one that costs
#: them less than it costs a lone GEMM (fitted to ``shifted``'s own timings, see
#: docs/performance.md, "Shifted views").
SHIFT_HALF_K = 0.0498
#: Another strategy than the first candidate (``tiles``; ``kernel_mixing``) is picked
#: only when its estimate is below this fraction of the first's: the estimates are
#: within some 20 % of the measurements, and the first is the better-tried path.
MARGIN = 0.85
#: Strategies whose estimates are the least tried: picked only when they beat every
#: other candidate by MARGIN (``shifted``'s fit leaves its estimate 20 to 30 % low on
#: some layers, e.g. cifar32's per-sample forward, where winograd4 measures faster).
PROVISIONAL = ("shifted",)
#: The constants :func:`calibrate` may set (``benchmarks/calibrate.py --fit``).
FITTED = ("GEMM_PEAK", "GEMM_HALF", "GEMM_CALL", "COPY", "RUN", "GATHER", "MEM_FACTOR", "ITEM", "STREAM",
          "WINO_TRANSFORM", "SHIFT_HALF_K", "WINO_PER_SAMPLE")


def calibrate(**constants) -> None:
    """Set cost constants (names of :data:`FITTED`) and forget cached estimates."""
    for name, value in constants.items():
        if name not in FITTED:
            raise ValueError(f"unknown cost constant {name!r}; expected one of {', '.join(FITTED)}")
        globals()[name] = value
    estimates.cache_clear()


# ----------------------------------------------------------------------------- a call
@dataclasses.dataclass(frozen=True)
class ConvCall:
    """What the planner knows of one conv call: the shapes, and the layouts the conv
    template would use for them (computed by :mod:`~dynconv_np.backends.cpu.conv`).

    ``tile_rows``: output rows per tile of ``tiles``; ``channel_blocks`` / ``block_rows``:
    the small-batch backward's channel blocks (0 when the batch is not small);
    ``block_samples``: samples per block of ``batched``; ``narrow``: whole samples unfold
    through padded planes; ``winograd``: the Winograd module supports the window.
    """

    N: int
    C: int
    O: int
    H: int
    W: int
    Ho: int
    Wo: int
    kh: int
    kw: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    shared: bool
    itemsize: int
    pointwise: bool
    tile_rows: int
    channel_blocks: int
    block_rows: int
    block_samples: int
    narrow: bool
    winograd: bool

    @property
    def P(self) -> int:
        return self.Ho * self.Wo

    @property
    def F(self) -> int:
        """Kernel columns per output channel, ``C//groups * kh * kw``."""
        return self.C // self.groups * self.kh * self.kw

    def describe(self) -> str:
        kind = "shared kernel" if self.shared else "per-sample kernels"
        s = f"N={self.N} C={self.C} O={self.O} {self.H}x{self.W} k={self.kh}x{self.kw}"
        if self.stride != (1, 1):
            s += f" stride={self.stride[0]}x{self.stride[1]}" if self.stride[0] != self.stride[1] \
                else f" stride={self.stride[0]}"
        if self.dilation != (1, 1):
            s += f" dilation={self.dilation}"
        if self.groups > 1:
            s += f" groups={self.groups}"
        return f"{s}, {kind}, float{8 * self.itemsize}"


def unsupported(strategy: str, call: ConvCall) -> str | None:
    """Why `strategy` cannot run `call` (None when it can)."""
    if strategy == "tiles":
        return None
    if strategy == "batched":
        if not call.shared:
            return "it needs a kernel shared by the batch (per-sample kernels given)"
        if call.N < 2:
            return f"it needs a batch of 2 samples or more (N={call.N})"
        return None
    if strategy in ("winograd2", "winograd4"):
        if not call.winograd:
            return ("it needs a 3x3 window with stride 1, a padding that is a multiple of the dilation, "
                    f"and the Winograd module (got k={call.kh}x{call.kw}, stride={call.stride}, "
                    f"dilation={call.dilation})")
        return None
    if strategy == "shifted":
        if call.stride != (1, 1):
            return f"it needs stride 1 (got stride={call.stride})"
        return None
    raise ValueError(f"unknown conv strategy {strategy!r}; expected one of {', '.join(CONV_STRATEGIES)}")


# ----------------------------------------------------------------------------- the cost model
def _eff(d: float, half: float) -> float:
    return d / (d + half)


def gemm_seconds(M: float, K: float, N: float, itemsize: int, half_k: float | None = None) -> float:
    """Estimated seconds of one single-threaded ``(M, K) @ (K, N)`` GEMM (`half_k`: the K
    half-width instead of ``GEMM_HALF[1]``)."""
    hm, hk, hn = GEMM_HALF
    hk = hk if half_k is None else half_k
    rate = GEMM_PEAK * (4 / itemsize) * _eff(M, hm) * _eff(K, hk) * _eff(N, hn)
    return 2.0 * M * K * N / rate + GEMM_CALL


def _mem(buffer_elements: float, itemsize: int) -> float:
    # the copy cost factor of a work item's buffer: in L2 or not
    return 1.0 if buffer_elements * itemsize <= L2_BYTES else MEM_FACTOR


def _unfold(c: ConvCall, elements: float, whole: bool) -> float:
    # Seconds to unfold (or fold, at twice this) `elements` column entries: pointwise
    # columns are a copy; whole samples of narrow outputs gather through padded planes
    # (plus the plane copies); else runs of Wo.
    if c.pointwise:
        return elements * COPY
    if whole and c.narrow:
        return elements * GATHER + elements / (c.kh * c.kw) * COPY
    return elements * COPY + elements / c.Wo * RUN


def _spread(items: int, seconds_per_item: float) -> float:
    # Equal work items over THREADS threads.
    return math.ceil(items / THREADS) * (seconds_per_item + ITEM)


def _sums(c: ConvCall) -> float:
    # the bias gradient's pixel sums
    return c.N * c.O * c.P * COPY / THREADS


def _tiles_forward(c: ConvCall) -> float:
    G, Og, Fg, CT = c.groups, c.O // c.groups, c.F, c.C * c.kh * c.kw
    tiles = math.ceil(c.Ho / c.tile_rows)
    Pt = c.P / tiles
    store = c.O * Pt if tiles > 1 else 0
    unfold = 0.0 if c.pointwise else _unfold(c, CT * Pt, tiles == 1)
    item = G * gemm_seconds(Og, Fg, Pt, c.itemsize) + (unfold + store * COPY) * _mem(CT * Pt + store, c.itemsize)
    return _spread(c.N * tiles, item)


def _tiles_backward(c: ConvCall, need_dx: bool, need_dw: bool) -> float:
    G, Og, Fg, CT = c.groups, c.O // c.groups, c.F, c.C * c.kh * c.kw
    if c.channel_blocks:
        rows, P = c.block_rows, c.P
        mem = _mem(rows * P + Og * rows, c.itemsize)
        per_sample = 0.0
        if need_dw:
            per_sample += gemm_seconds(Og, P, rows, c.itemsize) + _unfold(c, rows * P, False) * mem
        if need_dx:
            per_sample += gemm_seconds(rows, Og, P, c.itemsize) + Og * rows * COPY
            per_sample += 0.0 if c.pointwise else 2 * _unfold(c, rows * P, False) * mem
        return _sums(c) + _spread(c.channel_blocks, c.N * (per_sample + ITEM))
    tiles = math.ceil(c.Ho / c.tile_rows)
    Pt = c.P / tiles
    cols = 0 if c.pointwise else CT * Pt
    mem = _mem(cols + c.O * Pt + c.O * Fg, c.itemsize)
    tile = (c.O * Pt * COPY if tiles > 1 else 0.0) * mem
    if need_dw:
        tile += G * gemm_seconds(Og, Pt, Fg, c.itemsize) + (c.O * Fg * COPY if tiles > 1 else 0.0)
        tile += 0.0 if c.pointwise else _unfold(c, cols, tiles == 1) * mem
    if need_dx:
        tile += G * gemm_seconds(Fg, Og, Pt, c.itemsize)
        tile += 0.0 if c.pointwise else 2 * _unfold(c, cols, tiles == 1) * mem
    sample = tiles * tile + (c.C * c.H * c.W * COPY if need_dx and not c.pointwise else 0.0)
    if c.shared:
        slots = min(c.N, 8)
        return _sums(c) + _spread(slots, math.ceil(c.N / slots) * sample)
    return _sums(c) + _spread(c.N, sample)


def _batched_forward(c: ConvCall) -> float:
    G, Og, Fg, CT = c.groups, c.O // c.groups, c.F, c.C * c.kh * c.kw
    B = c.block_samples
    L = B * c.P
    item = G * gemm_seconds(Og, Fg, L, c.itemsize)
    item += (_unfold(c, CT * L, True) + c.O * L * COPY) * _mem((CT + c.O) * L, c.itemsize)
    return _spread(math.ceil(c.N / B), item)


def _batched_backward(c: ConvCall, need_dx: bool, need_dw: bool) -> float:
    G, Og, Fg, CT = c.groups, c.O // c.groups, c.F, c.C * c.kh * c.kw
    B = c.block_samples
    L = B * c.P
    blocks = math.ceil(c.N / B)
    mem = _mem(CT * L + c.O * L + c.O * Fg, c.itemsize)
    item = c.O * L * COPY * mem
    if need_dw:
        item += G * gemm_seconds(Og, L, Fg, c.itemsize) + (_unfold(c, CT * L, True) + c.O * Fg * COPY) * mem
    if need_dx:
        item += G * gemm_seconds(Fg, Og, L, c.itemsize) + 2 * _unfold(c, CT * L, True) * mem
        item += B * c.C * c.H * c.W * COPY
    slots = min(blocks, 8)
    return _sums(c) + _spread(slots, math.ceil(blocks / slots) * item)


def _winograd_blocks(c: ConvCall, tiles: int, m: int, min_blocks: int) -> tuple[int, float]:
    # (blocks, grid tiles a block) of the module's plan: blocks of WINO_BLOCK_BYTES of
    # transformed tiles (at least WINO_MIN_TILES), at least min_blocks over a shared
    # kernel's batch or ceil(min_blocks / N) a sample; a per-sample kernel's never span
    # samples. The grid tiles count the gap tiles the module runs (late2's 2x2 images
    # in F(2x2): half the grid; counted, its shared forward goes to `batched`, 1.22 and
    # 1.39x as fast at one and two threads).
    A2 = (m + 2) ** 2
    per_tile = A2 * (c.C + c.O) * c.itemsize
    T = max(WINO_MIN_TILES, WINO_BLOCK_BYTES // per_tile)
    if c.shared:
        blocks = max(math.ceil(c.N * tiles / T), min_blocks)
    else:
        blocks = c.N * max(math.ceil(tiles / T), math.ceil(min_blocks / c.N))
    blocks = min(blocks, c.N * math.ceil(c.Ho / m))          # whole tile rows at least
    return blocks, _winograd_grid(c, m) / blocks


def _winograd_grid(c: ConvCall, m: int) -> int:
    # grid tiles of the whole batch: a gap tile a tile row, but for rows of at most
    # WINO_NO_GAP_TILES[m] tiles (the GEMMs of one block of every tile run over them all)
    tW = math.ceil(c.Wo / m)
    return c.N * math.ceil(c.Ho / m) * (tW + (tW > WINO_NO_GAP_TILES[m]))


def _winograd_whole(c: ConvCall, m: int, gradient: bool) -> bool:
    # winograd.whole: one block of every tile when its transformed tiles fit the budget
    budget = WINO_WHOLE_GRAD_BYTES if gradient else WINO_WHOLE_BYTES
    return (c.shared or c.N == 1) and (m + 2) ** 2 * (c.C + c.O) * _winograd_grid(c, m) * c.itemsize <= budget


def _winograd_keeps(c: ConvCall, m: int) -> bool:
    # winograd.keeps_tiles: a forward that keeps its transformed input for a kernel
    # gradient of one block
    return (_winograd_whole(c, m, True)
            and (m + 2) ** 2 * c.C * _winograd_grid(c, m) * c.itemsize <= WINO_KEEP_TILES_BYTES[m])


def _winograd_fused(c: ConvCall, m: int) -> bool:
    # winograd.fused: per-sample kernels transformed in the work item that uses them (the
    # rule reads the kernels' O and C/groups, the same for the input gradient's pass)
    return (not c.shared and c.N >= WINO_FUSED_MIN_SAMPLES
            and (m + 2) ** 2 * c.O * (c.C // c.groups) * c.itemsize <= WINO_FUSED_KERNEL_BYTES)


def _phase_call(c: ConvCall) -> ConvCall:
    # the undilated problem the Winograd module runs for a dilated call: a shared
    # kernel's dh*dw phases as N*dh*dw samples of ceil(H/dh) x ceil(W/dw)
    # (winograd.phase_geometry), per-sample kernels' mosaic of each sample's phases
    # (winograd.mosaic_geometry; the padding taken as even on both sides)
    dh, dw = c.dilation
    if (dh, dw) == (1, 1):
        return c
    if c.shared:
        return dataclasses.replace(c, N=c.N * dh * dw, H=math.ceil(c.H / dh), W=math.ceil(c.W / dw),
                                   Ho=math.ceil(c.Ho / dh), Wo=math.ceil(c.Wo / dw), dilation=(1, 1))
    sizes = []
    for size, out, d in ((c.H, c.Ho, dh), (c.W, c.Wo, dw)):
        pp = (out - size + 2 * d) // 2 // d
        side = d * math.ceil(size / d) + (d - 1) * max(pp, 2 * pp - 2)
        sizes += [side, side + 2 * pp - 2]
    H, Ho, W, Wo = sizes
    return dataclasses.replace(c, H=H, W=W, Ho=Ho, Wo=Wo, dilation=(1, 1))


def _phase_copies(c: ConvCall, backward: bool, need_dx: bool, need_dw: bool, kept: bool) -> float:
    # a dilated call's rearrangements (phases or mosaics): x in and y out (forward); dy
    # in, x in for a kernel gradient without kept tiles, dx out (backward)
    if c.dilation == (1, 1):
        return 0.0
    x, y = c.N * c.C * c.H * c.W, c.N * c.O * c.P
    moved = (y + x * (need_dw and not kept) + x * need_dx) if backward else x + y
    return moved * (MOSAIC_ELEMENT + MOSAIC_RUN * c.dilation[1] / c.W)


def _winograd(c: ConvCall, m: int, backward: bool, need_dx: bool, need_dw: bool, kept: bool = False) -> float:
    # the module's layouts (below) on the undilated problem (a dilated call's phases), by
    # WINO_PER_SAMPLE where the kernels are transformed in the work item, plus the
    # phases' copies
    p = _phase_call(c)
    total = _winograd_layouts(p, m, backward, need_dx, need_dw, kept)
    return (total * WINO_PER_SAMPLE if _winograd_fused(p, m) else total) + _phase_copies(c, backward, need_dx,
                                                                                         need_dw, kept)


def _winograd_layouts(c: ConvCall, m: int, backward: bool, need_dx: bool, need_dw: bool,
                      kept: bool = False) -> float:
    # F(m x m, 3x3): the kernels' transforms, then per pass the tiles' transforms (in and
    # out) and alpha^2 GEMMs a block; the input gradient is a forward on dy (C and O
    # swapped). The kernel gradient accumulates rank-T updates of dU (alpha^2 O x C/groups)
    # a block, in slots of blocks, each slot transforming its dU back; then the slots'
    # partials are summed. One block of every tile (small shared problems): the
    # transforms by channel chunks, then the alpha^2 GEMMs over all tiles, in parallel.
    # A forward that would keep its transformed input runs as one block; `kept`: the
    # forward kept it, the kernel gradient transforms dy alone.
    A2 = (m + 2) ** 2
    tiles = math.ceil(c.Ho / m) * math.ceil(c.Wo / m)
    tr = WINO_TRANSFORM[m] * c.itemsize / 4
    Og, Cg = c.O // c.groups, c.C // c.groups
    kernels = (1 if c.shared else c.N) * c.O * Cg * A2 * tr / THREADS
    total = 0.0
    for rows, inner in ([(c.C, c.O)] * need_dx if backward else [(c.O, c.C)]):
        if (_winograd_keeps(c, m) and not backward) or _winograd_whole(c, m, False):
            T = _winograd_grid(c, m)
            gemms = _spread(A2 * c.groups, gemm_seconds(rows // c.groups, inner // c.groups, T, c.itemsize))
            total += gemms + (rows + inner) * T * A2 * tr / THREADS + 3 * ITEM + kernels
            continue
        blocks, T = _winograd_blocks(c, tiles, m, WINO_MIN_ITEMS)
        gemms = A2 * c.groups * gemm_seconds(rows // c.groups, inner // c.groups, T, c.itemsize)
        total += _spread(blocks, gemms + (rows + inner) * T * A2 * tr) + kernels
    if backward and need_dw:
        du = A2 * c.O * Cg
        if _winograd_whole(c, m, True):
            T = _winograd_grid(c, m)
            OB = max(1, min(Og, WINO_DU_BLOCK_BYTES // (A2 * Cg * c.itemsize),
                            math.ceil(Og / math.ceil(WINO_MIN_ITEMS / c.groups))))
            total += (c.O + (0 if kept else c.C)) * T * A2 * tr / THREADS + 2 * ITEM
            total += _spread(c.groups * math.ceil(Og / OB), A2 * gemm_seconds(OB, T, Cg, c.itemsize)
                             + A2 * OB * Cg * tr)
        else:
            blocks, T = _winograd_blocks(c, tiles, m, WINO_SLOTS)
            block = (A2 * c.groups * gemm_seconds(Og, T, Cg, c.itemsize) + 2 * du * COPY * _mem(du, c.itemsize)
                     + (c.O + c.C) * T * A2 * tr)
            slots = min(blocks, WINO_SLOTS if c.shared else c.N * math.ceil(WINO_SLOTS / c.N))
            total += (_spread(slots, math.ceil(blocks / slots) * block + du * tr)
                      + slots * c.O * c.F * COPY / THREADS)
        total += _sums(c)
    return total


def _shifted(c: ConvCall, backward: bool, need_dx: bool, need_dw: bool) -> float:
    # Shifted views (backends/cpu/shifted.py): per sample, the padded planes (C x Hp x Wp)
    # copied, kh*kw GEMMs a pass with C/groups as the inner dimension over Ho x Wp
    # columns, the kernels rearranged tap-major, the outputs (or dx) copied out.
    G, Og, Cg, T = c.groups, c.O // c.groups, c.C // c.groups, c.kh * c.kw
    Wp = max(c.W, c.Wo + (c.kw - 1) * c.dilation[1])
    Hp = max(c.H, c.Ho + (c.kh - 1) * c.dilation[0])
    L = c.Ho * Wp
    planes = c.C * Hp * Wp * COPY
    if not backward:
        item = T * G * gemm_seconds(Og, Cg, L, c.itemsize, SHIFT_HALF_K) + planes + (c.O * c.P + c.O * c.F) * COPY
        return _spread(c.N, item)
    item = c.O * L * COPY
    if need_dw:
        item += T * G * gemm_seconds(Og, L, Cg, c.itemsize) + planes + c.O * c.F * COPY
    if need_dx:
        item += T * G * gemm_seconds(Cg, Og, L, c.itemsize, SHIFT_HALF_K) + 2 * planes + c.O * c.F * COPY
    if c.shared:
        slots = min(c.N, 8)
        return _sums(c) + _spread(slots, math.ceil(c.N / slots) * item)
    return _sums(c) + _spread(c.N, item)


def _estimate(strategy: str, pass_: str, c: ConvCall, need_dx: bool = True, need_dw: bool = True,
              kept: int = 0) -> float:
    backward = pass_ == "backward"
    if strategy == "shifted":
        return _shifted(c, backward, need_dx, need_dw)
    if strategy == "tiles":
        return _tiles_backward(c, need_dx, need_dw) if backward else _tiles_forward(c)
    if strategy == "batched":
        return _batched_backward(c, need_dx, need_dw) if backward else _batched_forward(c)
    m = int(strategy[-1])
    return _winograd(c, m, backward, need_dx, need_dw, kept == m)


@functools.lru_cache(maxsize=4096)
def estimates(pass_: str, call: ConvCall, need_dx: bool = True, need_dw: bool = True, kept: int = 0) -> tuple:
    """``((strategy, seconds or None), ...)`` for every strategy of one pass (None: unsupported).
    `kept`: the tile size of the Winograd strategy whose forward kept its transformed
    input for this backward (0: none): its kernel gradient without x's transform."""
    return tuple((s, None if unsupported(s, call) else _estimate(s, pass_, call, need_dx, need_dw, kept))
                 for s in CONV_STRATEGIES)


def _forward_costs(call: ConvCall) -> tuple[tuple, str]:
    # The forward's estimates, weighed for a backward by the planner's pick: where that
    # runs F(m x m) and the forward by F(m x m) would keep its tiles for it, the
    # forward's F(m x m) estimate is net of the transform its kernel gradient then skips.
    # The same pick with or without a backward to follow (a forward that gave another
    # result when its gradient is wanted would surprise), so an inference-only forward
    # may pay a few percent for it. Returns the costs and a note for the decision.
    costs = estimates("forward", call)
    b = peek("backward", call)
    if b is None or not b.startswith("winograd") or not _winograd_keeps(_phase_call(call), int(b[-1])):
        return costs, ""
    credit = dict(estimates("backward", call))[b] - dict(estimates("backward", call, kept=int(b[-1])))[b]
    net = tuple((s, t - credit if s == b and t is not None else t) for s, t in costs)
    return net, f"{b} net of {credit * 1e3:.3g} ms its backward saves on the kept tiles"


def _cheapest(costs: tuple) -> str:
    # The cheapest estimate, if it beats the first candidate's by MARGIN; ties to the
    # earlier candidate. A strategy of PROVISIONAL must beat every other one by MARGIN.
    settled = [(t, i) for i, (name, t) in enumerate(costs) if t is not None and name not in PROVISIONAL]
    best = min(settled) if settled else min((t, i) for i, (_, t) in enumerate(costs) if t is not None)
    for i, (name, t) in enumerate(costs):
        if name in PROVISIONAL and t is not None and t < MARGIN * best[0]:
            best = (t, i)
    first = costs[0][1]
    return costs[best[1]][0] if first is None or best[0] < MARGIN * first else costs[0][0]


def _conv_estimate(call: ConvCall) -> float:
    # Forward+backward seconds of a conv call, each pass by the strategy forced for it
    # where that can run the call, else by the cost model's pick.
    total = 0.0
    for pass_ in PASSES:
        costs = estimates(pass_, call)
        f = getattr(forced(), pass_)
        total += dict(costs)[f if f is not None and unsupported(f, call) is None else _cheapest(costs)]
    return total


def mixing_estimates(per_sample: ConvCall, stacked: ConvCall, K: int) -> tuple:
    """``(("kernel_mixing", s), ("output_mixing", s))``: forward+backward seconds of a
    kernel-mixing op in each formulation. `per_sample` is kernel mixing's conv
    (per-sample kernels), `stacked` output mixing's (the K*O stacked kernels, shared)."""
    c = per_sample
    # pi @ W and pi^T @ G over the threads, G @ W^T in BLAS (one thread)
    kernel = _conv_estimate(c) + c.N * K * c.O * c.F * STREAM * (2 / THREADS + 1)
    # y = pi Yall, dYall = pi dy, dpi = <dy, Yall>: one stream each over N*K*O*P
    output = _conv_estimate(stacked) + 3 * c.N * K * c.O * c.P * STREAM
    return (("kernel_mixing", kernel), ("output_mixing", output))


# ----------------------------------------------------------------------------- forcing
@dataclasses.dataclass(frozen=True)
class Forced:
    """What is pinned: the mixing formulation and each pass's conv strategy (None: the
    cost model chooses)."""

    mixing: str | None = None
    forward: str | None = None
    backward: str | None = None

    def names(self) -> str:
        parts = [self.mixing] if self.mixing else []
        if self.forward and self.forward == self.backward:
            parts.append(self.forward)
        else:
            parts += [f"{p}={s}" for p, s in (("forward", self.forward), ("backward", self.backward)) if s]
        return ", ".join(parts) or "auto"


AUTO = Forced()
_default = [AUTO]
_context: contextvars.ContextVar[Forced | None] = contextvars.ContextVar("dynconv_np_forced", default=None)


def forced() -> Forced:
    """What is forced here: the innermost context's, else the process default."""
    f = _context.get()
    return _default[0] if f is None else f


def set_default(f: Forced) -> Forced:
    """Set the process default; returns the previous one."""
    old, _default[0] = _default[0], f
    return old


@contextlib.contextmanager
def forcing(f: Forced):
    """Context in which `f` is forced (this thread and context only)."""
    token = _context.set(f)
    try:
        yield f
    finally:
        _context.reset(token)


# ----------------------------------------------------------------------------- decisions
@dataclasses.dataclass(frozen=True)
class Decision:
    """One choice: the pass (``forward``, ``backward`` or ``mixing``), what it ran on, the
    chosen strategy, every candidate's estimate (seconds; None when it cannot run), and
    whether it was forced."""

    pass_: str
    call: ConvCall
    chosen: str
    costs: tuple
    forced: bool
    K: int = 0
    note: str = ""

    def __str__(self) -> str:
        est = ", ".join(f"{s} {'n/a' if t is None else f'{t * 1e3:.3g} ms'}" for s, t in self.costs)
        how = "forced" if self.forced else "cost model"
        what = self.call.describe() + (f", K={self.K}" if self.K else "")
        note = f"; {self.note}" if self.note else ""
        return f"{self.pass_:8s} {self.chosen:13s} ({how}; estimates: {est}{note}) [{what}]"


_record: contextvars.ContextVar[list | None] = contextvars.ContextVar("dynconv_np_plan_record", default=None)


@contextlib.contextmanager
def recording():
    """Collect, in a list, every :class:`Decision` made inside the context."""
    rec: list = []
    token = _record.set(rec)
    try:
        yield rec
    finally:
        _record.reset(token)


def _note(d: Decision) -> None:
    rec = _record.get()
    if rec is not None:
        rec.append(d)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s", d)


def _pick(pass_: str, call: ConvCall, record: bool = True, need_dx: bool = True, need_dw: bool = True,
          kept: int = 0) -> str:
    f = getattr(forced(), pass_)
    note = ""
    if pass_ == "forward" and f is None:
        costs, note = _forward_costs(call)
    else:
        costs = estimates(pass_, call, need_dx, need_dw, kept)
    if f is not None:
        why = unsupported(f, call)
        if why is not None:
            raise ValueError(f"strategy {f!r} was forced for the {pass_} pass but cannot run this convolution "
                             f"({call.describe()}): {why}")
        chosen = f
    else:
        chosen = _cheapest(costs)
    if record:
        _note(Decision(pass_, call, chosen, costs, f is not None, note=note))
    return chosen


def peek(pass_: str, call: ConvCall, need_dx: bool = True, need_dw: bool = True) -> str | None:
    """What :func:`choose` would pick, without logging or recording a decision; None
    where a forced strategy cannot run the call (where :func:`choose` raises)."""
    f = getattr(forced(), pass_)
    if f is not None:
        return None if unsupported(f, call) else f
    return _cheapest(_forward_costs(call)[0] if pass_ == "forward" else estimates(pass_, call, need_dx, need_dw))


def choose(pass_: str, call: ConvCall, need_dx: bool = True, need_dw: bool = True, kept: int = 0) -> str:
    """The strategy of one conv pass: the forced one (ValueError when it cannot run the
    call), else the cheapest estimate (``tiles`` unless another beats it by
    :data:`MARGIN`; ties to the earlier of :data:`CONV_STRATEGIES`).

    A forward is weighed for the backward the planner would pick (a Winograd forward
    that keeps its transformed input for it, net of what that saves); `kept`: the
    backward of a forward that kept its transformed input in F(kept x kept) (0: none)."""
    return _pick(pass_, call, True, need_dx, need_dw, kept)


def choose_mixing(per_sample: ConvCall, stacked: ConvCall, K: int) -> str:
    """The formulation of a kernel-mixing op with per-sample weights: the forced one, else
    the cheaper estimate. `per_sample` is the kernel-mixing conv (per-sample kernels),
    `stacked` output mixing's (the K*O stacked kernels, shared)."""
    f = forced()
    costs = mixing_estimates(per_sample, stacked, K)
    # a conv strategy forced alone runs on the op's own (mixed) kernels
    pinned = f.mixing is not None or f.forward is not None or f.backward is not None
    chosen = (f.mixing or "kernel_mixing") if pinned else _cheapest(costs)
    _note(Decision("mixing", per_sample, chosen, costs, pinned, K))
    return chosen
