"""The CUDA backend's own primitives, against the CPU backend's: GEMMs across tile edges
(and at the GPU's tile size), batch ranks and broadcasting, strided and foreign
(``__cuda_array_interface__``) arrays, the tap engine, the DCD helpers and the array
primitives the ops do not reach.

The ops and layers themselves are tested on every backend against the reference in the
family files (test_conv.py, test_routing.py, test_atoms.py, test_dcd.py, test_small_ops.py,
test_nn_backends.py). Every case here is CUDA-only (the ``backend`` fixture with "cuda"
alone): it runs on a GPU in this process, and otherwise in the simulator run of
tests/test_simulator.py. The simulator runs one Python thread per CUDA thread, so the
shapes are tiny; they still cross the GEMM tile edges (8 in the simulator, 16 on a GPU)
in every GEMM dimension.
"""

import numpy as np
import pytest
from conftest import DTYPES, assert_close, cuda_only

pytestmark = cuda_only


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


@pytest.fixture
def cb(backend):
    """The CUDA backend module."""
    return backend.be


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
