"""The ops the layers compose: small linear algebra, DCD's pieces, the loss and the optimiser
updates, against reference.py (forward, pullback, gradchecks) and their argument checks."""

import numpy as np
import pytest
from test_routing import DTYPES, check_vs_ref

import dynconv_np as dc
from dynconv_np import reference as ref
from dynconv_np.ops.dcd import centre_projection, dcd_combine
from dynconv_np.ops.linalg import add_bias, add_eye, channel_mix, matmul, scale_channels
from dynconv_np.ops.loss import softmax_cross_entropy
from dynconv_np.ops.optim import adam_update, sgd_update


# ----------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a_shape,ta", [((3, 4), False), ((4, 3), True), ((2, 3, 4), False), ((2, 4, 3), True)])
def test_matmul(dtype, a_shape, ta, rng):
    a = rng.standard_normal(a_shape)
    b = rng.standard_normal((2, 4, 5))
    check_vs_ref(matmul, ref.matmul, ref.matmul_backward, (a, b), {"ta": ta}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3)])
def test_scale_channels(dtype, shape, rng):
    args = (rng.standard_normal(shape), rng.standard_normal(shape[:2]))
    check_vs_ref(scale_channels, ref.scale_channels, ref.scale_channels_backward, args, {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 4, 2, 3, 3), (3, 4)])
def test_channel_mix(dtype, shape, rng):
    args = (rng.standard_normal(shape[:2]), rng.standard_normal(shape))
    check_vs_ref(channel_mix, ref.channel_mix, ref.channel_mix_backward, args, {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3)])
