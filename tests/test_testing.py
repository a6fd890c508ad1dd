"""dc.testing.assert_vjp_close: passes correct candidates, fails subtly wrong ones, reads
other engines' arrays, explains bad arguments; the examples of docs/testing.md run."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dynconv_np as dc
from dynconv_np.testing import assert_vjp_close

ROOT = Path(__file__).resolve().parent.parent
GEO = {"stride": 2, "padding": 1}


def _doc_blocks():
    text = (ROOT / "docs" / "testing.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def einsum_conv():
    """The user-written einsum implementation of docs/testing.md (its first block)."""
    ns = {}
    exec(_doc_blocks()[0], ns)
    return ns["my_dynamic_conv2d"]


@pytest.fixture
def conv_args(rng):
    x = rng.standard_normal((3, 4, 9, 8))
    W = rng.standard_normal((3, 5, 4, 3, 3))
    pi = rng.dirichlet(np.ones(3), size=3)
    b = rng.standard_normal((3, 5))
    return x, W, pi, b


class Wrong:
    """A candidate that is the reference with one planted bug in its pullback."""

    def __init__(self, f, bug):
        self.f, self.bug, self.__name__ = f, bug, f"wrong_{f.__name__}"

    def vjp(self, *args, **kwargs):
        y, pb = self.f.vjp(*args, **kwargs)
        return y, lambda dy: self.bug(list(pb(dy)))


def test_correct_candidate_passes(einsum_conv, conv_args):
    rep = assert_vjp_close(einsum_conv, dc.dynamic_conv2d, conv_args, GEO)
    assert rep.passed and [o.name for o in rep] == ["y", "dx", "dW", "dpi", "dbias"]
    assert all(o.max_rel_err < 1e-13 and o.rtol == 1e-9 and o.dtype == "float64" for o in rep)
    assert rep["dW"].shape == (3, 5, 4, 3, 3) and len(rep["dW"].worst_index) == 5
    assert "pass" in str(rep) and "FAIL" not in str(rep)
    rep = assert_vjp_close(einsum_conv, dc.dynamic_conv2d, conv_args[:3], {"padding": 2})
    assert rep["dbias"].passed and rep["dbias"].note == "None on both sides"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_entry_off_by_1e_3_fails(conv_args, dtype):
    args = [a.astype(dtype) for a in conv_args]
    ref_dW = dc.dynamic_conv2d.vjp(*conv_args, **GEO)[1](np.ones((3, 5, 5, 4)))[1]
    k = int(np.argmax(np.abs(ref_dW)))  # a large entry: 1e-3 of it is beyond float32 noise

    def bug(g):
        g[1] = g[1].copy()
        g[1].flat[k] *= 1 + 1e-3
        return tuple(g)

    with pytest.raises(AssertionError) as e:
        assert_vjp_close(Wrong(dc.dynamic_conv2d, bug), dc.dynamic_conv2d, args, GEO)
    msg = str(e.value)
    assert "1 of 5 outputs" in msg
    row = next(line for line in msg.splitlines() if line.startswith("dW "))
    assert row.rstrip().endswith("FAIL") and str(list(map(int, np.unravel_index(k, ref_dW.shape)))) in row
    assert all(line.rstrip().endswith("pass") for line in msg.splitlines()
               if line.split(" ")[0] in ("y", "dx", "dpi", "dbias"))


def test_transposed_gradient_fails(rng):
    a, w, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 4)), rng.standard_normal(4)

    def bug(g):
        g[1] = g[1].T  # square weight: right shape, wrong layout
        return tuple(g)

    with pytest.raises(AssertionError, match=r"(?m)^dw .*FAIL$"):
        assert_vjp_close(Wrong(dc.linear, bug), dc.linear, (a, w, b))


def test_none_must_match_none(conv_args):
    def drop_bias(g):
        return (*g[:3], None)

    with pytest.raises(AssertionError, match=r"dbias .*FAIL \(candidate gives None, reference an array of shape"):
        assert_vjp_close(Wrong(dc.dynamic_conv2d, drop_bias), dc.dynamic_conv2d, conv_args, GEO)

    def invent_bias(g):
        return (*g[:3], np.zeros((3, 5)))

    with pytest.raises(AssertionError, match=r"dbias .*FAIL \(reference gives None, candidate an array"):
        assert_vjp_close(Wrong(dc.dynamic_conv2d, invent_bias), dc.dynamic_conv2d, conv_args[:3], GEO)


def test_structural_mismatches(conv_args):
    with pytest.raises(AssertionError, match=r"returned 3 gradients, the reference 4 \(dx, dW, dpi, dbias\)"):
        assert_vjp_close(Wrong(dc.dynamic_conv2d, lambda g: tuple(g[:3])), dc.dynamic_conv2d, conv_args, GEO)
    with pytest.raises(AssertionError, match=r"dx .*FAIL \(candidate shape"):
        assert_vjp_close(Wrong(dc.dynamic_conv2d, lambda g: (g[0][:, :2], *g[1:])), dc.dynamic_conv2d,
                         conv_args, GEO)

    class Shifted:
        @staticmethod
        def vjp(*args, **kwargs):
            y, pb = dc.dynamic_conv2d.vjp(*args, **kwargs)
            return y[:, :, 1:], pb

    with pytest.raises(AssertionError, match="forward output has the wrong shape"):
        assert_vjp_close(Shifted(), dc.dynamic_conv2d, conv_args, GEO)

    class InPlace:
        @staticmethod
        def vjp(x, *rest, **kwargs):
            x *= 1.0 + 1e-12
            return dc.dynamic_conv2d.vjp(x, *rest, **kwargs)

    with pytest.raises(AssertionError, match="modified its input x in place"):
        assert_vjp_close(InPlace(), dc.dynamic_conv2d, [a.copy() for a in conv_args], GEO)


def test_float32_candidate_against_float64_reference(einsum_conv, conv_args):
    args32 = [a.astype(np.float32) for a in conv_args]
    rep = assert_vjp_close(einsum_conv, dc.dynamic_conv2d, args32, GEO)
    assert all(o.dtype == "float32" and o.rtol == 1e-4 for o in rep)
    # the reference saw exactly the float32 values, in float64: its y is the exact one
    y64 = dc.dynamic_conv2d(*[a.astype(np.float64) for a in args32], **GEO)
    assert rep["y"].atol == pytest.approx(1e-5 * np.abs(y64).max())
    assert 0 < rep["y"].max_rel_err < 1e-5
    # rounding to float32 what float64 inputs ask for is caught by the float64 tolerances
    lossy = Wrong(dc.dynamic_conv2d, lambda g: tuple(a.astype(np.float32).astype(np.float64) for a in g))
    with pytest.raises(AssertionError, match=r"(?m)^dx .*FAIL$"):
        assert_vjp_close(lossy, dc.dynamic_conv2d, conv_args, GEO)
    # the reference in the arguments' dtype on request
    rep = assert_vjp_close(dc.dynamic_conv2d, dc.dynamic_conv2d, args32, GEO, reference_dtype=None)
    assert rep.passed and all(o.max_abs_err == 0 for o in rep if o.max_abs_err is not None)
    assert "reference in the arguments' dtype" in str(rep)


def test_given_tolerances_and_seed(conv_args):
    def bug(g):
        return (g[0] + 1e-6, *g[1:])

    loose = assert_vjp_close(Wrong(dc.dynamic_conv2d, bug), dc.dynamic_conv2d, conv_args, GEO, atol=1e-5)
    assert loose["dx"].atol == 1e-5 and loose["dx"].max_abs_err == pytest.approx(1e-6, rel=1e-6)
    with pytest.raises(AssertionError):
        assert_vjp_close(Wrong(dc.dynamic_conv2d, bug), dc.dynamic_conv2d, conv_args, GEO, atol=1e-7, rtol=0)
    a = assert_vjp_close(dc.dynamic_conv2d, dc.dynamic_conv2d, conv_args, GEO, seed=1)
    b = assert_vjp_close(dc.dynamic_conv2d, dc.dynamic_conv2d, conv_args, GEO, seed=2)
    assert a["dW"].reference != b["dW"].reference


def test_other_array_kinds_are_read(conv_args):
    class Boxed:
        """An array of another engine, readable only through __array__."""

        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    class BoxedConv:
        @staticmethod
        def vjp(*args, **kwargs):
            y, pb = dc.dynamic_conv2d.vjp(*args, **kwargs)
            return Boxed(y), lambda dy: tuple(None if g is None else Boxed(g) for g in pb(np.asarray(dy)))

    assert assert_vjp_close(BoxedConv(), dc.dynamic_conv2d, conv_args, GEO).passed

    class Opaque:
        @staticmethod
        def vjp(*args, **kwargs):
            return object(), None

    with pytest.raises(TypeError, match=r"\(y, pullback\)"):
        assert_vjp_close(Opaque(), dc.dynamic_conv2d, conv_args, GEO)

    class Unreadable:
        @staticmethod
        def vjp(*args, **kwargs):
            return object(), lambda dy: ()

    with pytest.raises(TypeError, match="candidate's forward output cannot be read as an array"):
        assert_vjp_close(Unreadable(), dc.dynamic_conv2d, conv_args, GEO)


def test_bad_arguments(conv_args):
    x, W, pi, b = conv_args
    ok = dc.dynamic_conv2d
    with pytest.raises(TypeError, match="candidate must have a .vjp method"):
        assert_vjp_close(np.sum, ok, conv_args)
    with pytest.raises(TypeError, match="reference must have a .vjp method"):
        assert_vjp_close(ok, lambda *a: a, conv_args)
    with pytest.raises(TypeError, match=r"args must be a tuple or list .*got ndarray \(wrap a single array as"):
        assert_vjp_close(dc.relu, dc.relu, x)
    with pytest.raises(TypeError, match="kwargs must be a dict or None, got list"):
        assert_vjp_close(ok, ok, conv_args, [("padding", 1)])
    with pytest.raises(ValueError, match="rtol must be a non-negative number or None, got -1"):
        assert_vjp_close(ok, ok, conv_args, rtol=-1)
    with pytest.raises(ValueError, match="atol must be a non-negative number or None, got 'x'"):
        assert_vjp_close(ok, ok, conv_args, atol="x")
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        assert_vjp_close(ok, ok, conv_args, seed=1.5)
    with pytest.raises(ValueError, match="reference_dtype must be a float dtype or None, got int64"):
        assert_vjp_close(ok, ok, conv_args, reference_dtype=np.int64)

    class TupleOut:
        @staticmethod
        def vjp(*args, **kwargs):
            y, pb = ok.vjp(*args, **kwargs)
            return y, lambda dy: pb(dy)[0]

    with pytest.raises(TypeError, match="pullback must return a tuple of gradients, got ndarray"):
        assert_vjp_close(TupleOut(), ok, conv_args)
    # the reference's own argument checks still speak
    with pytest.raises(ValueError, match="W"):
        assert_vjp_close(ok, ok, (x, W[:, :, :2], pi, b))


def test_layer_reference_names_gradients_by_params_key(rng):
    layer = dc.nn.DynamicConv2d(4, 6, 3, padding=1, dtype=np.float64, seed=0)
    f = dc.nn.as_function(layer)
    x = rng.standard_normal((2, 4, 5, 5))
    rep = assert_vjp_close(f, f, [a.astype(np.float32) for a in (x, *layer.params.values())])
    assert [o.name for o in rep] == ["y", "dx", *("d" + k for k in layer.params)]


def test_torch_candidate():
    torch = pytest.importorskip("torch")
    ns = {}
    exec(_doc_blocks()[0], ns)  # numpy example: defines nothing torch needs, but proves the order runs
    blocks = [b for b in _doc_blocks() if "import torch" in b]
    assert len(blocks) == 1
    exec(blocks[0], ns)  # the PyTorch example: float32, groups=2, asserts on success
    cand = ns["torch_dynamic_conv2d"]
    rng = np.random.default_rng(1)
    args = (rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((3, 6, 2, 3, 3)), rng.random((2, 3)))
    rep = assert_vjp_close(cand, dc.dynamic_conv2d, args, {"padding": 1, "groups": 2, "dilation": 2})
    assert rep.passed and rep["dbias"].note == "None on both sides" and rep["dx"].max_rel_err < 1e-12

    def bug(g):
        g[2] = g[2].clone()
        g[2][0, 1] *= 1.001
        return tuple(g)

    wrong = Wrong(cand, bug)
    with pytest.raises(AssertionError, match=r"(?m)^dpi .*\[0, 1\].*FAIL$"):
        assert_vjp_close(wrong, dc.dynamic_conv2d, args, {"padding": 1, "groups": 2})
    assert isinstance(cand.vjp(*args, groups=2)[0], torch.Tensor)


def test_doc_examples_run(capsys):
    blocks = [b for b in _doc_blocks() if "import torch" not in b]
    assert len(blocks) == 2
    ns = {}
    for b in blocks:
        exec(b, ns)
    out = capsys.readouterr().out
    assert "assert_vjp_close: my_dynamic_conv2d against dynamic_conv2d" in out


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None, reason="numba-cuda is not installed")
def test_device_candidate_in_the_cuda_simulator():
    code = ("import numpy as np; from numba import cuda; import dynconv_np as dc\n"
            "r = np.random.default_rng(0)\n"
            "x = r.standard_normal((2, 3, 5, 5)).astype(np.float32)\n"
            "w = r.standard_normal((4, 3, 3, 3)).astype(np.float32)\n"
            "rep = dc.testing.assert_vjp_close(dc.conv2d, dc.conv2d, (cuda.to_device(x), cuda.to_device(w)),"
            " {'padding': 1})\n"
            "assert [o.dtype for o in rep][:3] == ['float32'] * 3, rep\n"
            "print('ok', rep.passed)\n")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok True", r.stderr
