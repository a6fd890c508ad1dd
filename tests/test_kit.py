"""The kit around the layers (issue 13): threads, readable models, summaries, routing
records and statistics, the shared-routing block, the seeded default initialisation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dynconv_np as dc
from dynconv_np import nn

F32, F64 = np.float32, np.float64
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- threads
def test_set_num_threads_sets_numba_and_blas_and_keeps_the_backend_policy():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from dynconv_np.backends.cpu.products import blas_single_thread

    def blas():
        return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}

    before = dc.get_num_threads()
    try:
        dc.set_num_threads(1)
        assert dc.get_num_threads() == 1 and blas() <= {1}
        n = min(2, __import__("numba").config.NUMBA_NUM_THREADS)
        dc.set_num_threads(n)
        assert dc.get_num_threads() == n and blas() <= {n}
        with blas_single_thread():
            assert blas() <= {1}                         # the CPU backend's own policy still holds
        assert blas() <= {n}                             # and gives the process setting back
    finally:
        dc.set_num_threads(before)
    for bad, exc in ((0, ValueError), (10**6, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc, match="^n must be"):
            dc.set_num_threads(bad)


_THREADS_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
import dynconv_np as dc
from dynconv_np import nn

def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()

out = {}
for n in (1, 2, 4):
    dc.set_num_threads(n)
    r = np.random.default_rng(0)
    x = r.standard_normal((5, 8, 11, 9)).astype(np.float32)
    W = r.standard_normal((3, 16, 4, 3, 3)).astype(np.float32)
    pi = r.random((5, 3)).astype(np.float32)
    y, pb = dc.dynamic_conv2d.vjp(x, W, pi, padding=1, groups=2)
    y2, pb2 = dc.conv2d.vjp(x, W[0], None, stride=2, groups=2)
    layer = nn.DCDConv2d(8, 6, residual_bn=True, seed=0)
    y3 = layer(x)
    dx3 = layer.backward(np.ones_like(y3))
    out[n] = [digest(y, *pb(np.ones_like(y))), digest(y2, *pb2(np.ones_like(y2))),
              digest(y3, dx3, *layer.grads.values())]
print(json.dumps(out))
"""


def test_results_are_bitwise_the_same_for_every_thread_count():
    env = dict(os.environ, NUMBA_NUM_THREADS="4")               # a pool of 4 on any machine
    r = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["1"] == out["2"] == out["4"]


# ----------------------------------------------------------------------------- readable models
def test_repr_shows_every_argument_that_differs_from_its_default():
    assert repr(nn.DynamicConv2d(3, 16, 3)) == "DynamicConv2d(3, 16, 3)"
    assert (repr(nn.DynamicConv2d(3, 16, (3, 3), stride=2, num_experts=8, temperature=1.0, dtype=F64, seed=4))
            == "DynamicConv2d(3, 16, (3, 3), stride=2, num_experts=8, temperature=1.0, dtype=np.float64)")
    assert repr(nn.Conv2d(1, 2, 3, 1, 1, bias=False)) == "Conv2d(1, 2, 3, padding=1, bias=False)"
    assert repr(nn.CondConv2d(4, 4, 1, padding="same")) == "CondConv2d(4, 4, 1, padding='same')"
    assert repr(nn.AtomConv2d(8, 8, hidden_channels=16)) == "AtomConv2d(8, 8, hidden_channels=16)"
    assert repr(nn.DCDConv2d(8, 8, residual_bn=True)) == "DCDConv2d(8, 8, residual_bn=True)"
    assert repr(nn.BatchNorm2d(8, momentum=0.2)) == "BatchNorm2d(8, momentum=0.2)"
    assert repr(nn.Linear(2, 3)) == "Linear(2, 3)" and repr(nn.ReLU()) == "ReLU()"
    folded = nn.CondConv2d(2, 2, 1, seed=0).fold_bn(nn.BatchNorm2d(2))
    assert repr(folded) == "CondConv2d(2, 2, (1, 1), static_bias=True)"     # (1, 1) strides are defaults


def test_containers_print_a_tree():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                        nn.Sequential(nn.MixtureConv2d(4, 4, 3, num_branches=2), nn.BatchNorm2d(4)),
                        nn.GlobalAvgPool2d(), nn.Linear(4, 10))
    assert repr(net) == "\n".join([
        "Sequential(",
        "  (0): Conv2d(1, 4, 3, padding=1)",
        "  (1): ReLU()",
        "  (2): Sequential(",
        "    (0): MixtureConv2d(4, 4, 3, num_branches=2)",
        "    (1): BatchNorm2d(4)",
        "  )",
        "  (3): GlobalAvgPool2d()",
        "  (4): Linear(4, 10)",
        ")"])
    block = nn.CondConvBlock(nn.CondConv2d(4, 8, 1), nn.ReLU(), in_channels=4)
    assert repr(block).splitlines() == ["CondConvBlock(", "  in_channels=4", "  (0): CondConv2d(4, 8, 1)",
                                        "  (1): ReLU()", "  (route): Linear(4, 4)", ")"]


