"""Unit tests of the CPU backend's kernels: im2col/col2im, the batch (slot) kernels and
the small-batch BLAS path, against plain NumPy loops; bitwise determinism across
NUMBA_NUM_THREADS in subprocesses."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import assert_close

from dynconv_np import _args
from dynconv_np.backends import cpu


def _naive_cols(x, g):
    """im2col by explicit padding and slicing, float64: (N, C*kh*kw, Ho*Wo)."""
    N, C = x.shape[:2]
    ph_hi = max(0, (g.Ho - 1) * g.sh + (g.kh - 1) * g.dh + 1 - g.H - g.ph)
    pw_hi = max(0, (g.Wo - 1) * g.sw + (g.kw - 1) * g.dw + 1 - g.W - g.pw)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (g.ph, ph_hi), (g.pw, pw_hi)))
    cols = np.empty((N, C, g.kh, g.kw, g.Ho, g.Wo))
    for u in range(g.kh):
        for v in range(g.kw):
            i0, j0 = u * g.dh, v * g.dw
            cols[:, :, u, v] = xp[:, :, i0:i0 + (g.Ho - 1) * g.sh + 1:g.sh, j0:j0 + (g.Wo - 1) * g.sw + 1:g.sw]
    return cols.reshape(N, C * g.kh * g.kw, g.Ho * g.Wo)


def _naive_conv(x, wt, bt, g, groups):
    """Forward and the per-sample kernel/input gradients of the template, float64."""
    cols = _naive_cols(x, g)                                   # (N, C*T, P)
    N = x.shape[0]
    O, F = wt.shape[-2:]
    G, Og = groups, O // groups
    w = np.broadcast_to(wt.astype(np.float64), (N, O, F)).reshape(N, G, Og, F)
    y = np.matmul(w, cols.reshape(N, G, F, -1)).reshape(N, O, -1)
    if bt is not None:
        y += np.broadcast_to(bt, (N, O))[:, :, None]
    return cols, y


# (N, C, O, H, W, kh, kw, stride, padding, dilation, groups)
CONFIGS = [
    (5, 4, 6, 9, 8, 3, 3, 1, 1, 1, 1),
    (9, 6, 4, 11, 7, 3, 2, (2, 1), (1, 0), (1, 2), 2),
    (4, 8, 8, 7, 7, 1, 1, 1, 0, 1, 1),       # pointwise: the columns are x itself
    (6, 6, 9, 6, 6, 1, 1, 1, 0, 1, 3),       # pointwise, grouped
    (4, 3, 5, 10, 10, 5, 5, 2, 2, 1, 1),
    (3, 4, 6, 8, 9, 3, 3, 1, 1, 1, 2),       # below MIN_BATCH: channel blocks in the backward
    (1, 5, 4, 6, 6, 1, 1, 1, 0, 1, 1),       # batch 1, pointwise
    (8, 2, 3, 13, 5, 3, 3, 3, (2, 1), 2, 1),
    (5, 12, 9, 7, 7, 1, 1, 1, 0, 1, 3),      # pointwise, grouped, O*F workspace > O*P
]


def _geometry(cfg):
    N, C, O, H, W, kh, kw, s, p, d, G = cfg
    return _args.geometry((N, C, H, W), kh, kw, s, p, d)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_im2col_col2im_match_naive(cfg, rng):
    g = _geometry(cfg)
    x = rng.standard_normal((g.N, g.C, g.H, g.W)).astype(np.float32)
    cols = cpu.im2col(x, g)
    assert np.array_equal(cols.astype(np.float64), _naive_cols(x, g))
    # col2im is the adjoint of im2col: <im2col(x), c> == <x, col2im(c)>
    c = rng.standard_normal(cols.shape)
    back = cpu.col2im(c, g, np.empty(x.shape))
    assert np.isclose(np.vdot(_naive_cols(x, g), c), np.vdot(x.astype(np.float64), back), rtol=1e-10)


@pytest.mark.parametrize("path", ["auto", "slots", "blocks", "small-tiles-slots", "small-tiles-blocks"])
@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_conv_forward_backward_match_naive(cfg, per_sample, path, rng, monkeypatch):
    # "slots"/"blocks": the backward's sample slots or channel blocks whatever the batch
    if path != "auto":
        monkeypatch.setattr(cpu.conv, "_use_blocks", lambda g: path.endswith("blocks"))
    if path.startswith("small-tiles"):  # one output row per tile, one channel per block
        monkeypatch.setattr(cpu.conv, "TILE_BYTES", 1)
    N, C, O, H, W, kh, kw, s, p, d, G = cfg
    g = _geometry(cfg)
    dtype = np.float32
    F = C // G * kh * kw
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    wt = rng.standard_normal((N, O, F) if per_sample else (O, F)).astype(dtype)
    bt = rng.standard_normal((N, O) if per_sample else (O,)).astype(dtype)
    cols, y_ref = _naive_conv(x, wt, bt, g, G)
    y = cpu.conv_forward(x, wt, bt, g, G)
    assert y.shape == (N, O, g.Ho, g.Wo) and y.dtype == dtype
    assert_close(y.reshape(N, O, -1), y_ref, dtype, "y")

    dy = rng.standard_normal(y.shape).astype(dtype)
    dyr = dy.reshape(N, G, O // G, -1).astype(np.float64)
    colsg = cols.reshape(N, G, F, -1)
    gw_ref = np.matmul(dyr, colsg.swapaxes(-1, -2)).reshape(N, O, F)
    w64 = np.broadcast_to(wt.astype(np.float64), (N, O, F)).reshape(N, G, O // G, F)
    dcols = np.matmul(w64.swapaxes(-1, -2), dyr).reshape(N, G * F, -1)
    dx_ref = cpu.col2im(dcols, g, np.empty((N, C, H, W)))
    dbt_ref = dy.astype(np.float64).sum(axis=(2, 3))
    if not per_sample:
        gw_ref, dbt_ref = gw_ref.sum(0), dbt_ref.sum(0)
    dx, gw, dbt = cpu.conv_backward(x, wt, dy, g, G)
    assert_close(dx, dx_ref, dtype, "dx")
    assert_close(gw, gw_ref, dtype, "gw")
    assert_close(dbt, dbt_ref, dtype, "dbt")
    dx2, gw2, _ = cpu.conv_backward(x, wt, dy, g, G, need_dx=False)
    assert dx2 is None and np.array_equal(gw2, gw)
    dx3, gw3, _ = cpu.conv_backward(x, wt, dy, g, G, need_dw=False)
    assert gw3 is None and np.array_equal(dx3, dx)


def test_float64_and_no_bias(rng):
    g = _geometry(CONFIGS[0])
    x = rng.standard_normal((g.N, g.C, g.H, g.W))
    wt = rng.standard_normal((g.N, 6, g.C * 9))
    cols, y_ref = _naive_conv(x, wt, None, g, 1)
    y = cpu.conv_forward(x, wt, None, g, 1)
    assert y.dtype == np.float64
    assert_close(y.reshape(g.N, 6, -1), y_ref, np.float64, "y")


def test_workspace_budget_roundtrip():
    old = cpu.set_workspace_bytes(1234)
    try:
        assert cpu.workspace.nbytes == 1234
        assert cpu.chunk_size(10, 1000) == 1
    finally:
        cpu.set_workspace_bytes(old)
    with pytest.raises(ValueError):
        cpu.set_workspace_bytes(0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, J, D", [(1, 1, 9000), (3, 8, cpu.products.THIN_CHUNK * 5 + 17), (64, 2, 8192),
                                     (5, 13, cpu.products.THIN_CHUNK * 4 + 3), (300, 4, 8200), (6, 300, 8192)])
def test_thin_products_match_blas(M, J, D, dtype, rng):
    a = rng.standard_normal((M, J)).astype(dtype)
    b = rng.standard_normal((J, D)).astype(dtype)
    # every case runs the thin kernel (rows of b added 8, 4 and 1 at a time; a wide batch)
    assert cpu.products._is_thin(a, b)
    g = rng.standard_normal((M, D)).astype(dtype)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert_close(cpu.gemm(a, b), ref, dtype, "a @ b")
    assert_close(cpu.gemm(a, g, ta=True), a.T.astype(np.float64) @ g, dtype, "a^T @ g")
    assert_close(cpu.gemm(g, b, tb=True), g.astype(np.float64) @ b.T, dtype, "g @ b^T")
    assert cpu.gemm(a, b).dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_is_np_maximum_bit_for_bit(dtype, rng):
    # the Numba kernel gives np.maximum(z, 0)'s bits: 0.0 for -0.0, NaN kept, infinities
    z = rng.standard_normal((3, 5, 7, 11)).astype(dtype)
    z.flat[:7] = [-0.0, 0.0, np.nan, -np.nan, -np.inf, np.inf, -1e-30]
    ref = np.maximum(z, 0)
    for a in (z, z[:, ::2], z[0, 0]):                 # contiguous, strided, 2-D
        got = cpu.relu(a)
        want = np.maximum(a, 0)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert got.tobytes() == np.ascontiguousarray(want).tobytes()
    assert cpu.relu(z).tobytes() == ref.tobytes()
    assert cpu.relu(np.zeros((0, 3), dtype)).shape == (0, 3)
    z0 = z.copy()
    cpu.relu(z)
    assert z.tobytes() == z0.tobytes()                # the input is left alone


def test_small_matmul_primitives(rng):
    a = rng.standard_normal((5, 3))
    b = rng.standard_normal((5, 4))
    assert np.allclose(cpu.gemm(a, b, ta=True), a.T @ b)
    assert np.allclose(cpu.gemm(a.T, b.T, tb=True), a.T @ b)
    assert np.allclose(cpu.gemm(a.T, b), a.T @ b)


DETERMINISM = textwrap.dedent("""
    import hashlib
    import numpy as np
    from dynconv_np import _args
    from dynconv_np.backends import cpu

    h = hashlib.sha256()
    r = np.random.default_rng(5)
    for (N, C, O, H, k, s, p, G, shared, tile) in [
            (11, 8, 12, 15, 3, 1, 1, 1, False, None), (11, 8, 12, 15, 3, 1, 1, 1, True, 1),
            (9, 12, 6, 9, 1, 1, 0, 3, False, None), (10, 6, 9, 12, 3, 2, 1, 3, True, None),
            (2, 8, 8, 9, 3, 1, 1, 1, False, None), (1, 16, 8, 9, 3, 1, 1, 2, True, 1),
            (3, 6, 6, 5, 1, 1, 0, 1, True, None), (1, 24, 10, 14, 3, 1, 1, 1, False, None)]:
        cpu.conv.TILE_BYTES = tile or 2**20
        g = _args.geometry((N, C, H, H), k, k, s, p, 1)
        F = C // G * k * k
        x = r.standard_normal((N, C, H, H)).astype(np.float32)
        wt = r.standard_normal((O, F) if shared else (N, O, F)).astype(np.float32)
        bt = r.standard_normal((O,) if shared else (N, O)).astype(np.float32)
        y = cpu.conv_forward(x, wt, bt, g, G)
        dy = r.standard_normal(y.shape).astype(np.float32)
        for a in (y,) + cpu.conv_backward(x, wt, dy, g, G):
            h.update(np.ascontiguousarray(a).tobytes())
    pi = r.standard_normal((5, 4)).astype(np.float32)            # the thin mixing products
    Wf = r.standard_normal((4, 3 * cpu.products.THIN_CHUNK + 5)).astype(np.float32)
    for a in (cpu.gemm(pi, Wf), cpu.gemm(pi, cpu.gemm(pi, Wf), ta=True)):
        h.update(a.tobytes())
    print(h.hexdigest())
