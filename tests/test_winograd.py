"""The CPU Winograd conv (backends/cpu/winograd.py) against the float64 reference: forward,
input, kernel and bias gradients for both tile sizes, shared and per-sample kernels, on
grids that cross tile edges, with block and channel-chunk budgets small enough to split
rows; inputs unchanged; bitwise identical results across NUMBA_NUM_THREADS."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import DTYPES, assert_close

from dynconv_np import _args, reference
from dynconv_np.backends.cpu import phases, winograd


def _reference(x, w, b, dy, padding, groups, dilation=1):
    """y, dx, dw, db in float64; w (O, Cg, 3, 3) shared or (N, O, Cg, 3, 3) per sample, b
    (O,) or (N, O) or None; dw and db per sample for per-sample kernels."""
    d = dilation
    if w.ndim == 4:
        y = reference.conv2d(x, w, None, 1, padding, d, groups)
        y += 0 if b is None else np.broadcast_to(b, (len(x), len(b.T)))[:, :, None, None]
        dx, dw, _ = reference.conv2d_backward(dy, x, w, None, 1, padding, d, groups)
        return y, dx, dw, dy.sum(axis=(0, 2, 3))
    bs = [b if b is None or b.ndim == 1 else b[n] for n in range(len(x))]
    y = np.concatenate([reference.conv2d(x[n:n + 1], w[n], bs[n], 1, padding, d, groups) for n in range(len(x))])
    grads = [reference.conv2d_backward(dy[n:n + 1], x[n:n + 1], w[n], None, 1, padding, d, groups)
             for n in range(len(x))]
    return (y, np.concatenate([d[0] for d in grads]), np.stack([d[1] for d in grads]),
            dy.sum(axis=(2, 3)))


def _check(cfg, m, dtype, need_dx=True, need_dw=True, dilation=1):
    N, C, O, H, W, padding, groups, per_sample, bias = cfg
    rng = np.random.default_rng(hash(cfg) % 2**32)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal(((N,) if per_sample else ()) + (O, C // groups, 3, 3))
    b = None if bias is None else rng.standard_normal((N, O) if bias == "sample" else (O,))
    g = _args.geometry(x.shape, 3, 3, 1, padding, dilation)
    assert winograd.supports(g, groups)
    dy = rng.standard_normal((N, O, g.Ho, g.Wo))
    y_ref, dx_ref, dw_ref, db_ref = _reference(x, w, b, dy, padding, groups, dilation)

    wt = w.reshape(w.shape[:-3] + (-1,))                    # (O, F) or (N, O, F)
    args = [a if a is None else np.ascontiguousarray(a.astype(dtype)) for a in (x, wt, b, dy)]
    xs, wt, bt, dys = args
    before = [a.copy() for a in args if a is not None]
    y = winograd.forward(xs, wt, bt, g, groups, m=m)
    dx, gw, dbt = winograd.backward(xs, wt, dys, g, groups, need_dx, need_dw, m=m)
    for a, a0 in zip([a for a in args if a is not None], before):
        np.testing.assert_array_equal(a, a0)

    assert y.dtype == dbt.dtype == np.dtype(dtype)
    assert_close(y, y_ref, dtype, "y")
    assert_close(dbt, db_ref, dtype, "dbt")
    if need_dx:
        assert_close(dx, dx_ref, dtype, "dx")
    else:
        assert dx is None
    if need_dw:
        assert_close(gw, dw_ref.reshape(gw.shape), dtype, "gw")
        assert gw.shape == wt.shape
    else:
        assert gw is None
    return y, dx, gw, dbt


# (N, C, O, H, W, padding, groups, per-sample kernels, bias: None, "shared" or "sample")
CONFIGS = [
    (2, 3, 4, 7, 6, 1, 1, False, "shared"),     # odd and even output sides
    (3, 4, 6, 5, 9, 0, 2, True, "sample"),      # grouped per-sample kernels, no padding
    (1, 2, 3, 3, 4, 0, 1, False, None),         # batch 1, a 1x2 output: less than a tile
    (10, 4, 4, 8, 8, 2, 1, True, None),         # more samples than slots, padding 2
    (9, 6, 4, 11, 13, 1, 2, False, "sample"),   # shared kernel, per-sample bias, blocks across samples
    (2, 3, 5, 4, 1, 3, 1, False, "shared"),     # padding 3: the input gradient crops; W = 1
    (2, 2, 2, 1, 7, 1, 1, True, "sample"),      # H = 1
]


def _layout(monkeypatch, layout):
    # "blocks": blocks of tile rows (and slots) always; "whole": one block of every tile
    # wherever the kernel is shared or the batch is one sample
    budget = 0 if layout == "blocks" else 2**62
    monkeypatch.setattr(winograd, "WHOLE_BYTES", budget)
    monkeypatch.setattr(winograd, "WHOLE_GRAD_BYTES", budget)
    monkeypatch.setattr(winograd, "DU_BLOCK_BYTES", 3000)      # dU a few output channels at a time


@pytest.mark.parametrize("layout", ["blocks", "whole"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("cfg", CONFIGS + [(1, 4, 6, 6, 9, 1, 2, True, "sample")])   # a per-sample batch of one
def test_against_reference(monkeypatch, cfg, m, dtype, layout):
    _layout(monkeypatch, layout)
    _check(cfg, m, dtype)


@pytest.mark.parametrize("no_gap", [0, 10**6])
@pytest.mark.parametrize("layout", ["blocks", "whole"])
@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_rows_with_and_without_gap_tiles(monkeypatch, no_gap, layout, m):
    # every row with a gap tile, or none (each tile's input columns staged on their own),
    # the forward and both gradients right either way
    monkeypatch.setattr(winograd, "NO_GAP_TILES", {2: no_gap, 4: no_gap})
    _layout(monkeypatch, layout)
    for cfg in CONFIGS[:6]:
        _check(cfg, m, np.float64)
    _check((6, 4, 8, 17, 15, 1, 2, True, "shared"), m, np.float32)


def test_layout_follows_the_budgets():
    # the shipped budgets: a batch of one 14x14 image of 256 channels runs whole, forward
    # and kernel gradient; 8x8 images of 32 channels, 64 of them, only the kernel gradient
    assert winograd.whole(1, 256, 256, 14, 14, 2, 4, False)
    assert winograd.whole(1, 256, 256, 14, 14, 2, 4, False, gradient=True)
    assert not winograd.whole(64, 32, 32, 8, 8, 4, 4, True)
    assert winograd.whole(64, 32, 32, 8, 8, 4, 4, True, gradient=True)
    assert not winograd.whole(2, 8, 8, 4, 4, 2, 4, False, gradient=True)    # per-sample kernels, N > 1


@pytest.mark.parametrize("budget", [1, 6000, 20000, 150000])
@pytest.mark.parametrize("cfg", [(3, 5, 6, 13, 11, 1, 1, True, "sample"), (5, 4, 6, 9, 14, 2, 2, False, None)])
def test_split_rows_and_channels(monkeypatch, cfg, budget):
    # small budgets: rows cut into single tiles or parts of a few, blocks of a few rows or
    # of several samples, tiles transformed a channel or a few at a time
    monkeypatch.setattr(winograd, "BLOCK_BYTES", budget)
    monkeypatch.setattr(winograd, "MIN_TILES", 2)
    monkeypatch.setattr(winograd, "CHUNK", 1 + budget // 1000)
    for layout in ("blocks", "whole"):
        _layout(monkeypatch, layout)
        for m in winograd.TILE_SIZES:
            _check(cfg, m, np.float64)


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("cfg", [(4, 6, 4, 7, 9, 1, 1, True, "sample"), (5, 6, 9, 6, 5, 0, 3, True, None),
                                 (6, 4, 8, 5, 12, 2, 2, True, "shared")])
def test_per_sample_kernels_transformed_in_the_work_item(monkeypatch, cfg, m):
    # batches of 4 and more: each sample's kernels transformed (for dx transposed by
    # group) in the item that uses them, bitwise what the batch's transform gives for
    # the forward (dx: the same products, the kernels' GEMM operand transposed, which
    # BLAS may sum in another order), and right against the reference
    N, C, O = cfg[:3]
    groups = cfg[6]
    assert winograd.fused(N, O, C // groups, m, 8, True)
    fused = _check(cfg, m, np.float64)
    monkeypatch.setattr(winograd, "FUSED_MIN_SAMPLES", 10**9)
    assert not winograd.fused(N, O, C // groups, m, 8, True)
    y, dx, gw, dbt = _check(cfg, m, np.float64)
    for a, b in zip((y, gw, dbt), fused[::2] + fused[3:]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(dx, fused[1], rtol=1e-12, atol=1e-12 * np.abs(dx).max())


@pytest.mark.parametrize("cfg", [(5, 6, 4, 7, 6, 1, 2, True, "sample"), (2, 12, 10, 5, 6, 1, 1, False, None)])
def test_kernel_runs_bitwise(monkeypatch, cfg):
    # the kernels transformed a row of U at a time, a few rows, or all of them in one
    # pass (runs of KERNEL_RUN kernels): each value computed alike, bitwise the same
    results = []
    for run in (1, 7, 10**6):
        monkeypatch.setattr(winograd, "KERNEL_RUN", run)
        results.append([_check(cfg, m, np.float32) for m in winograd.TILE_SIZES])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            for u, v in zip(a, b):
                np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("cfg", [(9, 6, 4, 11, 13, 1, 2, False, "sample"), (10, 4, 4, 8, 8, 2, 1, False, None)])
def test_kernel_gradient_waves_bitwise(monkeypatch, cfg):
    # a shared kernel's slots in waves of a few (the smallest: a wave a thread) or all in
    # one: the partials summed in slot order either way, bitwise the same
    monkeypatch.setattr(winograd, "WHOLE_GRAD_BYTES", 0)
    monkeypatch.setattr(winograd, "MIN_TILES", 2)
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 1)               # a block a tile row: 8 slots
    results = []
    for budget in (0, 3 * 4 * cfg[2] * cfg[1] // cfg[6] * 9, 2**62):
        monkeypatch.setattr(winograd, "PARTIALS_BYTES", budget)
        results.append(_check(cfg, 4, np.float32))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_fused_follows_the_shapes():
    assert winograd.fused(128, 64, 64, 2, 4, True)                 # cifar16's dynamic layer
    assert not winograd.fused(128, 64, 64, 2, 4, False)            # a shared kernel
    assert not winograd.fused(3, 64, 64, 2, 4, True)               # a batch of 3
    assert not winograd.fused(128, 128, 128, 4, 4, True)           # 2.25 MiB of transformed kernels a sample


@pytest.mark.parametrize("per_sample", [False, True])
def test_gradients_on_request(per_sample):
    cfg = (3, 4, 4, 6, 7, 1, 2, per_sample, "shared")
    full = _check(cfg, 2, np.float64)
    for need_dx, need_dw in [(False, True), (True, False), (False, False)]:
        y, dx, gw, dbt = _check(cfg, 2, np.float64, need_dx, need_dw)
        np.testing.assert_array_equal(dbt, full[3])
        if need_dx:
            np.testing.assert_array_equal(dx, full[1])
        if need_dw:
            np.testing.assert_array_equal(gw, full[2])


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_reversed_tiles_convolve(m):
    # J A^T [(G g G^T) . (B^T J d J B)] A J is the tile of the correlation of d with g
    # rotated by 180 degrees: the input gradient's, on the forward's transformed kernels
    from dynconv_np.backends.cpu.winograd_transforms import _MATRICES, reversed_tiles

    def dense(sp, shape):
        idx, coef = sp
        out = np.zeros(shape)
        for i in range(shape[0]):
            out[i, idx[i, 1:1 + idx[i, 0]]] = coef[i, :idx[i, 0]]
        return out

    alpha = m + 2
    BTr, ATr = (dense(sp, shape) for sp, shape in zip(reversed_tiles(m, np.dtype(np.float64)),
                                                      [(alpha, alpha), (m, alpha)]))
    BT, G, AT = (np.array(a, dtype=np.float64) for a in _MATRICES[m])
    np.testing.assert_array_equal(BTr, BT[:, ::-1])
    np.testing.assert_array_equal(ATr, AT[::-1])
    rng = np.random.default_rng(m)
    d, g = rng.standard_normal((alpha, alpha)), rng.standard_normal((3, 3))
    rot = g[::-1, ::-1]
    want = np.array([[np.sum(d[i:i + 3, j:j + 3] * rot) for j in range(m)] for i in range(m)])
    got = ATr @ ((G @ g @ G.T) * (BTr @ d @ BTr.T)) @ ATr.T
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("cfg", [(1, 6, 4, 7, 9, 1, 2, False), (3, 4, 6, 5, 6, 0, 1, False),
                                 (2, 4, 6, 6, 5, 1, 2, True)])
def test_backward_reuses_the_forward_kernels(cfg, m):
    # the forward keeps its transformed kernels in `saved` (F(2x2); F(4x4)'s input
    # gradient transforms the rotated kernels); the backward takes them out and gives
    # bitwise what it gives without them (a kept m other than the backward's is dropped
    # unused)
    N, C, O, H, W, p, G, per_sample = cfg
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    wt = rng.standard_normal(((N,) if per_sample else ()) + (O, C // G * 9)).astype(np.float32)
    g = _args.geometry(x.shape, 3, 3, 1, p, 1)
    dy = rng.standard_normal((N, O, g.Ho, g.Wo)).astype(np.float32)
    saved = {}
    y = winograd.forward(x, wt, None, g, G, m=m, saved=saved)
    assert (saved[winograd.SAVED_KEY][0] == m) if m in winograd.REVERSED else winograd.SAVED_KEY not in saved
    kept = winograd.keeps_tiles(N, C, O, g.Ho, g.Wo, m, 4, not per_sample)
    assert (saved[winograd.TILES_KEY][0] == m) if kept else winograd.TILES_KEY not in saved
    np.testing.assert_array_equal(y, winograd.forward(x, wt, None, g, G, m=m))
    fresh = winograd.backward(x, wt, dy, g, G, m=m)
    for a, b in zip(winograd.backward(x, wt, dy, g, G, m=m, saved=saved), fresh):
        np.testing.assert_array_equal(a, b)
    assert saved == {}
    other = {}
    winograd.forward(x, wt, None, g, G, m=6 - m, saved=other)
    for a, b in zip(winograd.backward(x, wt, dy, g, G, m=m, saved=other), fresh):
        np.testing.assert_array_equal(a, b)
    assert other == {}


# (config as CONFIGS, with padding (ph, pw)), dilation (dh, dw): even and odd sides,
# phases of unequal sizes, "same" and unpadded layers, padding of twice and three times
# the dilation
DILATED = [
    ((2, 3, 4, 9, 10, (2, 2), 1, False, "shared"), (2, 2)),
    ((3, 4, 6, 11, 7, (2, 3), 2, True, "sample"), (2, 3)),
    ((1, 2, 3, 8, 8, 0, 1, False, None), 3),
    ((5, 4, 4, 13, 12, (4, 2), 1, False, "sample"), (2, 1)),
    ((4, 6, 4, 7, 9, (0, 2), 2, True, None), (1, 2)),
    ((2, 3, 5, 6, 5, 4, 1, True, "shared"), 2),
    ((3, 4, 3, 10, 11, (6, 3), 1, False, "shared"), (2, 3)),
]


@pytest.mark.parametrize("layout", ["blocks", "whole"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("cfg,dilation", DILATED)
def test_dilated_against_reference(monkeypatch, cfg, dilation, m, dtype, layout):
    # a dilated 3x3 layer by phases: a shared kernel's as one batch of phases,
    # per-sample kernels on each sample's mosaic
    _layout(monkeypatch, layout)
    _check(cfg, m, dtype, dilation=dilation)


@pytest.mark.parametrize("cfg,dilation", [DILATED[0], DILATED[1]])
def test_dilated_gradients_on_request(cfg, dilation):
    full = _check(cfg, 2, np.float64, dilation=dilation)
    for need_dx, need_dw in [(False, True), (True, False), (False, False)]:
        y, dx, gw, dbt = _check(cfg, 2, np.float64, need_dx, need_dw, dilation=dilation)
        for got, want in ((y, full[0]), (dbt, full[3]), (dx if need_dx else full[1], full[1]),
                          (gw if need_dw else full[2], full[2])):
            np.testing.assert_array_equal(got, want)


def test_phases_split_and_merge():
    # phase (a, b) of every sample and channel, zero-filled past the image; merged back
    # whole, whatever the sizes against the dilation (2 spelled out, others generic)
    rng = np.random.default_rng(3)
    for shape, dh, dw in [((2, 3, 7, 8), 2, 2), ((2, 3, 6, 9), 2, 2), ((1, 2, 5, 4), 3, 2), ((2, 1, 2, 3), 4, 1),
                          ((1, 1, 1, 1), 2, 3), ((1, 2, 3, 1), 1, 2)]:
        x = rng.standard_normal(shape).astype(np.float32)
        Hq, Wq = -(-shape[2] // dh), -(-shape[3] // dw)
        ph = phases.split(x, dh, dw, Hq, Wq)
        assert ph.shape == (dh * dw, shape[0], shape[1], Hq, Wq)
        for a in range(dh):
            for b in range(dw):
                want = np.zeros(shape[:2] + (Hq, Wq), np.float32)
                part = x[:, :, a::dh, b::dw]
                want[:, :, :part.shape[2], :part.shape[3]] = part
                np.testing.assert_array_equal(ph[a * dw + b], want)
        np.testing.assert_array_equal(phases.merge(ph, dh, dw, shape[2], shape[3]), x)


def test_phase_mosaic():
    # phase (a, b) of every sample and channel from (a*sh, b*sw), zero elsewhere (short
    # phases, gaps, and past the last block); back out whole, whatever the sizes
    # against the dilation
    rng = np.random.default_rng(3)
    for shape, dh, dw, sh, sw, Hm, Wm in [((2, 3, 7, 8), 2, 2, 5, 5, 9, 9), ((1, 2, 5, 4), 3, 2, 2, 3, 6, 5),
                                          ((2, 1, 2, 3), 4, 1, 1, 3, 4, 3), ((1, 1, 1, 1), 2, 3, 2, 2, 4, 6),
                                          ((1, 2, 6, 9), 2, 2, 4, 6, 8, 11)]:
        x = rng.standard_normal(shape).astype(np.float32)
        mos = phases.to_mosaic(x, dh, dw, sh, sw, Hm, Wm)
        want = np.zeros(shape[:2] + (Hm, Wm), np.float32)
        for a in range(dh):
            for b in range(dw):
                part = x[:, :, a::dh, b::dw][:, :, :max(0, min(sh, Hm - a * sh)), :max(0, min(sw, Wm - b * sw))]
                want[:, :, a * sh:a * sh + part.shape[2], b * sw:b * sw + part.shape[3]] = part
        np.testing.assert_array_equal(mos, want)
        np.testing.assert_array_equal(phases.from_mosaic(mos, dh, dw, sh, sw, shape[2], shape[3]), x)


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("cfg", [(1, 6, 4, 7, 9, 1, 1, False, 1), (3, 4, 6, 5, 6, 0, 2, False, 1),
                                 (1, 4, 6, 6, 5, 1, 2, True, 1), (4, 5, 3, 13, 10, 1, 1, False, 1),
                                 (2, 8, 8, 8, 8, 1, 1, False, 1), (2, 4, 4, 9, 10, 2, 1, False, 2),
                                 (1, 4, 4, 9, 10, 2, 1, True, 2)])
def test_kept_tiles_bitwise(cfg, m, monkeypatch):
    # a forward that keeps its transformed input for the kernel gradient (a shared kernel
    # or a batch of one, every budget open here) gives bitwise the same y as without
    # `saved`, and its backward the same gradients as a backward that transforms x
    # itself, whichever gradients are asked for; the kept tiles are taken out, used or not
    monkeypatch.setattr(winograd, "KEEP_TILES_BYTES", {2: 2**62, 4: 2**62})
    # (the last two dilated: the phases of a shared kernel's batch, and a batch of
    # one's mosaic, keep their tiles)
    N, C, O, H, W, p, G, per_sample, d = cfg
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    wt = rng.standard_normal(((N,) if per_sample else ()) + (O, C // G * 9)).astype(np.float32)
    b = rng.standard_normal((O,)).astype(np.float32)
    g = _args.geometry(x.shape, 3, 3, 1, p, d)
    gt = g if d == 1 else winograd.phase_geometry(g) if wt.ndim == 2 else winograd.mosaic_geometry(g)[0]
    dy = rng.standard_normal((N, O, g.Ho, g.Wo)).astype(np.float32)
    x0, wt0, dy0 = x.copy(), wt.copy(), dy.copy()
    y = winograd.forward(x, wt, b, g, G, m=m)
    for need_dx, need_dw in ((True, True), (True, False), (False, True)):
        saved = {}
        np.testing.assert_array_equal(winograd.forward(x, wt, b, g, G, m=m, saved=saved), y)
        assert winograd.TILES_KEY in saved
        V = saved[winograd.TILES_KEY][1]
        assert V.shape == winograd.tiles_shape(gt.N, C, gt.Ho, gt.Wo, m)
        fresh = winograd.backward(x, wt, dy, g, G, need_dx=need_dx, need_dw=need_dw, m=m)
        got = winograd.backward(x, wt, dy, g, G, need_dx=need_dx, need_dw=need_dw, m=m, saved=saved)
        assert saved == {}
        for a, c in zip(got, fresh):
            assert (a is None) == (c is None)
            if a is not None:
                np.testing.assert_array_equal(a, c)
    for a, c in ((x, x0), (wt, wt0), (dy, dy0)):
        np.testing.assert_array_equal(a, c)


def test_keeps_tiles_rule():
    # one block of the kernel gradient and the tiles within the budget (by m): F(4x4) on
    # the digits net's third conv keeps them, a batch of 128 8x8 images of 128 channels
    # (9 MiB of tiles) does not, nor F(2x2) anywhere, nor per-sample kernels of a batch
    assert winograd.keeps_tiles(64, 32, 32, 8, 8, 4, 4, True)
    assert not winograd.keeps_tiles(128, 128, 128, 8, 8, 4, 4, True)
    assert not winograd.keeps_tiles(64, 32, 32, 8, 8, 2, 4, True)
    assert not winograd.keeps_tiles(64, 32, 32, 8, 8, 4, 4, False)
    assert winograd.keeps_tiles(1, 32, 32, 8, 8, 4, 4, False)


def test_supports_and_arguments():
    g = _args.geometry((1, 2, 5, 5), 3, 3, 1, 1, 1)
    assert winograd.supports(g, 1)
    assert winograd.supports(_args.geometry((1, 2, 5, 5), 3, 3, 1, 4, 1), 2)
    assert not winograd.supports(_args.geometry((1, 2, 5, 5), 3, 3, 2, 1, 1), 1)
    assert not winograd.supports(_args.geometry((1, 2, 5, 5), 3, 3, 1, 1, 2), 1)   # padding 1, dilation 2
    assert winograd.supports(_args.geometry((1, 2, 5, 5), 3, 3, 1, 2, 2), 1)
    assert winograd.supports(_args.geometry((1, 2, 9, 9), 3, 3, 1, 0, 3), 1)
    assert winograd.supports(_args.geometry((1, 2, 9, 9), 3, 3, 1, (2, 3), (2, 3)), 1)
    assert not winograd.supports(_args.geometry((1, 2, 9, 9), 3, 3, 1, (2, 3), 2), 1)
    # 9 rows by 2, padding 2: phases of 5 rows padded by 1; 8 columns, no padding
    pg = winograd.phase_geometry(_args.geometry((3, 2, 9, 8), 3, 3, 1, (2, 0), (2, 1)))
    assert (pg.N, pg.H, pg.W, pg.ph, pg.pw, pg.dh, pg.dw, pg.Ho, pg.Wo) == (6, 5, 8, 1, 0, 1, 1, 5, 6)
    # the mosaic of the same: 2 blocks of 5 rows with a gap of 1, 11 rows, 11 out
    gm, steps = winograd.mosaic_geometry(_args.geometry((3, 2, 9, 8), 3, 3, 1, (2, 0), (2, 1)))
    assert (gm.N, gm.H, gm.W, gm.ph, gm.pw, gm.dh, gm.dw, gm.Ho, gm.Wo, steps) == (3, 11, 8, 1, 0, 1, 1, 11, 6, (6, 8))
    # padding 3x the dilation: a gap of 4 for the phases' 5 + 2*3 - 2 outputs
    gm, steps = winograd.mosaic_geometry(_args.geometry((1, 1, 10, 10), 3, 3, 1, 6, 2))
    assert (gm.H, gm.Ho, steps) == (14, 18, (9, 9))
    x, wt = np.zeros((1, 2, 5, 5)), np.zeros((3, 18))
    with pytest.raises(ValueError, match="m must be one of"):
        winograd.forward(x, wt, None, g, 1, m=3)
    with pytest.raises(ValueError, match="m must be one of"):
        winograd.backward(x, wt, np.zeros((1, 3, 5, 5)), g, 1, m=6)


def test_empty_batch():
    g = _args.geometry((0, 2, 5, 5), 3, 3, 1, 1, 1)
    x, wt, dy = np.zeros((0, 2, 5, 5)), np.ones((3, 18)), np.zeros((0, 3, 5, 5))
    assert winograd.forward(x, wt, None, g, 1).shape == (0, 3, 5, 5)
    dx, gw, dbt = winograd.backward(x, wt, dy, g, 1)
    assert dx.shape == (0, 2, 5, 5) and not gw.any() and gw.shape == (3, 18) and dbt.shape == (3,)


SCRIPT = textwrap.dedent("""
    import hashlib
    import numpy as np
    from dynconv_np import _args
    from dynconv_np.backends.cpu import winograd

    h = hashlib.sha256()
    r = np.random.default_rng(5)
    # (N, C, O, H, W, padding, groups, per-sample, dilation): slots of whole samples, several slots
    # a sample, blocks across samples, per-sample kernels transformed in the work item
    # (batches of 4 and more); each in blocks and, where it can, as one block
    # and (the last two) dilated layers by phases, a shared kernel's and per-sample ones
    cases = [(11, 8, 6, 13, 10, 1, 2, False, 1), (3, 6, 8, 12, 9, 1, 1, True, 1), (9, 4, 4, 23, 19, 2, 1, True, 1),
             (1, 40, 24, 15, 17, 1, 2, True, 1), (7, 12, 8, 9, 11, 1, 2, True, 1), (5, 6, 8, 17, 14, 2, 2, False, 2),
             (5, 6, 4, 13, 11, 2, 1, True, 2)]
    for (N, C, O, H, W, p, G, ps, d), budget in [(c, b) for b in (0, 2**62) for c in cases]:
        winograd.WHOLE_BYTES = winograd.WHOLE_GRAD_BYTES = budget
        winograd.KEEP_TILES_BYTES = {2: budget, 4: budget}
        winograd.DU_BLOCK_BYTES = 3000
        x = r.standard_normal((N, C, H, W)).astype(np.float32)
        wt = r.standard_normal(((N,) if ps else ()) + (O, C // G * 9)).astype(np.float32)
        b = r.standard_normal((O,)).astype(np.float32)
        g = _args.geometry(x.shape, 3, 3, 1, p, d)
        for m in winograd.TILE_SIZES:
            saved = {}                                  # the kept kernels and tiles
            y = winograd.forward(x, wt, b, g, G, m=m, saved=saved)
            dy = r.standard_normal(y.shape).astype(np.float32)
            for a in (y,) + winograd.backward(x, wt, dy, g, G, m=m, saved=saved):
                h.update(np.ascontiguousarray(a).tobytes())
    print(h.hexdigest())
""")


@pytest.mark.slow
def test_bitwise_identical_across_thread_counts():
    runs = {t: subprocess.run([sys.executable, "-c", SCRIPT], env=dict(os.environ, NUMBA_NUM_THREADS=str(t)),
                              capture_output=True, text=True, timeout=900) for t in (1, 2, 8)}
    for r in runs.values():
        assert r.returncode == 0, r.stderr[-3000:]
    digests = {t: r.stdout.split()[-1] for t, r in runs.items()}
    assert len(set(digests.values())) == 1, digests