def test_summary_lists_every_layer_with_shapes_params_and_mult_adds():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, seed=0), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.DynamicConv2d(4, 8, 3, stride=2, padding=1, num_experts=2, seed=0),
                        nn.GlobalAvgPool2d(), nn.Linear(8, 10, seed=0))
    s = nn.summary(net, (1, 8, 8))
    text = str(s)
    labels = [r[0] for r in s.rows]
    assert labels == ["0: Conv2d(1, 4, 3, padding=1)", "1: BatchNorm2d(4)", "2: ReLU()",
                      "3: DynamicConv2d(4, 8, 3, stride=2, padding=1, num_experts=2)", "  fc1: Linear(4, 1)",
                      "  fc2: Linear(1, 2)", "4: GlobalAvgPool2d()", "5: Linear(8, 10)"]
    assert [r[1] for r in s.rows][:4] == ["(1, 4, 8, 8)"] * 3 + ["(1, 8, 4, 4)"]
    assert s.total_params == net.num_params() == nn.num_params(net)
    macs = dict(zip(labels, [r[3] for r in s.rows]))
    assert macs["0: Conv2d(1, 4, 3, padding=1)"] == 64 * 4 * 9
    assert macs["3: DynamicConv2d(4, 8, 3, stride=2, padding=1, num_experts=2)"] == 16 * 8 * 4 * 9 + 2 * 8 * 4 * 9
    assert macs["5: Linear(8, 10)"] == 80 and macs["1: BatchNorm2d(4)"] == 0
    assert s.complete and f"{s.total_params:,} parameters" in text and "mult-adds" in text.splitlines()[0]
    assert nn.summary(net, (1, 8, 8), batch_size=3).total_mult_adds == 3 * s.total_mult_adds
    assert net.training and net[1].running_mean.sum() == 0     # modes and statistics untouched


def test_summary_marks_unknown_layers():
    class Scale(nn.module.OpLayer):
        def __init__(self):
            super().__init__()
            self.add_param("s", np.ones(1, F32))

        def forward_pullback(self, x):
            return x * self.s, lambda dy: (dy * self.s, {"s": (dy * x).sum(keepdims=True).reshape(1)})

    s = nn.summary(nn.Sequential(nn.Linear(2, 2), Scale()), (2,))
    assert s.rows[1][3] is None and not s.complete and "?" in str(s) and "not counted" in str(s)


@pytest.mark.parametrize("make", [
    lambda: nn.DCDConv2d(8, 8, residual_bn=True), lambda: nn.AtomConv2d(8, 8, stride=2),
    lambda: nn.MixtureConv2d(8, 8, 3, per_channel=True), lambda: nn.CondConv2d(8, 8, 3),
])
def test_summary_works_for_every_dynamic_layer(make):
    layer = make()
    s = nn.summary(layer, (8, 6, 6))
    assert s.complete and s.total_params == layer.num_params() and s.total_mult_adds > 0


def test_atom_generator_width_and_parameter_counts():
    conv = nn.Conv2d(16, 32, 3).num_params()
    assert 5 < nn.AtomConv2d(16, 32).num_params() / conv < 8           # the default 64-wide generator
    assert nn.AtomConv2d(16, 32, hidden_channels=8).num_params() < 1.5 * conv


# ----------------------------------------------------------------------------- routing records
def test_recorder_collects_every_dynamic_layer_over_batches(rng):
    net = nn.Sequential(nn.MixtureConv2d(2, 4, 3, padding=1, num_branches=3, seed=0), nn.ReLU(),
                        nn.CondConv2d(4, 4, 3, padding=1, seed=0), nn.DynamicConv2d(4, 4, 1, seed=0),
                        nn.DCDConv2d(4, 4, seed=0), nn.AtomConv2d(4, 4, hidden_channels=4, seed=0))
    x = rng.standard_normal((5, 2, 6, 6)).astype(F32)
    with nn.RoutingRecorder(net) as rec:
        net(x[:3])
        net.eval()
        net(x[3:])
    net(x)                                                    # outside the block: not recorded
    assert rec.layers() == ["0", "2", "3", "4", "5"]
    assert rec["0"]["a"].shape == (5, 3) and np.allclose(rec["0"]["a"].sum(1), 1)
    assert rec["2"]["r"].shape == (5, 4) and rec["3"]["pi"].shape == (5, 4)
    assert rec["4"]["lam"].shape == (5, 4) and rec["4"]["phi"].shape == (5, 2, 2)
    assert rec["5"]["atoms"].shape == (5, 6, 3, 3, 6, 6)
    np.testing.assert_allclose(rec["3"]["pi"][3:], net[3].routing_weights(net[2](net[1](net[0](x[3:])))),
                               rtol=1e-6)
    only = nn.RoutingRecorder(net, names=("pi",))
    with only:
        net(x)
    assert only.layers() == ["3"] and list(only["3"]) == ["pi"]
    only.clear()
    with pytest.raises(KeyError, match="no routing recorded"):
        only["3"]


