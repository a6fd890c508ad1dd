"""Default checks: involution2d, ddf_conv2d (both combinations), involution1d, the branch
helpers, and the DDFConv2d, Involution2d and Involution1d layers (branches included)."""

import numpy as np

import dynconv_np as dc
from dynconv_np.ops.pixel import centre_pool, filter_norm

from . import Case, rng


def cases():
    r = rng(6)
    x = r.standard_normal((2, 4, 7, 6))                        # stride 2, padding 1, 3x3 -> 4x3
    kernel = r.standard_normal((2, 2, 9, 4, 3))
    spatial, channel = r.standard_normal((2, 9, 4, 3)), r.standard_normal((2, 4, 9))
    xl = r.standard_normal((2, 16, 12, 12))                    # k = 7, "same"
    kernel_l = r.standard_normal((2, 4, 49, 12, 12))
    spatial_l, channel_l = r.standard_normal((2, 25, 12, 12)), r.standard_normal((2, 16, 25))
    xs = r.standard_normal((2, 6, 11))
    ks = r.standard_normal((2, 3, 3, 6))                       # stride 2, padding 1 -> 6 steps
    ddf = dc.nn.DDFConv2d(4, 3, stride=2, padding=1, dtype=np.float64, seed=0)
    inv = dc.nn.Involution2d(8, 3, stride=2, padding=1, groups=2, dtype=np.float64, seed=0)
    seq = dc.nn.Involution1d(8, 3, padding=1, groups=2, softmax=True, dtype=np.float64, seed=0)
    xn, xq = r.standard_normal((2, 8, 7, 6)), r.standard_normal((2, 8, 9))
    geo = dict(stride=2, padding=1)
    return [
        Case("involution2d s2 p1 g2", dc.involution2d, (x, kernel, 2), geo, mode="full"),
        Case("involution2d k7 16x12x12 g4", dc.involution2d, (xl, kernel_l, 4), dict(padding="same"),
             mode="projection"),
        Case("ddf_conv2d mul s2 p1", dc.ddf_conv2d, (x, spatial, channel), geo, mode="full"),
        Case("ddf_conv2d add s2 p1", dc.ddf_conv2d, (x, spatial, channel), dict(geo, combine="add"), mode="full"),
        Case("ddf_conv2d k5 d2 16x12x12", dc.ddf_conv2d, (xl, spatial_l, channel_l), dict(padding=4, dilation=2),
             mode="projection"),
        Case("involution1d s1 p2 d2", dc.involution1d, (xs, r.standard_normal((2, 3, 3, 11)), 3),
             dict(padding=2, dilation=2), mode="full"),
        Case("involution1d s2 p1", dc.involution1d, (xs, ks, 3), geo, mode="full"),
        Case("centre_pool k3 s2 size 2", centre_pool, (x,), dict(kernel_size=3, size=2, **geo), mode="full"),
        Case("filter_norm", filter_norm, (r.standard_normal((6, 9, 4)), r.standard_normal((3, 9))), mode="full"),
        Case("DDFConv2d layer s2", dc.nn.as_function(ddf), (x, *ddf.params.values()), mode="projection"),
        Case("Involution2d layer s2", dc.nn.as_function(inv), (xn, *inv.params.values()), mode="projection"),
        Case("Involution1d layer softmax", dc.nn.as_function(seq), (xq, *seq.params.values()), mode="projection"),
    ]
