"""The 1-D forms conv1d and dynamic_conv1d and the DynamicConv1d layer: the reference
(forward and every gradient, CPU and CUDA), the identity with the 2-D ops on ``H = 1``
views, argument checks in 1-D words, whole-layer gradchecks, state and devices."""

import numpy as np
import pytest
from conftest import DTYPES, assert_close, check_vjp

import dynconv_np as dc
from dynconv_np import nn
from dynconv_np import reference as R

F32, F64 = np.float32, np.float64


# ----------------------------------------------------------------------------- the ops against the reference
def test_conv1d_matches_reference(backend, rng):
    x, w, b = rng.standard_normal((2, 4, 9)), rng.standard_normal((6, 2, 3)), rng.standard_normal(6)
    check_vjp(backend, dc.conv1d, R.conv1d, R.conv1d_backward, (x, w, b),
              dict(stride=2, padding=(1,), dilation=2, groups=2), F32, rng)


def test_dynamic_conv1d_matches_reference(backend, rng):
    x, W = rng.standard_normal((2, 3, 7)), rng.standard_normal((2, 4, 3, 2))
    pi, b = rng.random((2, 2)), rng.standard_normal((2, 4))
    check_vjp(backend, dc.dynamic_conv1d, R.dynamic_conv1d, R.dynamic_conv1d_backward, (x, W, pi, b),
              dict(padding="same"), F64, rng)


def _config(rng, i):
    groups = int(rng.choice([1, 2, 3]))
    C, O = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
    k, s, d = int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
    p = ["same", "valid", int(rng.integers(0, 3)), (int(rng.integers(0, 3)),)][i % 4]
    if p == "same":
        s = 1
    L = int(rng.integers(d * (k - 1) + 1, 14))
    N = 1 if i % 5 == 0 else int(rng.integers(2, 4))
    return N, C, O, k, L, dict(stride=(s,) if i % 3 == 0 else s, padding=p, dilation=d, groups=groups)


def _strided(a):
    # the same values as a non-contiguous view
    return np.repeat(a, 2, axis=-1)[..., ::2]


