"""The CPU conv planner: every strategy forced on every shape it supports, against the
float64 reference; decisions that depend on the shapes only; bitwise determinism across
NUMBA_NUM_THREADS with each strategy forced; ``explain``; forcing errors.

The Winograd strategies run the real module (backends/cpu/winograd.py) behind a wrapper
that records its calls, so that the planner's dispatch is checked along with the results
(tests/test_winograd.py tests the module's own arithmetic on more shapes).
"""

import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from conftest import Backend, check_vjp

import dynconv_np as dc
from dynconv_np import reference as R
from dynconv_np import strategy
from dynconv_np.backends.cpu import conv, plan

CPU = Backend("cpu")

# (N, C, O, H, W, k, stride, padding, dilation, groups, K)
SHAPES = [
    (5, 4, 6, 7, 6, 3, 1, 1, 1, 1, 3),        # 3x3, stride 1: every strategy
    (9, 4, 6, 5, 5, 3, 1, 1, 1, 2, 2),        # groups, several batched blocks of unequal size
    (3, 3, 4, 6, 7, 3, 1, 0, 1, 1, 3),        # small batch (channel blocks in tiles' backward), no padding
    (1, 4, 4, 5, 5, 3, 1, 1, 1, 1, 2),        # batch 1: batched cannot run
    (4, 4, 6, 9, 8, 3, 2, 1, 1, 2, 2),        # stride 2
    (6, 6, 9, 5, 4, 1, 1, 0, 1, 3, 2),        # pointwise, grouped
    (4, 3, 5, 8, 8, 5, 1, 2, 1, 1, 2),        # 5x5
    (4, 2, 3, 9, 9, 3, 1, 2, 2, 1, 2),        # dilation 2, padding 2: Winograd by phases
    (3, 3, 4, 10, 7, 3, 1, 1, 2, 1, 2),       # dilation 2, padding 1: no Winograd
]
IDS = ["3x3", "groups", "small-batch", "batch1", "stride2", "pointwise", "5x5", "dilated", "dilated-pad1"]
WINOGRAD = ("winograd2", "winograd4")


class RecordingWinograd(types.ModuleType):
    """backends/cpu/winograd.py with each call recorded as ``(pass, m)``."""

    def __init__(self, module):
        super().__init__("recording_winograd")
        self.module = module
        self.calls = []
        self.supports = module.supports
        self.kept_tiles = module.kept_tiles

    def forward(self, x, wt, bt, g, groups, m=2, saved=None):
        self.calls.append(("forward", m))
        return self.module.forward(x, wt, bt, g, groups, m=m, saved=saved)

    def backward(self, x, wt, dy, g, groups, need_dx=True, need_dw=True, m=2, saved=None):
        self.calls.append(("backward", m))
        return self.module.backward(x, wt, dy, g, groups, need_dx=need_dx, need_dw=need_dw, m=m, saved=saved)


@pytest.fixture
def winograd(monkeypatch):
    recording = RecordingWinograd(conv._winograd())
    monkeypatch.setattr(conv, "_winograd", lambda: recording)
    return recording


