"""Layers: whole-layer gradchecks, routing, folding, schedules, state, training, errors."""


import numpy as np
import pytest

import dynconv_np as dc
from dynconv_np import nn
from dynconv_np.checks.nn import eval_twin

F64 = np.float64


def perturb(layer, rng, scale=0.3):
    """Move parameters off their symmetric starts (zero biases, uniform mixtures); keep the
    attention's hidden ReLUs active so the routing branch matters."""
    for k, p in layer.params.items():
        p += (scale * rng.standard_normal(p.shape)).astype(p.dtype)
        if k.endswith("fc1.bias"):
            p += 1
    return layer


LAYERS = {
    "conv": lambda dt: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, dtype=dt, seed=0),
    "conv1x1": lambda dt: nn.Conv2d(4, 6, 1, bias=False, dtype=dt, seed=0),
    "cond": lambda dt: nn.CondConv2d(4, 6, 3, padding=1, num_experts=3, dtype=dt, seed=1),
    "cond_s2_g2": lambda dt: nn.CondConv2d(4, 6, 3, 2, 1, 1, 2, False, dtype=dt, seed=1),
    "dyn": lambda dt: nn.DynamicConv2d(4, 6, 3, padding=2, dilation=2, temperature=1.0, dtype=dt, seed=2),
    "dyn1x1_g2": lambda dt: nn.DynamicConv2d(4, 6, 1, groups=2, temperature=2.0, dtype=dt, seed=3),
    "dyn_s2_same": lambda dt: nn.DynamicConv2d(4, 4, (3, 1), stride=(2, 1), padding=(1, 0), reduction=1,
                                               temperature=1.0, dtype=dt, seed=3),
    "mix": lambda dt: nn.MixtureConv2d(4, 6, 3, padding=1, num_branches=3, dtype=dt, seed=4),
    "mix_pc": lambda dt: nn.MixtureConv2d(4, 6, 3, stride=2, groups=2, num_branches=3, per_channel=True,
                                          dtype=dt, seed=5),
    "bn": lambda dt: nn.BatchNorm2d(4, dtype=dt),
    "linear_net": lambda dt: nn.Sequential(nn.GlobalAvgPool2d(), nn.Linear(4, 5, dtype=dt, seed=6), nn.ReLU(),
                                           nn.BatchNorm1d(5, dtype=dt), nn.Linear(5, 3, dtype=dt, seed=7)),
    "block": lambda dt: nn.Sequential(
        nn.DynamicConv2d(4, 6, 3, padding=1, temperature=1.0, dtype=dt, seed=8), nn.BatchNorm2d(6, dtype=dt),
        nn.ReLU(), nn.CondConv2d(6, 6, 3, stride=2, padding="valid", dtype=dt, seed=9),
        nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(6, 3, dtype=dt, seed=10)),
}


# ----------------------------------------------------------------------------- whole-layer gradchecks
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_gradcheck(name, mode, rng):
    layer = perturb(LAYERS[name](F64), rng)
    if mode == "eval":
        layer = eval_twin(layer)
    x = rng.standard_normal((3, 4, 7, 7))
    state = layer.state_dict()
    rep = dc.gradcheck(nn.as_function(layer), (x, *layer.params.values()), mode="projection")
    assert len(rep.args) == 1 + len(layer.params)
    # as_function leaves the layer as it was (running statistics included)
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


def test_float32_layer_checks_in_float64(rng):
    layer = perturb(nn.Sequential(nn.DynamicConv2d(3, 4, 3, padding=1, temperature=1.0, seed=0),
                                  nn.BatchNorm2d(4)), rng)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    dc.gradcheck(nn.as_function(layer), (x, *layer.params.values()), mode="projection")
    assert all(p.dtype == np.float32 for p in layer.params.values())
    assert layer[1].running_mean.dtype == np.float32


