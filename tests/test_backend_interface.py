"""The written backend interface: both backends implement all of it, with the same
parameters; the shared index helpers and workspace; and the CPU primitives whose
behaviour the interface widened (GEMM over any batch rank) against plain NumPy."""

import importlib.util
import inspect
import itertools
import sys

import numpy as np
import pytest

import dynconv_np as dc
from dynconv_np import _args
from dynconv_np.backends import _index, cpu, interface
from dynconv_np.backends._workspace import Workspace

HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None


def _backends():
    out = [cpu]
    if HAVE_NUMBA_CUDA:
        from dynconv_np.backends import cuda  # importing needs no GPU

        out.append(cuda)
    return out


def _params(f):
    return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]


# ----------------------------------------------------------------------------- the contract
def test_tiers_are_disjoint_and_nonempty():
    arrays, kernels = interface.array_api(), interface.kernel_api()
    assert arrays and kernels
    assert not set(arrays) & set(kernels)
    assert set(interface.full_api()) == set(arrays) | set(kernels)


@pytest.mark.parametrize("backend", _backends(), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_backend_implements_the_interface(backend):
    for name, sig in interface.full_api().items():
        f = getattr(backend, name, None)
        assert callable(f), f"{backend.__name__} lacks {name}"
        expected = [(p.name, p.kind, p.default) for p in sig.parameters.values()]
        assert _params(f) == expected, f"{backend.__name__}.{name}{inspect.signature(f)} is not {name}{sig}"


@pytest.mark.parametrize("backend", _backends(), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_backend_exports_the_interface_and_documented_extras(backend):
    extras = {"workspace"} | ({"SIMULATOR", "as_device_array", "is_device_array"} if backend is not cpu else set())
    assert set(backend.__all__) == set(interface.full_api()) | extras
    for name in backend.__all__:
        assert hasattr(backend, name), name


# ----------------------------------------------------------------------------- workspace
def test_workspace_bound_and_chunks():
    ws = Workspace(100)
    assert ws.chunk_size(10, 30) == 3
    assert ws.chunk_size(10, 1000) == 1          # at least one sample
    assert ws.chunk_size(2, 1) == 2              # never more than the batch
    assert ws.set_workspace_bytes(7) == 100 and ws.nbytes == 7
    with pytest.raises(ValueError, match="nbytes must be positive"):
        ws.set_workspace_bytes(0)
    assert cpu.set_workspace_bytes.__self__ is cpu.workspace


# ----------------------------------------------------------------------------- index helpers
def test_unravel_matches_numpy():
    for t in range(2 * 3 * 4 * 5):
        assert _index.unravel4(t, 3, 4, 5) == np.unravel_index(t, (2, 3, 4, 5))
        assert _index.unravel3(t % 24, 3, 4) == np.unravel_index(t % 24, (2, 3, 4))
    assert _index.split(17, 5) == (3, 2)
    assert [_index.ceil_div(a, 3) for a in (-4, -3, 0, 1, 3, 4)] == [-1, -1, 0, 1, 1, 2]


@pytest.mark.parametrize("stride, pad, dil, k, size", [(1, 1, 1, 3, 7), (2, 0, 1, 3, 8), (3, 2, 2, 3, 9),
                                                       (2, 3, 1, 5, 4), (1, 0, 3, 2, 6)])
def test_window_helpers_match_brute_force(stride, pad, dil, k, size):
    out = (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
    for u in range(k):
        off = u * dil
        reads = {i: _index.tap_input(i, stride, pad, off) for i in range(out)}
        inside = [i for i in range(out) if 0 <= reads[i] < size]
        lo, hi = _index.valid_range(pad, off, stride, size, out)
        assert list(range(lo, hi)) == inside
        for h in range(size):
            readers = [i for i in range(out) if reads[i] == h]
            assert _index.tap_output(h, stride, pad, off, out) == (readers[0] if readers else -1)
    g = _args.geometry((1, 1, size, size + 1), k, k, (stride, 1), (pad, 0), (dil, 1))
    readers = {}                                   # (h, w, t) -> the output pixel reading it
    for i, j, t in itertools.product(range(g.Ho), range(g.Wo), range(g.taps)):
        readers[_index.window_input(i, j, t, g.window) + (t,)] = (i, j)
    for h, w, t in itertools.product(range(g.H), range(g.W), range(g.taps)):
        assert _index.window_output(h, w, t, g.window) == readers.get((h, w, t), (-1, -1))


def test_geometry_window_and_pointwise():
    g = _args.geometry((2, 3, 8, 9), 3, 1, (2, 1), (1, 0), (1, 2))
    assert g.window == (3, 1, 2, 1, 1, 0, 1, 2, g.Ho, g.Wo)
    assert not g.pointwise
    assert _args.geometry((2, 3, 8, 9), 1, 1, 1, 0, 3).pointwise


# ----------------------------------------------------------------------------- gemm on the CPU
GEMM_CASES = [
    # a shape, b shape, ta, tb
    ((5, 3), (3, 4), False, False),
    ((3, 5), (3, 4), True, False),
    ((5, 3), (4, 3), False, True),
    ((2, 3, 5, 4), (4, 6), False, False),          # several batch axes over one matrix
    ((2, 3, 4, 5), (6, 4), True, True),
    ((2, 3, 5, 4), (2, 3, 4, 6), False, False),    # equal batches of rank 2
    ((1, 1, 5, 4), (2, 3, 4, 6), False, False),    # a batch of one, broadcast
    ((3, 5, 4), (2, 3, 6, 4), False, True),        # batches padded with a leading one
    ((4,), (2, 3, 4, 6), False, False),            # vector on the left
    ((2, 3, 5, 4), (4,), False, False),            # vector on the right
    ((2, 5), (2, 70000), True, False),             # the thin-product kernel
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a_shape, b_shape, ta, tb", GEMM_CASES)
def test_cpu_gemm_matches_numpy(a_shape, b_shape, ta, tb, dtype, rng):
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    op_a = np.swapaxes(a, -1, -2) if ta else a
    op_b = np.swapaxes(b, -1, -2) if tb else b
    ref = np.matmul(op_a.astype(np.float64), op_b.astype(np.float64))
    got = cpu.gemm(a, b, ta=ta, tb=tb)
    assert got.shape == ref.shape and got.dtype == dtype
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * max(1, a_shape[-1]))
    acc = rng.standard_normal(ref.shape).astype(dtype)
    out = acc.copy()
    assert cpu.gemm(a, b, ta=ta, tb=tb, out=out, accumulate=True) is out
    np.testing.assert_allclose(out, acc + ref, rtol=tol, atol=tol * max(1, a_shape[-1]))
    assert cpu.gemm(a, b, ta=ta, tb=tb, out=out) is out
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * max(1, a_shape[-1]))


def test_cpu_gemm_several_batch_axes_is_one_flattened_product(rng):
    # (the ops rely on it: linear on (..., in) is bitwise the flattened-rows product)
    a = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    flat = cpu.gemm(a.reshape(30, 4), w, tb=True)
    np.testing.assert_array_equal(cpu.gemm(a, w, tb=True), flat.reshape(2, 3, 5, 6))


def test_cpu_gemm_refuses_a_transposed_vector():
    with pytest.raises(ValueError, match="ta transposes the last two axes, but a is 1-D"):
        cpu.gemm(np.ones(3), np.ones((3, 2)), ta=True)
    with pytest.raises(ValueError, match="tb transposes the last two axes, but b is 1-D"):
        cpu.gemm(np.ones((2, 3)), np.ones(3), tb=True)


def test_cpu_gemm_nt_sum_matches_numpy(rng):
    a, b = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 2, 5))
    np.testing.assert_allclose(cpu.gemm_nt_sum(a, b), np.einsum("nmk,njk->mj", a, b), rtol=1e-12)


