"""Per-pixel depthwise ops and layers: involution2d, ddf_conv2d, involution1d, the tap
engine's tap scale, the branch helpers, DDFConv2d, Involution2d, Involution1d.

Every op is compared on each backend with its float64 twin in ``dynconv_np.reference``,
which builds the per-pixel filters explicitly. CUDA cases are tiny: the simulator runs
one Python thread per CUDA thread.
"""

import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from conftest import DTYPES, assert_close, check_vjp

import dynconv_np as dc
from dynconv_np import _args, backends, nn
from dynconv_np import reference as R
from dynconv_np.ops.pixel import centre_pool, filter_norm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _windows(seed, shapes):
    """Seeded random window settings (stride, padding, dilation as ints, pairs or "same")
    with an output of at least 1x1 on each of `shapes` (N, C, H, W)."""
    r = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        while True:
            k = int(r.choice([1, 2, 3, 5]))
            kw = k if r.random() < 0.7 else int(r.choice([1, 3]))
            s = (int(r.integers(1, 3)), int(r.integers(1, 3))) if r.random() < 0.3 else int(r.integers(1, 4))
            d = int(r.integers(1, 3))
            p = "same" if (s == 1 and r.random() < 0.2) else (int(r.integers(0, 3)), int(r.integers(0, 3)))
            try:
                _args.geometry(shape, k, kw, s, p, d)
            except ValueError:
                continue
            out.append(((k, kw), s, p, d))
            break
    return out


def _geometry(shape, window):
    (kh, kw), s, p, d = window
    return _args.geometry(shape, kh, kw, s, p, d)


def _kwargs(window):
    (kh, kw), s, p, d = window
    kw_ = dict(stride=s, padding=p, dilation=d)
    if kh != kw:
        kw_["kernel_size"] = (kh, kw)
    return kw_


