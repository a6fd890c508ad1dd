"""conv2d and dynamic_conv2d against the naive float64 reference, forward and every gradient,
on every backend (CPU always; CUDA on a GPU or under the simulator, tests/test_simulator.py)."""

import numpy as np
import pytest
from conftest import DTYPES, assert_close, check_vjp, cuda_only, over_backends
from test_cuda import Foreign

import dynconv_np as dc
from dynconv_np import reference as R

# (N, C, H, W, O, kh, kw, stride, padding, dilation, groups)
GRID = [
    (2, 4, 7, 6, 6, 3, 3, 1, 1, 1, 1),
    (1, 3, 5, 5, 2, 1, 1, 1, 0, 1, 1),
    (3, 4, 9, 11, 4, 1, 1, 2, 0, 1, 2),
    (2, 8, 10, 9, 8, 3, 3, 2, 1, 1, 4),
    (2, 6, 11, 13, 9, 3, 2, (2, 1), (1, 0), (1, 2), 3),
    (1, 4, 8, 8, 4, 3, 3, 1, "same", 2, 2),
    (2, 2, 6, 7, 3, 2, 4, 1, "same", 1, 1),
    (2, 3, 7, 7, 5, 5, 3, 1, "valid", 1, 1),
    (1, 4, 13, 12, 6, 3, 3, 2, 2, 2, 2),
    (4, 5, 6, 6, 7, 2, 2, 3, (0, 2), 1, 1),
]
# Tiny configurations, the ones CUDA runs too (the simulator runs one Python thread per
# CUDA thread). O=17 with 2 channels of 3x3 (F=18) on 5x5 outputs (P=25) crosses the GEMM
# tiles (8 in the simulator, 16 on a GPU) in M, N and K; so does TILES with K=9 experts
# of O=9 in the mixing GEMMs.
TINY = [
    (2, 2, 5, 5, 3, 3, 3, 1, 1, 1, 1),
    (1, 4, 6, 5, 4, 3, 2, (2, 1), (1, 0), (1, 2), 2),
    (1, 3, 6, 6, 3, 3, 3, 1, "same", 2, 3),
    (2, 2, 4, 3, 2, 1, 1, 1, 0, 1, 1),
    (1, 2, 5, 5, 17, 3, 3, 1, 1, 1, 1),
]
MIXED = (2, 4, 5, 4, 4, 3, 3, 2, 1, 1, 2)
TILES = (1, 2, 5, 4, 9, 3, 3, 1, 1, 1, 1)
GRID += TINY + [MIXED, TILES]

# conv2d: (cfg, dtype, with_bias); on CUDA both dtypes across the tiny grid, at half the
# simulator's cost
CONV_CUDA = [(cfg, DTYPES[i % 2], i % 3 != 1) for i, cfg in enumerate(TINY)]
CONV_CASES = [(cfg, dt, b) for cfg in GRID for dt in DTYPES for b in (True, False)]

# dynamic_conv2d: (cfg, dtype, K, pi_kind, with_bias)
DYN_CUDA = [(MIXED, np.float32, 3, "per_sample", True), (MIXED, np.float64, 3, "per_sample", False),
            (MIXED, np.float64, 3, "shared", True), (MIXED, np.float32, 3, "shared", False),
            (TILES, np.float64, 9, "per_sample", True)]
DYN_CASES = [(cfg, dt, K, kind, K != 3) for cfg in GRID for dt in DTYPES for K in (1, 3, 5)
             for kind in ("per_sample", "shared")]


