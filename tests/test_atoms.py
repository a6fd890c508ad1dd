"""atom_conv2d and the tap engine: reference on every backend (CPU always; CUDA on a GPU or
under the simulator), explicit per-pixel filters, gradchecks, thread-count determinism,
memory, AtomConv2d."""

import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from conftest import DTYPES, assert_close, check_vjp, over_backends

import dynconv_np as dc
from dynconv_np import _args
from dynconv_np import reference as R
from dynconv_np.backends import cpu
from dynconv_np.nn import AtomConv2d, as_function

# (N, C, H, W, O, k, M, stride, padding, dilation)
GRID = [
    (2, 4, 7, 6, 5, 3, 2, 1, 1, 1),
    (1, 3, 9, 10, 2, 5, 1, 2, 0, 1),
    (2, 5, 8, 9, 3, 3, 3, (2, 1), (2, 0), 1),
    (1, 2, 5, 5, 2, 3, 2, 1, "same", 2),
    (1, 2, 11, 11, 2, 5, 4, 2, 1, 2),
    (3, 3, 6, 7, 4, 3, 6, 3, 3, (1, 2)),
    (2, 1, 6, 5, 1, 5, 1, 1, "valid", 1),
]
# Tiny configurations, with or without bias, the ones CUDA runs too (the simulator runs one
# Python thread per CUDA thread).
TINY = [
    ((2, 3, 5, 6, 4, 3, 2, 1, 1, 1), True),
    ((1, 2, 7, 6, 3, 3, 3, (2, 1), (1, 0), (1, 2)), False),
    ((1, 2, 4, 4, 9, 3, 5, 1, 1, 1), True),   # O=9, C*M=10, P=16: every GEMM crosses an 8-tile
]
# (cfg, dtype, with_bias)
CUDA = [(cfg, DTYPES[i % 2], bias) for i, (cfg, bias) in enumerate(TINY)]
CASES = [(cfg, dt, cfg[0] != 3) for cfg in GRID for dt in DTYPES] + \
    [(cfg, dt, bias) for cfg, bias in TINY for dt in DTYPES]


def _data(rng, cfg, dtype, bias=True):
    N, C, H, W, O, k, M, s, p, d = cfg
    g = _args.geometry((N, C, H, W), k, k, s, p, d)
    args = (rng.standard_normal((N, C, H, W)), rng.standard_normal((N, M, k, k, g.Ho, g.Wo)),
            rng.standard_normal((O, C, M)), rng.standard_normal(O) if bias else None)
    return tuple(None if a is None else a.astype(dtype) for a in args), dict(stride=s, padding=p, dilation=d)


@pytest.mark.parametrize("backend, cfg, dtype, with_bias", over_backends(CASES, CUDA), indirect=["backend"])
def test_atoms_match_reference(backend, rng, cfg, dtype, with_bias):
    args, kw = _data(rng, cfg, dtype, bias=with_bias)
    check_vjp(backend, dc.atom_conv2d, R.atom_conv2d, R.atom_conv2d_backward, args, kw, dtype, rng)


def test_atoms_chunked_match_reference(backend, rng, monkeypatch):
    # A small workspace splits the batch: the backward recomputes each chunk's Z and
    # accumulates dcoeff inside the GEMM, chunk after chunk.
    from dynconv_np.ops import atoms as atoms_mod

    be = backend.be
    N, C, H, W, O, k, M = 3, 2, 4, 4, 3, 3, 2
    per_sample = C * M * H * W * 8
    monkeypatch.setattr(be.workspace, "nbytes", 2 * per_sample)
    assert atoms_mod._chunks(be, N, per_sample) == [(0, 2), (2, 3)]
    args, kw = _data(rng, (N, C, H, W, O, k, M, 1, 1, 1), np.float64)
    check_vjp(backend, dc.atom_conv2d, R.atom_conv2d, R.atom_conv2d_backward, args, kw, np.float64, rng)