# (N, C, H, W, groups, window): batch 1, every group count, random windows
_INV = [(2, 4, 6, 5, 2), (1, 6, 7, 7, 3), (2, 3, 5, 6, 1), (1, 4, 6, 6, 4), (2, 2, 7, 5, 2), (1, 3, 6, 5, 3)]
INVOLUTION = [(*c, win) for c, win in zip(_INV, _windows(1, [c[:4] for c in _INV]))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", INVOLUTION, ids=lambda c: f"{c[:5]}-{c[5]}")
def test_involution2d_matches_reference(backend, rng, cfg, dtype):
    N, C, H, W, G, win = cfg
    g = _geometry((N, C, H, W), win)
    x = rng.standard_normal((N, C, H, W))
    kernel = rng.standard_normal((N, G, g.taps, g.Ho, g.Wo))
    check_vjp(backend, dc.involution2d, R.involution2d, R.involution2d_backward, (x, kernel, G),
              _kwargs(win), dtype, rng)


_DDF = [(2, 3, 6, 5), (1, 4, 7, 6), (2, 2, 5, 7), (1, 3, 6, 6), (2, 1, 5, 5), (1, 2, 7, 7)]
DDF = [(*c, comb, win) for c, comb, win in zip(_DDF, ["mul", "add"] * 3, _windows(2, _DDF))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", DDF, ids=lambda c: f"{c[:5]}-{c[5]}")
def test_ddf_conv2d_matches_reference(backend, rng, cfg, dtype):
    N, C, H, W, combine, win = cfg
    g = _geometry((N, C, H, W), win)
    x = rng.standard_normal((N, C, H, W))
    spatial = rng.standard_normal((N, g.taps, g.Ho, g.Wo))
    channel = rng.standard_normal((N, C, g.taps))
    check_vjp(backend, dc.ddf_conv2d, R.ddf_conv2d, R.ddf_conv2d_backward, (x, spatial, channel),
              dict(_kwargs(win), combine=combine), dtype, rng)


# (N, C, L, groups, k, stride, padding, dilation)
SEQUENCES = [(2, 4, 9, 2, 3, 1, 1, 1), (1, 6, 11, 3, 5, 2, 2, 1), (2, 3, 8, 1, 3, 1, "same", 2),
             (1, 4, 10, 4, 4, 3, 0, 2), (2, 2, 7, 2, 1, 1, "valid", 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", SEQUENCES)
def test_involution1d_matches_reference(backend, rng, cfg, dtype):
    N, C, L, G, k, s, p, d = cfg
    g = _args.sequence_geometry((N, C, L), k, s, p, d)
    x = rng.standard_normal((N, C, L))
    kernel = rng.standard_normal((N, G, k, g.Wo))
    check_vjp(backend, dc.involution1d, R.involution1d, R.involution1d_backward, (x, kernel, G),
              dict(stride=s, padding=p, dilation=d), dtype, rng)


def test_involution1d_is_involution2d_on_a_row(rng):
    x = rng.standard_normal((2, 4, 9))
    kernel = rng.standard_normal((2, 2, 3, 4))
    y1 = dc.involution1d(x, kernel, 2, stride=2, padding=1, dilation=2)
    y2 = dc.involution2d(x[:, :, None], kernel[:, :, :, None], 2, stride=(1, 2), padding=(0, 1), dilation=(1, 2),
                         kernel_size=(1, 3))
    np.testing.assert_array_equal(y1, y2[:, :, 0])


def test_ddf_is_involution_with_materialised_filters(rng):
    """DDF with the per-pixel filter built explicitly is an involution with one group per channel."""
    x = rng.standard_normal((2, 3, 6, 7))
    spatial = rng.standard_normal((2, 9, 3, 4))
    channel = rng.standard_normal((2, 3, 9))
    for combine in ("mul", "add"):
        F = R.ddf_filters(spatial, channel, combine)
        np.testing.assert_allclose(dc.ddf_conv2d(x, spatial, channel, stride=2, padding=1, combine=combine),
                                   dc.involution2d(x, F, 3, stride=2, padding=1), rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------- the engine's tap scale
@pytest.mark.parametrize("M, cdiv, channel_major", [(1, 1, False), (2, 2, True), (3, 4, False), (1, 4, True)])
def test_tap_engine_scale(backend, rng, M, cdiv, channel_major):
    """out[n, c*M+m] = sum_t filt[n, f(c,m), t] * scale[n, c, t] * x_t and its three gradients,
    against the generic reference on channels repeated M times."""
    be = backends.get(backend.name)
    N, C, H, W = 2, 4, 6, 5
    g = _args.geometry((N, C, H, W), 3, 2, (2, 1), (1, 0), (1, 2))
    F = (C // cdiv) * M
    x, filt = rng.standard_normal((N, C, H, W)), rng.standard_normal((N, F, g.taps, g.Ho, g.Wo))
    scale = rng.standard_normal((N, C, g.taps))
    # the per-channel filters of the channels repeated M times: slot (c, m) is row c*M + m
    f_of = np.array([(c // cdiv) * M + m for c in range(C) for m in range(M)])
    full = filt[:, f_of] * np.repeat(scale, M, axis=1)[:, :, :, None, None]
    xr = np.repeat(x, M, axis=1)
    kw = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), kernel_size=(3, 2))
    y_ref = R.per_pixel_conv2d(xr, full, **kw)
    dy = rng.standard_normal(y_ref.shape)
    dxr, dfull = R.per_pixel_conv2d_backward(dy, xr, full, **kw)
    dx_ref = dxr.reshape(N, C, M, H, W).sum(axis=2)
    dfilt_ref = np.zeros_like(filt)
    dscale_ref = np.zeros_like(scale)
    for row, f in enumerate(f_of):
        dfilt_ref[:, f] += dfull[:, row] * scale[:, row // M, :, None, None]
        dscale_ref[:, row // M] += (dfull[:, row] * filt[:, f]).sum(axis=(2, 3))

    def lay(a):                                   # (N, C*M, ...) -> the engine's layout
        return np.ascontiguousarray(a.swapaxes(0, 1) if channel_major else a)

    put = backend.put
    xd, fd, sd, dyd = put(x), put(filt), put(scale), put(lay(dy))
    y = backend.get(be.taps_forward(xd, fd, g, M, cdiv, channel_major=channel_major, scale=sd))
    assert_close(y, lay(y_ref), np.float64, "y")
    assert_close(backend.get(be.taps_backward_input(fd, dyd, g, M, cdiv, channel_major=channel_major, scale=sd)),
                 dx_ref, np.float64, "dx")
    assert_close(backend.get(be.taps_backward_filter(xd, dyd, g, M, cdiv, channel_major=channel_major, scale=sd)),
                 dfilt_ref, np.float64, "dfilt")
    assert_close(backend.get(be.taps_backward_scale(xd, fd, dyd, g, M, cdiv, channel_major=channel_major)),
                 dscale_ref, np.float64, "dscale")


# ----------------------------------------------------------------------------- branch helpers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1, size=2),
                                dict(kernel_size=5, stride=(2, 3), padding=(1, 3), dilation=2, size=(2, 3)),
                                dict(kernel_size=(3, 1), stride=1, padding=(2, 0), size=1)])
def test_centre_pool_matches_reference(backend, rng, kw, dtype):
    x = rng.standard_normal((2, 3, 7, 8))
    check_vjp(backend, centre_pool, R.centre_pool, R.centre_pool_backward, (x,), kw, dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, G", [((6, 9, 5), 3), ((4, 2, 1), 1), ((3, 49, 2), 3)])
def test_filter_norm_matches_reference(backend, rng, shape, G, dtype):
    z = rng.standard_normal(shape)
    z[0, :, 0] = 0.5                              # a constant filter: std 0, no NaN
    gain = rng.standard_normal((G, shape[1]))
    check_vjp(backend, filter_norm, R.filter_norm, R.filter_norm_backward, (z, gain), {}, dtype, rng,
              f32_tol=1e-4)


def test_filter_norm_gradcheck(rng):
    dc.gradcheck(filter_norm, (rng.standard_normal((4, 9, 3)), rng.standard_normal((2, 9))), mode="full")


def test_centre_pool_is_rednet_pooling_and_identity(rng):
    x = rng.standard_normal((2, 3, 8, 6))
    pooled = x.reshape(2, 3, 4, 2, 3, 2).mean(axis=(3, 5))          # AvgPool2d(2, 2)
    np.testing.assert_allclose(centre_pool(x, 7, stride=2, padding=3, size=2), pooled, rtol=1e-14)
    np.testing.assert_array_equal(centre_pool(x, 3, padding="same"), x)
    np.testing.assert_array_equal(centre_pool(x, 3, stride=2, padding=1), x[:, :, ::2, ::2])


# ----------------------------------------------------------------------------- general properties
def _op_calls(rng, N=2, C=4, H=7, W=6):
    """(op, args, kwargs) for each op at stride 2, padding 1, dilation 1 (3x3 window)."""
    Ho, Wo = (H - 1) // 2 + 1, (W - 1) // 2 + 1
    x = rng.standard_normal((N, C, H, W))
    return [
        (dc.involution2d, (x, rng.standard_normal((N, 2, 9, Ho, Wo)), 2), dict(stride=2, padding=1)),
        (dc.ddf_conv2d, (x, rng.standard_normal((N, 9, Ho, Wo)), rng.standard_normal((N, C, 9))),
         dict(stride=2, padding=1)),
        (dc.ddf_conv2d, (x, rng.standard_normal((N, 9, Ho, Wo)), rng.standard_normal((N, C, 9))),
         dict(stride=2, padding=1, combine="add")),
        (dc.involution1d, (x[:, :, 0], rng.standard_normal((N, 2, 3, Wo)), 2), dict(stride=2, padding=1)),
    ]


def _strided(a):
    """A non-contiguous array with a's values."""
    return np.ascontiguousarray(a[..., ::-1])[..., ::-1] if a.ndim < 2 else np.asfortranarray(a)


def test_noncontiguous_inputs(rng):
    for f, args, kw in _op_calls(rng):
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        strided = tuple(_strided(a) if isinstance(a, np.ndarray) else a for a in args)
        assert not any(a.flags.c_contiguous for a in strided if isinstance(a, np.ndarray))
        y, pb = f.vjp(*strided, **kw)
        np.testing.assert_array_equal(y, f(*args, **kw))
        dy = rng.standard_normal(y.shape)
        for a, b in zip(pb(np.asfortranarray(dy)), f.vjp(*args, **kw)[1](dy)):
            np.testing.assert_array_equal(a, b)
        assert len(arrays) == len(f.array_params)


def test_full_jacobian_gradchecks(rng):
    for f, args, kw in _op_calls(rng, N=1, C=2, H=5, W=4):
        dc.gradcheck(f, args, kw, mode="full")


BAD = [
    (dc.involution2d, lambda x, k, s, c: (x, k, 3), {}, ValueError, "groups=3 does not divide x's 4 channels"),
    (dc.involution2d, lambda x, k, s, c: (x, k, 0), {}, ValueError, "groups must be a positive int"),
    (dc.involution2d, lambda x, k, s, c: (x, k[:, :1], 2), {}, ValueError, r"kernel must have shape \(2, 2, 9"),
    (dc.involution2d, lambda x, k, s, c: (x, k[:, :, :8], 2), {}, ValueError, "kernel has 8 entries"),
    (dc.involution2d, lambda x, k, s, c: (x, k[0], 2), {}, ValueError, "kernel must be 5-D"),
    (dc.involution2d, lambda x, k, s, c: (x, k.astype(np.float32), 2), {}, TypeError, "kernel has dtype float32"),
    (dc.involution2d, lambda x, k, s, c: (x, k, 2), dict(kernel_size=(1, 3)), ValueError,
     r"kernel_size=\(1, 3\) has 3 taps"),
    (dc.involution2d, lambda x, k, s, c: (x, k, 2), dict(padding=-1), ValueError, "padding must be non-negative"),
    (dc.ddf_conv2d, lambda x, k, s, c: (x, s, c), dict(combine="max"), ValueError, 'combine must be "mul" or "add"'),
    (dc.ddf_conv2d, lambda x, k, s, c: (x, s, c[:, :3]), {}, ValueError, r"channel must have shape \(2, 4, 9\)"),
    (dc.ddf_conv2d, lambda x, k, s, c: (x, s[:, :, :2], c), {}, ValueError, r"spatial must have shape"),
    (dc.ddf_conv2d, lambda x, k, s, c: (x, s, c.tolist()), {}, TypeError, "channel must be a numpy.ndarray"),
    (dc.ddf_conv2d, lambda x, k, s, c: (x, s, c), dict(stride=0), ValueError, "stride must be positive"),
    (dc.involution1d, lambda x, k, s, c: (x[:, :, 0], k[:, :, :3, 0], 2), dict(stride=(1, 2)), TypeError,
     "stride must be a positive int"),
    (dc.involution1d, lambda x, k, s, c: (x[:, :, 0], k[:, :, :3, 0], 2), dict(padding=1.5), TypeError,
     "padding must be a non-negative int"),
    (dc.involution1d, lambda x, k, s, c: (x, k[:, :, :3, 0], 2), {}, ValueError, "x must be 3-D"),
    (dc.involution1d, lambda x, k, s, c: (x[:, :, 0], k[:, :, :3, 0], 2), dict(stride=2, padding="same"), ValueError,
     r'padding="same" needs stride 1, got stride=2$'),
    (dc.involution1d, lambda x, k, s, c: (x[:, :, 0], k[:, :, :0, 0], 2), {}, ValueError, "kernel must have at least"),
    (filter_norm, lambda x, k, s, c: (c[:, :1], np.ones((1, 1))), {}, ValueError, "at least 2 taps"),
    (filter_norm, lambda x, k, s, c: (c, np.ones((3, 4))), {}, ValueError,
     r"gain must have shape \(G, 4\) with G dividing z's 2 rows"),
    (centre_pool, lambda x, k, s, c: (x, 2), {}, ValueError, "kernel_size must have an odd kernel size"),
]


@pytest.mark.parametrize("f, make, kw, exc, match", BAD, ids=[b[4][:30] for b in BAD])
def test_bad_inputs_name_the_argument(rng, f, make, kw, exc, match):
    x = rng.standard_normal((2, 4, 7, 6))
    k = rng.standard_normal((2, 2, 9, 5, 4))
    s = rng.standard_normal((2, 9, 5, 4))
    c = rng.standard_normal((2, 4, 9))
    with pytest.raises(exc, match=match):
        f(*make(x, k, s, c), **kw)


def test_cotangent_checked(rng):
    for f, args, kw in _op_calls(rng):
        y, pb = f.vjp(*args, **kw)
        with pytest.raises(ValueError, match="dy must have the output's shape"):
            pb(np.zeros((1,) + tuple(y.shape)))


_DIGEST = textwrap.dedent("""
    import hashlib
    import numpy as np
    import dynconv_np as dc
    from dynconv_np import nn
    r = np.random.default_rng(5)
    h = hashlib.sha256()
    for dt in (np.float32, np.float64):
        x = r.standard_normal((3, 16, 19, 17)).astype(dt)
        calls = [(dc.involution2d, (x, r.standard_normal((3, 4, 25, 19, 17)).astype(dt), 4), dict(padding=2)),
                 (dc.ddf_conv2d, (x, r.standard_normal((3, 9, 10, 9)).astype(dt),
                  r.standard_normal((3, 16, 9)).astype(dt)), dict(stride=2, padding=1)),
                 (dc.ddf_conv2d, (x, r.standard_normal((3, 9, 19, 17)).astype(dt),
                  r.standard_normal((3, 16, 9)).astype(dt)), dict(padding=2, dilation=2, combine="add")),
                 (dc.involution1d, (x[:, :, 0], r.standard_normal((3, 2, 5, 17)).astype(dt), 2), dict(padding=2))]
        for layer in (nn.DDFConv2d(16, 3, padding=1, dtype=dt, seed=0), nn.Involution2d(16, 3, 2, 1, dtype=dt, seed=0)):
            calls.append((nn.as_function(layer), (x, *layer.params.values()), {}))
        for f, args, kw in calls:
            y, pb = f.vjp(*args, **kw)
            h.update(np.ascontiguousarray(y).tobytes())
            for g in pb(r.standard_normal(np.shape(y)).astype(dt)):
                h.update(np.ascontiguousarray(g).tobytes())
    print(h.hexdigest())
""")


def test_bitwise_identical_across_thread_counts():
    digests = {}
    for threads in ("1", "2", "8"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads,
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        env.pop("NUMBA_ENABLE_CUDASIM", None)
        out = subprocess.run([sys.executable, "-c", _DIGEST], env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        digests[threads] = out.stdout.strip().splitlines()[-1]
    assert len(set(digests.values())) == 1, digests


def test_ops_never_build_the_unfolded_input(rng):
    """Forward and backward at k = 7: beyond their results (y and the gradients), the ops
    allocate far less than the unfolded input (k*k times x)."""
    N, C, H, W, k = 2, 16, 20, 20, 7
    x = rng.standard_normal((N, C, H, W))
    kernel = rng.standard_normal((N, 4, k * k, H, W))
    spatial, channel = rng.standard_normal((N, k * k, H, W)), rng.standard_normal((N, C, k * k))
    dy = rng.standard_normal((N, C, H, W))
    unfolded = x.nbytes * k * k
    for f, args, kw in [(dc.involution2d, (x, kernel, 4), {}), (dc.ddf_conv2d, (x, spatial, channel), {}),
                        (dc.ddf_conv2d, (x, spatial, channel), dict(combine="add"))]:
        f.vjp(*args, padding=3, **kw)[1](dy)          # compile outside the measurement
        tracemalloc.start()
        try:
            y, pb = f.vjp(*args, padding=3, **kw)
            grads = pb(dy)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        results = y.nbytes + sum(g.nbytes for g in grads)
        assert peak - results < unfolded / 8, (f.__name__, kw, peak, results, unfolded)


# ----------------------------------------------------------------------------- layers
LAYERS = {
    "ddf": (lambda dt: nn.DDFConv2d(4, 3, padding=1, dtype=dt, seed=0), (2, 4, 5, 6)),
    "ddf_add_s2": (lambda dt: nn.DDFConv2d(4, 3, stride=2, padding=1, combine="add", dtype=dt, seed=1), (2, 4, 7, 6)),
    "ddf_p0_d2": (lambda dt: nn.DDFConv2d(3, 3, dilation=2, se_ratio=0.5, dtype=dt, seed=2), (1, 3, 7, 7)),
    "involution": (lambda dt: nn.Involution2d(8, 3, padding=1, groups=2, dtype=dt, seed=0), (2, 8, 5, 5)),
    "involution_s2": (lambda dt: nn.Involution2d(8, 3, stride=2, padding=1, groups=4, dtype=dt, seed=1),
                      (2, 8, 7, 6)),
    "involution_k5_p1": (lambda dt: nn.Involution2d(4, 5, padding=1, reduction=2, dtype=dt, seed=2), (2, 4, 7, 7)),
    "involution1d_softmax": (lambda dt: nn.Involution1d(8, 3, padding=1, groups=2, softmax=True, dtype=dt, seed=0),
                             (2, 8, 9)),
    "involution1d_s2_bias": (lambda dt: nn.Involution1d(8, 5, stride=2, padding=1, groups=4, bias=True, dtype=dt,
                                                        seed=1), (2, 8, 11)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_gradcheck_train_and_eval(rng, name):
    make, shape = LAYERS[name]
    layer = make(np.float64)
    x = rng.standard_normal(shape)
    f = nn.as_function(layer)
    dc.gradcheck(f, (x, *layer.params.values()), mode="projection")
    layer.eval()
    dc.gradcheck(f, (x, *layer.params.values()), mode="projection")


def test_layers_follow_the_authors_branches(rng):
    # DDF: both filters standardised over the taps (unbiased std); the spatial one times sqrt(2)/k
    layer = nn.DDFConv2d(4, 3, padding=1, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 4, 5, 6))
    zs = dc.conv2d(x, layer.spatial_weight, layer.spatial_bias).reshape(2, 9, 30)
    S = R.filter_norm(zs, np.full((1, 9), np.sqrt(2) / 3))
    np.testing.assert_allclose(S.std(axis=1, ddof=1), np.sqrt(2) / 3, rtol=1e-8)
    h = np.maximum(x.mean(axis=(2, 3)) @ layer.channel_weight1.T + layer.channel_bias1, 0)
    Ch = R.filter_norm((h @ layer.channel_weight2.T + layer.channel_bias2).reshape(8, 9, 1), layer.channel_std)
    expect = R.ddf_conv2d(x, S.reshape(2, 9, 5, 6), Ch.reshape(2, 4, 9), padding=1)
    np.testing.assert_allclose(layer(x), expect, rtol=1e-10, atol=1e-12)
    assert layer.hidden_channels == 1 and nn.Involution2d(64, 7).groups == 4
    # Involution: conv1x1 -> BN -> ReLU -> conv1x1 on the 2x2-pooled input at stride 2
    inv = nn.Involution2d(4, 3, stride=2, padding=1, groups=2, dtype=np.float64, seed=3).eval()
    inv.bn.running_mean[:] = rng.standard_normal(1)
    xp_ = x[:, :, :4].reshape(2, 4, 2, 2, 3, 2).mean(axis=(3, 5))
    hid = dc.conv2d(xp_, inv.reduce_weight)
    hid = (hid - inv.bn.running_mean[:, None, None]) / np.sqrt(inv.bn.running_var[:, None, None] + 1e-5)
    K = dc.conv2d(np.maximum(hid, 0), inv.span_weight, inv.span_bias).reshape(2, 2, 9, 2, 3)
    np.testing.assert_allclose(inv(x[:, :, :4]), R.involution2d(x[:, :, :4], K, 2, stride=2, padding=1),
                               rtol=1e-10, atol=1e-12)
    # Involution1d with softmax: each step's kernel sums to one over its taps
    seq = nn.Involution1d(4, 3, padding="same", groups=2, softmax=True, dtype=np.float64, seed=4)
    xs = rng.standard_normal((2, 4, 6))
    z = np.einsum("oc,ncl->nol", seq.weight, xs).reshape(2, 2, 3, 6)
    K1 = np.exp(z) / np.exp(z).sum(axis=2, keepdims=True)
    np.testing.assert_allclose(seq(xs), R.involution1d(xs, K1, 2, padding=1), rtol=1e-10, atol=1e-12)


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="groups=3 does not divide channels=8"):
        nn.Involution2d(8, 3, groups=3)
    with pytest.raises(ValueError, match=r"the default channels // 16\): pass groups="):
        nn.Involution2d(48 + 2, 3)
    with pytest.raises(ValueError, match="kernel_size must have an odd kernel size"):
        nn.DDFConv2d(4, 2)
    with pytest.raises(ValueError, match="at least two taps"):
        nn.DDFConv2d(4, 1)
    with pytest.raises(ValueError, match='combine must be "mul" or "add"'):
        nn.DDFConv2d(4, 3, combine="sum")
    with pytest.raises(TypeError, match="stride must be a positive int"):
        nn.Involution1d(4, 3, stride=(1, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(1, 4, 5\) \(N, C, L\): Involution1d\(4, "):
        nn.Involution1d(4, 3, padding=1)(np.zeros((1, 3, 5), np.float32))
    with pytest.raises(ValueError, match="x must be 4-D"):
        nn.DDFConv2d(4, 3)(np.zeros((1, 4, 5), np.float32))


@pytest.mark.parametrize("name", ["ddf_add_s2", "involution_s2", "involution1d_softmax"])
def test_layer_save_load(tmp_path, rng, name):
    make, shape = LAYERS[name]
    a, b = make(np.float32), make(np.float32)
    for p in a.params.values():
        p += rng.standard_normal(p.shape).astype(p.dtype)
    x = rng.standard_normal(shape).astype(np.float32)
    a(x)                                           # moves the running statistics
    a.save(tmp_path / "layer.npz")
    b.load(tmp_path / "layer.npz")
    assert set(a.state_dict()) == set(b.state_dict())
    a.eval()
    b.eval()
    np.testing.assert_array_equal(a(x), b(x))


@pytest.mark.parametrize("name", ["ddf_add_s2", "involution_s2", "involution1d_softmax"])
def test_layer_on_backend(backend, rng, name):
    """The float32 layer on each backend (to_device for CUDA) against a float64 host twin:
    output, input gradient, parameter gradients and running statistics after one step."""
    make, shape = LAYERS[name]
    ref = make(np.float64)
    for p in ref.params.values():
        p += 0.3 * rng.standard_normal(p.shape)
    lay = make(np.float32)
    lay.load_state_dict(ref.state_dict())
    if backend.name == "cuda":
        assert lay.to_device() is lay
    x = rng.standard_normal(shape)
    y_ref = ref(x)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref = ref.backward(dy)
    y = lay(backend.put(x.astype(np.float32)))
    assert_close(backend.get(y), y_ref, np.float32, "y", f32_tol=1e-4)
    dx = lay.backward(backend.put(dy.astype(np.float32)))
    assert_close(backend.get(dx), dx_ref, np.float32, "dx", f32_tol=1e-4)
    for kind in ("grads", "buffers"):
        for k, v in getattr(ref, kind).items():
            assert_close(backend.get(getattr(lay, kind)[k]), v, np.float32, k, f32_tol=1e-4)


def test_summary_counts_the_per_pixel_layers():
    # every product of one forward: the branches' convs/FCs and one multiply-add per
    # output value and tap (DDF: plus the product that combines its two filters)
    ddf = nn.DDFConv2d(8, 3, padding=1, seed=0)
    hid = ddf.channel_bias1.shape[0]
    s = nn.summary(ddf, (8, 6, 6), batch_size=2)
    assert s.complete and s.total_mult_adds == 2 * (36 * 9 * 8 + hid * 8 + 72 * hid + 2 * 8 * 36 * 9)
    inv = nn.Involution2d(16, 3, padding=1, groups=2, seed=0)
    hid = inv.reduce_weight.shape[0]
    s = nn.summary(inv, (16, 5, 5), batch_size=3)
    assert s.complete and s.total_mult_adds == 3 * 25 * (hid * 16 + 18 * hid + 16 * 9)
    s = nn.summary(nn.Involution1d(8, 3, padding=1, groups=2, seed=0), (8, 10), batch_size=2)
    assert s.complete and s.total_mult_adds == 2 * 10 * (6 * 8 + 8 * 3)