@pytest.mark.parametrize("cls", [nn.DynamicConv2d, nn.CondConv2d])
def test_routing_contributes_to_dx(cls, rng):
    """dx = the conv's dx with the mixing weights frozen + the routing branch's share through GAP."""
    kw = {"temperature": 1.0} if cls is nn.DynamicConv2d else {}
    layer = perturb(cls(4, 5, 3, padding=1, dtype=F64, seed=0, **kw), rng, scale=1.0)
    x = rng.standard_normal((3, 4, 6, 6))
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    pi = layer.routing_weights(x)
    y2, pb = dc.dynamic_conv2d.vjp(x, layer.weight, pi, layer.bias, padding=1)
    np.testing.assert_allclose(y, y2, rtol=1e-12, atol=1e-12)
    dx_conv = pb(dy)[0]
    branch = dx - dx_conv
    # the branch acts through GAP, so its share is constant over each (n, c) plane
    assert np.abs(branch).max() > 1e-3
    np.testing.assert_allclose(branch, np.broadcast_to(branch[:, :, :1, :1], branch.shape), atol=1e-12)
    dc.gradcheck(nn.as_function(layer), (x,), wrt=[0], mode="full")


# ----------------------------------------------------------------------------- the layers' math
def test_conv2d_matches_op(rng):
    layer = nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding="valid", dilation=(2, 1), groups=2, dtype=F64,
                      seed=3)
    assert layer.weight.shape == (6, 2, 3, 2) and layer.bias.shape == (6,)
    x = rng.standard_normal((2, 4, 9, 8))
    np.testing.assert_array_equal(layer(x), dc.conv2d(x, layer.weight, layer.bias, (1, 2), 0, (2, 1), 2))


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_mixture_equals_single_conv_with_merged_kernel(per_channel, bias, rng):
    layer = perturb(nn.MixtureConv2d(4, 6, 3, padding=1, groups=2, bias=bias, num_branches=3,
                                     per_channel=per_channel, dtype=F64, seed=0), rng)
    assert layer.theta.shape == ((3, 6) if per_channel else (3,))
    x = rng.standard_normal((2, 4, 6, 6))
    W, b = layer.merged_kernel()
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=bias, dtype=F64)
    conv.params["weight"] = W
    if bias:
        conv.params["bias"] = b
    np.testing.assert_allclose(layer(x), conv(x), rtol=1e-12, atol=1e-12)
    # and, by linearity, the softmax-weighted sum of the K branch convolutions
    a = layer.mixture()
    ys = [dc.conv2d(x, layer.weight[k], layer.bias[k] if bias else None, padding=1, groups=2)
          for k in range(3)]
    mix = sum((a[k][None, :, None, None] if per_channel else a[k]) * ys[k] for k in range(3))
    np.testing.assert_allclose(layer(x), mix, rtol=1e-12, atol=1e-12)


def test_mixture_uniform_at_init():
    layer = nn.MixtureConv2d(3, 4, 3, num_branches=5, dtype=F64, seed=0)
    np.testing.assert_allclose(layer.mixture(), 0.2)


def test_dynamic_attention_and_temperature(rng):
    layer = perturb(nn.DynamicConv2d(6, 4, 3, padding=1, dtype=F64, seed=0), rng, scale=2.0)
    assert layer.temperature == 30.0 and layer.hidden_channels == 1
    assert layer.params["fc1.weight"].shape == (1, 6) and layer.params["fc2.weight"].shape == (4, 1)
    x = rng.standard_normal((5, 6, 4, 4))
    hot = layer.routing_weights(x)
    layer.temperature = 1.0
    cold = layer.routing_weights(x)
    np.testing.assert_allclose(hot.sum(1), 1)
    np.testing.assert_allclose(cold.sum(1), 1)
    assert np.abs(hot - 0.25).max() < np.abs(cold - 0.25).max()
    with pytest.raises(ValueError, match="temperature"):
        layer.temperature = 0.0
    assert nn.DynamicConv2d(16, 4, 1, hidden_channels=7).hidden_channels == 7
    assert nn.DynamicConv2d(16, 4, 1, reduction=2).hidden_channels == 8


def test_condconv_init_and_sigmoid_routing(rng):
    layer = nn.CondConv2d(16, 32, 3, num_experts=8, dtype=F64, seed=0)
    assert layer.weight.shape == (8, 32, 16, 3, 3)
    np.testing.assert_allclose(layer.weight.std(), np.sqrt(2 / (9 * 32)), rtol=0.05)
    assert not np.allclose(layer.weight[0], layer.weight[1])
    np.testing.assert_array_equal(layer.bias, 0)
    r = layer.routing_weights(rng.standard_normal((3, 16, 5, 5)))
    assert r.shape == (3, 8) and np.all((r > 0) & (r < 1))


