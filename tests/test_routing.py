"""Routing building blocks: forward and backward against reference.py, gradchecks, stability, errors."""

import warnings

import numpy as np
import pytest
from conftest import assert_close

import dynconv_np as dc
from dynconv_np import reference as ref
from dynconv_np.ops.routing import batch_norm_update_stats

DTYPES = [np.float32, np.float64]


def close(actual, expected, dtype, name=""):
    assert_close(actual, expected, dtype, name, f32_tol=3e-5)


def away_from_kinks(r, shape):
    """Values in +-[0.1, 2.5]: off relu's 0 and hard_sigmoid's +-3."""
    return r.uniform(0.1, 2.5, shape) * r.choice([-1.0, 1.0], shape)


def check_vs_ref(f, ref_f, ref_b, args, kwargs, dtype, seed=0):
    """Forward and pullback of `f` against the reference, inputs untouched, pullback repeatable."""
    r = np.random.default_rng(seed)
    args = tuple(None if a is None else a.astype(dtype) for a in args)
    copies = [None if a is None else a.copy() for a in args]
    y, pb = f.vjp(*args, **kwargs)
    assert y.dtype == dtype
    close(y, ref_f(*args, **kwargs), dtype, "y")
    dy = r.standard_normal(y.shape).astype(dtype)
    grads = pb(dy)
    again = pb(dy)
    expected = ref_b(dy, *args, **kwargs)
    assert len(grads) == len(expected)
    for i, (g, e) in enumerate(zip(grads, expected)):
        if e is None:
            assert g is None
            continue
        assert g.dtype == dtype and g.shape == args[i].shape
        close(g, e, dtype, f"grad {i}")
        np.testing.assert_array_equal(g, again[i])
    for a, c in zip(args, copies):
        if a is not None:
            np.testing.assert_array_equal(a, c)


