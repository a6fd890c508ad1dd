"""Routing building blocks: forward and backward against the reference on every backend
(CPU always; CUDA on a GPU or under the simulator), gradchecks, stability, errors."""

import warnings

import numpy as np
import pytest
from conftest import DTYPES, assert_close, check_vjp, cuda_only, over_backends

import dynconv_np as dc
from dynconv_np import reference as ref
from dynconv_np.ops.routing import batch_norm_training, batch_norm_update_stats

F32, F64 = np.float32, np.float64


def away_from_kinks(r, shape):
    """Values in +-[0.1, 2.5]: off relu's 0 and hard_sigmoid's +-3."""
    return r.uniform(0.1, 2.5, shape) * r.choice([-1.0, 1.0], shape)


def check(backend, name, args, kwargs, dtype, rng):
    """``dc.<name>`` against ``reference.<name>``: forward, pullback, inputs untouched; on the CPU
    the pullback is called twice (on CUDA a second backward would double the simulator's cost)."""
    args = [None if a is None else a.astype(dtype) for a in args]
    check_vjp(backend, getattr(dc, name), getattr(ref, name), getattr(ref, name + "_backward"), args, kwargs,
              dtype, rng, twice=backend.name == "cpu")


# One grid per op; the CUDA cases are tiny (the simulator runs one Python thread per
# CUDA thread) and alternate the dtype.
# global_avg_pool: (shape, dtype)
GAP = [((3, 4, 5, 7), dt) for dt in DTYPES]
GAP_CUDA = [((2, 3, 4, 5), F32)]

# linear: (a shape, out features, with bias, dtype); w is (out, in)
LINEAR = [(a, 4, b, dt) for a in [(5, 6), (2, 3, 6), (6,), (2, 1, 3, 6)] for b in (True, False) for dt in DTYPES]
LINEAR_CUDA = [((5, 6), 4, True, F64), ((2, 3, 6), 4, False, F32), ((6,), 4, True, F64),
               ((2, 1, 3, 6), 4, True, F32),     # four axes: flattened around the GEMMs
               ((9, 17), 10, True, F64)]         # crosses the 8-tiles in M, K and N

# elementwise: (name, kwargs, dtype)
ELEMENTWISE = [("relu", {}), ("tanh", {}), ("sigmoid", {}), ("sigmoid", {"tau": 3.0}),
               ("hard_sigmoid", {}), ("hard_sigmoid", {"scale": 6.0})]
ELEMENTWISE_CUDA = [(name, kw, DTYPES[i % 2]) for i, (name, kw) in enumerate(ELEMENTWISE)]
ELEMENTWISE = [(name, kw, dt) for name, kw in ELEMENTWISE for dt in DTYPES]

# softmax: (shape, tau, axis, dtype)
SOFTMAX = [((3, 4, 5), tau, axis, dt) for tau, axis in [(1.0, -1), (30.0, -1), (0.5, 0), (2.0, 1)]
           for dt in DTYPES]
SOFTMAX_CUDA = [((3, 4, 5), 1.0, -1, F32), ((3, 4, 5), 0.5, 0, F64), ((3, 4, 5), 30.0, 1, F32),
                ((45, 33), 2.0, -1, F64)]       # 45 rows: two blocks of row threads

# batch_norm: (x shape, with running statistics, training, dtype)
BATCH_NORM = [(s, True, t, dt) for s in [(4, 3, 5, 6), (1, 3, 2, 2), (6, 3), (3, 2, 11, 7)]
              for t in (True, False) for dt in DTYPES]    # 11x7: the CPU sums' 8-wide runs and a tail
BATCH_NORM_CUDA = [((4, 3, 5, 6), False, True, F32), ((4, 3, 5, 6), True, True, F64),
                   ((4, 3, 5, 6), True, False, F32), ((6, 3), False, True, F64), ((6, 3), True, False, F32),
                   ((3, 2, 11, 7), False, True, F64)]   # 231 values per channel: many block strides


# ----------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("backend, shape, dtype", over_backends(GAP, GAP_CUDA), indirect=["backend"])
def test_global_avg_pool(backend, shape, dtype, rng):
    check(backend, "global_avg_pool", [rng.standard_normal(shape)], {}, dtype, rng)


@pytest.mark.parametrize("backend, a_shape, out, with_bias, dtype", over_backends(LINEAR, LINEAR_CUDA),
                         indirect=["backend"])
def test_linear(backend, a_shape, out, with_bias, dtype, rng):
    a = rng.standard_normal(a_shape)
    w = rng.standard_normal((out, a_shape[-1]))
    b = rng.standard_normal(out) if with_bias else None
    check(backend, "linear", [a, w, b], {}, dtype, rng)


