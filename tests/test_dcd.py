"""dcd_conv2d against the naive reference on every backend (CPU always; CUDA on a GPU or
under the simulator), the explicit-kernel identity, gradchecks, DCDConv2d."""

import numpy as np
import pytest
from conftest import DTYPES, assert_close, check_vjp, over_backends

import dynconv_np as dc
from dynconv_np import reference as R
from dynconv_np.nn import DCDConv2d, as_function

# (N, C, H, W, O, k, L, stride, padding, dilation)
GRID = [
    (2, 4, 7, 6, 5, 3, 2, 1, 1, 1),
    (1, 3, 9, 10, 2, 5, 1, 2, 0, 1),
    (2, 5, 8, 9, 3, 1, 3, (2, 1), (2, 0), 1),
    (2, 4, 6, 7, 3, 3, 2, 3, 2, (1, 2)),
    (1, 2, 5, 5, 2, 3, 2, 1, "same", 2),
    (1, 2, 11, 11, 2, 5, 4, 2, 1, 2),
    (3, 6, 5, 8, 4, 3, 5, 1, "valid", 1),
    (2, 3, 7, 7, 6, 1, 2, 1, 0, 1),
]
# tiny: the configuration CUDA runs too (the simulator runs one Python thread per CUDA thread)
TINY = (1, 2, 4, 5, 3, 3, 2, (2, 1), 1, 1)
GRID.append(TINY)


def _data(rng, cfg, dtype):
    N, C, H, W, O, k, L, s, p, d = cfg
    args = (rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, k, k)),
            rng.random((N, O)) * 2, rng.standard_normal((N, L, L)),
            rng.standard_normal((O, L)), rng.standard_normal((C, L)))
    return tuple(a.astype(dtype) for a in args), dict(stride=s, padding=p, dilation=d)


@pytest.mark.parametrize("backend, cfg, dtype",
                         over_backends([(c, dt) for c in GRID for dt in DTYPES], [(TINY, dt) for dt in DTYPES]),
                         indirect=["backend"])
def test_dcd_matches_reference(backend, rng, cfg, dtype):
    args, kw = _data(rng, cfg, dtype)
    # on the CPU the pullback is called twice (on CUDA it would double the simulator's cost)
    check_vjp(backend, dc.dcd_conv2d, R.dcd_conv2d, R.dcd_conv2d_backward, args, kw, dtype, rng,
              twice=backend.name == "cpu")


def test_dcd_equals_conv2d_with_built_kernels(rng):
    args, kw = _data(rng, (3, 4, 9, 8, 5, 3, 2, 2, 1, (1, 2)), np.float64)
    x, W0, lam, phi, P, Q = args
    y = dc.dcd_conv2d(*args, **kw)
    for n in range(x.shape[0]):
        Wn = lam[n][:, None, None, None] * W0
        Wn[:, :, 1, 1] += P @ phi[n] @ Q.T
        np.testing.assert_allclose(y[n:n + 1], dc.conv2d(x[n:n + 1], Wn, **kw), rtol=1e-12, atol=1e-12)


def test_dcd_centre_tap_in_padding(rng):
    """Large padding: centre taps of border pixels fall in the padding (contribute zero)."""
    args, kw = _data(rng, (2, 3, 4, 5, 2, 3, 2, 1, 3, 1), np.float64)
    y, pb = dc.dcd_conv2d.vjp(*args, **kw)
    assert y.shape == (2, 2, 8, 9)
    assert_close(y, R.dcd_conv2d(*args, **kw), np.float64, "y")
    dy = rng.standard_normal(y.shape)
    for a, r in zip(pb(dy), R.dcd_conv2d_backward(dy, *args, **kw)):
        assert_close(a, r, np.float64)


def test_dcd_noncontiguous_inputs(rng):
    args, kw = _data(rng, (2, 4, 7, 6, 5, 3, 3, 2, 1, 1), np.float64)
    x, W0, lam, phi, P, Q = args
    xn = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    W0n = np.repeat(W0, 2, axis=0)[::2]
    lamn = np.asfortranarray(lam)
    phin = phi.transpose(0, 2, 1).copy().transpose(0, 2, 1)
    Pn, Qn = np.asfortranarray(P), np.hstack([Q, Q])[:, :Q.shape[1]]
    nc = (xn, W0n, lamn, phin, Pn, Qn)
    assert not all(a.flags.c_contiguous for a in nc)
    y, pb = dc.dcd_conv2d.vjp(*nc, **kw)
    np.testing.assert_array_equal(y, dc.dcd_conv2d(*args, **kw))
    dy = rng.standard_normal(y.shape)
    for a, r in zip(pb(dy), R.dcd_conv2d_backward(dy, *args, **kw)):
        assert_close(a, r, np.float64)


def test_dcd_inputs_unchanged(rng):
    args, kw = _data(rng, (2, 4, 7, 6, 5, 3, 2, 1, 1, 1), np.float32)
    before = [a.copy() for a in args]
    y, pb = dc.dcd_conv2d.vjp(*args, **kw)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dyc = dy.copy()
    pb(dy)
    for a, b in zip(args, before):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dy, dyc)


@pytest.mark.parametrize("cfg", [(2, 3, 5, 4, 2, 3, 2, 2, 1, 1), (1, 2, 6, 5, 3, 3, 1, 1, 2, 2),
                                 (2, 2, 4, 4, 2, 1, 2, 1, 0, 1)])