def test_condconv_external_routing_shared_by_a_block(rng):
    """One routing serves two convs; the routing gradients of both add up."""
    c1 = perturb(nn.CondConv2d(4, 4, 3, padding=1, num_experts=3, dtype=F64, seed=1), rng)
    c2 = perturb(nn.CondConv2d(4, 4, 3, padding=1, num_experts=3, dtype=F64, seed=2), rng)
    x = rng.standard_normal((2, 4, 5, 5))
    r = dc.sigmoid(rng.standard_normal((2, 3)))

    def block(r_):
        return c2(c1(x, routing=r_), routing=r_)

    y = block(r)
    np.testing.assert_allclose(c1(x, routing=r), dc.dynamic_conv2d(x, c1.weight, r, c1.bias, padding=1))
    y = block(r)
    dy = rng.standard_normal(y.shape)
    c1.backward(c2.backward(dy))
    g = c1.routing_grad + c2.routing_grad
    u = rng.standard_normal(r.shape)
    eps = 1e-6
    num = np.vdot(dy, (block(r + eps * u) - block(r - eps * u)) / (2 * eps))
    np.testing.assert_allclose(np.vdot(g, u), num, rtol=1e-6)
    # the routing branch is not used: no gradient reaches it
    np.testing.assert_array_equal(c1.grads["route.weight"], 0)
    with pytest.raises(ValueError, match="routing must have shape"):
        c1(x, routing=np.ones((3, 3)))


