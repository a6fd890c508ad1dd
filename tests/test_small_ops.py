"""The ops the layers compose: small linear algebra, DCD's pieces, the loss and the optimiser
updates, against the reference (forward, pullback) on every backend (CPU always; CUDA on a
GPU or under the simulator), gradchecks and their argument checks."""

import numpy as np
import pytest
from conftest import DTYPES, assert_close, check_vjp, over_backends

import dynconv_np as dc
from dynconv_np import reference as ref
from dynconv_np.ops.dcd import centre_projection, dcd_combine
from dynconv_np.ops.linalg import add_bias, add_eye, channel_mix, matmul, scale_channels
from dynconv_np.ops.loss import softmax_cross_entropy
from dynconv_np.ops.optim import adam_update, sgd_update


def check(backend, f, args, kwargs, dtype, rng):
    """`f` against its reference twin: forward, pullback, inputs untouched; on the CPU the
    pullback is called twice (on CUDA a second backward would double the simulator's cost)."""
    args = [a.astype(dtype) for a in args]
    name = f.__name__
    check_vjp(backend, f, getattr(ref, name), getattr(ref, name + "_backward"), args, kwargs, dtype, rng,
              twice=backend.name == "cpu")


def cases(grid, cuda):
    """`grid` in both dtypes on the CPU; on CUDA the cases `cuda` picks (by index), in
    alternating dtypes: tiny, since the simulator runs one Python thread per CUDA thread."""
    return over_backends([(*c, dt) for c in grid for dt in DTYPES],
                         [(*grid[i], DTYPES[j % 2]) for j, i in enumerate(cuda)])


# ----------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("backend, a_shape, ta, dtype",
                         cases([((3, 4), False), ((4, 3), True), ((2, 3, 4), False), ((2, 4, 3), True)],
                               cuda=[0, 3, 1, 2]), indirect=["backend"])
def test_matmul(backend, a_shape, ta, dtype, rng):
    a = rng.standard_normal(a_shape)
    b = rng.standard_normal((2, 4, 5))
    check(backend, matmul, (a, b), {"ta": ta}, dtype, rng)


@pytest.mark.parametrize("backend, shape, dtype", cases([((2, 3, 4, 5),), ((2, 3),)], cuda=[0, 1]),
                         indirect=["backend"])
def test_scale_channels(backend, shape, dtype, rng):
    args = (rng.standard_normal(shape), rng.standard_normal(shape[:2]))
    check(backend, scale_channels, args, {}, dtype, rng)


@pytest.mark.parametrize("backend, shape, dtype", cases([((3, 4, 2, 3, 3),), ((3, 4),)], cuda=[0, 1]),
                         indirect=["backend"])
def test_channel_mix(backend, shape, dtype, rng):
    args = (rng.standard_normal(shape[:2]), rng.standard_normal(shape))
    check(backend, channel_mix, args, {}, dtype, rng)


@pytest.mark.parametrize("backend, shape, dtype", cases([((2, 3, 4, 5),), ((2, 3),)], cuda=[0, 1]),
                         indirect=["backend"])
def test_add_bias(backend, shape, dtype, rng):
    args = (rng.standard_normal(shape), rng.standard_normal(shape[1]))
    check(backend, add_bias, args, {}, dtype, rng)


@pytest.mark.parametrize("backend, dtype", cases([()], cuda=[0, 0]), indirect=["backend"])
def test_add_eye(backend, dtype, rng):
    check(backend, add_eye, (rng.standard_normal((2, 3, 3)),), {}, dtype, rng)


@pytest.mark.parametrize("backend, kwargs, dtype", cases([
    (dict(kernel_size=3, padding=1),), (dict(kernel_size=3, stride=2),),
    (dict(kernel_size=(3, 5), stride=(2, 1), padding=(0, 3), dilation=(1, 2)),),
    (dict(kernel_size=5, padding="same", dilation=2),), (dict(kernel_size=1),),
], cuda=[1, 2]), indirect=["backend"])
def test_centre_projection(backend, kwargs, dtype, rng):
    args = (rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((3, 2)))
    check(backend, centre_projection, args, kwargs, dtype, rng)


