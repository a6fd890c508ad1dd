"""The layers on every backend: each layer type, moved to the backend (``to_device()`` for
CUDA; CPU layers stay where they are), against a float64 host twin.

Each layer gives the forward, input gradient, parameter gradients and updated running
statistics of the same layer on the host (a float64 twin, so float32 layers are compared
with a float64 oracle), and comes back with ``to_host()``. The loss and the optimisers
run on the backend's parameters too. CUDA runs on a GPU or under the simulator
(tests/test_simulator.py), which runs one Python thread per CUDA thread: the layers are tiny.
"""

import copy

import numpy as np
import pytest
from conftest import assert_close, cuda_only

from dynconv_np import nn

F32, F64 = np.float32, np.float64

# name: (constructor taking a dtype, device dtype, input shape, modes). Tiny on purpose:
# every GEMM block costs tens of milliseconds in the simulator.
LAYERS = {
    "conv": (lambda dt: nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2, dtype=dt, seed=0), F32,
             (2, 2, 4, 4), ("train",)),
    "cond": (lambda dt: nn.CondConv2d(2, 3, 3, padding=1, num_experts=2, static_bias=True, dtype=dt, seed=1),
             F64, (2, 2, 4, 4), ("train",)),
    "dynamic": (lambda dt: nn.DynamicConv2d(2, 3, 3, padding=1, num_experts=2, temperature=2.0, dtype=dt,
                                            seed=2), F32, (2, 2, 4, 4), ("train",)),
    "mixture": (lambda dt: nn.MixtureConv2d(2, 3, 1, num_branches=3, dtype=dt, seed=4), F64,
                (2, 2, 3, 3), ("train",)),
    "mixture_per_channel": (lambda dt: nn.MixtureConv2d(2, 4, 3, stride=2, groups=2, num_branches=2,
                                                        per_channel=True, dtype=dt, seed=5), F32,
                            (2, 2, 4, 4), ("train",)),
    "dcd": (lambda dt: nn.DCDConv2d(2, 3, 3, dtype=dt, seed=0), F64, (2, 2, 4, 4), ("train",)),
    "dcd_residual_bn": (lambda dt: nn.DCDConv2d(2, 3, 3, stride=2, residual_bn=True, dtype=dt, seed=0), F32,
                        (2, 2, 4, 4), ("train", "eval")),
    "atom": (lambda dt: nn.AtomConv2d(2, 3, 3, num_atoms=2, num_bases=1, hidden_channels=2, dtype=dt, seed=0),
             F64, (2, 2, 4, 4), ("train",)),
    "routing_head": (lambda dt: nn.Sequential(nn.GlobalAvgPool2d(), nn.Linear(2, 5, dtype=dt, seed=6), nn.ReLU(),
                                              nn.BatchNorm1d(5, dtype=dt), nn.Linear(5, 3, dtype=dt, seed=7)),
                     F32, (3, 2, 3, 3), ("train", "eval")),
    "block": (lambda dt: nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1, dtype=dt, seed=8),
                                       nn.BatchNorm2d(2, dtype=dt), nn.ReLU(), nn.Flatten(),
                                       nn.Linear(8, 3, dtype=dt, seed=9)),
              F64, (2, 2, 4, 4), ("train", "eval")),
}


def _perturb(layer, rng):
    """Move parameters off their symmetric starts (zero biases, uniform mixtures, unit BN)."""
    for p in layer.params.values():
        p += (0.3 * rng.standard_normal(p.shape)).astype(p.dtype)
    return layer


def _twin(make, layer, dtype):
    """A new layer of `dtype` holding `layer`'s parameters and buffers."""
    twin = make(dtype)
    twin.load_state_dict(layer.state_dict())
    return twin


def _close(backend, got, ref, dtype, name):
    assert np.dtype(got.dtype) == dtype, name
    assert_close(backend.get(got), ref, dtype, name, f32_tol=5e-5)   # get: checks the device


def _move(layer, backend):
    """`layer` on `backend`: ``to_device()`` for CUDA, as it is for the CPU."""
    return layer.to_device() if backend.name == "cuda" else layer


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_on_backend(backend, rng, name):
    make, dtype, shape, modes = LAYERS[name]
    ref = _perturb(make(F64), rng)                    # the host oracle, float64
    dev = _move(_twin(make, ref, dtype), backend)
    for kind in ("params", "grads", "buffers"):
        for k, a in getattr(dev, kind).items():
            if a.ndim:                                # 0-d buffers are host scalars
                backend.get(a)                        # asserts the array is on the backend
            else:
                assert isinstance(a, np.ndarray), f"{kind}[{k}]"
    x = rng.standard_normal(shape)
    for mode in modes:
        ref.train(mode == "train")
        dev.train(mode == "train")
        ref.zero_grad()
        dev.zero_grad()
        y = ref(x)
        yd = dev(backend.put(x.astype(dtype)))
        _close(backend, yd, y, dtype, f"{mode} y")
        dy = rng.standard_normal(y.shape)
        _close(backend, dev.backward(backend.put(dy.astype(dtype))), ref.backward(dy), dtype, f"{mode} dx")
        for k, g in ref.grads.items():
            _close(backend, dev.grads[k], g, dtype, f"{mode} grad {k}")
        for k, b in ref.buffers.items():                # running statistics after a training batch
            if b.ndim:
                _close(backend, dev.buffers[k], b, dtype, f"{mode} buffer {k}")
    # back to the host: the same numbers in NumPy arrays, and the layer runs there again
    params = {k: backend.get(v) for k, v in dev.params.items()}
    assert dev.to_host() is dev
    for kind in ("params", "grads", "buffers"):
        assert all(isinstance(a, np.ndarray) for a in getattr(dev, kind).values()), kind
    for k, v in dev.params.items():
        np.testing.assert_array_equal(v, params[k])
    assert dev(x.astype(dtype)).shape == y.shape