@pytest.mark.parametrize("dynamic", [False, True])
def test_random_configurations_against_reference(dynamic):
    rng = np.random.default_rng(19 + dynamic)
    for i in range(20):
        N, C, O, k, L, geo = _config(rng, i)
        dtype = DTYPES[i % 2]
        x = rng.standard_normal((N, C, L))
        if dynamic:
            K = int(rng.integers(1, 4))
            args = [x, rng.standard_normal((K, O, C // geo["groups"], k)),
                    rng.random((N, K) if i % 2 else (K,)), rng.standard_normal((K, O)) if i % 3 else None]
            f, ref, ref_b = dc.dynamic_conv1d, R.dynamic_conv1d, R.dynamic_conv1d_backward
        else:
            args = [x, rng.standard_normal((O, C // geo["groups"], k)), rng.standard_normal(O) if i % 3 else None]
            f, ref, ref_b = dc.conv1d, R.conv1d, R.conv1d_backward
        y_ref = ref(*args, **geo)
        dy = rng.standard_normal(y_ref.shape)
        got_args = [None if a is None else a.astype(dtype) for a in args]
        got_args[0] = _strided(got_args[0])
        y, pb = f.vjp(*got_args, **geo)
        assert y.shape == y_ref.shape and y.dtype == dtype
        assert_close(y, y_ref, dtype, f"case {i} y")
        for j, (a, r) in enumerate(zip(pb(dy.astype(dtype)), ref_b(dy, *args, **geo))):
            if r is None:
                assert a is None
            else:
                assert a.dtype == dtype and a.shape == r.shape, (i, j)
                assert_close(a, r, dtype, f"case {i} grad {j}")


def test_the_2d_engine_on_h1_views_bitwise(rng):
    x = rng.standard_normal((5, 6, 17)).astype(F32)
    W = rng.standard_normal((3, 4, 3, 5)).astype(F32)
    pi = rng.random((5, 3)).astype(F32)
    b = rng.standard_normal((3, 4)).astype(F32)
    y, pb = dc.dynamic_conv1d.vjp(x, W, pi, b, stride=2, padding=2, dilation=(2,), groups=2)
    y2, pb2 = dc.dynamic_conv2d.vjp(x[:, :, None], W[:, :, :, None], pi, b, stride=(1, 2), padding=(0, 2),
                                    dilation=(1, 2), groups=2)
    np.testing.assert_array_equal(y, y2[:, :, 0])
    dy = rng.standard_normal(y.shape).astype(F32)
    for a, a2 in zip(pb(dy), pb2(dy[:, :, None])):
        np.testing.assert_array_equal(a, a2.reshape(a.shape))


def test_gradcheck(rng):
    x = rng.standard_normal((2, 4, 8))
    dc.gradcheck(dc.conv1d, (x, rng.standard_normal((6, 2, 3)), rng.standard_normal(6)),
                 dict(stride=2, padding=1, dilation=2, groups=2), mode="full")
    dc.gradcheck(dc.dynamic_conv1d, (x, rng.standard_normal((3, 5, 4, 2)), rng.random(3)), dict(padding="same"),
                 mode="projection")


# ----------------------------------------------------------------------------- argument checks
def test_errors_speak_1d(rng):
    x, w = rng.standard_normal((2, 4, 9)), rng.standard_normal((6, 2, 3))
    W, pi = rng.standard_normal((3, 6, 4, 3)), rng.random((2, 3))
    with pytest.raises(ValueError, match=r"x must be 3-D \(N, C, L\), got 4-D"):
        dc.conv1d(x[:, :, None], w, groups=2)
    with pytest.raises(ValueError, match=r"w must be 3-D \(O, C//groups, k\), got 4-D"):
        dc.conv1d(x, w[:, :, None], groups=2)
    with pytest.raises(ValueError, match=r"W must be 4-D \(K, O, C//groups, k\)"):
        dc.dynamic_conv1d(x, W[0], pi)
    with pytest.raises(ValueError, match="w has 2 input channels per group, but x has 4 channels and groups=1"):
        dc.conv1d(x, w)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\) \(O,\), got \(5,\)"):
        dc.conv1d(x, w, np.ones(5), groups=2)
    with pytest.raises(ValueError, match=r"bias must have shape \(3, 6\) \(K, O\)"):
        dc.dynamic_conv1d(x, W, pi, np.ones(6))
    with pytest.raises(ValueError, match=r"stride must be an int or a 1-tuple, got \(1, 2\)"):
        dc.conv1d(x, w, stride=(1, 2), groups=2)
    with pytest.raises(TypeError, match="dilation must be an int or a 1-tuple of an int, got 1.5"):
        dc.conv1d(x, w, dilation=1.5, groups=2)
    with pytest.raises(ValueError, match="padding must be non-negative, got -1"):
        dc.conv1d(x, w, padding=-1, groups=2)
    with pytest.raises(ValueError, match='padding="same" needs stride 1, got stride=2'):
        dc.conv1d(x, w, padding="same", stride=2, groups=2)
    with pytest.raises(ValueError, match='padding must be an int, a 1-tuple, "valid" or "same", got \'full\''):
        dc.conv1d(x, w, padding="full", groups=2)
    with pytest.raises(ValueError, match=r"output length would be -3 \(below 1\): x has length 9, kernel 3, "
                                         r"stride 1, padding 0, dilation 6"):
        dc.conv1d(x, w, dilation=6, groups=2)
    with pytest.raises(ValueError, match=r"pi must have shape \(2, 3\)"):
        dc.dynamic_conv1d(x, W, pi[:, :2])
    with pytest.raises(TypeError, match="w has dtype float32 but x has dtype float64"):
        dc.conv1d(x, w.astype(F32), groups=2)
    with pytest.raises(ValueError, match=r"dy must have the output's shape \(2, 6, 7\)"):
        dc.conv1d.vjp(x, w, groups=2)[1](np.ones((2, 6, 1, 7)))


# ----------------------------------------------------------------------------- the layer
def _layer(rng, **kw):
    layer = nn.DynamicConv1d(4, 6, 3, **{"padding": "same", "groups": 2, "num_experts": 3, **kw},
                             temperature=2.0, dtype=F64, seed=3)
    for k, p in layer.params.items():
        p += 0.3 * rng.standard_normal(p.shape) + (1.0 if k == "fc1.bias" else 0.0)
    return layer


def test_layer_attention_and_output(rng):
    layer = _layer(rng, stride=(2,), padding=1)
    assert set(layer.params) == {"weight", "bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert layer.weight.shape == (3, 6, 2, 3) and layer.hidden_channels == 1
    assert repr(layer) == ("DynamicConv1d(4, 6, 3, stride=(2,), padding=1, groups=2, num_experts=3, "
                          "temperature=2.0, dtype=np.float64)")
    x = rng.standard_normal((3, 4, 10))
    p = layer.params
    h = np.maximum(x.mean(axis=2) @ p["fc1.weight"].T + p["fc1.bias"], 0)
    z = (h @ p["fc2.weight"].T + p["fc2.bias"]) / 2.0
    pi = np.exp(z - z.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    assert_close(layer.routing_weights(x), pi, F64, "pi")
    assert_close(layer(x), R.dynamic_conv1d(x, layer.weight, pi, layer.bias, stride=2, padding=1, groups=2),
                 F64, "y")
    dc.gradcheck(nn.as_function(layer), (x, *layer.params.values()), mode="projection")
    with pytest.raises(ValueError, match=r"x must be 3-D \(N, C, L\)"):
        layer(x[:, :, None])
    with pytest.raises(ValueError, match=r"DynamicConv1d\(4, 6, 3, .*\) expects x with 4"):
        layer(x[:, :3])
    with pytest.raises(ValueError, match='padding="same" needs stride 1'):
        nn.DynamicConv1d(4, 6, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="kernel_size must be positive"):
        nn.DynamicConv1d(4, 6, 0)


def test_layer_state_and_schedule(rng, tmp_path):
    layer = _layer(rng, bias=False)
    assert "bias" not in layer.params
    nn.TemperatureSchedule(layer, tau0=30.0, epochs=1).step()
    assert layer.temperature == 1.0
    layer.save(tmp_path / "d1.npz")
    other = nn.DynamicConv1d(4, 6, 3, padding="same", groups=2, num_experts=3, bias=False, dtype=F64, seed=9)
    other.load(tmp_path / "d1.npz")
    x = rng.standard_normal((2, 4, 5))
    np.testing.assert_array_equal(other(x), layer(x))


def test_layer_on_backend(backend, rng):
    """The layer in float32 on the backend (``to_device`` for CUDA) against its float64 host twin."""
    ref = nn.DynamicConv1d(2, 2, 3, padding=1, num_experts=2, temperature=3.0, dtype=F64, seed=1)
    for p in ref.params.values():
        p += 0.3 * rng.standard_normal(p.shape)
    layer = nn.DynamicConv1d(2, 2, 3, padding=1, num_experts=2, seed=0)
    layer.load_state_dict(ref.state_dict())
    if backend.name == "cuda":
        layer.to_device()
    x = rng.standard_normal((2, 2, 5))
    y = ref(x)
    assert_close(backend.get(layer(backend.put(x.astype(F32)))), y, F32, "y", f32_tol=5e-5)
    dy = rng.standard_normal(y.shape)
    assert_close(backend.get(layer.backward(backend.put(dy.astype(F32)))), ref.backward(dy), F32, "dx",
                 f32_tol=5e-5)
    for k, g in ref.grads.items():
        assert_close(backend.get(layer.grads[k]), g, F32, f"grad {k}", f32_tol=5e-5)