# ----------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool(dtype, rng):
    x = rng.standard_normal((3, 4, 5, 7))
    check_vs_ref(dc.global_avg_pool, ref.global_avg_pool, ref.global_avg_pool_backward, (x,), {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a_shape", [(5, 6), (2, 3, 6), (6,)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear(dtype, a_shape, with_bias, rng):
    a = rng.standard_normal(a_shape)
    w = rng.standard_normal((4, 6))
    b = rng.standard_normal(4) if with_bias else None
    check_vs_ref(dc.linear, ref.linear, ref.linear_backward, (a, w, b), {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,kwargs", [
    ("relu", {}), ("tanh", {}), ("sigmoid", {}), ("sigmoid", {"tau": 3.0}),
    ("hard_sigmoid", {}), ("hard_sigmoid", {"scale": 6.0}),
])
def test_elementwise(dtype, name, kwargs, rng):
    z = away_from_kinks(rng, (3, 4, 5))
    check_vs_ref(getattr(dc, name), getattr(ref, name), getattr(ref, name + "_backward"), (z,), kwargs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau,axis", [(1.0, -1), (30.0, -1), (0.5, 0), (2.0, 1)])
def test_softmax(dtype, tau, axis, rng):
    z = 3 * rng.standard_normal((3, 4, 5))
    check_vs_ref(dc.softmax, ref.softmax, ref.softmax_backward, (z,), {"tau": tau, "axis": axis}, dtype)
    y = dc.softmax(z.astype(dtype), tau=tau, axis=axis)
    np.testing.assert_allclose(y.sum(axis=axis), 1, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (1, 3, 2, 2), (6, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(dtype, shape, training, rng):
    x = 2 * rng.standard_normal(shape) + 0.5
    g, b = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    check_vs_ref(dc.batch_norm, ref.batch_norm, ref.batch_norm_backward, (x, g, b, rm, rv),
                 {"training": training}, dtype)


def test_batch_norm_without_running_stats(rng):
    x = rng.standard_normal((4, 3, 2, 2))
    g, b = np.ones(3), np.zeros(3)
    y, pb = dc.batch_norm.vjp(x, g, b)
    grads = pb(rng.standard_normal(y.shape))
    assert grads[3] is None and grads[4] is None
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    v = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), v / (v + 1e-5), rtol=1e-9)


def test_batch_norm_update_stats(rng):
    x = rng.standard_normal((5, 3, 4, 4))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    rm0, rv0 = rm.copy(), rv.copy()
    m, v = batch_norm_update_stats(x, rm, rv, momentum=0.25)
    vals = x.transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(m, 0.75 * rm0 + 0.25 * vals.mean(1))
    np.testing.assert_allclose(v, 0.75 * rv0 + 0.25 * vals.var(1, ddof=1))
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


# ----------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("f,args,kwargs", [
    ("global_avg_pool", ((2, 3, 4, 5),), {}),
    ("linear", ((4, 5), (3, 5), (3,)), {}),
    ("relu", ((3, 4),), {}),
    ("sigmoid", ((3, 4),), {"tau": 2.0}),
    ("softmax", ((3, 4),), {"tau": 0.7, "axis": 0}),
    ("hard_sigmoid", ((3, 4),), {}),
    ("tanh", ((3, 4),), {}),
    ("batch_norm", ((3, 2, 3, 3), (2,), (2,)), {}),
    ("batch_norm", ((3, 2, 3, 3), (2,), (2,), (2,), (2,)), {"training": False}),
])
def test_gradcheck_full(f, args, kwargs, rng):
    arrays = [away_from_kinks(rng, s) for s in args]
    if f == "batch_norm" and len(arrays) == 5:
        arrays[4] = np.abs(arrays[4]) + 0.5
    dc.gradcheck(getattr(dc, f), tuple(arrays), kwargs, mode="full")


# ----------------------------------------------------------------------------- stability
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_no_overflow(dtype):
    z = np.array([-5000.0, -1000.0, -30.0, 0.0, 30.0, 1000.0, 5000.0], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, pb = dc.sigmoid.vjp(z)
        dz = pb(np.ones_like(z))[0]
        y2 = dc.sigmoid(z, tau=0.01)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dz)) and np.all(np.isfinite(y2))
    assert y[0] == 0 and y[-1] == 1 and y[3] == 0.5
    np.testing.assert_allclose(y[2] + y[4], 1, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_large_logits(dtype):
    z = np.array([[1000.0, 0.0, -1000.0], [5e4, 5e4, 5e4]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, pb = dc.softmax.vjp(z)
        dz = pb(np.ones_like(z))[0]
    np.testing.assert_allclose(y, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    np.testing.assert_allclose(dz, 0, atol=1e-6)


def test_softmax_temperature_flattens(rng):
    z = rng.standard_normal((2, 4))
    hot, cold = dc.softmax(z, tau=30.0), dc.softmax(z, tau=1.0)
    assert np.ptp(hot, axis=1).max() < np.ptp(cold, axis=1).min()


def test_hard_sigmoid_values():
    z = np.array([-4.0, -3.0, 0.0, 1.5, 3.0, 9.0])
    np.testing.assert_allclose(dc.hard_sigmoid(z), [0, 0, 1, 1.5, 2, 2])
    np.testing.assert_allclose(dc.hard_sigmoid(z, scale=6.0), [0, 0, 0.5, 0.75, 1, 1])


def test_non_contiguous_inputs(rng):
    x = rng.standard_normal((4, 6, 5, 5))[:, ::2].transpose(0, 1, 3, 2)
    np.testing.assert_allclose(dc.global_avg_pool(x), ref.global_avg_pool(x))
    a = rng.standard_normal((6, 5)).T
    w = rng.standard_normal((3, 6))
    np.testing.assert_allclose(dc.linear(a, w), ref.linear(a, w))
    z = rng.standard_normal((5, 4)).T
    np.testing.assert_allclose(dc.softmax(z, axis=0), ref.softmax(z, axis=0))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call,exc,words", [
    (lambda: dc.relu(np.arange(4)), TypeError, "z must have dtype"),
    (lambda: dc.sigmoid(np.zeros(3, np.float16)), TypeError, "float16"),
    (lambda: dc.tanh([1.0, 2.0]), TypeError, "z must be a numpy.ndarray"),
    (lambda: dc.linear(np.zeros((2, 3)), np.zeros((4, 3), np.float32)), TypeError, "share one dtype"),
    (lambda: dc.linear(np.zeros((2, 3)), np.zeros((4, 5))), ValueError, "w has 5 input features"),
    (lambda: dc.linear(np.zeros((2, 3)), np.zeros(3)), ValueError, "w must be 2-D"),
    (lambda: dc.linear(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(3)), ValueError, "b must have shape (4,)"),
    (lambda: dc.global_avg_pool(np.zeros((2, 3))), ValueError, "x must be 4-D"),
    (lambda: dc.softmax(np.zeros((2, 3)), axis=2), ValueError, "axis=2"),
    (lambda: dc.softmax(np.zeros((2, 3)), tau=0.0), ValueError, "tau"),
    (lambda: dc.sigmoid(np.zeros(3), tau=-1.0), ValueError, "tau"),
    (lambda: dc.hard_sigmoid(np.zeros(3), scale=0), ValueError, "scale"),
    (lambda: dc.batch_norm(np.zeros((1, 3, 1, 1)), np.ones(3), np.zeros(3)), ValueError,
     "more than one value per channel"),
    (lambda: dc.batch_norm(np.zeros((2, 3, 2, 2)), np.ones(4), np.zeros(3)), ValueError, "gamma"),
    (lambda: dc.batch_norm(np.zeros((2, 3, 2, 2)), np.ones(3), np.zeros(3), training=False), ValueError,
     "running_mean"),
    (lambda: dc.batch_norm(np.zeros((2, 3, 2)), np.ones(3), np.zeros(3)), ValueError, "x must be (N, C)"),
    (lambda: dc.batch_norm(np.zeros((2, 3)), np.ones(3), np.zeros(3), momentum=2.0), ValueError, "momentum"),
    (lambda: dc.batch_norm(np.zeros((2, 3)), np.ones(3), np.zeros(3), training=1), TypeError, "training"),
])
def test_errors(call, exc, words):
    with pytest.raises(exc, match=None) as info:
        call()
    assert words in str(info.value), str(info.value)


def test_cotangent_checked(rng):
    y, pb = dc.softmax.vjp(rng.standard_normal((2, 3)))
    with pytest.raises(ValueError, match="dy must have the output's shape"):
        pb(np.zeros((3, 2)))
    with pytest.raises(TypeError, match="dtype"):
        pb(np.zeros((2, 3), np.float32))


def test_exported_with_vjp():
    for name in ("global_avg_pool", "linear", "relu", "sigmoid", "softmax", "hard_sigmoid", "tanh",
                 "batch_norm"):
        f = getattr(dc, name)
        assert hasattr(f, "vjp") and name in dc.__all__
        assert f is getattr(dc.ops, name)


# ----------------------------------------------------------------------------- CUDA arrays
def _cuda_backend():
    try:
        from numba import cuda
    except ImportError:
        return None
    if not cuda.is_available():
        return None
    from dynconv_np.backends import cuda as bc

    return bc


@pytest.mark.cuda
@pytest.mark.parametrize("name,shapes,kwargs", [
    ("global_avg_pool", [(2, 3, 4, 4)], {}),
    ("linear", [(4, 3), (5, 3), (5,)], {}),
    ("softmax", [(4, 3)], {"tau": 2.0}),
    ("sigmoid", [(4, 3)], {}),
    ("batch_norm", [(2, 3, 4, 4), (3,), (3,)], {}),
    ("batch_norm", [(2, 3, 4, 4), (3,), (3,), (3,), (3,)], {"training": False}),
])
def test_cuda_arrays_round_trip(name, shapes, kwargs, rng):
    """Routing ops take CUDA arrays and give device results equal to the host ones."""
    bc = _cuda_backend()
    if bc is None:
        pytest.skip("no CUDA device (set NUMBA_ENABLE_CUDASIM=1 for the simulator)")
    f = getattr(dc, name)
    args = [np.abs(rng.standard_normal(s)) + 0.5 for s in shapes]
    y, pb = f.vjp(*args, **kwargs)
    yd, pbd = f.vjp(*[bc.to_device(a) for a in args], **kwargs)
    assert dc._args.device_of(yd) == "cuda"
    np.testing.assert_allclose(bc.to_host(yd), y, rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    for gh, gd in zip(pb(dy), pbd(bc.to_device(dy))):
        assert (gh is None) == (gd is None)
        if gh is not None:
            np.testing.assert_allclose(bc.to_host(gd), gh, rtol=1e-12, atol=1e-14)