# ----------------------------------------------------------------------------- CUDA only
@cuda_only
def test_dynamic_temperature_stays_a_host_scalar(backend):
    layer = nn.DynamicConv2d(2, 3, 1, num_experts=2, temperature=5.0, seed=0).to_device()
    assert isinstance(layer.buffers["tau"], np.ndarray) and layer.temperature == 5.0
    nn.TemperatureSchedule(layer, tau0=30.0, epochs=1).step()
    assert layer.temperature == 1.0


@cuda_only
def test_device_layers_check_devices(backend, rng):
    cb = backend.be
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    host = nn.Conv2d(2, 2, 1, seed=0)
    with pytest.raises(TypeError, match="w is a cpu array but x is a cuda array"):
        host(cb.to_device(x))
    dev = copy.deepcopy(host).to_device()
    with pytest.raises(TypeError, match="w is a cuda array but x is a cpu array"):
        dev(x)
    with pytest.raises(TypeError, match="must be a CUDA device array"):
        dev.params["weight"] = np.zeros((2, 2, 1, 1), np.float32)
    dev.params["weight"] = cb.to_device(np.ones((2, 2, 1, 1), np.float32))   # same device: accepted
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Conv2d(2, 2, 1).to_device().backward(cb.to_device(x))
    mix = nn.MixtureConv2d(2, 2, 1, num_branches=2, seed=0).to_device()
    with pytest.raises(TypeError, match="host layers only"):
        mix.merged_kernel()


@cuda_only
def test_state_dict_of_a_device_layer(backend, rng, tmp_path):
    make = LAYERS["block"][0]
    dev = _perturb(make(F64), rng).to_device()
    dev(backend.put(rng.standard_normal((2, 2, 4, 4))))   # running statistics move off their start
    sd = dev.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    other = make(F64).to_device()
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    dev.save(tmp_path / "block.npz")
    host = make(F64)
    host.load(tmp_path / "block.npz")
    for k, v in host.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])


def _net(dtype):
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=dtype, seed=0), nn.BatchNorm2d(3, dtype=dtype),
                         nn.ReLU(), nn.GlobalAvgPool2d(), nn.Linear(3, 4, dtype=dtype, seed=1))


@pytest.mark.parametrize("opt, dtype", [("sgd", F32), ("adam", F64)])
def test_training_step_on_backend(backend, rng, opt, dtype):
    """Loss, its gradient and two optimiser steps on the backend's parameters, against float64 host ones."""
    ref = _perturb(_net(F64), rng)
    dev = _move(_twin(_net, ref, dtype), backend)
    make_opt = {"sgd": lambda m: nn.SGD(m, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
                "adam": lambda m: nn.Adam(m, lr=0.05, weight_decay=1e-3)}[opt]
    o_ref, o_dev = make_opt(ref), make_opt(dev)
    crit_ref, crit_dev = nn.SoftmaxCrossEntropy(), nn.SoftmaxCrossEntropy()
    x, labels = rng.standard_normal((2, 2, 4, 4)), np.array([3, 1])
    loss = crit_ref(ref(x), labels)
    assert crit_dev(dev(backend.put(x.astype(dtype))), labels) == pytest.approx(loss, rel=1e-5)
    for o in (o_ref, o_dev):
        o.zero_grad()
    ref.backward(crit_ref.backward())
    dev.backward(crit_dev.backward())
    for _ in range(2):                                    # the second step reuses the state
        o_ref.step()
        o_dev.step()
    for k, p in ref.params.items():
        _close(backend, dev.params[k], p, dtype, f"{opt} {k}")
    # probabilities as targets, on the device
    logits = rng.standard_normal((2, 4))
    probs = np.full((2, 4), 0.25)
    assert crit_dev(backend.put(logits), backend.put(probs)) == pytest.approx(crit_ref(logits, probs), rel=1e-12)
    _close(backend, crit_dev.backward(2.0), crit_ref.backward(2.0), F64, "dlogits")


@cuda_only
def test_optimiser_state_follows_the_model(backend, rng):
    ref = _perturb(nn.Linear(3, 2, dtype=F64, seed=0), rng)
    for g in ref.grads.values():
        g += rng.standard_normal(g.shape)
    moved = copy.deepcopy(ref)
    o_ref, o_moved = nn.SGD(ref, lr=0.1, momentum=0.9), nn.SGD(moved, lr=0.1, momentum=0.9)
    o_ref.step()
    o_moved.step()                                        # a host momentum buffer...
    moved.to_device()
    o_ref.step()
    o_moved.step()                                        # ...follows the parameters to the device
    for k, p in ref.params.items():
        _close(backend, moved.params[k], p, F64, k)
