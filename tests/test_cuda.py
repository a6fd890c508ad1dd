"""The CUDA backend against the CPU backend: forward and every pullback gradient.

Every op (conv2d, dynamic_conv2d, dcd_conv2d, atom_conv2d and the routing ops) runs its
vjp on numba device arrays, in float32 and float64, and is compared with the CPU
backend's float64 result; the array-level primitives and optimiser updates are compared
with the CPU backend's. The layers are in tests/test_cuda_nn.py.

Where the tests run:

- on a real GPU, in this process, when ``numba.cuda.is_available()``;
- in the CUDA simulator otherwise. ``NUMBA_ENABLE_CUDASIM=1`` must be set before numba
  is imported, which a plain ``python -m pytest`` has already done, so
  :func:`test_simulator_suite` reruns this module in a subprocess with the variable set
  (and the tests here skip in the parent). Running this file with the variable already
  set runs the tests in-process.

Without numba-cuda everything skips with the reason. The simulator runs one Python thread
per CUDA thread, so the shapes are tiny; they still cross the GEMM tile edges (8 in the
simulator, 16 on a GPU) in every GEMM dimension.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close

import dynconv_np as dc

pytestmark = pytest.mark.cuda

HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
IN_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
NO_NUMBA_CUDA = "numba-cuda is not installed (pip install dynconv_np[cuda])"


@pytest.fixture(scope="module")
def cb():
    """The CUDA backend module, or a skip saying why it cannot run here."""
    return cuda_backend()


def test_simulator_suite():
    """Rerun this module under ``NUMBA_ENABLE_CUDASIM=1`` in a fresh interpreter."""
    run_simulator_suite(__file__)


def cuda_backend():
    """The CUDA backend module, or a skip saying why it cannot run in this process."""
    if not HAVE_NUMBA_CUDA:
        pytest.skip(NO_NUMBA_CUDA)
    from numba import cuda

    if not cuda.is_available():
        pytest.skip("no CUDA GPU in this process: test_simulator_suite runs these under the simulator")
    from dynconv_np.backends import cuda as backend

    return backend


def run_simulator_suite(test_file: str) -> None:
    """Rerun the test module `test_file` under ``NUMBA_ENABLE_CUDASIM=1`` in a fresh interpreter."""
    if not HAVE_NUMBA_CUDA:
        pytest.skip(NO_NUMBA_CUDA)
    if IN_SIMULATOR:
        pytest.skip("already running under the simulator")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
           str(Path(test_file).resolve()), "-k", "not test_simulator_suite"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"simulator run failed (rc={proc.returncode}):\n{out[-6000:]}"
    # Only ops still waiting for their CUDA path may skip; anything else means the
    # simulator run did not test what it should.
    bad = [ln for ln in out.splitlines() if ln.startswith("SKIPPED") and "no CUDA path yet" not in ln]
    assert " passed" in out and not bad, out[-3000:]


# ----------------------------------------------------------------------------- helpers
class Foreign:
    """A device array that only speaks ``__cuda_array_interface__``, as CuPy or torch do.

    Under the simulator, "device" memory is host memory, so the interface describes the
    wrapped simulated array's host buffer.
    """

    def __init__(self, dev):
        self._dev = dev
        self.shape = tuple(dev.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(dev.dtype)

    @property
    def __cuda_array_interface__(self):
        if hasattr(self._dev, "__cuda_array_interface__"):
            return self._dev.__cuda_array_interface__
        ai = self._dev._ary.__array_interface__
        return {"shape": ai["shape"], "typestr": ai["typestr"], "data": ai["data"],
                "strides": ai["strides"], "version": 3, "stream": None}


def _on(backend, cb, a):
    """`a` on `backend` ("cpu": as is; "cuda": a numba device array)."""
    if a is None or backend == "cpu":
        return a
    return cb.to_device(a)


def _host(cb, a):
    if a is None or isinstance(a, np.ndarray):
        return a
    assert cb.is_device_array(a), f"expected a numba device array, got {type(a).__name__}"
    return cb.to_host(a)


def _compare(cb, backend, f, args, kwargs, dtype, rng):
    """Run ``f.vjp`` on `backend` in `dtype`; compare y and every gradient with CPU float64."""
    ref_args = [None if a is None else a.astype(np.float64) for a in args]
    y_ref, pb_ref = f.vjp(*ref_args, **kwargs)
    dy = rng.standard_normal(y_ref.shape)
    g_ref = pb_ref(dy)

    dev_args = [_on(backend, cb, None if a is None else a.astype(dtype)) for a in args]
    before = [_host(cb, a) for a in dev_args]
    y, pb = f.vjp(*dev_args, **kwargs)
    grads = pb(_on(backend, cb, dy.astype(dtype)))
    if backend == "cuda":
        assert cb.is_device_array(y)
    assert np.dtype(y.dtype) == dtype
    assert_close(_host(cb, y), y_ref, dtype, "y")
    assert len(grads) == len(g_ref)
    for i, (a, r) in enumerate(zip(grads, g_ref)):
        if r is None:
            assert a is None
            continue
        if backend == "cuda":
            assert cb.is_device_array(a), f"grad {i} is a {type(a).__name__}"
        assert np.dtype(a.dtype) == dtype and tuple(a.shape) == r.shape
        assert_close(_host(cb, a), r, dtype, f"grad {i}")
    for a, b in zip(dev_args, before):  # inputs are never modified
        if a is not None:
            np.testing.assert_array_equal(_host(cb, a), b)
    return y, grads


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


DTYPES = [np.float32, np.float64]
BACKENDS = ["cpu", "cuda"]

# (N, C, H, W, O, kh, kw, stride, padding, dilation, groups): tiny grids. O=17 with 2
# channels of 3x3 (F=18) on 5x5 outputs (P=25) crosses the GEMM tiles in M, N and K at
# both tile sizes.
CONV_GRID = [
    (2, 2, 5, 5, 3, 3, 3, 1, 1, 1, 1),
    (1, 4, 6, 5, 4, 3, 2, (2, 1), (1, 0), (1, 2), 2),
    (1, 3, 6, 6, 3, 3, 3, 1, "same", 2, 3),
    (2, 2, 4, 3, 2, 1, 1, 1, 0, 1, 1),
    (1, 2, 5, 5, 17, 3, 3, 1, 1, 1, 1),
]


# ----------------------------------------------------------------------------- ops
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONV_GRID)
def test_conv2d(cb, rng, backend, cfg):
    N, C, H, W, O, kh, kw, s, p, d, g = cfg
    i = CONV_GRID.index(cfg)
    dtype = DTYPES[i % 2]  # both dtypes across the grid, at half the simulator's cost
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C // g, kh, kw))
    b = rng.standard_normal(O) if i % 3 != 1 else None
    _compare(cb, backend, dc.conv2d, [x, w, b],
             dict(stride=s, padding=p, dilation=d, groups=g), np.dtype(dtype), rng)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pi_shape, with_bias, dtype", [
    ("NK", True, np.float32), ("NK", False, np.float64),
    ("K", True, np.float64), ("K", False, np.float32),
])
def test_dynamic_conv2d(cb, rng, backend, pi_shape, with_bias, dtype):
    N, C, H, W, O, K = 2, 4, 5, 4, 4, 3
    x = rng.standard_normal((N, C, H, W))
    Wk = rng.standard_normal((K, O, C // 2, 3, 3))
    pi = rng.random((N, K) if pi_shape == "NK" else (K,))
    b = rng.standard_normal((K, O)) if with_bias else None
    _compare(cb, backend, dc.dynamic_conv2d, [x, Wk, pi, b],
             dict(stride=2, padding=1, dilation=1, groups=2), np.dtype(dtype), rng)


def test_dynamic_conv2d_tile_crossing(cb, rng):
    # K=9 experts of O=9 (the mixing GEMMs cross an 8-tile in K), F=18, P=20.
    x = rng.standard_normal((1, 2, 5, 4))
    Wk = rng.standard_normal((9, 9, 2, 3, 3))
    pi = rng.random((1, 9))
    b = rng.standard_normal((9, 9))
    _compare(cb, "cuda", dc.dynamic_conv2d, [x, Wk, pi, b], dict(padding=1),
             np.dtype(np.float64), rng)


# ----------------------------------------------------------------------------- primitives
def test_matmul_tile_crossing(cb, rng):
    dtype = np.float64  # float32 GEMMs: the conv tests and test_gemm_at_the_gpu_tile_size
    a = rng.standard_normal((33, 45)).astype(dtype)
    b = rng.standard_normal((45, 9)).astype(dtype)
    c = rng.standard_normal((2, 9, 17)).astype(dtype)
    da, db, dc_ = cb.to_device(a), cb.to_device(b), cb.to_device(c)
    assert_close(cb.to_host(cb.gemm(da, db)), a.astype(float) @ b, dtype, "a @ b")
    assert_close(cb.to_host(cb.gemm(db, cb.to_device(a.T.copy()), ta=True)), b.T.astype(float) @ a.T,
                 dtype, "b^T a^T")
    assert_close(cb.to_host(cb.gemm(dc_, cb.to_device(c[0]), tb=True)), c.astype(float) @ c[0].T, dtype,
                 "batched c c0^T")
    v = rng.standard_normal(9).astype(dtype)
    assert_close(cb.to_host(cb.gemm(cb.to_device(v), dc_[0])),
                 v.astype(float) @ c[0], dtype, "vector @ matrix")
    assert_close(cb.to_host(cb.add(da, da)), 2 * a.astype(float), dtype, "add")


def test_gemm_at_the_gpu_tile_size(cb, rng, monkeypatch):
    # The simulator runs 8x8 tiles; here one GEMM runs with the GPU's 16x16 tiles
    # (the simulator reads the tile size when the kernel runs), crossing them in M, N, K.
    if cb.SIMULATOR:
        monkeypatch.setattr(cb.products, "TPB", 16)
    a = rng.standard_normal((2, 33, 17)).astype(np.float32)
    b = rng.standard_normal((20, 17)).astype(np.float32)
    got = cb.to_host(cb.gemm(cb.to_device(a), cb.to_device(b), tb=True))
    assert_close(got, a.astype(float) @ b.T.astype(float), np.float32, "a b^T")


@pytest.mark.parametrize("a_shape, b_shape, ta, tb", [
    ((2, 3, 5, 4), (4, 6), False, False),          # several batch axes over one matrix
    ((2, 3, 4, 5), (2, 3, 6, 4), True, True),      # equal batches of rank 2
    ((1, 1, 5, 4), (2, 3, 4, 6), False, False),    # a batch of one, broadcast
    ((9,), (2, 1, 9, 3), False, False),            # vector on the left
    ((2, 2, 3, 9), (9,), False, False),            # vector on the right
])
def test_gemm_any_batch_rank(cb, rng, a_shape, b_shape, ta, tb):
    from dynconv_np.backends import cpu

    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    ref = cpu.gemm(a, b, ta=ta, tb=tb)
    assert_close(cb.to_host(cb.gemm(cb.to_device(a), cb.to_device(b), ta=ta, tb=tb)), ref, np.float64, "gemm")
    acc = rng.standard_normal(ref.shape)
    got = cb.gemm(cb.to_device(a), cb.to_device(b), ta=ta, tb=tb, out=cb.to_device(acc), accumulate=True)
    assert_close(cb.to_host(got), acc + ref, np.float64, "gemm accumulate")


def test_gemm_refuses_what_it_cannot_broadcast(cb):
    a, b = cb.to_device(np.ones((2, 1, 3, 4))), cb.to_device(np.ones((1, 3, 4, 5)))
    with pytest.raises(ValueError, match="gemm broadcasts a batch of one only"):
        cb.gemm(a, b)
    with pytest.raises(ValueError, match="do not align"):
        cb.gemm(a, b, ta=True)
    with pytest.raises(ValueError, match="ta transposes the last two axes, but a is 1-D"):
        cb.gemm(cb.to_device(np.ones(4)), b, ta=True)


def test_contiguous_strided_and_foreign(cb, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    dx = cb.to_device(x)
    assert cb.contiguous(dx) is dx  # already C-ordered: no copy
    view = dx[:, 1:, ::2]  # a strided numba view
    np.testing.assert_array_equal(cb.to_host(view), x[:, 1:, ::2])
    f = Foreign(dx[1:, :, 1:])
    got = cb.contiguous(f)
    assert cb.is_device_array(got)
    np.testing.assert_array_equal(got.copy_to_host(), x[1:, :, 1:])
    six = rng.standard_normal((2, 2, 2, 3, 2, 3))
    np.testing.assert_array_equal(cb.to_host(cb.to_device(six)[:, :, :, ::2]), six[:, :, :, ::2])


def test_foreign_inputs(cb, rng):
    # Objects with only __cuda_array_interface__, one of them strided, through both ops.
    x = rng.standard_normal((1, 4, 5, 4))
    w = rng.standard_normal((4, 2, 3, 3))
    b = rng.standard_normal(4)
    wide = cb.to_device(np.concatenate([x, x], axis=3))
    fx = Foreign(wide[:, :, :, :4])  # strided: C-ordered only after a device copy
    y, pb = dc.conv2d.vjp(fx, Foreign(cb.to_device(w)), Foreign(cb.to_device(b)), padding=1, groups=2)
    assert cb.is_device_array(y)
    y_ref, pb_ref = dc.conv2d.vjp(x, w, b, padding=1, groups=2)
    assert_close(cb.to_host(y), y_ref, np.float64, "y")
    dy = rng.standard_normal(y_ref.shape)
    for a, r in zip(pb(Foreign(cb.to_device(dy))), pb_ref(dy)):
        assert cb.is_device_array(a)
        assert_close(cb.to_host(a), r, np.float64)

    Wk = rng.standard_normal((2, 3, 4, 1, 1))
    pi = rng.random((1, 2))
    fpi = Foreign(cb.to_device(np.concatenate([pi, pi], axis=1))[:, :2])  # strided
    y, pb = dc.dynamic_conv2d.vjp(Foreign(cb.to_device(x)), Foreign(cb.to_device(Wk)), fpi)
    y_ref, pb_ref = dc.dynamic_conv2d.vjp(x, Wk, pi)
    assert_close(cb.to_host(y), y_ref, np.float64, "y")
    dy = rng.standard_normal(y_ref.shape)
    dx, dW, dpi, dbias = pb(cb.to_device(dy))
    assert dbias is None
    for a, r in zip((dx, dW, dpi), pb_ref(dy)):
        assert_close(cb.to_host(a), r, np.float64)


def test_host_device_mixing_is_a_type_error(cb, rng):
    x = rng.standard_normal((1, 2, 4, 4))
    w = rng.standard_normal((2, 2, 3, 3))
    with pytest.raises(TypeError, match="w is a cuda array but x is a cpu array"):
        dc.conv2d(x, cb.to_device(w))
    with pytest.raises(TypeError, match="bias is a cpu array but x is a cuda array"):
        dc.conv2d(cb.to_device(x), cb.to_device(w), np.zeros(2))
    with pytest.raises(TypeError, match="pi is a cpu array but x is a cuda array"):
        dc.dynamic_conv2d(cb.to_device(x), cb.to_device(w[None]), np.ones(1))
    y, pb = dc.conv2d.vjp(cb.to_device(x), cb.to_device(w))
    with pytest.raises(TypeError, match="dy is a cpu array"):
        pb(np.zeros(tuple(y.shape)))


def test_deterministic(cb, rng):
    # Two samples through the shared-pi path: dW sums per-sample products in one GEMM.
    x = cb.to_device(rng.standard_normal((2, 2, 4, 3)).astype(np.float32))
    Wk = cb.to_device(rng.standard_normal((2, 2, 2, 3, 3)).astype(np.float32))
    pi = cb.to_device(rng.random(2).astype(np.float32))
    dy = cb.to_device(rng.standard_normal((2, 2, 4, 3)).astype(np.float32))
    runs = []
    for _ in range(2):
        y, pb = dc.dynamic_conv2d.vjp(x, Wk, pi, padding=1)
        runs.append([cb.to_host(y)] + [cb.to_host(a) for a in pb(dy)[:3]])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- tap engine
# (C, M, cdiv, kh, kw, stride, padding, dilation, channel_major): the ACDA atoms (cdiv=C),
# DDF (M=1, cdiv=1) and involution (cdiv=C//groups) mappings of the tap engine.
TAPS_GRID = [
    (2, 2, 2, 3, 3, 1, 1, 1, False),
    (3, 1, 1, 3, 2, (2, 1), (1, 0), (1, 2), True),
    (4, 1, 2, 3, 3, 2, 2, 2, False),
]


@pytest.mark.parametrize("cfg", TAPS_GRID)
def test_tap_engine(cb, rng, cfg):
    from dynconv_np import _args
    from dynconv_np.backends import cpu

    C, M, cdiv, kh, kw, s, p, d, cm = cfg
    dtype = DTYPES[TAPS_GRID.index(cfg) % 2]
    x = rng.standard_normal((2, C, 5, 6))
    g = _args.geometry(x.shape, kh, kw, s, p, d)
    F = (C // cdiv) * M
    filt = rng.standard_normal((g.N, F, g.taps, g.Ho, g.Wo))
    dout = rng.standard_normal((C * M, g.N, g.Ho, g.Wo) if cm else (g.N, C * M, g.Ho, g.Wo))
    dev = {k: cb.to_device(v.astype(dtype)) for k, v in dict(x=x, filt=filt, dout=dout).items()}
    pairs = [
        (cb.taps_forward(dev["x"], dev["filt"], g, M, cdiv, channel_major=cm),
         cpu.taps_forward(x, filt, g, M, cdiv, channel_major=cm)),
        (cb.taps_backward_input(dev["filt"], dev["dout"], g, M, cdiv, channel_major=cm),
         cpu.taps_backward_input(filt, dout, g, M, cdiv, channel_major=cm)),
        (cb.taps_backward_filter(dev["x"], dev["dout"], g, M, cdiv, channel_major=cm),
         cpu.taps_backward_filter(x, dout, g, M, cdiv, channel_major=cm)),
    ]
    for name, (a, r) in zip(("forward", "grad input", "grad filter"), pairs):
        assert cb.is_device_array(a) and np.dtype(a.dtype) == dtype
        assert_close(cb.to_host(a), r, dtype, name)


# ----------------------------------------------------------------------------- DCD helpers
@pytest.mark.parametrize("geom", [
    dict(kh=3, kw=3, stride=1, padding=1, dilation=1),
    dict(kh=3, kw=5, stride=(2, 1), padding=(0, 3), dilation=(1, 2)),
    dict(kh=1, kw=3, stride=2, padding=2, dilation=2),
])
def test_dcd_primitives(cb, rng, geom):
    from dynconv_np import _args
    from dynconv_np.backends import cpu

    x = rng.standard_normal((2, 3, 5, 6))
    g = _args.geometry(x.shape, geom["kh"], geom["kw"], geom["stride"], geom["padding"],
                       geom["dilation"])
    d = cb.to_device
    assert_close(cb.to_host(cb.centre_taps(d(x), g)), cpu.centre_taps(x, g), np.float64, "centre taps")
    dxs = rng.standard_normal((2, 3, g.Ho, g.Wo))
    dx = rng.standard_normal(x.shape)
    assert_close(cb.to_host(cb.add_centre_taps(d(dx), d(dxs), g)),
                 cpu.add_centre_taps(dx.copy(), dxs, g), np.float64, "add centre taps")
    a, b = rng.standard_normal((2, 3, 10)), rng.standard_normal((2, 3, 10))
    s = rng.standard_normal((2, 3))
    assert_close(cb.to_host(cb.scale_rows(d(a), d(s))), cpu.scale_rows(a, s), np.float64, "scale rows")
    assert_close(cb.to_host(cb.rowdot(d(a), d(b))), cpu.rowdot(a, b), np.float64, "rowdot")
    c = rng.standard_normal((2, 9, 10))
    assert_close(cb.to_host(cb.gemm_nt_sum(d(a), d(c))), cpu.gemm_nt_sum(a, c), np.float64,
                 "sum_n a_n c_n^T")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dcd_conv2d(cb, rng, dtype):
    N, C, H, W, O, L = 1, 2, 4, 5, 3, 2
    args = [rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, 3, 3)),
            rng.standard_normal((N, O)), rng.standard_normal((N, L, L)),
            rng.standard_normal((O, L)), rng.standard_normal((C, L))]
    _compare(cb, "cuda", dc.dcd_conv2d, args, dict(stride=(2, 1), padding=1), np.dtype(dtype), rng)


# ----------------------------------------------------------------------------- routing ops
def _away_from_kinks(rng, shape):
    """Values in +-[0.1, 2.5]: off relu's 0 and hard_sigmoid's +-3."""
    return rng.uniform(0.1, 2.5, shape) * rng.choice([-1.0, 1.0], shape)


# (op, argument shapes, kwargs); the dtype alternates along the list.
ROUTING = [
    ("global_avg_pool", [(2, 3, 4, 5)], {}),
    ("linear", [(5, 6), (4, 6), (4,)], {}),
    ("linear", [(2, 3, 6), (4, 6)], {}),
    ("linear", [(6,), (4, 6), (4,)], {}),
    ("linear", [(2, 1, 3, 6), (4, 6), (4,)], {}),      # four axes: flattened around the GEMMs
    ("linear", [(9, 17), (10, 17), (10,)], {}),        # crosses the 8-tiles in M, K and N
    ("relu", [(3, 4, 5)], {}),
    ("tanh", [(3, 4, 5)], {}),
    ("sigmoid", [(3, 4, 5)], {}),
    ("sigmoid", [(3, 4, 5)], {"tau": 3.0}),
    ("hard_sigmoid", [(3, 4, 5)], {}),
    ("hard_sigmoid", [(3, 4, 5)], {"scale": 6.0}),
    ("softmax", [(3, 4, 5)], {}),
    ("softmax", [(3, 4, 5)], {"tau": 0.5, "axis": 0}),
    ("softmax", [(3, 4, 5)], {"tau": 30.0, "axis": 1}),
    ("softmax", [(45, 33)], {"tau": 2.0}),             # 45 rows: two blocks of row threads
    ("batch_norm", [(4, 3, 5, 6), (3,), (3,)], {}),
    ("batch_norm", [(4, 3, 5, 6), (3,), (3,), (3,), (3,)], {}),
    ("batch_norm", [(4, 3, 5, 6), (3,), (3,), (3,), (3,)], {"training": False}),
    ("batch_norm", [(6, 3), (3,), (3,)], {}),
    ("batch_norm", [(6, 3), (3,), (3,), (3,), (3,)], {"training": False}),
    ("batch_norm", [(3, 2, 11, 7), (2,), (2,)], {}),   # 231 values per channel: many block strides
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i", range(len(ROUTING)), ids=[f"{c[0]}{i}" for i, c in enumerate(ROUTING)])
def test_routing_ops(cb, rng, backend, i):
    name, shapes, kwargs = ROUTING[i]
    args = [_away_from_kinks(rng, s) for s in shapes]
    if name == "batch_norm" and len(args) == 5:
        args[4] = np.abs(args[4]) + 0.5                    # a variance
    _compare(cb, backend, getattr(dc, name), args, kwargs, np.dtype(DTYPES[i % 2]), rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_update_stats(cb, rng, dtype):
    from dynconv_np.ops.routing import batch_norm_update_stats

    for shape in [(4, 3, 5, 6), (6, 3)]:
        args = [rng.standard_normal(shape), rng.standard_normal(3), rng.uniform(0.5, 2, 3)]
        ref = batch_norm_update_stats(*args, momentum=0.25)
        dev = [cb.to_device(a.astype(dtype)) for a in args]
        before = [cb.to_host(a) for a in dev]
        for a, r in zip(batch_norm_update_stats(*dev, momentum=0.25), ref):
            assert cb.is_device_array(a)
            assert_close(cb.to_host(a), r, dtype, f"running stats {shape}")
        for a, b in zip(dev, before):
            np.testing.assert_array_equal(cb.to_host(a), b)


def test_routing_numerical_care_on_device(cb):
    z = np.array([-5000.0, -1000.0, -30.0, 0.0, 30.0, 1000.0, 5000.0], np.float32)
    y, pb = dc.sigmoid.vjp(cb.to_device(z))
    yh, dz = cb.to_host(y), cb.to_host(pb(cb.to_device(np.ones_like(z)))[0])
    assert np.all(np.isfinite(yh)) and np.all(np.isfinite(dz))
    assert yh[0] == 0 and yh[-1] == 1 and yh[3] == 0.5
    big = np.array([[1000.0, 0.0, -1000.0], [5e4, 5e4, 5e4]], np.float32)
    y, pb = dc.softmax.vjp(cb.to_device(big))
    np.testing.assert_allclose(cb.to_host(y), [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    np.testing.assert_allclose(cb.to_host(pb(cb.to_device(np.ones_like(big)))[0]), 0, atol=1e-6)
    d = cb.to_device
    with pytest.raises(ValueError, match="more than one value per channel"):
        dc.batch_norm(d(np.zeros((1, 3, 1, 1))), d(np.ones(3)), d(np.zeros(3)))


def test_routing_deterministic(cb, rng):
    # The per-channel block reductions sum in a fixed tree: bitwise repeatable.
    x = cb.to_device(rng.standard_normal((2, 3, 9, 7)).astype(np.float32))
    g, b = cb.to_device(np.ones(3, np.float32)), cb.to_device(np.zeros(3, np.float32))
    dy = cb.to_device(rng.standard_normal((2, 3, 9, 7)).astype(np.float32))
    runs = []
    for _ in range(2):
        y, pb = dc.batch_norm.vjp(x, g, b)
        runs.append([cb.to_host(y)] + [cb.to_host(a) for a in pb(dy)[:3]] + [cb.to_host(dc.global_avg_pool(x))])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_routing_and_atoms_mixing_is_a_type_error(cb, rng):
    d = cb.to_device
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


# ----------------------------------------------------------------------------- atom_conv2d
# (N, C, H, W, O, k, M, stride, padding, dilation, with bias)
ATOMS_GRID = [
    (2, 3, 5, 6, 4, 3, 2, 1, 1, 1, True),
    (1, 2, 7, 6, 3, 3, 3, (2, 1), (1, 0), (1, 2), False),
    (1, 2, 4, 4, 9, 3, 5, 1, 1, 1, True),   # O=9, C*M=10, P=16: every GEMM crosses an 8-tile
]


def _atom_args(rng, N, C, H, W, O, k, M, s, p, d, with_bias):
    from dynconv_np import _args

    g = _args.geometry((N, C, H, W), k, k, s, p, d)
    return [rng.standard_normal((N, C, H, W)), rng.standard_normal((N, M, k, k, g.Ho, g.Wo)),
            rng.standard_normal((O, C, M)), rng.standard_normal(O) if with_bias else None]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i", range(len(ATOMS_GRID)))
def test_atom_conv2d(cb, rng, backend, i):
    *shape, s, p, d, with_bias = ATOMS_GRID[i]
    args = _atom_args(rng, *shape, s, p, d, with_bias)
    _compare(cb, backend, dc.atom_conv2d, args, dict(stride=s, padding=p, dilation=d),
             np.dtype(DTYPES[i % 2]), rng)


def test_atom_conv2d_chunked_on_device(cb, rng, monkeypatch):
    # A small workspace splits the batch: the backward recomputes each chunk's Z and
    # accumulates dcoeff inside the GEMM, chunk after chunk.
    from dynconv_np.ops import atoms as atoms_mod

    N, C, H, W, O, k, M = 3, 2, 4, 4, 3, 3, 2
    per_sample = C * M * H * W * 8
    monkeypatch.setattr(cb.workspace, "nbytes", 2 * per_sample)
    assert atoms_mod._chunks(cb, N, per_sample) == [(0, 2), (2, 3)]
    args = _atom_args(rng, N, C, H, W, O, k, M, 1, 1, 1, True)
    _compare(cb, "cuda", dc.atom_conv2d, args, dict(padding=1), np.dtype(np.float64), rng)


# ----------------------------------------------------------------------------- array primitives
def test_array_primitives(cb, rng):
    """The array-level primitives the ops above do not reach, against the CPU backend's."""
    from dynconv_np.backends import cpu

    d = cb.to_device
    a3 = rng.standard_normal((4, 3, 6))

    def same(got, ref, name):
        assert_close(cb.to_host(got), ref, np.float64, name)

    same(cb.log_softmax(d(a3)), cpu.log_softmax(a3), "log_softmax")
    same(cb.exp(d(a3)), cpu.exp(a3), "exp")
    same(cb.sub(d(a3), d(2 * a3)), cpu.sub(a3, 2 * a3), "sub")
    same(cb.scale(d(a3), 0.5), cpu.scale(a3, 0.5), "scale")
    assert cb.total(d(a3)) == pytest.approx(cpu.total(a3), rel=1e-13)
    same(cb.swap01(d(a3)), cpu.swap01(a3), "swap01")
    A, B = rng.standard_normal((5, 7)), rng.standard_normal((9, 7))
    acc = rng.standard_normal((5, 9))
    same(cb.gemm(d(A), d(B), tb=True, out=d(acc), accumulate=True),
         cpu.gemm(A, B, tb=True, out=acc.copy(), accumulate=True), "gemm accumulate")
    same(cb.astype(d(a3), np.float32), a3.astype(np.float32), "astype")
    same(cb.copy(d(a3)[:, 1:]), a3[:, 1:], "copy of a strided view")
    t = d(a3.copy())
    same(cb.add_into(t, d(a3.reshape(12, 6))), 2 * a3, "add_into")
    same(cb.fill(t, 2.5), np.full_like(a3, 2.5), "fill")
    same(cb.copy_into(t, a3.astype(np.float32)), a3.astype(np.float32), "copy_into from host")
    same(cb.copy_into(t, d(a3)), a3, "copy_into on device")
    same(cb.zeros((3, 2), np.float64), np.zeros((3, 2)), "zeros")
    same(cb.add_eye(d(a3[:, :, :3])), cpu.add_eye(a3[:, :, :3]), "add_eye")
    k, W, G = rng.standard_normal((3, 4)), rng.standard_normal((3, 4, 2, 3)), rng.standard_normal((4, 2, 3))
    same(cb.channel_mix(d(k), d(W)), cpu.channel_mix(k, W), "channel_mix")
    for got, ref in zip(cb.channel_mix_backward(d(k), d(W), d(G)), cpu.channel_mix_backward(k, W, G)):
        same(got, ref, "channel_mix_backward")
    for got, ref in zip(cb.channel_mix_backward(d(k), d(W[:, :, 0, 0]), d(G[:, 0, 0])),
                        cpu.channel_mix_backward(k, W[:, :, 0, 0], G[:, 0, 0])):
        same(got, ref, "channel_mix_backward, no trailing axes")


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimiser_steps(cb, rng, dtype):
    from dynconv_np.backends import cpu

    p, g = rng.standard_normal(11).astype(dtype), rng.standard_normal(11).astype(dtype)
    for lr, mom, wd, nesterov in [(0.1, 0.0, 0.0, False), (0.1, 0.9, 0.01, False), (0.05, 0.9, 0.0, True)]:
        ph, pd = p.copy(), cb.to_device(p)
        bh = bd = None
        for _ in range(2):
            bh = cpu.sgd_step(ph, g, bh, lr, mom, wd, nesterov)
            bd = cb.sgd_step(pd, cb.to_device(g), bd, lr, mom, wd, nesterov)
        assert_close(cb.to_host(pd), ph, dtype, f"sgd {lr, mom, wd, nesterov}")
    ph, pd = p.copy(), cb.to_device(p)
    mh = vh = md = vd = None
    for t in (1, 2):
        c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
        mh, vh = cpu.adam_step(ph, g, mh, vh, 0.01 / c1, 0.9, 0.999, c2, 1e-8, 0.01)
        md, vd = cb.adam_step(pd, cb.to_device(g), md, vd, 0.01 / c1, 0.9, 0.999, c2, 1e-8, 0.01)
    assert_close(cb.to_host(pd), ph, dtype, "adam")