def test_add_bias(dtype, shape, rng):
    args = (rng.standard_normal(shape), rng.standard_normal(shape[1]))
    check_vs_ref(add_bias, ref.add_bias, ref.add_bias_backward, args, {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_eye(dtype, rng):
    check_vs_ref(add_eye, ref.add_eye, ref.add_eye_backward, (rng.standard_normal((2, 3, 3)),), {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2), dict(kernel_size=(3, 5), stride=(2, 1),
                                                                        padding=(0, 3), dilation=(1, 2)),
    dict(kernel_size=5, padding="same", dilation=2), dict(kernel_size=1),
])
def test_centre_projection(dtype, kwargs, rng):
    args = (rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((3, 2)))
    check_vs_ref(centre_projection, ref.centre_projection, ref.centre_projection_backward, args, kwargs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dcd_combine(dtype, rng):
    args = (rng.standard_normal((2, 4, 3, 5)), rng.random((2, 4)) * 2, rng.standard_normal((4, 3)),
            rng.standard_normal((2, 3, 3, 5)))
    check_vs_ref(dcd_combine, ref.dcd_combine, ref.dcd_combine_backward, args, {}, dtype)


def test_dcd_conv2d_is_its_pieces(rng):
    """dcd_conv2d = dcd_combine(conv2d(x, W0), lam, P, phi @ centre_projection(x, Q))."""
    x, W0 = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((5, 4, 3, 3))
    lam, phi = rng.random((2, 5)), rng.standard_normal((2, 2, 2))
    P, Q = rng.standard_normal((5, 2)), rng.standard_normal((4, 2))
    geo = dict(stride=2, padding=1, dilation=(1, 2))
    z = centre_projection(x, Q, 3, **geo)
    v = matmul(phi, z.reshape(2, 2, -1)).reshape(z.shape)
    expect = dcd_combine(dc.conv2d(x, W0, **geo), lam, P, v)
    np.testing.assert_allclose(dc.dcd_conv2d(x, W0, lam, phi, P, Q, **geo), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy(dtype, rng):
    logits = 3 * rng.standard_normal((4, 5))
    target = rng.dirichlet(np.ones(5), 4)
    check_vs_ref(softmax_cross_entropy, ref.softmax_cross_entropy, ref.softmax_cross_entropy_backward,
                 (logits, target), {}, dtype)


@pytest.mark.parametrize("f,args,kwargs", [
    (matmul, ((3, 4), (2, 3, 2)), {"ta": True}),
    (matmul, ((2, 3, 4), (2, 4, 2)), {}),
    (scale_channels, ((2, 3, 2, 2), (2, 3)), {}),
    (channel_mix, ((3, 2), (3, 2, 2, 2)), {}),
    (add_bias, ((2, 3, 2, 2), (3,)), {}),
    (add_eye, ((2, 3, 3),), {}),
    (centre_projection, ((2, 3, 5, 4), (3, 2)), dict(kernel_size=3, stride=2, padding=1)),
    (dcd_combine, ((2, 3, 2, 2), (2, 3), (3, 2), (2, 2, 2, 2)), {}),
])
def test_gradcheck_full(f, args, kwargs, rng):
    dc.gradcheck(f, tuple(rng.standard_normal(s) for s in args), kwargs, mode="full")


def test_softmax_cross_entropy_gradcheck(rng):
    # the logits' gradient (softmax - target) / N holds for targets whose rows sum to 1
    dc.gradcheck(softmax_cross_entropy, (rng.standard_normal((3, 4)), rng.dirichlet(np.ones(4), 3)), mode="full")


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call,exc,words", [
    (lambda: matmul(np.ones((3, 4)), np.ones((2, 3, 5))), ValueError, "a has 4 columns"),
    (lambda: matmul(np.ones((3, 3, 4)), np.ones((2, 4, 5))), ValueError, "one batch size"),
    (lambda: matmul(np.ones(4), np.ones((2, 4, 5))), ValueError, "a must be 2-D"),
    (lambda: matmul(np.ones((3, 4)), np.ones((4, 5))), ValueError, "b must be 3-D"),
    (lambda: matmul(np.ones((3, 4)), np.ones((2, 4, 5), np.float32)), TypeError, "dtype"),
    (lambda: scale_channels(np.ones((2, 3, 4)), np.ones((3, 2))), ValueError, "s must have shape (2, 3)"),
    (lambda: channel_mix(np.ones((3, 2)), np.ones((3, 4, 5))), ValueError, "a must have shape (3, 4)"),
    (lambda: add_bias(np.ones((2, 3, 4)), np.ones(4)), ValueError, "b must have shape (3,)"),
    (lambda: add_eye(np.ones((2, 3, 4))), ValueError, "square"),
    (lambda: centre_projection(np.ones((1, 3, 5, 5)), np.ones((3, 2)), 2), ValueError, "odd"),
    (lambda: centre_projection(np.ones((1, 3, 5, 5)), np.ones((4, 2)), 3), ValueError, "Q must have shape"),
    (lambda: dcd_combine(np.ones((2, 3, 2, 2)), np.ones((2, 3)), np.ones((3, 2)), np.ones((2, 3, 2, 2))),
     ValueError, "v must have shape (2, 2, 2, 2)"),
    (lambda: softmax_cross_entropy(np.ones((2, 3)), np.ones((2, 4))), ValueError, "target must have shape"),
    (lambda: softmax_cross_entropy.vjp(np.ones((2, 3)), np.ones((2, 3)))[1]("1"), TypeError, "dloss"),
    (lambda: sgd_update(np.ones(3), np.ones(2)), ValueError, "grad must have shape (3,)"),
    (lambda: sgd_update(np.ones(3), np.ones(3), momentum=1.0), ValueError, "momentum must be in [0, 1)"),
    (lambda: sgd_update(np.ones(3), np.ones(3), weight_decay=-1.0), ValueError, "weight_decay"),
    (lambda: adam_update(np.ones(3), np.ones(3), np.ones(3), None, 1), ValueError, "m and v"),
    (lambda: adam_update(np.ones(3), np.ones(3), None, None, 0), ValueError, "step"),
    (lambda: adam_update(np.ones(3), np.ones(3), None, None, 1, betas=(0.9, 1.0)), ValueError, "betas[1]"),
])
def test_argument_errors(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- optimiser updates
def test_sgd_update_follows_the_rule(rng):
    p0, grad = rng.standard_normal(4), rng.standard_normal(4)
    p = p0.copy()
    buf = sgd_update(p, grad, None, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    g = grad + 0.01 * p0
    np.testing.assert_allclose(buf, g, rtol=1e-14)
    np.testing.assert_allclose(p, p0 - 0.1 * (g + 0.9 * g), rtol=1e-14)
    p = p0.copy()
    assert sgd_update(p, grad, None, lr=0.5) is None                 # no momentum, no buffer
    np.testing.assert_allclose(p, p0 - 0.5 * grad, rtol=1e-14)


def test_adam_update_follows_the_rule(rng):
    p0, grad = rng.standard_normal(4), rng.standard_normal(4)
    m0, v0 = rng.standard_normal(4), rng.random(4)
    p = p0.copy()
    m, v = adam_update(p, grad, m0, v0, 3, lr=0.01, betas=(0.8, 0.9), eps=1e-6)
    np.testing.assert_allclose(m, 0.8 * m0 + 0.2 * grad, rtol=1e-14)
    np.testing.assert_allclose(v, 0.9 * v0 + 0.1 * grad ** 2, rtol=1e-14)
    step = 0.01 / (1 - 0.8 ** 3) * m / (np.sqrt(v / (1 - 0.9 ** 3)) + 1e-6)
    np.testing.assert_allclose(p, p0 - step, rtol=1e-12)
    np.testing.assert_array_equal(m0, m0.copy())