def _data(rng, cfg, dtype, K=None):
    N, C, H, W, O, kh, kw, s, p, d, g = cfg
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    shape = (O, C // g, kh, kw) if K is None else (K, O, C // g, kh, kw)
    w = rng.standard_normal(shape).astype(dtype)
    return x, w, dict(stride=s, padding=p, dilation=d, groups=g)


@pytest.mark.parametrize("backend, cfg, dtype, with_bias", over_backends(CONV_CASES, CONV_CUDA),
                         indirect=["backend"])
def test_conv2d_matches_reference(backend, rng, cfg, dtype, with_bias):
    x, w, kw = _data(rng, cfg, dtype)
    b = rng.standard_normal(w.shape[0]).astype(dtype) if with_bias else None
    check_vjp(backend, dc.conv2d, R.conv2d, R.conv2d_backward, [x, w, b], kw, dtype, rng)


@pytest.mark.parametrize("backend, cfg, dtype, K, pi_kind, with_bias", over_backends(DYN_CASES, DYN_CUDA),
                         indirect=["backend"])
def test_dynamic_conv2d_matches_reference(backend, rng, cfg, dtype, K, pi_kind, with_bias):
    x, W, kw = _data(rng, cfg, dtype, K)
    N, O = x.shape[0], W.shape[1]
    pi = rng.random((N, K) if pi_kind == "per_sample" else (K,)).astype(dtype)
    b = rng.standard_normal((K, O)).astype(dtype) if with_bias else None
    check_vjp(backend, dc.dynamic_conv2d, R.dynamic_conv2d, R.dynamic_conv2d_backward, [x, W, pi, b], kw,
              dtype, rng)


def test_random_configurations_against_reference():
    """A seeded sweep over all axes at once, sizes not multiples of anything convenient."""
    rng = np.random.default_rng(2024)
    for _ in range(40):
        g = int(rng.choice([1, 2, 3]))
        C, O = g * int(rng.integers(1, 4)), g * int(rng.integers(1, 4))
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        H = d[0] * (kh - 1) + 1 - 2 * p[0] + int(rng.integers(0, 9))
        W_ = d[1] * (kw - 1) + 1 - 2 * p[1] + int(rng.integers(0, 9))
        H, W_ = max(H, 1), max(W_, 1)
        N, K = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        dtype = [np.float32, np.float64][int(rng.integers(0, 2))]
        x = rng.standard_normal((N, C, H, W_)).astype(dtype)
        Wk = rng.standard_normal((K, O, C // g, kh, kw)).astype(dtype)
        pi = rng.random((N, K) if rng.random() < 0.5 else (K,)).astype(dtype)
        b = rng.standard_normal((K, O)).astype(dtype) if rng.random() < 0.5 else None
        kw_ = dict(stride=s, padding=p, dilation=d, groups=g)
        y, pb = dc.dynamic_conv2d.vjp(x, Wk, pi, b, **kw_)
        assert_close(y, R.dynamic_conv2d(x, Wk, pi, b, **kw_), dtype, f"y {kw_}")
        dy = rng.standard_normal(y.shape).astype(dtype)
        for a, r in zip(pb(dy), R.dynamic_conv2d_backward(dy, x, Wk, pi, b, **kw_)):
            if r is None:
                assert a is None
            else:
                assert_close(a, r, dtype, f"grad {kw_}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(rng, dtype):
    base = rng.standard_normal((3, 10, 9, 12)).astype(dtype)
    x = base[:, ::2, :, ::-1].transpose(0, 1, 3, 2)[:, :, 1:, :]  # (3, 5, 11, 9) strided view
    assert not x.flags.c_contiguous
    W = np.asfortranarray(rng.standard_normal((3, 4, 5, 3, 3)).astype(dtype))
    pi = rng.random((3, 6)).astype(dtype)[:, ::2]
    b = rng.standard_normal((4, 3)).astype(dtype).T
    kw = dict(stride=2, padding=1)
    y, pb = dc.dynamic_conv2d.vjp(x, W, pi, b, **kw)
    assert_close(y, R.dynamic_conv2d(x, W, pi, b, **kw), dtype)
    dy = rng.standard_normal(y.shape[::-1]).astype(dtype).T  # non-contiguous cotangent
    for a, r in zip(pb(dy), R.dynamic_conv2d_backward(dy, x, W, pi, b, **kw)):
        assert_close(a, r, dtype)
    w = rng.standard_normal((5, 4, 3, 3)).astype(dtype)[::-1, ::-1]  # conv2d weight view
    y2 = dc.conv2d(x[:, :4], w, stride=1, padding="same")
    assert_close(y2, R.conv2d(x[:, :4], w, padding="same"), dtype)


def test_pullback_can_be_called_twice(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    W = rng.standard_normal((2, 4, 3, 3, 3))
    pi = rng.random((2, 2))
    y, pb = dc.dynamic_conv2d.vjp(x, W, pi)
    dy = rng.standard_normal(y.shape)
    g1, g2 = pb(dy), pb(dy)
    for a, b in zip(g1, g2):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert g1[3] is None
    np.testing.assert_array_equal(dc.vjp(dc.dynamic_conv2d, x, W, pi)[0], y)


def test_small_workspace_chunking_gives_identical_results(rng):
    from dynconv_np.backends import cpu

    x = rng.standard_normal((5, 4, 9, 9)).astype(np.float32)
    W = rng.standard_normal((3, 6, 4, 3, 3)).astype(np.float32)
    pi = rng.random((5, 3)).astype(np.float32)
    y0, pb0 = dc.dynamic_conv2d.vjp(x, W, pi, padding=1)
    g0 = pb0(np.ones_like(y0))
    old = cpu.set_workspace_bytes(1)  # one sample per chunk
    try:
        y1, pb1 = dc.dynamic_conv2d.vjp(x, W, pi, padding=1)
        g1 = pb1(np.ones_like(y1))
    finally:
        cpu.set_workspace_bytes(old)
    np.testing.assert_allclose(y1, y0, rtol=1e-6, atol=1e-6)
    for a, b in zip(g1[:3], g0[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_inputs_are_never_modified(rng):
    x = rng.standard_normal((2, 4, 7, 7))
    W = rng.standard_normal((3, 4, 2, 3, 3))
    pi = rng.random((2, 3))
    b = rng.standard_normal((3, 4))
    w = rng.standard_normal((4, 2, 3, 3))
    b1 = rng.standard_normal(4)
    arrays = [x, W, pi, b, w, b1]
    copies = [a.copy() for a in arrays]
    y, pb = dc.dynamic_conv2d.vjp(x, W, pi, b, padding=1, groups=2)
    dy = rng.standard_normal(y.shape)
    dyc = dy.copy()
    pb(dy)
    y2, pb2 = dc.conv2d.vjp(x, w, b1, stride=2, groups=2)
    pb2(rng.standard_normal(y2.shape))
    for a, c in zip(arrays + [dy], copies + [dyc]):
        np.testing.assert_array_equal(a, c)


def test_batch_of_zero_samples(rng):
    x = np.zeros((0, 3, 5, 5))
    W = rng.standard_normal((2, 4, 3, 3, 3))
    pi = np.zeros((0, 2))
    y, pb = dc.dynamic_conv2d.vjp(x, W, pi, padding=1)
    assert y.shape == (0, 4, 5, 5)
    dx, dW, dpi, _ = pb(np.zeros_like(y))
    assert dx.shape == x.shape and dpi.shape == (0, 2)
    np.testing.assert_array_equal(dW, 0)


def test_deterministic(backend, rng):
    # Two samples through the shared-pi path: dW sums per-sample products in one GEMM.
    x = backend.put(rng.standard_normal((2, 2, 4, 3)).astype(np.float32))
    Wk = backend.put(rng.standard_normal((2, 2, 2, 3, 3)).astype(np.float32))
    pi = backend.put(rng.random(2).astype(np.float32))
    dy = backend.put(rng.standard_normal((2, 2, 4, 3)).astype(np.float32))
    runs = []
    for _ in range(2):
        y, pb = dc.dynamic_conv2d.vjp(x, Wk, pi, padding=1)
        runs.append([backend.get(y)] + [backend.get(a) for a in pb(dy)[:3]])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- CUDA only
@cuda_only
def test_foreign_inputs(backend, rng):
    # Objects with only __cuda_array_interface__, one of them strided, through both ops.
    cb = backend.be
    x = rng.standard_normal((1, 4, 5, 4))
    w = rng.standard_normal((4, 2, 3, 3))
    b = rng.standard_normal(4)
    wide = cb.to_device(np.concatenate([x, x], axis=3))
    fx = Foreign(wide[:, :, :, :4])  # strided: C-ordered only after a device copy
    y, pb = dc.conv2d.vjp(fx, Foreign(cb.to_device(w)), Foreign(cb.to_device(b)), padding=1, groups=2)
    assert cb.is_device_array(y)
    y_ref = R.conv2d(x, w, b, padding=1, groups=2)
    assert_close(cb.to_host(y), y_ref, np.float64, "y")
    dy = rng.standard_normal(y_ref.shape)
    for a, r in zip(pb(Foreign(cb.to_device(dy))), R.conv2d_backward(dy, x, w, b, padding=1, groups=2)):
        assert cb.is_device_array(a)
        assert_close(cb.to_host(a), r, np.float64)

    Wk = rng.standard_normal((2, 3, 4, 1, 1))
    pi = rng.random((1, 2))
    fpi = Foreign(cb.to_device(np.concatenate([pi, pi], axis=1))[:, :2])  # strided
    y, pb = dc.dynamic_conv2d.vjp(Foreign(cb.to_device(x)), Foreign(cb.to_device(Wk)), fpi)
    y_ref = R.dynamic_conv2d(x, Wk, pi)
    assert_close(cb.to_host(y), y_ref, np.float64, "y")
    dy = rng.standard_normal(y_ref.shape)
    dx, dW, dpi, dbias = pb(cb.to_device(dy))
    assert dbias is None
    for a, r in zip((dx, dW, dpi), R.dynamic_conv2d_backward(dy, x, Wk, pi)):
        assert_close(cb.to_host(a), r, np.float64)


@cuda_only
def test_host_device_mixing_is_a_type_error(backend, rng):
    d = backend.put
    x = rng.standard_normal((1, 2, 4, 4))
    w = rng.standard_normal((2, 2, 3, 3))
    with pytest.raises(TypeError, match="w is a cuda array but x is a cpu array"):
        dc.conv2d(x, d(w))
    with pytest.raises(TypeError, match="bias is a cpu array but x is a cuda array"):
        dc.conv2d(d(x), d(w), np.zeros(2))
    with pytest.raises(TypeError, match="pi is a cpu array but x is a cuda array"):
        dc.dynamic_conv2d(d(x), d(w[None]), np.ones(1))
    y, pb = dc.conv2d.vjp(d(x), d(w))
    with pytest.raises(TypeError, match="dy is a cpu array"):
        pb(np.zeros(tuple(y.shape)))
