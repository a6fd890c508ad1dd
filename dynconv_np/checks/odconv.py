"""Default checks: odconv2d, the 1-D convolutions, and the ODConv2d and DynamicConv1d
layers (routing branch included) through ``nn.as_function``, in train and eval mode."""

import numpy as np

import dynconv_np as dc

from .. import nn
from . import Case, rng
from .nn import eval_twin, layer_cases, perturbed


def _attentions(r, N, K, kh, kw, C, O):
    # away from 0 so that no attention switches a path off
    return (r.dirichlet(np.ones(K), size=N), r.uniform(0.2, 1, (N, kh, kw)), r.uniform(0.2, 1, (N, C)),
            r.uniform(0.2, 1, (N, O)))


def _layers():
    f64 = np.float64
    return [
        ("ODConv2d K=4 p1 g2", nn.ODConv2d(4, 6, 3, padding=1, groups=2, temperature=1.0, dtype=f64, seed=1)),
        ("ODConv2d depthwise s2", nn.ODConv2d(4, 4, 3, stride=2, groups=4, temperature=2.0, dtype=f64, seed=2)),
        ("ODConv2d 1x1 K=1", nn.ODConv2d(4, 6, 1, num_experts=1, temperature=1.0, dtype=f64, seed=3)),
        ("DynamicConv1d K=3 same g2", nn.DynamicConv1d(4, 6, 3, padding="same", groups=2, num_experts=3,
                                                       temperature=1.0, dtype=f64, seed=4)),
    ]


def _layer_cases(r):
    x2, x1 = r.standard_normal((3, 4, 7, 7)), r.standard_normal((3, 4, 9))
    out = []
    for label, layer in _layers():
        if isinstance(layer, nn.DynamicConv1d):      # no batch norm: eval is train
            out += layer_cases(label, perturbed(layer, r), x1, modes=("train",))
            continue
        out += layer_cases(label, perturbed(layer, r), x2)
        # a training batch of one: the branch's BN normalises with its (moved) running statistics
        one = eval_twin(layer).train()
        out.append(Case(f"nn.{label} train N=1", nn.as_function(one), (x2[:1], *one.params.values()),
                        mode="projection"))
    return out


def cases():
    r = rng(6)
    N, C, O, K = 2, 4, 6, 3
    x = r.standard_normal((N, C, 6, 7))
    W = r.standard_normal((K, O, C // 2, 3, 2))
    xl = r.standard_normal((3, 8, 11, 10))
    Wl = r.standard_normal((4, 8, 8, 3, 3))
    xd = r.standard_normal((2, 4, 5, 5))
    Wd = r.standard_normal((2, 4, 1, 3, 3))
    x1 = r.standard_normal((2, 4, 9))
    return [
        Case("odconv2d stride 2 p1 d(1,2) g2", dc.odconv2d, (x, W, *_attentions(r, N, K, 3, 2, C, O)),
             dict(stride=2, padding=1, dilation=(1, 2), groups=2), mode="full"),
        Case("odconv2d depthwise same", dc.odconv2d, (xd, Wd, *_attentions(r, 2, 2, 3, 3, 4, 4)),
             dict(padding="same", groups=4), mode="full"),
        Case("odconv2d 8x11x10", dc.odconv2d, (xl, Wl, *_attentions(r, 3, 4, 3, 3, 8, 8)), dict(padding=1),
             mode="projection"),
        Case("conv1d s2 p1 d2 g2", dc.conv1d, (x1, r.standard_normal((6, 2, 3)), r.standard_normal(6)),
             dict(stride=2, padding=1, dilation=2, groups=2), mode="full"),
        Case("dynamic_conv1d pi(N,K) same g2", dc.dynamic_conv1d,
             (x1, r.standard_normal((K, 6, 2, 3)), r.random((2, K)), r.standard_normal((K, 6))),
             dict(padding="same", groups=2), mode="full"),
        Case("dynamic_conv1d pi(K,) s2", dc.dynamic_conv1d, (x1, r.standard_normal((K, 5, 4, 2)), r.random(K)),
             dict(stride=2), mode="full"),
        *_layer_cases(r),
    ]