@pytest.mark.parametrize("cls", [nn.DynamicConv2d, nn.CondConv2d])
def test_merged_kernels_reproduce_output(cls, rng):
    layer = perturb(cls(4, 6, 3, stride=2, padding=1, groups=2, dtype=F64, seed=0), rng).eval()
    x = rng.standard_normal((3, 4, 7, 7))
    W, b = layer.merged_kernels(x)
    assert W.shape == (3, 6, 2, 3, 3) and b.shape == (3, 6)
    y = np.concatenate([dc.conv2d(x[n:n + 1], W[n], b[n], 2, 1, 1, 2) for n in range(3)])
    np.testing.assert_allclose(layer(x), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_fold_bn_into_dynamic_conv(bias, rng):
    conv = perturb(nn.DynamicConv2d(4, 6, 3, padding=1, bias=bias, temperature=2.0, dtype=F64, seed=0), rng)
    bn = nn.BatchNorm2d(6, dtype=F64)
    perturb(bn, rng)
    x = rng.standard_normal((4, 4, 6, 6))
    bn(conv(x))  # one training step gives the BN non-trivial running statistics
    conv.eval()
    bn.eval()
    folded = conv.fold_bn(bn)
    folded.eval()
    np.testing.assert_allclose(folded(x), bn(conv(x)), rtol=1e-12, atol=1e-12)
    assert folded.temperature == 2.0 and "bias" in folded.params


def test_fold_bn_into_condconv_keeps_static_shift(rng):
    conv = perturb(nn.CondConv2d(4, 6, 3, padding=1, dtype=F64, seed=0), rng)
    bn = perturb(nn.BatchNorm2d(6, dtype=F64), rng)
    x = rng.standard_normal((4, 4, 6, 6))
    bn(conv(x))
    conv.eval()
    bn.eval()
    folded = conv.fold_bn(bn)
    assert "shift" in folded.params
    np.testing.assert_allclose(folded(x), bn(conv(x)), rtol=1e-12, atol=1e-12)
    W, b = folded.merged_kernels(x)
    y = np.concatenate([dc.conv2d(x[n:n + 1], W[n], b[n], padding=1) for n in range(4)])
    np.testing.assert_allclose(folded(x), y, rtol=1e-12, atol=1e-12)
    dc.gradcheck(nn.as_function(folded), (x, *folded.params.values()), mode="projection")
    with pytest.raises(ValueError, match="channels"):
        conv.fold_bn(nn.BatchNorm2d(5))
    with pytest.raises(TypeError, match="BatchNorm2d"):
        conv.fold_bn(nn.ReLU())


# ----------------------------------------------------------------------------- temperature schedule
def test_temperature_schedule_per_iteration():
    s = nn.TemperatureSchedule(iters_per_epoch=100)          # T = 10 epochs * 100 = 1000
    assert s.total == 1000
    assert s(0) == 30.0
    assert s(500) == pytest.approx(15.5)
    assert s(250) == pytest.approx(1 + 29 * 0.75)
    assert s(1000) == 1.0
    assert s(5000) == 1.0


def test_temperature_schedule_per_epoch_and_model():
    net = nn.Sequential(nn.DynamicConv2d(3, 4, 3, seed=0), nn.ReLU(), nn.DynamicConv2d(4, 4, 3, seed=1))
    s = nn.TemperatureSchedule(net, tau0=11.0, epochs=5, per="epoch")
    assert net[0].temperature == 11.0
    values = [s.step() for _ in range(7)]
    assert values == pytest.approx([9.0, 7.0, 5.0, 3.0, 1.0, 1.0, 1.0])
    assert net[0].temperature == 1.0 and net[2].temperature == 1.0
    assert nn.TemperatureSchedule(tau0=1.0)(0) == 1.0         # tau0 = 1 disables the annealing
    with pytest.raises(ValueError, match="per"):
        nn.TemperatureSchedule(per="batch")
    with pytest.raises(ValueError, match="t must be non-negative"):
        s(-1)


# ----------------------------------------------------------------------------- protocol and state
def test_grads_accumulate_and_zero(rng):
    layer = nn.DynamicConv2d(3, 4, 3, padding=1, dtype=F64, seed=0)
    x = rng.standard_normal((2, 3, 5, 5))
    dy = rng.standard_normal((2, 4, 5, 5))
    assert list(layer.params) == list(layer.grads)
    layer(x)
    layer.backward(dy)
    once = {k: v.copy() for k, v in layer.grads.items()}
    layer.backward(dy)
    for k in once:
        np.testing.assert_allclose(layer.grads[k], 2 * once[k])
    layer.zero_grad()
    assert all(not g.any() for g in layer.grads.values())


def test_train_eval_propagate():
    net = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Sequential(nn.BatchNorm2d(2), nn.ReLU()))
    net.eval()
    assert not any(m.training for _, m in net.named_modules())
    net.train()
    assert all(m.training for _, m in net.named_modules())
    assert list(net.params) == ["0.weight", "0.bias", "1.0.weight", "1.0.bias"]
    assert list(net.buffers) == ["1.0.running_mean", "1.0.running_var"]


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Conv2d(2, 2, 1).backward(np.zeros((1, 2, 1, 1), np.float32))


def test_layers_do_not_modify_inputs(rng):
    net = LAYERS["block"](F64)
    x = rng.standard_normal((2, 4, 6, 6))
    x0 = x.copy()
    y = net(x)
    dy = rng.standard_normal(y.shape)
    dy0 = dy.copy()
    net.backward(dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)


def make_net(dtype=np.float32, seed=0):
    return nn.Sequential(
        nn.DynamicConv2d(1, 8, 3, padding=1, dtype=dtype, seed=seed), nn.BatchNorm2d(8, dtype=dtype), nn.ReLU(),
        nn.CondConv2d(8, 8, 3, stride=2, padding=1, dtype=dtype, seed=seed + 1), nn.BatchNorm2d(8, dtype=dtype),
        nn.ReLU(), nn.MixtureConv2d(8, 8, 1, per_channel=True, dtype=dtype, seed=seed + 2),
        nn.GlobalAvgPool2d(), nn.Linear(8, 4, dtype=dtype, seed=seed + 3))


def test_state_dict_round_trip(tmp_path, rng):
    net = make_net()
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    net(x)                                               # running statistics move
    net[0].temperature = 7.5
    net.eval()
    y = net(x)
    sd = net.state_dict()
    assert "0.tau" in sd and "1.running_var" in sd and "3.route.weight" in sd
    other = make_net(seed=10).eval()
    assert not np.array_equal(other(x), y)
    other.load_state_dict(sd)
    np.testing.assert_array_equal(other(x), y)
    assert other[0].temperature == 7.5
    path = tmp_path / "net.npz"
    net.save(path)
    third = make_net(seed=20).eval()
    third.load(path)
    np.testing.assert_array_equal(third(x), y)
    # state_dict holds copies
    sd["0.weight"][...] = 0
    assert net.params["0.weight"].any()