def test_atoms_equal_explicit_per_pixel_filters(rng):
    """Materialise W[n,o,c,:,:,i,j] = sum_m coeff[o,c,m] atoms[n,m,:,:,i,j]; apply pixel by pixel."""
    args, kw = _data(rng, (2, 3, 5, 6, 2, 3, 2, 2, 1, 1), np.float64)
    x, atoms, coeff, b = args
    y = dc.atom_conv2d(*args, **kw)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    N, O, Ho, Wo = y.shape
    for n in range(N):
        for i in range(Ho):
            for j in range(Wo):
                Wpix = np.einsum("ocm,muv->ocuv", coeff, atoms[n, :, :, :, i, j])
                patch = xp[n, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
                expect = (Wpix * patch[None]).sum(axis=(1, 2, 3)) + b
                np.testing.assert_allclose(y[n, :, i, j], expect, rtol=1e-12, atol=1e-12)


def test_tap_engine_other_mappings(rng):
    """The engine's DDF (cdiv=1) and Involution (cdiv=C//G) mappings against direct loops."""
    N, C, H, W, k = 2, 6, 7, 6, 3
    g = _args.geometry((N, C, H, W), k, k, (2, 1), 1, (1, 2))
    x = rng.standard_normal((N, C, H, W))
    xp = R.pad_input(x, g)
    for cdiv in (1, 3):
        G = C // cdiv
        filt = rng.standard_normal((N, G, k * k, g.Ho, g.Wo))
        out = cpu.taps_forward(x, filt, g, 1, cdiv)
        expect = np.zeros((N, C, g.Ho, g.Wo))
        for c in range(C):
            for u in range(k):
                for v in range(k):
                    si, sj = R.tap_slice(g, u, v)
                    expect[:, c] += filt[:, c // cdiv, u * k + v] * xp[:, c, si, sj]
        np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-12)
        dout = rng.standard_normal(out.shape)
        dfilt = cpu.taps_backward_filter(x, dout, g, 1, cdiv)
        dx = cpu.taps_backward_input(filt, dout, g, 1, cdiv)
        u_f = rng.standard_normal(filt.shape)
        u_x = rng.standard_normal(x.shape)
        # adjoint identities: <dout, d out> = <dfilt, u_f> and <dx, u_x>
        lhs_f = np.vdot(dout, cpu.taps_forward(x, u_f, g, 1, cdiv))
        lhs_x = np.vdot(dout, cpu.taps_forward(u_x, filt, g, 1, cdiv))
        np.testing.assert_allclose(np.vdot(dfilt, u_f), lhs_f, rtol=1e-10)
        np.testing.assert_allclose(np.vdot(dx, u_x), lhs_x, rtol=1e-10)


def test_atoms_noncontiguous_inputs(rng):
    args, kw = _data(rng, (2, 4, 7, 6, 5, 3, 2, 2, 1, 1), np.float64)
    x, atoms, coeff, b = args
    xn = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    an = np.ascontiguousarray(atoms.transpose(5, 4, 3, 2, 1, 0)).transpose(5, 4, 3, 2, 1, 0)
    cn = np.asfortranarray(coeff)
    bn = np.repeat(b, 2)[::2]
    assert not any(a.flags.c_contiguous for a in (xn, an, bn))
    y, pb = dc.atom_conv2d.vjp(xn, an, cn, bn, **kw)
    np.testing.assert_array_equal(y, dc.atom_conv2d(*args, **kw))
    dy = rng.standard_normal(y.shape)
    dyn = np.asfortranarray(dy)
    for a, r in zip(pb(dyn), R.atom_conv2d_backward(dy, *args, **kw)):
        assert_close(a, r, np.float64)


def test_atoms_inputs_unchanged(rng):
    args, kw = _data(rng, (2, 4, 7, 6, 5, 3, 2, 1, 1, 1), np.float32)
    before = [a.copy() for a in args]
    y, pb = dc.atom_conv2d.vjp(*args, **kw)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dyc = dy.copy()
    pb(dy)
    pb(dy)
    for a, b in zip(args, before):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dy, dyc)


