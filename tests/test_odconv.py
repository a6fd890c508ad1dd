"""odconv2d, its kernel-scaling primitives and the ODConv2d layer: the naive float64
reference (forward and every gradient, CPU and CUDA), the identity with kernel mixing,
argument checks, the attention branch as the authors build it, training with a batch of
one, whole-layer gradchecks, state and devices."""

import copy

import numpy as np
import pytest
from conftest import DTYPES, assert_close, check_vjp

import dynconv_np as dc
from dynconv_np import backends, nn
from dynconv_np import reference as R
from dynconv_np.backends import cpu

F32, F64 = np.float32, np.float64


def _attentions(rng, N, K, kh, kw, C, O):
    return (rng.dirichlet(np.ones(K), size=N), rng.uniform(0.1, 1, (N, kh, kw)), rng.uniform(0.1, 1, (N, C)),
            rng.uniform(0.1, 1, (N, O)))


def _case(rng, N, C, H, W, O, K, kh, kw, groups):
    x = rng.standard_normal((N, C, H, W))
    Wk = rng.standard_normal((K, O, C // groups, kh, kw))
    return (x, Wk, *_attentions(rng, N, K, kh, kw, C, O))


# ----------------------------------------------------------------------------- the op against the reference
# (N, C, H, W, O, K, kh, kw, geometry, dtype): tiny, as the CUDA simulator runs them too
BACKEND_CASES = [
    ((2, 4, 5, 4, 4, 2, 3, 2), dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2), F32),
    ((1, 3, 4, 4, 3, 1, 3, 3), dict(padding="same", groups=3), F64),          # depthwise, K=1, batch 1
]


@pytest.mark.parametrize("shape, geo, dtype", BACKEND_CASES)
def test_odconv2d_matches_reference(backend, rng, shape, geo, dtype):
    args = _case(rng, *shape, geo["groups"])
    check_vjp(backend, dc.odconv2d, R.odconv2d, R.odconv2d_backward, args, geo, dtype, rng)


def test_random_configurations_against_reference():
    """A seeded sweep over every axis at once: stride, padding, dilation, groups (depthwise
    included), K = 1, 1x1 kernels, batch 1, both dtypes, non-contiguous inputs."""
    rng = np.random.default_rng(2022)
    for i in range(24):
        groups = int(rng.choice([1, 2, 3]))
        depthwise = i % 6 == 1
        C = groups * (1 if depthwise else int(rng.integers(1, 4)))
        O = C if depthwise else groups * int(rng.integers(1, 4))
        kh, kw = (1, 1) if i % 6 == 2 else (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        K = 1 if i % 4 == 3 else int(rng.integers(2, 5))
        N = 1 if i % 5 == 0 else int(rng.integers(2, 4))
        s, d = (int(rng.integers(1, 3)), int(rng.integers(1, 3))), (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        p = "same" if i % 7 == 4 else (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        if p == "same":
            s = 1
        H, W = (int(v) for v in rng.integers(max(kh, kw) * max(d) + 1, 10, size=2))
        geo = dict(stride=s, padding=p, dilation=d, groups=groups)
        dtype = DTYPES[i % 2]
        args = _case(rng, N, C, H, W, O, K, kh, kw, groups)
        y_ref = R.odconv2d(*args, **geo)
        dy = rng.standard_normal(y_ref.shape)
        g_ref = R.odconv2d_backward(dy, *args, **geo)
        # non-contiguous views of the same values: x transposed twice, the attentions strided
        x, Wk, a_w, a_s, a_c, a_f = (a.astype(dtype) for a in args)
        x = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
        a_c = np.repeat(a_c, 2, axis=1)[:, ::2]
        y, pb = dc.odconv2d.vjp(x, Wk, a_w, a_s, a_c, a_f, **geo)
        assert_close(y, y_ref, dtype, f"case {i} y")
        for name, got, ref in zip(("dx", "dW", "da_w", "da_s", "da_c", "da_f"), pb(dy.astype(dtype)), g_ref):
            assert got.dtype == dtype and got.shape == ref.shape, (i, name)
            assert_close(got, ref, dtype, f"case {i} {name}")


def test_unit_attentions_are_kernel_mixing_bitwise(rng):
    """With a_s = a_c = a_f = 1, odconv2d is dynamic_conv2d's kernel mixing, bitwise: both
    mix with the shared kernel-mixing helpers, and a scale by 1 is exact."""
    x, Wk, a_w, _, _, _ = (a.astype(F32) for a in _case(rng, 5, 6, 9, 8, 4, 3, 3, 3, 2))
    ones = [np.ones(s, F32) for s in ((5, 3, 3), (5, 6), (5, 4))]
    geo = dict(stride=2, padding=1, groups=2)
    y, pb = dc.odconv2d.vjp(x, Wk, a_w, *ones, **geo)
    # dynamic_conv2d may also mix outputs instead (the planner's choice): same math, other sums
    with dc.strategy.force("kernel_mixing"):
        y2, pb2 = dc.dynamic_conv2d.vjp(x, Wk, a_w, **geo)
        np.testing.assert_array_equal(y, y2)
        dy = rng.standard_normal(y.shape).astype(F32)
        dx, dW, da_w, *_ = pb(dy)
        for a, b in zip((dx, dW, da_w), pb2(dy)[:3]):
            np.testing.assert_array_equal(a, b)


def test_gradcheck(rng):
    """The op against finite differences, independently of the reference (the full Jacobian
    on tiny shapes is a case of ``python -m dynconv_np check``)."""
    args = _case(rng, 2, 4, 5, 4, 4, 3, 3, 2, 2)
    dc.gradcheck(dc.odconv2d, args, dict(stride=(1, 2), padding=1, dilation=(2, 1), groups=2), mode="projection")


# ----------------------------------------------------------------------------- the scaling primitives
@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_kernels_against_numpy(backend, rng, dtype):
    N, G, Og, Cg, T = 2, 3, 2, 2, 5
    O, C = G * Og, G * Cg
    w, a_f, a_c, a_s, dout = (rng.standard_normal(s) for s in ((N, O, Cg, T), (N, O), (N, C), (N, T),
                                                                 (N, O, Cg, T)))
    # a_c as the kernel sees it: output channel o's group picks its input channels
    ac = a_c.reshape(N, G, 1, Cg, 1).repeat(Og, axis=2).reshape(N, O, Cg, 1)
    scale = a_f[:, :, None, None] * ac * a_s[:, None, None, :]
    be = backends.get(backend.name)
    put = [backend.put(a.astype(dtype)) for a in (w, a_f, a_c, a_s, dout)]
    assert_close(backend.get(be.scale_kernels(*put[:4], G)), w * scale, dtype, "out")
    dw, da_f, da_c, da_s = (backend.get(a) for a in be.scale_kernels_backward(put[4], *put[:4], G))
    P = dout * w
    assert_close(dw, dout * scale, dtype, "dw")
    assert_close(da_f, (P * ac * a_s[:, None, None, :]).sum(axis=(2, 3)), dtype, "da_f")
    dac = (P * a_f[:, :, None, None] * a_s[:, None, None, :]).sum(axis=3).reshape(N, G, Og, Cg).sum(axis=2)
    assert_close(da_c, dac.reshape(N, C), dtype, "da_c")
    assert_close(da_s, (P * a_f[:, :, None, None] * ac).sum(axis=(1, 2)), dtype, "da_s")


def test_cpu_scale_kernels_same_bits_on_one_thread(rng):
    """The CPU kernels' results do not depend on the thread count (the subprocess digest
    of tests/test_determinism.py covers 1, 2 and 8 threads)."""
    import numba

    args = [rng.standard_normal(s).astype(F32) for s in ((7, 6, 4, 9), (7, 6), (7, 8), (7, 9))]
    G = rng.standard_normal((7, 6, 4, 9)).astype(F32)
    many = cpu.scale_kernels(*args, 2), *cpu.scale_kernels_backward(G, *args, 2)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = cpu.scale_kernels(*args, 2), *cpu.scale_kernels_backward(G, *args, 2)
    finally:
        numba.set_num_threads(before)
    for a, b in zip(many, one):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- argument checks
def test_bad_inputs_name_the_argument(rng):
    args = [a.astype(F32) for a in _case(rng, 2, 4, 5, 5, 6, 3, 3, 3, 2)]
    x, Wk, a_w, a_s, a_c, a_f = args

    def call(**over):
        kw = dict(zip(("x", "W", "a_w", "a_s", "a_c", "a_f"), args), groups=2)
        return dc.odconv2d(**{**kw, **over})

    with pytest.raises(TypeError, match="a_s must have dtype float32 or float64, got int64"):
        call(a_s=np.ones((2, 3, 3), np.int64))
    with pytest.raises(TypeError, match="a_c has dtype float64 but x has dtype float32"):
        call(a_c=a_c.astype(F64))
    with pytest.raises(TypeError, match="a_f must be a numpy.ndarray"):
        call(a_f=a_f.tolist())
    with pytest.raises(ValueError, match=r"a_w must have shape \(2, 3\) \(N, K\) to match x's batch N=2 and W's K=3"):
        call(a_w=a_w[:, :2])
    with pytest.raises(ValueError, match=r"a_s must have shape \(2, 3, 3\) .* 3x3 kernel, got \(2, 9\)"):
        call(a_s=a_s.reshape(2, 9))
    with pytest.raises(ValueError, match=r"a_c must have shape \(2, 4\)"):
        call(a_c=a_c[:1])
    with pytest.raises(ValueError, match=r"a_f must have shape \(2, 6\) \(N, O\) to match x's batch N=2 and W's O=6"):
        call(a_f=a_f[:, :5])
    with pytest.raises(ValueError, match=r"W must be 5-D \(K, O, C//groups, kh, kw\)"):
        call(W=Wk[0])
    with pytest.raises(ValueError, match="W has 2 input channels per group, but x has 4 channels and groups=1"):
        call(groups=1)
    with pytest.raises(ValueError, match="stride must be positive"):
        call(stride=0)
    with pytest.raises(ValueError, match="dy must have the output's shape"):
        dc.odconv2d.vjp(*args, groups=2)[1](np.ones((2, 6, 1, 1), F32))


# ----------------------------------------------------------------------------- the layer
def _branch_reference(layer, x):
    """The attentions by the authors' formulas, in NumPy: GAP -> fc -> BN (batch statistics
    in training with N > 1, running ones otherwise) -> ReLU -> four heads with tau."""
    p = {k: v.astype(F64) for k, v in layer.state_dict().items()}
    tau = layer.temperature
    h = x.mean(axis=(2, 3)) @ p["fc.weight"].T
    if layer.training and x.shape[0] > 1:
        mean, var = h.mean(axis=0), h.var(axis=0)
    else:
        mean, var = p["bn.running_mean"], p["bn.running_var"]
    h = np.maximum((h - mean) / np.sqrt(var + layer.bn.eps) * p["bn.weight"] + p["bn.bias"], 0)

    def head(name, n):
        if name + ".weight" not in p:
            return np.ones((x.shape[0], n))
        z = (h @ p[name + ".weight"].T + p[name + ".bias"]) / tau
        if name == "kernel_fc":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return 1 / (1 + np.exp(-z))

    (kh, kw), O, K = layer.config.kernel_size, layer.config.out_channels, layer.num_experts
    return (head("kernel_fc", K), head("spatial_fc", kh * kw).reshape(-1, kh, kw),
            head("channel_fc", x.shape[1]), head("filter_fc", O))


LAYERS = {
    "grouped": (dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2), (3, 4, 4, 5)),
    "depthwise": (dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, groups=4), (2, 4, 5, 5)),
    "pointwise K=1": (dict(in_channels=5, out_channels=3, kernel_size=1, num_experts=1), (2, 5, 3, 3)),
}


def _perturbed(kwargs, rng, **extra):
    layer = nn.ODConv2d(**kwargs, **extra, dtype=F64, seed=1)
    for p in layer.params.values():
        p += 0.3 * rng.standard_normal(p.shape)
    return layer


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_structure_and_branch(rng, name):
    kwargs, shape = LAYERS[name]
    layer = nn.ODConv2d(**kwargs, seed=0)
    C, O = kwargs["in_channels"], kwargs["out_channels"]
    k, K = kwargs["kernel_size"], kwargs.get("num_experts", 4)
    assert layer.attention_channels == 16 and nn.ODConv2d(64, 8, 3, reduction=0.5).attention_channels == 32
    keys = {"weight", "fc.weight", "bn.weight", "bn.bias", "channel_fc.weight", "channel_fc.bias"}
    keys |= set() if C == O == kwargs.get("groups", 1) else {"filter_fc.weight", "filter_fc.bias"}
    keys |= set() if k == 1 else {"spatial_fc.weight", "spatial_fc.bias"}
    keys |= set() if K == 1 else {"kernel_fc.weight", "kernel_fc.bias"}
    assert set(layer.params) == keys
    assert layer.weight.shape == (K, O, C // kwargs.get("groups", 1), k, k) and layer.weight.dtype == F32
    for key, p in layer.params.items():             # the authors' initialisation
        if key.endswith(".bias"):
            np.testing.assert_array_equal(p, 0)
    np.testing.assert_array_equal(layer.bn.weight, 1)
    assert layer.temperature == 30.0
    # the forward is odconv2d with the attentions of the authors' formulas, train and eval
    layer = _perturbed(kwargs, rng, temperature=2.5)
    x = rng.standard_normal(shape)
    for mode in ("train", "eval"):
        layer.train(mode == "train")
        atts = _branch_reference(layer, x)
        for got, ref in zip(layer.attentions(x), atts):
            assert_close(got, ref, F64, f"{mode} attention")
        geo = dict(stride=layer.config.stride, padding=layer.config.padding, groups=layer.config.groups)
        assert_close(layer(x), R.odconv2d(x, layer.weight, *atts, **geo), F64, f"{mode} y")


@pytest.mark.parametrize("name", list(LAYERS))
def test_training_with_a_batch_of_one(rng, name):
    kwargs, shape = LAYERS[name]
    layer = _perturbed(kwargs, rng, temperature=1.0)
    layer.bn.running_mean[:] = rng.standard_normal(layer.attention_channels)
    x1 = rng.standard_normal((1,) + shape[1:])
    with pytest.raises(ValueError, match="needs more than one value per channel"):
        nn.BatchNorm1d(4)(np.ones((1, 4), F32))       # what a plain BN in the branch would do
    stats = {k: v.copy() for k, v in layer.buffers.items()}
    y = layer.train()(x1)
    dx = layer.backward(rng.standard_normal(y.shape))
    assert dx.shape == x1.shape and all(np.isfinite(g).all() for g in layer.grads.values())
    assert np.abs(layer.grads["fc.weight"]).max() > 0          # the attentions still depend on x
    for k, v in layer.buffers.items():                         # running statistics untouched
        np.testing.assert_array_equal(v, stats[k])
    # the branch normalises with the running statistics: the eval-mode output, bitwise
    np.testing.assert_array_equal(y, copy.deepcopy(layer).eval()(x1))
    # and the training step is a correct gradient (whole layer, N = 1, training mode)
    if name == "grouped":
        dc.gradcheck(nn.as_function(layer), (x1, *layer.params.values()), mode="projection")
    # a larger batch trains the BN as usual: the running statistics move
    layer(rng.standard_normal((2,) + shape[1:]))
    assert not np.array_equal(layer.bn.running_mean, stats["bn.running_mean"])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_whole_layer_gradcheck(rng, mode):
    layer = _perturbed(LAYERS["grouped"][0], rng, temperature=1.0)
    layer.bn.running_var[:] = 1.5
    layer.train(mode == "train")
    x = rng.standard_normal(LAYERS["grouped"][1])
    dc.gradcheck(nn.as_function(layer), (x, *layer.params.values()), mode="projection")


def test_temperature_schedule_and_state(rng, tmp_path):
    layer = nn.ODConv2d(4, 6, 3, padding=1, seed=0)
    sched = nn.TemperatureSchedule(nn.Sequential(layer), tau0=30.0, epochs=2)
    sched.step()
    assert layer.temperature == pytest.approx(15.5)
    x = rng.standard_normal((2, 4, 5, 5)).astype(F32)
    layer(x)                                                   # running statistics move
    layer.save(tmp_path / "od.npz")
    other = nn.ODConv2d(4, 6, 3, padding=1, seed=5)
    other.load(tmp_path / "od.npz")
    assert other.temperature == layer.temperature
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    layer.eval(), other.eval()
    np.testing.assert_array_equal(layer(x), other(x))
    with pytest.raises(ValueError, match=r"ODConv2d\(4, 6, 3, padding=1\) expects x with 4"):
        layer(np.ones((2, 3, 5, 5), F32))
    with pytest.raises(TypeError, match="reduction must be a positive number"):
        nn.ODConv2d(4, 6, 3, reduction="x")
    with pytest.raises(ValueError, match="num_experts must be a positive int"):
        nn.ODConv2d(4, 6, 3, num_experts=0)


def test_layer_on_backend(backend, rng):
    """The layer in float32 on the backend (``to_device`` for CUDA) against its float64 host twin."""
    # depthwise: the filter attention is a constant, made on the layer's device
    kwargs = dict(in_channels=2, out_channels=2, kernel_size=3, padding=1, groups=2, num_experts=2,
                  min_channels=3)
    ref = _perturbed(kwargs, rng, temperature=2.0)
    layer = nn.ODConv2d(**kwargs, seed=0)
    layer.load_state_dict(ref.state_dict())
    if backend.name == "cuda":
        layer.to_device()
    x = rng.standard_normal((2, 2, 3, 3))
    y = ref(x)
    assert_close(backend.get(layer(backend.put(x.astype(F32)))), y, F32, "y", f32_tol=5e-5)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(backend.put(dy.astype(F32)))
    assert_close(backend.get(dx), ref.backward(dy), F32, "dx", f32_tol=5e-5)
    for k, g in ref.grads.items():
        assert_close(backend.get(layer.grads[k]), g, F32, f"grad {k}", f32_tol=5e-5)
    for k, b in ref.buffers.items():
        if b.ndim:
            assert_close(backend.get(layer.buffers[k]), b, F32, f"buffer {k}", f32_tol=5e-5)