def _cpu_signatures() -> int:
    # How many typed versions the CPU kernels hold: a new one means a new compile.
    from numba.core.registry import CPUDispatcher

    mods = [m for name, m in sorted(sys.modules.items()) if name.startswith("dynconv_np.backends.cpu")]
    return sum(len(f.signatures) for m in mods for f in vars(m).values() if isinstance(f, CPUDispatcher))


@pytest.mark.parametrize("layout", ["read-only", "strided", "big-endian"])
def test_ops_normalise_inputs_without_compiling(rng, layout):
    # A read-only (memmap, broadcast view), strided or big-endian input reaches the kernels
    # as a C-contiguous, writeable, native array: the same results, no new compile, and
    # the caller's array untouched.
    def odd(a):
        if layout == "read-only":
            a = a.copy()
            a.setflags(write=False)
            return a
        if layout == "strided":
            wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
            wide[..., ::2] = a
            return wide[..., ::2]
        return a.astype(a.dtype.newbyteorder(">"))

    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    W = rng.standard_normal((3, 4, 3, 3, 3))
    pi = rng.random((2, 3))
    kernel = rng.standard_normal((2, 1, 9, 7, 6))
    cases = [(dc.conv2d, (x, w)), (dc.dynamic_conv2d, (x, W, pi)), (dc.involution2d, (x, kernel, 1))]
    kw = {"padding": 1}
    for f, args in cases:
        y, pb = f.vjp(*args, **kw)
        grads = pb(np.ones_like(y))
        before = _cpu_signatures()
        odd_args = tuple(odd(a) if isinstance(a, np.ndarray) else a for a in args)
        kept = [a.copy() for a in odd_args if isinstance(a, np.ndarray)]
        y2, pb2 = f.vjp(*odd_args, **kw)
        grads2 = pb2(odd(np.ones_like(y)))
        assert _cpu_signatures() == before, f"{f.__name__}: a {layout} input compiled new kernels"
        np.testing.assert_array_equal(y2, y)
        for g1, g2 in zip(grads, grads2):
            np.testing.assert_array_equal(g2, g1)
        for k, a in zip(kept, (a for a in odd_args if isinstance(a, np.ndarray))):
            np.testing.assert_array_equal(a, k)