@pytest.mark.parametrize("cfg", [(2, 2, 5, 4, 2, 3, 2, 2, 1, 1), (1, 2, 6, 6, 2, 5, 1, 1, 2, (1, 2)),
                                 (1, 3, 4, 5, 2, 3, 1, 1, "same", 1)])
def test_atoms_gradcheck_every_argument(rng, cfg):
    args, kw = _data(rng, cfg, np.float64)
    rep = dc.gradcheck(dc.atom_conv2d, args, kw, mode="full")
    assert [a.name for a in rep.args] == ["x", "atoms", "coeff", "bias"]


def test_atoms_bad_inputs(rng):
    args, kw = _data(rng, (2, 4, 7, 6, 5, 3, 2, 1, 1, 1), np.float64)
    x, atoms, coeff, b = args
    with pytest.raises(ValueError, match="atoms must have shape"):
        dc.atom_conv2d(x, atoms[..., :-1], coeff, b, **kw)
    with pytest.raises(ValueError, match="atoms must have shape"):
        dc.atom_conv2d(x, atoms[:1], coeff, b, **kw)
    with pytest.raises(ValueError, match="coeff"):
        dc.atom_conv2d(x, atoms, coeff[:, :, :1], b, **kw)
    with pytest.raises(ValueError, match="coeff"):
        dc.atom_conv2d(x, atoms, coeff[:, :3], b, **kw)
    with pytest.raises(ValueError, match="bias"):
        dc.atom_conv2d(x, atoms, coeff, b[:2], **kw)
    with pytest.raises(ValueError, match="atoms must be 6-D"):
        dc.atom_conv2d(x, atoms[0], coeff, b, **kw)
    with pytest.raises(TypeError, match="coeff"):
        dc.atom_conv2d(x, atoms, coeff.astype(np.float32), b, **kw)
    with pytest.raises(TypeError, match="atoms"):
        dc.atom_conv2d(x, list(atoms), coeff, b, **kw)
    with pytest.raises(ValueError, match="padding"):
        dc.atom_conv2d(x, atoms, coeff, b, padding=-1)


_DETERMINISM = textwrap.dedent("""
    import hashlib, numpy as np, dynconv_np as dc
    from dynconv_np import _args
    rng = np.random.default_rng(7)
    g = _args.geometry((3, 5, 13, 11), 3, 3, 1, 1, 1)
    x = rng.standard_normal((3, 5, 13, 11)).astype(np.float32)
    atoms = rng.standard_normal((3, 4, 3, 3, g.Ho, g.Wo)).astype(np.float32)
    coeff = rng.standard_normal((6, 5, 4)).astype(np.float32)
    y, pb = dc.atom_conv2d.vjp(x, atoms, coeff, None, padding=1)
    h = hashlib.sha256(y.tobytes())
    for a in pb(rng.standard_normal(y.shape).astype(np.float32))[:3]:
        h.update(a.tobytes())
    print(h.hexdigest())
""")