@pytest.mark.parametrize("backend, name, kwargs, dtype", over_backends(ELEMENTWISE, ELEMENTWISE_CUDA),
                         indirect=["backend"])
def test_elementwise(backend, name, kwargs, dtype, rng):
    check(backend, name, [away_from_kinks(rng, (3, 4, 5))], kwargs, dtype, rng)


@pytest.mark.parametrize("backend, shape, tau, axis, dtype", over_backends(SOFTMAX, SOFTMAX_CUDA),
                         indirect=["backend"])
def test_softmax(backend, shape, tau, axis, dtype, rng):
    z = 3 * rng.standard_normal(shape)
    check(backend, "softmax", [z], {"tau": tau, "axis": axis}, dtype, rng)
    y = backend.get(dc.softmax(backend.put(z.astype(dtype)), tau=tau, axis=axis))
    np.testing.assert_allclose(y.sum(axis=axis), 1, rtol=1e-5)


@pytest.mark.parametrize("backend, shape, running_stats, training, dtype",
                         over_backends(BATCH_NORM, BATCH_NORM_CUDA), indirect=["backend"])
def test_batch_norm(backend, shape, running_stats, training, dtype, rng):
    C = shape[1]
    x = 2 * rng.standard_normal(shape) + 0.5
    g, b = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    rs = [rng.standard_normal(C), rng.uniform(0.5, 2, C)] if running_stats else []
    check(backend, "batch_norm", [x, g, b, *rs], {"training": training}, dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_update_stats(backend, dtype, rng):
    for shape in [(4, 3, 5, 6), (6, 3)]:
        args = [rng.standard_normal(shape).astype(dtype), rng.standard_normal(3).astype(dtype),
                rng.uniform(0.5, 2, 3).astype(dtype)]
        dev = [backend.put(a) for a in args]
        m, v = batch_norm_update_stats(*dev, momentum=0.25)
        vals = np.moveaxis(args[0].astype(np.float64), 1, 0).reshape(3, -1)
        assert_close(backend.get(m), 0.75 * args[1].astype(np.float64) + 0.25 * vals.mean(1), dtype, "mean")
        assert_close(backend.get(v), 0.75 * args[2].astype(np.float64) + 0.25 * vals.var(1, ddof=1), dtype,
                     "var")
        for a, d in zip(args, dev):                                      # inputs untouched
            np.testing.assert_array_equal(backend.get(d), a)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_training_is_the_two_ops_bitwise(backend, dtype, rng):
    # the layers' one-pass path against batch_norm.vjp + batch_norm_update_stats
    for shape in [(4, 3, 5, 6), (6, 3), (2, 3, 17, 9)]:
        args = [3 * rng.standard_normal(shape) + 1, rng.uniform(0.5, 1.5, 3), rng.standard_normal(3),
                rng.standard_normal(3), rng.uniform(0.5, 2, 3)]
        x, g, b, rm, rv = dev = [backend.put(a.astype(dtype)) for a in args]
        dy = backend.put(rng.standard_normal(shape).astype(dtype))
        y, pb, m, v = batch_norm_training(x, g, b, rm, rv, momentum=0.25, eps=1e-3)
        y0, pb0 = dc.batch_norm.vjp(x, g, b, training=True, eps=1e-3)
        m0, v0 = batch_norm_update_stats(x, rm, rv, momentum=0.25)
        grads, grads0 = pb(dy), pb0(dy)[:3]
        assert len(grads) == 3
        for got, want in zip((y, m, v, *grads), (y0, m0, v0, *grads0)):
            np.testing.assert_array_equal(backend.get(got), backend.get(want))
        for a, d in zip(args, dev):                                      # inputs untouched
            np.testing.assert_array_equal(backend.get(d), a.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_gradient_is_zero_off_the_positive_side(backend, dtype):
    # dy's NaN and inf where z <= 0 give 0, as np.where does (not dy * mask)
    z = np.array([[-1.0, 0.0, 2.0, -0.0], [3.0, -2.0, 0.5, 1.0]], dtype=dtype)
    dy = np.array([[np.nan, np.inf, -4.0, -np.inf], [-1.5, np.nan, 2.0, 0.25]], dtype=dtype)
    _, pb = dc.relu.vjp(backend.put(z))
    (dz,) = pb(backend.put(dy))
    got = backend.get(dz)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, np.where(z > 0, dy, 0))
    assert not np.signbit(got[z <= 0]).any()


def test_batch_norm_without_running_stats(rng):
    x = rng.standard_normal((4, 3, 2, 2))
    g, b = np.ones(3), np.zeros(3)
    y, pb = dc.batch_norm.vjp(x, g, b)
    grads = pb(rng.standard_normal(y.shape))
    assert grads[3] is None and grads[4] is None
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    v = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), v / (v + 1e-5), rtol=1e-9)


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
def _no_overflow_warnings(backend):
    """Warnings as errors: NumPy's overflow warnings on the CPU (on a GPU, numba may warn
    about small launch grids, which says nothing about overflow)."""
    warnings.simplefilter("error", RuntimeWarning if backend.name == "cuda" else Warning)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_no_overflow(backend, dtype):
    z = np.array([-5000.0, -1000.0, -30.0, 0.0, 30.0, 1000.0, 5000.0], dtype=dtype)
    with warnings.catch_warnings():
        _no_overflow_warnings(backend)
        y, pb = dc.sigmoid.vjp(backend.put(z))
        dz = backend.get(pb(backend.put(np.ones_like(z)))[0])
        y2 = backend.get(dc.sigmoid(backend.put(z), tau=0.01))
        y = backend.get(y)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dz)) and np.all(np.isfinite(y2))
    assert y[0] == 0 and y[-1] == 1 and y[3] == 0.5
    np.testing.assert_allclose(y[2] + y[4], 1, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_large_logits(backend, dtype):
    z = np.array([[1000.0, 0.0, -1000.0], [5e4, 5e4, 5e4]], dtype=dtype)
    with warnings.catch_warnings():
        _no_overflow_warnings(backend)
        y, pb = dc.softmax.vjp(backend.put(z))
        dz = backend.get(pb(backend.put(np.ones_like(z)))[0])
        y = backend.get(y)
    np.testing.assert_allclose(y, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    np.testing.assert_allclose(dz, 0, atol=1e-6)


def test_batch_norm_needs_two_values_per_channel(backend):
    d = backend.put
    with pytest.raises(ValueError, match="more than one value per channel"):
        dc.batch_norm(d(np.zeros((1, 3, 1, 1))), d(np.ones(3)), d(np.zeros(3)))


def test_deterministic(backend, rng):
    # The per-channel reductions sum in a fixed order (on CUDA a fixed tree): bitwise repeatable.
    x = backend.put(rng.standard_normal((2, 3, 9, 7)).astype(np.float32))
    g, b = backend.put(np.ones(3, np.float32)), backend.put(np.zeros(3, np.float32))
    dy = backend.put(rng.standard_normal((2, 3, 9, 7)).astype(np.float32))
    runs = []
    for _ in range(2):
        y, pb = dc.batch_norm.vjp(x, g, b)
        runs.append([backend.get(y)] + [backend.get(a) for a in pb(dy)[:3]]
                    + [backend.get(dc.global_avg_pool(x))])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


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


# ----------------------------------------------------------------------------- CUDA only
@cuda_only
@pytest.mark.parametrize("name,shapes,kwargs", [
    ("global_avg_pool", [(2, 3, 4, 4)], {}),
    ("linear", [(4, 3), (5, 3), (5,)], {}),
    ("softmax", [(4, 3)], {"tau": 2.0}),
    ("sigmoid", [(4, 3)], {}),
    ("batch_norm", [(2, 3, 4, 4), (3,), (3,)], {}),
    ("batch_norm", [(2, 3, 4, 4), (3,), (3,), (3,), (3,)], {"training": False}),
])
def test_cuda_results_equal_the_host_ones(backend, name, shapes, kwargs, rng):
    """Routing ops on CUDA arrays give device results equal to the host ones (float64)."""
    f = getattr(dc, name)
    args = [np.abs(rng.standard_normal(s)) + 0.5 for s in shapes]
    y, pb = f.vjp(*args, **kwargs)
    yd, pbd = f.vjp(*[backend.put(a) for a in args], **kwargs)
    np.testing.assert_allclose(backend.get(yd), y, rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    for gh, gd in zip(pb(dy), pbd(backend.put(dy))):
        assert (gh is None) == (gd is None)
        if gh is not None:
            np.testing.assert_allclose(backend.get(gd), gh, rtol=1e-12, atol=1e-14)


@cuda_only
def test_routing_and_atoms_mixing_is_a_type_error(backend, rng):
    d = backend.put
    a, w = rng.standard_normal((2, 3)), rng.standard_normal((4, 3))
    with pytest.raises(TypeError, match="w is a cpu array but a is a cuda array"):
        dc.linear(d(a), w)
    with pytest.raises(TypeError, match="gamma is a cuda array but x is a cpu array"):
        dc.batch_norm(a, d(np.ones(3)), np.zeros(3))
    x, atoms, coeff = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((1, 2, 3, 3, 4, 4)), \
        rng.standard_normal((3, 2, 2))
    with pytest.raises(TypeError, match="coeff is a cpu array but x is a cuda array"):
        dc.atom_conv2d(d(x), d(atoms), coeff, padding=1)
    y, pb = dc.softmax.vjp(d(a))
    with pytest.raises(TypeError, match="dy is a cpu array"):
        pb(a)