def test_load_state_dict_errors():
    net = make_net()
    sd = net.state_dict()
    bad = dict(sd)
    del bad["0.weight"]
    with pytest.raises(KeyError, match="0.weight"):
        net.load_state_dict(bad)
    bad = dict(sd, **{"0.weight": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="0.weight"):
        net.load_state_dict(bad)
    net.load_state_dict({"8.bias": np.ones(4)}, strict=False)
    np.testing.assert_array_equal(net[8].bias, 1)


# ----------------------------------------------------------------------------- batch size 1
@pytest.mark.parametrize("name", [n for n in LAYERS if n not in ("bn", "linear_net")])
def test_batch_size_one_training(name, rng):
    layer = LAYERS[name](np.float32)
    opt = nn.SGD(layer, lr=0.01, momentum=0.9)
    x = rng.standard_normal((1, 4, 7, 7)).astype(np.float32)
    for _ in range(2):
        y = layer(x)
        opt.zero_grad()
        dx = layer.backward(np.ones_like(y))
        opt.step()
        assert dx.shape == x.shape and np.isfinite(dx).all()
        assert all(np.isfinite(g).all() for g in layer.grads.values())


def test_batchnorm_one_value_per_channel_raises(rng):
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\).*one value per channel"):
        bn(np.ones((1, 3, 1, 1), np.float32))
    bn(np.ones((1, 3, 2, 1), np.float32))                 # N*H*W = 2 is fine
    bn.eval()
    assert np.isfinite(bn(np.ones((1, 3, 1, 1), np.float32))).all()
    net = nn.Sequential(nn.GlobalAvgPool2d(), nn.Linear(3, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\)"):
        net(np.ones((1, 3, 4, 4), np.float32))


# ----------------------------------------------------------------------------- loss and optimisers
def test_softmax_cross_entropy(rng):
    crit = nn.SoftmaxCrossEntropy()
    logits = rng.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    p = dc.softmax(logits)
    assert crit(logits, labels) == pytest.approx(-np.log(p[np.arange(5), labels]).mean())
    g = crit.backward()
    u = rng.standard_normal(logits.shape)
    eps = 1e-6
    num = (crit(logits + eps * u, labels) - crit(logits - eps * u, labels)) / (2 * eps)
    assert np.vdot(g, u) == pytest.approx(num, rel=1e-6)
    onehot = np.eye(4)[labels]
    assert crit(logits, onehot) == pytest.approx(crit(logits, labels))
    assert np.isfinite(crit(np.array([[1e4, -1e4]]), np.array([1])))
    with pytest.raises(ValueError, match="target labels"):
        crit(logits, np.array([0, 4, 1, 1, 2]))
    with pytest.raises(ValueError, match="target must have shape"):
        crit(logits, labels[:3])


def test_sgd_and_adam_match_their_rules():
    p = {"w": np.array([1.0, -2.0])}
    g = {"w": np.array([0.5, 0.25])}
    opt = nn.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, grads=g)
    opt.step()
    d1 = g["w"] + 0.01 * np.array([1.0, -2.0])
    w1 = np.array([1.0, -2.0]) - 0.1 * d1
    np.testing.assert_allclose(p["w"], w1)
    opt.step()
    d2 = g["w"] + 0.01 * w1
    np.testing.assert_allclose(p["w"], w1 - 0.1 * (0.9 * d1 + d2))

    p = {"w": np.array([1.0, -2.0])}
    opt = nn.Adam(p, lr=0.1, grads=g)
    opt.step()
    np.testing.assert_allclose(p["w"], [1.0 - 0.1, -2.0 - 0.1], rtol=1e-6)  # first step: lr * sign(g)