""")


def test_bitwise_identical_across_numba_threads():
    digests = set()
    for threads in (1, 2, 8):
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", DETERMINISM], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        digests.add(out.stdout.strip().splitlines()[-1])
    assert len(digests) == 1, digests


@pytest.mark.parametrize("per_sample", [True, False])
def test_empty_batch(per_sample):
    g = _args.geometry((0, 4, 5, 5), 3, 3, 1, 1, 1)
    wt = np.ones((0, 6, 36) if per_sample else (6, 36), np.float32)
    x = np.zeros((0, 4, 5, 5), np.float32)
    y = cpu.conv_forward(x, wt, None, g, 1)
    assert y.shape == (0, 6, 5, 5)
    dx, gw, dbt = cpu.conv_backward(x, wt, y, g, 1)
    assert dx.shape == x.shape and gw.shape == wt.shape and not gw.any()
    assert dbt.shape == ((0, 6) if per_sample else (6,)) and not dbt.any()


# ----------------------------------------------------------------------------- the kernels' BLAS
@pytest.fixture(scope="module")
def dot_into_cases():
    from numba import njit

    from dynconv_np.backends.cpu.blas import dot_into, gemm_view

    @njit
    def run(a, b, out, beta, ta, tb, tout):
        # the layouts the kernels pass: row slices, their transposes, a transposed out
        aa = a.T if ta else a
        bb = b.T if tb else b
        oo = out.T if tout else out
        dot_into(aa, bb, oo, beta)

    @njit
    def view(ta, tb, M, N, K, a, lda, b, ldb, c, c0, ldc, beta):
        gemm_view(ta, tb, M, N, K, a, 0, lda, b, 0, ldb, c, c0, ldc, beta)

    return run, view


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, K, N", [(7, 5, 9), (1, 6, 4), (5, 1, 3), (4, 3, 1), (0, 3, 2), (3, 0, 4)])
def test_dot_into_every_layout(M, K, N, dtype, rng, dot_into_cases):
    run, _ = dot_into_cases
    for ta in (False, True):
        for tb in (False, True):
            for tout in (False, True):
                for beta in (0.0, 1.0):
                    # strided row slices (a row stride beyond the width), as the kernels pass
                    a = rng.standard_normal((K, M + 2) if ta else (M, K + 2)).astype(dtype)
                    a = a[:, :M] if ta else a[:, :K]
                    b = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
                    out = rng.standard_normal((N, M) if tout else (M, N)).astype(dtype)
                    o = out.T if tout else out
                    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b) + beta * o
                    run(a, b, out, beta, ta, tb, tout)
                    assert_close(out.T if tout else out, want, dtype, f"ta={ta} tb={tb} tout={tout} beta={beta}")


def test_gemm_view_offsets_and_accumulation(rng, dot_into_cases):
    _, view = dot_into_cases
    a = rng.standard_normal(40).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    c = np.zeros(30, np.float32)
    # C (3x4, row stride 5, from c[2]) = A (3x6 stored, stride 6) @ B^T (B 4x6 stored, stride 8)
    view(False, True, 3, 4, 6, a, 6, b, 8, c, 2, 5, 0.0)
    A = a[:18].reshape(3, 6).astype(np.float64)
    B = np.stack([b[8 * i:8 * i + 6] for i in range(4)]).astype(np.float64)
    got = np.stack([c[2 + 5 * i:2 + 5 * i + 4] for i in range(3)])
    assert_close(got, A @ B.T, np.float32, "gemm_view")
    view(False, True, 3, 4, 6, a, 6, b, 8, c, 2, 5, 1.0)
    got = np.stack([c[2 + 5 * i:2 + 5 * i + 4] for i in range(3)])
    assert_close(got, 2 * (A @ B.T), np.float32, "gemm_view, beta = 1")
    assert c[0] == 0 and c[1] == 0 and c[6] == 0          # outside C: untouched


def _numpy_has_scipy_openblas() -> bool:
    try:
        return np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"] == "scipy-openblas"
    except Exception:
        return False


def test_scipy_blas_gives_the_same_convolutions(tmp_path):
    # DYNCONV_BLAS=scipy binds the kernels' GEMMs to the BLAS of Numba's np.dot (the
    # fallback where NumPy's cannot be found): the same results within float32 tolerance
    # (the two OpenBLAS builds agreed bit for bit on the conv shapes measured; tiny
    # grouped GEMMs may sum in another order)
    script = DETERMINISM.replace("h.update(np.ascontiguousarray(a).tobytes())", "results.append(a)")
    script = script.replace("h = hashlib.sha256()", "h = hashlib.sha256(); results = []")
    script = script.replace("h.update(a.tobytes())", "results.append(a)")
    script = script.replace("print(h.hexdigest())", textwrap.dedent("""
        import sys
        from dynconv_np.backends.cpu import blas
        np.savez(sys.argv[1], *results)
        print(blas.LIBRARY)"""))
    libs = {}
    for lib in ("numpy", "scipy"):
        env = dict(os.environ, DYNCONV_BLAS=lib)
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / lib)], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        libs[lib] = out.stdout.strip().splitlines()[-1]
    assert libs["scipy"].startswith("scipy")
    if _numpy_has_scipy_openblas():
        assert not libs["numpy"].startswith("scipy"), "NumPy's OpenBLAS was not found"
    a, b = np.load(tmp_path / "numpy.npz"), np.load(tmp_path / "scipy.npz")
    assert len(a.files) == len(b.files) > 20
    for k in a.files:
        ref = b[k].astype(np.float64)
        assert_close(a[k], ref, np.float32, k)


def test_unknown_blas_choice_is_refused():
    env = dict(os.environ, DYNCONV_BLAS="mkl")
    out = subprocess.run([sys.executable, "-c", "import dynconv_np"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0
    assert "DYNCONV_BLAS must be 'numpy' or 'scipy', got 'mkl'" in out.stderr