def test_atoms_bitwise_identical_across_thread_counts():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digests = set()
    for threads in ("1", "2", "8"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads,
                   PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        out = subprocess.run([sys.executable, "-c", _DETERMINISM], env=env, capture_output=True,
                             text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_atoms_workspace_stays_below_unfolded_size(rng):
    N, C, H, W, O, k, M = 2, 32, 24, 24, 8, 5, 2
    args, kw = _data(rng, (N, C, H, W, O, k, M, 1, 2, 1), np.float64)
    dy = rng.standard_normal((N, O, H, W))
    dc.atom_conv2d.vjp(*args, **kw)[1](dy)      # compile outside the measurement
    unfolded = N * C * k * k * H * W * 8
    tracemalloc.start()
    try:
        y, pb = dc.atom_conv2d.vjp(*args, **kw)
        grads = pb(dy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert y.shape == (N, O, H, W) and len(grads) == 4
    assert peak < 0.4 * unfolded, (peak, unfolded)


# ----------------------------------------------------------------------------- layer
@pytest.mark.parametrize("geo", [dict(), dict(stride=2), dict(kernel_size=5, dilation=2, num_atoms=2)])
def test_atom_layer_gradcheck(rng, geo):
    layer = AtomConv2d(3, 4, **{"num_atoms": 3, **geo}, hidden_channels=5, dtype=np.float64, seed=2)
    x = rng.standard_normal((2, 3, 7, 6))
    f = as_function(layer)
    dc.gradcheck(f, (x, *layer.params.values()), mode="projection")
    layer.eval()
    dc.gradcheck(f, (x, *layer.params.values()), mode="projection")


def test_atom_layer_structure(rng):
    layer = AtomConv2d(4, 6, 5, stride=2, num_atoms=3, dtype=np.float64, seed=0)
    assert layer.bases.shape == (6, 5, 5)                 # T = (5//2) * 3
    assert layer.gen2_weight.shape[0] == 3 * 6 and layer.hidden_channels == 64
    x = rng.standard_normal((1, 4, 9, 8))
    y = layer(x)
    assert y.shape == (1, 6, 5, 4)
    rm = layer.bn1.running_mean.copy()
    layer.backward(rng.standard_normal(y.shape))
    assert not np.array_equal(rm, np.zeros_like(rm))        # running statistics moved
    layer.eval()
    y1 = layer(x)
    np.testing.assert_array_equal(layer(x), y1)
    assert AtomConv2d(4, 6).num_atoms == 6


def test_atom_layer_float32_and_state(rng):
    layer = AtomConv2d(3, 2, num_atoms=2, hidden_channels=4, seed=5)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    y = layer(x)
    dx = layer.backward(rng.standard_normal(y.shape).astype(np.float32))
    assert y.dtype == dx.dtype == np.float32
    other = AtomConv2d(3, 2, num_atoms=2, hidden_channels=4, seed=6)
    other.load_state_dict(layer.state_dict())
    layer.eval()
    other.eval()
    np.testing.assert_array_equal(other(x), layer(x))


def test_atom_layer_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        AtomConv2d(4, 4, 4)
    with pytest.raises(ValueError, match="num_bases"):
        AtomConv2d(4, 4, 3, num_bases=9)
    with pytest.raises(ValueError, match="padding"):
        AtomConv2d(4, 4, 3, 1, 0)
    with pytest.raises(ValueError, match="padding"):
        AtomConv2d(4, 4, 3, 2, "same")
    assert AtomConv2d(4, 4, 5, 1, 4, 2).config.padding == (4, 4)
    assert AtomConv2d(4, 4, 3, 1, "same").config.padding == (1, 1)
    with pytest.raises(ValueError, match="channels"):
        AtomConv2d(4, 4, 3, hidden_channels=4, dtype=np.float64)(np.zeros((2, 3, 5, 5)))


def test_atoms_chunked_batch_matches(rng, monkeypatch):
    """A small workspace budget splits the batch and recomputes Z in the backward."""
    from dynconv_np.ops import atoms as atoms_mod

    args, kw = _data(rng, (5, 3, 7, 6, 4, 3, 2, 2, 1, 1), np.float64)
    y, pb = dc.atom_conv2d.vjp(*args, **kw)
    dy = rng.standard_normal(y.shape)
    full = pb(dy)
    per_sample = 3 * 2 * 4 * 3 * 8                     # C*M*Ho*Wo float64
    monkeypatch.setattr(cpu.workspace, "nbytes", 2 * per_sample)
    assert atoms_mod._chunks(cpu, 5, per_sample) == [(0, 2), (2, 4), (4, 5)]
    yc, pbc = dc.atom_conv2d.vjp(*args, **kw)
    np.testing.assert_array_equal(yc, y)
    for a, b in zip(pbc(dy), full):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