def test_optimizer_updates_layer_in_place(rng):
    layer = nn.Linear(3, 2, dtype=F64, seed=0)
    w = layer.weight
    opt = nn.SGD(layer, lr=0.5)
    layer(rng.standard_normal((4, 3)))
    layer.backward(np.ones((4, 2)))
    g = layer.grads["weight"].copy()
    w0 = w.copy()
    opt.step()
    assert layer.weight is w
    np.testing.assert_allclose(w, w0 - 0.5 * g)


def fixed_task(n_per=16, seed=0):
    """Four classes of 8x8 images: a horizontal bar, a vertical bar, the diagonal, the anti-diagonal."""
    r = np.random.default_rng(seed)
    X, Y = [], []
    for c in range(4):
        for _ in range(n_per):
            img = np.zeros((8, 8))
            p = r.integers(1, 7)
            if c == 0:
                img[p, :] = 1
            elif c == 1:
                img[:, p] = 1
            elif c == 2:
                np.fill_diagonal(img, 1)
            else:
                np.fill_diagonal(np.fliplr(img), 1)
            X.append(img[None] + 0.3 * r.standard_normal((1, 8, 8)))
            Y.append(c)
    return np.array(X, dtype=np.float32), np.array(Y)


def test_end_to_end_training():
    X, Y = fixed_task()
    net = nn.Sequential(
        nn.DynamicConv2d(1, 8, 3, padding=1, seed=0), nn.BatchNorm2d(8), nn.ReLU(),
        nn.DynamicConv2d(8, 8, 3, stride=2, padding=1, seed=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.GlobalAvgPool2d(), nn.Linear(8, 4, seed=2))
    crit = nn.SoftmaxCrossEntropy()
    opt = nn.Adam(net, lr=0.02)
    sched = nn.TemperatureSchedule(net, epochs=2, iters_per_epoch=10)
    losses = []
    for _ in range(60):
        losses.append(crit(net(X), Y))
        opt.zero_grad()
        net.backward(crit.backward())
        opt.step()
        sched.step()
    assert net[0].temperature == 1.0
    assert losses[0] > 1.0 and losses[-1] < 0.1 * losses[0], losses[::10]
    net.eval()
    assert (net(X).argmax(1) == Y).mean() >= 0.9


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call,exc,words", [
    (lambda: nn.Conv2d(4, 6, 3, groups=4), ValueError, "groups=4 does not divide out_channels=6"),
    (lambda: nn.Conv2d(0, 6, 3), ValueError, "in_channels"),
    (lambda: nn.Conv2d(4, 6, 0), ValueError, "kernel_size"),
    (lambda: nn.Conv2d(4, 6, 3, stride=2, padding="same"), ValueError, "same"),
    (lambda: nn.Conv2d(4, 6, 3, padding=-1), ValueError, "padding"),
    (lambda: nn.Conv2d(4, 6, 3, dtype=np.float16), TypeError, "dtype"),
    (lambda: nn.Conv2d(4, 6, 3, dtype=np.int32), TypeError, "dtype"),
    (lambda: nn.Conv2d(4, 6, 3, seed=1, rng=np.random.default_rng()), ValueError, "seed or rng"),
    (lambda: nn.DynamicConv2d(4, 6, 3, num_experts=0), ValueError, "num_experts"),
    (lambda: nn.DynamicConv2d(4, 6, 3, temperature=-1.0), ValueError, "temperature"),
    (lambda: nn.DynamicConv2d(4, 6, 3, reduction=0), ValueError, "reduction"),
    (lambda: nn.MixtureConv2d(4, 6, 3, num_branches=0), ValueError, "num_branches"),
    (lambda: nn.MixtureConv2d(4, 6, 3, per_channel="yes"), TypeError, "per_channel"),
    (lambda: nn.CondConv2d(4, 6, 3, num_experts=2.5), TypeError, "num_experts"),
    (lambda: nn.BatchNorm2d(4, momentum=1.5), ValueError, "momentum"),
    (lambda: nn.SGD(nn.Linear(2, 2), lr=-1.0), ValueError, "lr"),
])
def test_constructor_errors(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value), str(info.value)


