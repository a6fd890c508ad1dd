"""conv2d and dynamic_conv2d against the naive float64 reference, forward and every gradient."""

import numpy as np
import pytest
from conftest import assert_close

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


def _data(rng, cfg, dtype, K=None):
    N, C, H, W, O, kh, kw, s, p, d, g = cfg
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    shape = (O, C // g, kh, kw) if K is None else (K, O, C // g, kh, kw)
    w = rng.standard_normal(shape).astype(dtype)
    return x, w, dict(stride=s, padding=p, dilation=d, groups=g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", GRID)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_matches_reference(rng, cfg, dtype, with_bias):
    x, w, kw = _data(rng, cfg, dtype)
    b = rng.standard_normal(w.shape[0]).astype(dtype) if with_bias else None
    y, pb = dc.conv2d.vjp(x, w, b, **kw)
    assert y.dtype == dtype
    assert_close(y, R.conv2d(x, w, b, **kw), dtype, "y")
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = pb(dy)
    ref = R.conv2d_backward(dy, x, w, b, **kw)
    assert len(got) == 3
    for name, a, r in zip(("dx", "dw", "dbias"), got, ref):
        if r is None:
            assert a is None
        else:
            assert a.dtype == dtype and a.shape == r.shape
            assert_close(a, r, dtype, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", GRID)
@pytest.mark.parametrize("K", [1, 3, 5])
@pytest.mark.parametrize("pi_kind", ["per_sample", "shared"])
def test_dynamic_conv2d_matches_reference(rng, cfg, dtype, K, pi_kind):
    x, W, kw = _data(rng, cfg, dtype, K)
    N, O = x.shape[0], W.shape[1]
    pi = rng.random((N, K) if pi_kind == "per_sample" else (K,)).astype(dtype)
    b = rng.standard_normal((K, O)).astype(dtype) if K != 3 else None
    y, pb = dc.dynamic_conv2d.vjp(x, W, pi, b, **kw)
    assert_close(y, R.dynamic_conv2d(x, W, pi, b, **kw), dtype, "y")
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = pb(dy)
    ref = R.dynamic_conv2d_backward(dy, x, W, pi, b, **kw)
    assert len(got) == 4
    for name, a, r in zip(("dx", "dW", "dpi", "dbias"), got, ref):
        if r is None:
            assert a is None
        else:
            assert a.dtype == dtype and a.shape == r.shape, name
            assert_close(a, r, dtype, name)


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
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