def _inputs(shape, rng, op):
    N, C, O, H, W, k, s, p, d, G, K = shape
    x = rng.standard_normal((N, C, H, W))
    kw = dict(stride=s, padding=p, dilation=d, groups=G)
    if op == "conv2d":
        return dc.conv2d, R.conv2d, R.conv2d_backward, (x, rng.standard_normal((O, C // G, k, k)),
                                                        rng.standard_normal(O)), kw
    Wk = rng.standard_normal((K, O, C // G, k, k))
    pi = rng.random((N, K)) if op != "shared_pi" else rng.random(K)
    bias = rng.standard_normal((K, O)) if op != "no_bias" else None
    return dc.dynamic_conv2d, R.dynamic_conv2d, R.dynamic_conv2d_backward, (x, Wk, pi, bias), kw


def _supported(name, shape, shared):
    N, C, O, H, W, k, s, p, d, G, K = shape
    if name == "batched":
        return shared and N >= 2
    if name in WINOGRAD:
        return (k, s) == (3, 1) and p % d == 0
    if name == "shifted":
        return s == 1
    return True


# op -> (names forced, whether its convolution has a shared kernel)
FORMS = {
    "conv2d": ((), True),
    "kernel_mixing": (("kernel_mixing",), False),
    "output_mixing": (("output_mixing",), True),
    "no_bias": (("output_mixing",), True),
    "shared_pi": ((), True),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_every_strategy_matches_the_reference(winograd, shape, form, dtype, rng):
    names, shared = FORMS[form]
    op = "conv2d" if form == "conv2d" else form
    for name in plan.CONV_STRATEGIES:
        f, ref, ref_bwd, args, kw = _inputs(shape, rng, op)
        with strategy.force(*names, name):
            if not _supported(name, shape, shared):
                with pytest.raises(ValueError, match=f"strategy '{name}'"):
                    f.vjp(*args, **kw)
                continue
            winograd.calls.clear()
            with plan.recording() as rec:
                check_vjp(CPU, f, ref, ref_bwd, args, kw, dtype, rng)
        assert {d.chosen for d in rec if d.pass_ != "mixing"} == {name}
        mixing = [d.chosen for d in rec if d.pass_ == "mixing"]
        assert mixing == ([names[0]] if names else [])
        if name in WINOGRAD:
            assert winograd.calls == [("forward", int(name[-1])), ("backward", int(name[-1]))]


@pytest.mark.parametrize("shape", SHAPES[:2], ids=IDS[:2])
def test_passes_forced_separately(winograd, shape, rng):
    f, ref, ref_bwd, args, kw = _inputs(shape, rng, "conv2d")
    with strategy.force(forward="winograd4", backward="batched"), plan.recording() as rec:
        check_vjp(CPU, f, ref, ref_bwd, args, kw, np.float32, rng)
    assert [(d.pass_, d.chosen, d.forced) for d in rec] == [("forward", "winograd4", True),
                                                            ("backward", "batched", True)]
    assert winograd.calls == [("forward", 4)]


def test_output_mixing_without_a_per_sample_pi_refused(rng):
    f, _, _, args, kw = _inputs(SHAPES[0], rng, "shared_pi")
    with strategy.force("output_mixing"), pytest.raises(ValueError, match="'output_mixing'.*pi \\(N, K\\)"):
        f(*args, **kw)


def test_unsupported_forced_strategy_names_it(rng):
    f, _, _, args, kw = _inputs(SHAPES[6], rng, "conv2d")  # 5x5, no Winograd module here
    with strategy.force("winograd4"), pytest.raises(ValueError, match="strategy 'winograd4'.*3x3 window"):
        f(*args, **kw)
    f, _, _, args, kw = _inputs(SHAPES[0], rng, "kernel_mixing")
    with strategy.force("batched"), pytest.raises(ValueError, match="strategy 'batched'.*per-sample kernels"):
        f(*args, **kw)


@pytest.mark.parametrize("bad, match", [
    (("fastest",), "unknown strategy 'fastest'"),
    (("tiles", "batched"), "two conv strategies"),
    (("kernel_mixing", "output_mixing"), "two mixing formulations"),
])
def test_bad_force_names(bad, match):
    with pytest.raises(ValueError, match=match), strategy.force(*bad):
        pass  # pragma: no cover - force raises before the block
    with pytest.raises(ValueError, match=match):
        strategy.set_default(*bad)


def test_bad_pass_names():
    with pytest.raises(ValueError, match="unknown forward strategy 'output_mixing'"):
        strategy.set_default(forward="output_mixing")
    with pytest.raises(ValueError, match="backward='tiles' contradicts"):
        strategy.set_default("batched", backward="tiles")
    assert strategy.current() == "auto"


def test_set_default_and_environment(monkeypatch):
    assert strategy.set_default("tiles") == "auto"
    try:
        assert strategy.current() == "kernel_mixing, tiles"
        with strategy.force():
            assert strategy.current() == "auto"
        with strategy.force("output_mixing", forward="batched"):
            assert strategy.current() == "output_mixing, forward=batched"
        assert strategy.set_default() == "kernel_mixing, tiles"
        monkeypatch.setenv(strategy.ENV, "output_mixing, backward=tiles")
        strategy._from_environment()
        assert strategy.current() == "output_mixing, backward=tiles"
        monkeypatch.setenv(strategy.ENV, "tiles,forward=nope")
        with pytest.raises(ValueError, match="DYNCONV_STRATEGY='tiles,forward=nope'.*unknown forward"):
            strategy._from_environment()
        monkeypatch.setenv(strategy.ENV, "sideways=tiles")
        with pytest.raises(ValueError, match="forward=NAME or backward=NAME"):
            strategy._from_environment()
    finally:
        strategy.set_default()
    assert strategy.current() == "auto"


def test_explain(rng):
    f, _, _, args, kw = _inputs(SHAPES[1], rng, "kernel_mixing")
    args = tuple(a.astype(np.float32) for a in args)
    out = dc.explain(f, *args, **kw)
    assert [d.pass_ for d in out] == ["mixing", "forward", "backward"]
    for d in out:
        assert d.chosen in dict(d.costs) and not d.forced
        assert all(t is None or t > 0 for _, t in d.costs)
    text = str(out)
    assert text.splitlines()[0].startswith("dynamic_conv2d: plan")
    assert "N=9 C=4 O=6 5x5 k=3x3 groups=2, per-sample kernels, float32, K=2" in text
    with strategy.force("kernel_mixing"):
        text = str(dc.explain(f, *args, **kw))
    assert "batched n/a" in text  # per-sample kernels: batched cannot run
    with strategy.force("output_mixing", "batched"):
        forced = dc.explain(f, *args, **kw)
    assert [(d.pass_, d.chosen, d.forced) for d in forced] == [
        ("mixing", "output_mixing", True), ("forward", "batched", True), ("backward", "batched", True)]
    assert "forced" in str(forced) and "shared kernel" in str(forced)
    assert "no CPU convolution decisions" in str(dc.explain(dc.relu, args[0]))
    with pytest.raises(TypeError, match="dynconv_np op"):
        dc.explain(np.sum, args[0])


def test_decisions_depend_on_the_shapes_only(rng):
    # The same shapes give the same decisions, whatever the thread count, the values or
    # the call (estimates are cached on the shapes); dtype is part of the shapes.
    import numba

    x, W, pi = (rng.standard_normal(s).astype(np.float32) for s in ((16, 8, 8, 8), (4, 16, 8, 3, 3), (16, 4)))
    first = str(dc.explain(dc.dynamic_conv2d, x, W, pi, padding=1))
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        again = str(dc.explain(dc.dynamic_conv2d, 2 * x, W, pi, padding=1))
    finally:
        numba.set_num_threads(threads)
    assert again == first
    c = conv._call(dc._args.geometry(x.shape, 3, 3, 1, 1, 1), 1, 16, True, 4)
    assert plan.estimates("forward", c) == plan.estimates("forward", c) and plan.choose("forward", c)


DETERMINISM = textwrap.dedent("""
    import hashlib
    import numpy as np
    import dynconv_np as dc

    h = hashlib.sha256()
    r = np.random.default_rng(3)
    x = r.standard_normal((19, 8, 13, 11)).astype(np.float32)
    W = r.standard_normal((3, 12, 4, 3, 3)).astype(np.float32)
    pi = r.random((19, 3)).astype(np.float32)
    b = r.standard_normal((3, 12)).astype(np.float32)
    dy = r.standard_normal((19, 12, 13, 11)).astype(np.float32)
    names = ["tiles", "batched", "winograd2", "winograd4", "shifted"]
    plans = []
    for name in names:
        for forms in ((), ("output_mixing",)):
            with dc.strategy.force(*forms, name):
                for args in ((x, W[0], b[0]), (x[:3], W[0], b[0])) if not forms else ((x, W, pi, b),):
                    f = dc.conv2d if len(args) == 3 else dc.dynamic_conv2d
                    y, pb = f.vjp(*args, padding=1, groups=2)
                    for a in (y,) + pb(dy[:len(args[0])]):
                        h.update(np.ascontiguousarray(a).tobytes())
    for args in ((x, W[0], b[0]), (x, W, pi, b), (x[:1], W, pi[:1], b)):
        f = dc.conv2d if len(args) == 3 else dc.dynamic_conv2d
        plans.append(str(dc.explain(f, *args, padding=1, groups=2)))
    print("\\n".join(plans))
    print(h.hexdigest())
""")


def test_bitwise_identical_across_threads_with_each_strategy():
    outputs = set()
    for threads in (1, 2, 8):
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        env.pop(strategy.ENV, None)
        out = subprocess.run([sys.executable, "-c", DETERMINISM], env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        outputs.add(out.stdout)
    assert len(outputs) == 1, outputs


def test_cost_model_mirrors_the_winograd_plan():
    # plan.py cannot import the module it plans for (conv imports plan); its copies of the
    # module's block sizes must follow them
    from dynconv_np.backends.cpu import winograd as wino

    assert (plan.WINO_BLOCK_BYTES, plan.WINO_MIN_TILES, plan.WINO_MIN_ITEMS, plan.WINO_SLOTS) == \
        (wino.BLOCK_BYTES, wino.MIN_TILES, wino.MIN_ITEMS, conv.SLOTS)
    assert (plan.WINO_WHOLE_BYTES, plan.WINO_WHOLE_GRAD_BYTES, plan.WINO_DU_BLOCK_BYTES, plan.WINO_NO_GAP_TILES,
            plan.WINO_KEEP_TILES_BYTES) == \
        (wino.WHOLE_BYTES, wino.WHOLE_GRAD_BYTES, wino.DU_BLOCK_BYTES, wino.NO_GAP_TILES, wino.KEEP_TILES_BYTES)
    # and the one-block rule, on shapes either side of each budget
    for args in [(1, 256, 256, 14, 14), (64, 32, 32, 8, 8), (128, 128, 128, 8, 8), (2, 64, 64, 30, 30)]:
        for m in wino.TILE_SIZES:
            for shared in (True, False):
                c = plan.ConvCall(N=args[0], C=args[1], O=args[2], H=args[3], W=args[4], Ho=args[3], Wo=args[4],
                                  kh=3, kw=3, stride=(1, 1), dilation=(1, 1), groups=1, shared=shared, itemsize=4,
                                  pointwise=False, tile_rows=1, channel_blocks=0, block_rows=0, block_samples=2,
                                  narrow=False, winograd=True)
                for grad in (False, True):
                    assert plan._winograd_whole(c, m, grad) == wino.whole(*args, m, 4, shared, gradient=grad)
                # the kept-tiles rule
                assert plan._winograd_keeps(c, m) == wino.keeps_tiles(*args, m, 4, shared)
                # and the fused per-sample rule (WINO_PER_SAMPLE applies where it holds)
                assert plan._winograd_fused(c, m) == wino.fused(args[0], args[2], args[1], m, 4, not shared)
    assert (plan.WINO_FUSED_MIN_SAMPLES, plan.WINO_FUSED_KERNEL_BYTES) == \
        (wino.FUSED_MIN_SAMPLES, wino.FUSED_KERNEL_BYTES)
    # a dilated call is estimated as the undilated problem the module runs: the batch of
    # phases for a shared kernel, each sample's mosaic for per-sample kernels
    from dynconv_np import _args

    for shape, p, d in [((4, 8, 32, 32), 2, 2), ((3, 8, 9, 10), (2, 6), (2, 3)), ((2, 8, 33, 33), 6, 6),
                        ((2, 8, 16, 12), 0, (4, 1))]:
        g = _args.geometry(shape, 3, 3, 1, p, d)
        for shared in (True, False):
            c = conv._call(g, 1, 8, shared, 4)
            got = plan._phase_call(c)
            want = wino.phase_geometry(g) if shared else wino.mosaic_geometry(g)[0]
            assert (got.N, got.H, got.W, got.Ho, got.Wo, got.dilation) == (want.N, want.H, want.W, want.Ho, want.Wo,
                                                                            (1, 1))


def test_forward_weighs_the_tiles_it_keeps():
    # a forward whose backward runs F(4x4) and that keeps its transformed input for it:
    # its winograd4 estimate is net of the transform the kernel gradient skips (what the
    # backward's kept estimate saves), the others as they are, with a note; a problem
    # too large to keep its tiles gets no credit
    def call(N, C, H):
        return plan.ConvCall(N=N, C=C, O=C, H=H, W=H, Ho=H, Wo=H, kh=3, kw=3, stride=(1, 1), dilation=(1, 1),
                             groups=1, shared=True, itemsize=4, pointwise=False, tile_rows=H, channel_blocks=0,
                             block_rows=0, block_samples=2, narrow=True, winograd=True)
    small, large = call(64, 32, 8), call(128, 128, 8)
    with strategy.force(backward="winograd4"):
        net, note = plan._forward_costs(small)
        plain = dict(plan.estimates("forward", small))
        saving = (dict(plan.estimates("backward", small))["winograd4"]
                  - dict(plan.estimates("backward", small, kept=4))["winograd4"])
        assert saving > 0 and "kept tiles" in note
        for s, t in net:
            assert t == (plain[s] - saving if s == "winograd4" else plain[s])
        assert plan._forward_costs(large) == (plan.estimates("forward", large), "")
        with plan.recording() as rec:
            plan.choose("forward", small)
        assert rec[0].note == note and "kept tiles" in str(rec[0])


@pytest.mark.parametrize("forward, backward, kept", [
    ("winograd2", "winograd2", True), ("winograd4", "winograd4", False), ("winograd2", "tiles", False),
    ("winograd4", "winograd2", False), ("tiles", "winograd2", False)])
def test_winograd_kernels_kept_for_the_same_backward(forward, backward, kept, rng):
    # the template keeps the forward's transformed kernels only where the backward runs
    # the same Winograd strategy and reuses them (F(2x2): winograd.REVERSED), and the
    # backward takes them out; the op's gradients are
    # the same on a second call of its pullback (the kernels transformed again)
    from dynconv_np import _args
    from dynconv_np.backends.cpu import winograd

    x = rng.standard_normal((2, 6, 7, 7)).astype(np.float32)
    w = rng.standard_normal((4, 6, 3, 3)).astype(np.float32)
    g = _args.geometry(x.shape, 3, 3, 1, 1, 1)
    dy = rng.standard_normal((2, 4, 7, 7)).astype(np.float32)
    with strategy.force(forward=forward, backward=backward):
        saved = {}
        conv.conv_forward(x, w.reshape(4, -1), None, g, 1, saved)
        assert (winograd.SAVED_KEY in saved) == kept
        conv.conv_backward(x, w.reshape(4, -1), dy, g, 1, saved=saved)
        assert saved == {}
        _, pullback = dc.conv2d.vjp(x, w, padding=1)
        first, again = pullback(dy), pullback(dy)
    for a, b in zip(first[:2], again[:2]):
        np.testing.assert_array_equal(a, b)