@pytest.mark.parametrize("name", ["conv", "cond", "dyn", "mix", "mix_pc", "bn"])
def test_forward_errors(name):
    layer = LAYERS[name](np.float32)
    with pytest.raises(ValueError, match="channels|x has"):
        layer(np.zeros((2, 5, 7, 7), np.float32))
    with pytest.raises(ValueError, match="x must be 4-D"):
        layer(np.zeros((5, 7, 7), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        layer(np.zeros((2, 4, 7, 7), np.int64))
    with pytest.raises(TypeError, match="dtype"):
        layer(np.zeros((2, 4, 7, 7), np.float64))        # a float32 layer refuses float64 input


def test_as_function_errors_and_signature(rng):
    layer = nn.Conv2d(2, 3, 1, dtype=F64)
    f = nn.as_function(layer)
    assert f.array_params == ("x", "weight", "bias")
    x = rng.standard_normal((1, 2, 3, 3))
    np.testing.assert_array_equal(f(x), layer(x))        # parameters default to the layer's own
    with pytest.raises(ValueError, match="weight must have shape"):
        f(x, np.zeros((3, 2)))
    with pytest.raises(TypeError, match="3 parameter arrays"):
        f(x, layer.weight, layer.bias, layer.bias)
    with pytest.raises(TypeError, match="Module"):
        nn.as_function(dc.conv2d)


def test_params_are_dicts_that_write_through():
    layer = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    params = layer.params
    assert isinstance(params, dict) and isinstance(layer.grads, dict)
    assert list(params) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    w = np.full((3, 2), 0.5, np.float32)
    params["0.weight"] = w
    assert layer[0].weight is w and layer.params["0.weight"] is w
    layer[2].weight = np.zeros((1, 3), np.float32)        # attribute assignment goes through the same checks
    assert not layer.params["2.weight"].any()
    with pytest.raises(TypeError, match="fixed"):
        del params["0.bias"]
    with pytest.raises(TypeError, match="fixed"):
        params.pop("0.bias")


def test_params_view_assignment_checks():
    layer = nn.Linear(2, 3)
    with pytest.raises(ValueError, match="weight must have shape"):
        layer.params["weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(TypeError, match="dtype"):
        layer.params["weight"] = np.zeros((3, 2))
    with pytest.raises(KeyError):
        layer.params["nope"] = np.zeros(1)


@pytest.mark.parametrize("cls", [nn.DynamicConv2d, nn.CondConv2d])
def test_inference_helpers_keep_the_training_cache(cls, rng):
    layer = perturb(cls(3, 4, 3, padding=1, dtype=F64, seed=0), rng)
    x, dy = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((2, 4, 5, 5))
    layer(x)
    dx1 = layer.backward(dy)
    layer(x)
    layer.merged_kernels(rng.standard_normal((5, 3, 5, 5)))   # another batch in between
    np.testing.assert_array_equal(layer.backward(dy), dx1)


def test_as_function_pullback_is_repeatable_and_side_effect_free(rng):
    layer = perturb(LAYERS["block"](F64), rng)
    x = rng.standard_normal((2, 4, 7, 7))
    layer(x)
    layer.backward(rng.standard_normal((2, 3)))
    grads = {k: v.copy() for k, v in layer.grads.items()}
    f = nn.as_function(layer)
    y, pb = f.vjp(x, *layer.params.values())
    dy = rng.standard_normal(y.shape)
    first = pb(dy)
    f(x + 1)                                                # another forward in between
    second = pb(dy)
    assert len(first) == 1 + len(layer.params)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    for k, v in layer.grads.items():
        np.testing.assert_array_equal(v, grads[k])
    # the pullback's parameter gradients are what backward accumulates
    layer.zero_grad()
    layer(x)
    dx = layer.backward(dy)
    np.testing.assert_allclose(first[0], dx, rtol=1e-12, atol=1e-14)
    for g, k in zip(first[1:], layer.params):
        np.testing.assert_allclose(g, layer.grads[k], rtol=1e-12, atol=1e-14)


def test_non_contiguous_input(rng):
    layer = nn.DynamicConv2d(4, 6, 3, padding=1, dtype=F64, seed=0)
    x = rng.standard_normal((3, 8, 6, 6))[:, ::2].transpose(0, 1, 3, 2)
    np.testing.assert_allclose(layer(x), layer(np.ascontiguousarray(x)), rtol=1e-13, atol=1e-13)