@pytest.mark.parametrize("backend, dtype", cases([()], cuda=[0, 0]), indirect=["backend"])
def test_dcd_combine(backend, dtype, rng):
    args = (rng.standard_normal((2, 4, 3, 5)), rng.random((2, 4)) * 2, rng.standard_normal((4, 3)),
            rng.standard_normal((2, 3, 3, 5)))
    check(backend, dcd_combine, args, {}, dtype, rng)


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
def test_softmax_cross_entropy(backend, dtype, rng):
    # the loss is a host scalar whatever the device; its pullback takes a real number
    logits = (3 * rng.standard_normal((4, 5))).astype(dtype)
    target = rng.dirichlet(np.ones(5), 4).astype(dtype)
    dev = [backend.put(logits), backend.put(target)]
    loss, pb = softmax_cross_entropy.vjp(*dev)
    assert np.asarray(loss).dtype == dtype
    assert_close(loss, ref.softmax_cross_entropy(logits, target), dtype, "loss")
    dloss = 1.7
    expected = ref.softmax_cross_entropy_backward(dloss, logits, target)
    got = [backend.get(g) for g in pb(dloss)]
    for name, g, e in zip(("dlogits", "dtarget"), got, expected):
        assert g.dtype == dtype
        assert_close(g, e, dtype, name)
    for g, again in zip(got, pb(np.asarray(dloss, dtype))):           # a 0-d host array too
        np.testing.assert_array_equal(backend.get(again), g)
    for a, d in zip((logits, target), dev):
        np.testing.assert_array_equal(backend.get(d), a)


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
def test_sgd_update_follows_the_rule(backend, rng):
    p0, grad = rng.standard_normal(4), rng.standard_normal(4)
    p = backend.put(p0.copy())
    buf = sgd_update(p, backend.put(grad), None, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    g = grad + 0.01 * p0
    np.testing.assert_allclose(backend.get(buf), g, rtol=1e-14)
    np.testing.assert_allclose(backend.get(p), p0 - 0.1 * (g + 0.9 * g), rtol=1e-14)
    p = backend.put(p0.copy())
    assert sgd_update(p, backend.put(grad), None, lr=0.5) is None   # no momentum, no buffer
    np.testing.assert_allclose(backend.get(p), p0 - 0.5 * grad, rtol=1e-14)


def test_adam_update_follows_the_rule(backend, rng):
    p0, grad = rng.standard_normal(4), rng.standard_normal(4)
    m0, v0 = rng.standard_normal(4), rng.random(4)
    p = backend.put(p0.copy())
    m, v = adam_update(p, backend.put(grad), backend.put(m0.copy()), backend.put(v0.copy()), 3, lr=0.01,
                       betas=(0.8, 0.9), eps=1e-6)
    m, v = backend.get(m), backend.get(v)
    np.testing.assert_allclose(m, 0.8 * m0 + 0.2 * grad, rtol=1e-14)
    np.testing.assert_allclose(v, 0.9 * v0 + 0.1 * grad ** 2, rtol=1e-14)
    step = 0.01 / (1 - 0.8 ** 3) * m / (np.sqrt(v / (1 - 0.9 ** 3)) + 1e-6)
    np.testing.assert_allclose(backend.get(p), p0 - step, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimiser_steps(backend, dtype, rng):
    """Two steps of each optimiser in `dtype` against the rules in float64 (state reused)."""
    p0, grad = rng.standard_normal(11).astype(dtype), rng.standard_normal(11).astype(dtype)
    p64, g64 = p0.astype(np.float64), grad.astype(np.float64)
    for lr, mom, wd, nesterov in [(0.1, 0.0, 0.0, False), (0.1, 0.9, 0.01, False), (0.05, 0.9, 0.0, True)]:
        p, buf = backend.put(p0.copy()), None
        pe, buf_e = p64.copy(), None
        for _ in range(2):
            buf = sgd_update(p, backend.put(grad), buf, lr=lr, momentum=mom, weight_decay=wd, nesterov=nesterov)
            g = g64 + wd * pe
            if mom:
                buf_e = g if buf_e is None else mom * buf_e + g
                g = g + mom * buf_e if nesterov else buf_e
            pe = pe - lr * g
        assert (buf is None) == (mom == 0)
        assert_close(backend.get(p), pe, dtype, f"sgd {lr, mom, wd, nesterov}")
    p, m, v = backend.put(p0.copy()), None, None
    pe, me, ve = p64.copy(), 0.0, 0.0
    for t in (1, 2):
        m, v = adam_update(p, backend.put(grad), m, v, t, lr=0.01, betas=(0.9, 0.999), weight_decay=0.01)
        g = g64 + 0.01 * pe
        me, ve = 0.9 * me + 0.1 * g, 0.999 * ve + 0.001 * g * g
        pe = pe - 0.01 / (1 - 0.9 ** t) * me / (np.sqrt(ve / (1 - 0.999 ** t)) + 1e-8)
    assert_close(backend.get(p), pe, dtype, "adam")
    assert_close(backend.get(m), me, dtype, "adam m")
