"""Default checks: whole layers (routing branch included) through ``nn.as_function``."""

import copy

import numpy as np

from .. import nn
from . import Case, rng


def _layers():
    f64 = np.float64
    return [
        ("Conv2d s2 p1 g2", nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, dtype=f64, seed=1)),
        ("CondConv2d E=3 p1", nn.CondConv2d(4, 6, 3, padding=1, num_experts=3, dtype=f64, seed=2)),
        ("DynamicConv2d K=4 tau=1 d2", nn.DynamicConv2d(4, 6, 3, padding=2, dilation=2, temperature=1.0,
                                                        dtype=f64, seed=3)),
        ("DynamicConv2d 1x1 g2", nn.DynamicConv2d(4, 6, 1, groups=2, temperature=1.0, dtype=f64, seed=4)),
        ("MixtureConv2d theta(K,)", nn.MixtureConv2d(4, 6, 3, padding=1, num_branches=3, dtype=f64, seed=5)),
        ("MixtureConv2d theta(K,O)", nn.MixtureConv2d(4, 6, 3, stride=2, num_branches=3, per_channel=True,
                                                      dtype=f64, seed=6)),
        ("BatchNorm2d", nn.BatchNorm2d(4, dtype=f64)),
        ("Sequential dyn-bn-relu-gap-linear", nn.Sequential(
            nn.DynamicConv2d(4, 6, 3, padding=1, temperature=1.0, dtype=f64, seed=7),
            nn.BatchNorm2d(6, dtype=f64), nn.ReLU(), nn.GlobalAvgPool2d(), nn.Flatten(),
            nn.Linear(6, 3, dtype=f64, seed=8))),
    ]


def cases():
    r = rng(4)
    x = r.standard_normal((3, 4, 7, 7))
    return [case for label, layer in _layers() for case in layer_cases(label, perturbed(layer, r), x)]


def perturbed(layer, r):
    """`layer` with its parameters moved off their symmetric initial values (zero biases,
    uniform mixtures) by ``0.3 * r.standard_normal``, and ``fc1.bias`` raised by 1 to keep
    the hidden ReLUs of an attention branch active; returns `layer`."""
    for k, p in layer.params.items():
        p += 0.3 * r.standard_normal(p.shape)
        if k.endswith("fc1.bias"):
            p += 1.0
    return layer


def layer_cases(label, layer, x, modes=("train", "eval")):
    """Whole-layer projection cases ``nn.<label> <mode>`` of `layer` on `x`, one per mode;
    the eval case checks an :func:`eval_twin`."""
    return [Case(f"nn.{label} {mode}", nn.as_function(twin), (x, *twin.params.values()), mode="projection")
            for mode in modes for twin in [layer if mode == "train" else eval_twin(layer)]]


def eval_twin(layer):
    """A copy of `layer` in eval mode, its running statistics moved away from their
    (0, 1) start so that eval-mode batch norm differs from the identity.

    ``as_function`` reads the mode when it is called, so an eval check needs its own layer.
    """
    twin = copy.deepcopy(layer).eval()
    for k, v in twin.buffers.items():
        if k.endswith("running_mean"):
            v += 0.2
        elif k.endswith("running_var"):
            v *= 1.5
    return twin