def test_dcd_gradcheck_every_argument(rng, cfg):
    args, kw = _data(rng, cfg, np.float64)
    rep = dc.gradcheck(dc.dcd_conv2d, args, kw, mode="full")
    assert [a.name for a in rep.args] == ["x", "W0", "lam", "phi", "P", "Q"]


def test_dcd_bad_inputs(rng):
    args, kw = _data(rng, (2, 4, 7, 6, 5, 3, 2, 1, 1, 1), np.float64)
    x, W0, lam, phi, P, Q = args
    with pytest.raises(ValueError, match="W0.*odd"):
        dc.dcd_conv2d(x, W0[:, :, :2], lam, phi, P, Q)
    with pytest.raises(ValueError, match="W0 has 3 input channels"):
        dc.dcd_conv2d(x, W0[:, :3], lam, phi, P, Q[:3])
    with pytest.raises(ValueError, match="lam"):
        dc.dcd_conv2d(x, W0, lam[:1], phi, P, Q)
    with pytest.raises(ValueError, match="phi"):
        dc.dcd_conv2d(x, W0, lam, phi[:, :, :1], P, Q)
    with pytest.raises(ValueError, match="P"):
        dc.dcd_conv2d(x, W0, lam, phi, P[:, :1], Q)
    with pytest.raises(ValueError, match="Q"):
        dc.dcd_conv2d(x, W0, lam, phi, P, Q[:2])
    with pytest.raises(ValueError, match="phi must be 3-D"):
        dc.dcd_conv2d(x, W0, lam, phi[0], P, Q)
    with pytest.raises(TypeError, match="lam"):
        dc.dcd_conv2d(x, W0, lam.astype(np.float32), phi, P, Q)
    with pytest.raises(TypeError, match="x"):
        dc.dcd_conv2d(x.astype(np.int64), W0, lam, phi, P, Q)
    with pytest.raises(ValueError, match="stride"):
        dc.dcd_conv2d(*args, stride=0)
    y, pb = dc.dcd_conv2d.vjp(*args)
    with pytest.raises(ValueError, match="dy"):
        pb(np.zeros((1,) + y.shape[1:]))


# ----------------------------------------------------------------------------- layer
@pytest.mark.parametrize("residual_bn", [False, True])
@pytest.mark.parametrize("geo", [dict(), dict(stride=2), dict(kernel_size=5, padding=3, dilation=2)])
def test_dcd_layer_gradcheck(rng, residual_bn, geo):
    layer = DCDConv2d(9, 5, **{"kernel_size": 3, **geo}, residual_bn=residual_bn, dtype=np.float64, seed=3)
    assert layer.latent_dim == 3 and layer.squeeze == 4
    x = rng.standard_normal((3, 9, 7, 6))
    f = as_function(layer)
    dc.gradcheck(f, (x, *layer.params.values()), mode="projection")
    layer.eval()
    dc.gradcheck(f, (x, *layer.params.values()), mode="projection")


def test_dcd_layer_is_the_op_with_its_routing(rng):
    layer = DCDConv2d(4, 6, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 4, 5, 5))
    a = x.mean(axis=(2, 3))
    t0 = a @ layer.fc_weight.T
    t = t0 * np.clip(t0 @ layer.se_weight.T + 3, 0, 6) / 3
    lam = np.clip(t @ layer.scale_weight.T + 3, 0, 6) / 3
    phi = np.eye(2) + (t @ layer.phi_weight.T).reshape(2, 2, 2)
    expect = R.dcd_conv2d(x, layer.weight, lam, phi, layer.p_weight, layer.q_weight, padding=1)
    np.testing.assert_allclose(layer(x), expect, rtol=1e-10, atol=1e-12)
    assert np.all((lam >= 0) & (lam <= 2))


def test_dcd_layer_residual_bn_eval_matches_plain(rng):
    """With identity BN statistics (eval mode, eps -> 0) the BN residual is the plain one."""
    plain = DCDConv2d(5, 3, 3, stride=2, dtype=np.float64, seed=4)
    bn = DCDConv2d(5, 3, 3, stride=2, residual_bn=True, eps=1e-14, dtype=np.float64, seed=4)
    bn.eval()
    x = rng.standard_normal((2, 5, 6, 7))
    np.testing.assert_allclose(bn(x), plain(x), rtol=1e-9, atol=1e-10)


def test_dcd_layer_batch_one_and_float32(rng):
    layer = DCDConv2d(8, 4, 3, seed=1)
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and y.shape == (1, 4, 6, 6)
    dx = layer.backward(rng.standard_normal(y.shape).astype(np.float32))
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert all(g.dtype == np.float32 for g in layer.grads.values())
    sd = layer.state_dict()
    other = DCDConv2d(8, 4, 3, seed=2)
    other.load_state_dict(sd)
    np.testing.assert_array_equal(other(x), y)


def test_dcd_layer_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        DCDConv2d(4, 4, 2)
    with pytest.raises(ValueError, match="in_channels"):
        DCDConv2d(0, 4, 3)
    layer = DCDConv2d(4, 4, 3, dtype=np.float64)
    with pytest.raises(ValueError, match="channels"):
        layer(np.zeros((1, 3, 5, 5)))
    with pytest.raises(RuntimeError):
        DCDConv2d(4, 4, 3).backward(np.zeros((1, 4, 5, 5), np.float32))