def test_layers_of_other_modules_register_through_the_protocol(rng):
    class Gate(nn.module.OpLayer):                               # a new dynamic layer: one call
        def forward_pullback(self, x):
            g = dc.sigmoid(x.mean(axis=(2, 3)))
            self.keep_routing(gate=g)
            return x, lambda dy: (dy, {})

    net = nn.Sequential(nn.Conv2d(2, 3, 1, seed=0), Gate())
    with nn.RoutingRecorder(net) as rec:
        net(rng.standard_normal((4, 2, 3, 3)).astype(F32))
    assert rec.layers() == ["1"] and rec["1"]["gate"].shape == (4, 3)


def test_attention_statistics():
    K = 4
    uniform = np.full((6, K), 0.25)
    assert nn.attention_entropy(uniform) == pytest.approx(np.log(K))
    assert nn.attention_entropy(uniform, relative=True) == pytest.approx(1.0)
    onehot = np.eye(K)[[0, 1, 1, 3]]
    assert nn.attention_entropy(onehot) == 0.0
    assert nn.attention_entropy(2 * uniform) == pytest.approx(np.log(K))      # sigmoid weights: normalised
    np.testing.assert_array_equal(nn.expert_usage(onehot), [0.25, 0.5, 0, 0.25])
    pc = nn.per_class_mean(onehot, np.array([0, 1, 1, 0]), num_classes=3)
    np.testing.assert_array_equal(pc[0], [0.5, 0, 0, 0.5])
    np.testing.assert_array_equal(pc[1], [0, 1, 0, 0])
    assert np.isnan(pc[2]).all()
    with pytest.raises(ValueError, match="non-negative"):
        nn.attention_entropy(-uniform)
    with pytest.raises(ValueError, match="labels must be"):
        nn.per_class_mean(uniform, np.zeros(5, int))


def test_forward_hook_sees_routing_branches():
    seen = []
    layer = nn.DynamicConv2d(2, 2, 1, seed=0)
    with nn.forward_hook(lambda m, inputs, y: seen.append((m.name(), tuple(y.shape)))):
        layer(np.ones((1, 2, 3, 3), F32))
    layer(np.ones((1, 2, 3, 3), F32))
    assert seen == [("Linear(2, 1)", (1, 1)), ("Linear(1, 4)", (1, 4)), ("DynamicConv2d(2, 2, 1)", (1, 2, 3, 3))]


# ----------------------------------------------------------------------------- shared CondConv routing
def test_cond_conv_block_shares_one_routing_and_sums_its_gradients(rng):
    a = nn.CondConv2d(3, 4, 3, padding=1, num_experts=2, dtype=F64, seed=0)
    b = nn.CondConv2d(4, 4, 1, num_experts=2, dtype=F64, seed=1)
    block = nn.CondConvBlock(a, nn.BatchNorm2d(4, dtype=F64), nn.ReLU(), b, seed=2)
    assert list(block.params)[-2:] == ["route.weight", "route.bias"]
    x = rng.standard_normal((3, 3, 5, 5))
    y = block(x)
    r = block.routing_weights(x)                                   # sigmoid(route(GAP(x))), once
    np.testing.assert_array_equal(a.routing()["r"], r)
    np.testing.assert_array_equal(b.routing()["r"], r)             # the same routing for both
    dy = rng.standard_normal(y.shape)
    dx = block.backward(dy)
    assert dx.shape == x.shape and np.abs(block.grads["route.weight"]).sum() > 0
    rep = dc.gradcheck(nn.as_function(block), (x, *block.params.values()), mode="projection")
    assert rep.passed
    with pytest.raises(ValueError, match="same num_experts"):
        nn.CondConvBlock(nn.CondConv2d(2, 2, 1, num_experts=2), nn.CondConv2d(2, 2, 1, num_experts=3))
    with pytest.raises(ValueError, match="at least one CondConv2d"):
        nn.CondConvBlock(nn.ReLU(), in_channels=2)
    with pytest.raises(ValueError, match="expects x with 3 channels"):
        block(np.ones((1, 2, 5, 5)))


# ----------------------------------------------------------------------------- seeded default initialisation
def test_manual_seed_makes_default_initialisation_reproducible():
    def build():
        return nn.Sequential(nn.Conv2d(2, 3, 3), nn.DynamicConv2d(3, 3, 1), nn.AtomConv2d(3, 3, hidden_channels=4))

    nn.manual_seed(11)
    first = build().state_dict()
    nn.manual_seed(11)
    again = build().state_dict()
    assert all(np.array_equal(v, again[k]) for k, v in first.items())
    nn.manual_seed(12)
    other = build().state_dict()
    assert not np.array_equal(first["0.weight"], other["0.weight"])
    seeded = nn.Conv2d(2, 3, 3, seed=5).weight                     # seed= is unaffected
    nn.manual_seed(99)
    assert np.array_equal(nn.Conv2d(2, 3, 3, seed=5).weight, seeded)
    with pytest.raises(TypeError, match="seed must be an int"):
        nn.manual_seed(1.5)
