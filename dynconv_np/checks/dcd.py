"""Default checks: dcd_conv2d and the DCDConv2d layer (routing branch included)."""

import numpy as np

import dynconv_np as dc

from . import Case, rng


def cases():
    r = rng(3)
    N, C, O, L = 2, 4, 5, 2
    x = r.standard_normal((N, C, 6, 5))
    W0 = r.standard_normal((O, C, 3, 3))
    lam = r.random((N, O)) * 2
    phi = r.standard_normal((N, L, L))
    P = r.standard_normal((O, L))
    Q = r.standard_normal((C, L))
    xl = r.standard_normal((4, 16, 12, 12))
    args_l = (xl, r.standard_normal((16, 16, 3, 3)), r.random((4, 16)) * 2, r.standard_normal((4, 4, 4)),
              r.standard_normal((16, 4)), r.standard_normal((16, 4)))
    layer = dc.nn.DCDConv2d(9, 6, 3, stride=2, dtype=np.float64, seed=0)
    layer_bn = dc.nn.DCDConv2d(9, 6, 3, residual_bn=True, dtype=np.float64, seed=1)
    xn = r.standard_normal((3, 9, 7, 7))
    return [
        Case("dcd_conv2d s2 p1 d(1,2)", dc.dcd_conv2d, (x, W0, lam, phi, P, Q),
             dict(stride=2, padding=1, dilation=(1, 2)), mode="full"),
        Case("dcd_conv2d 16x12x12", dc.dcd_conv2d, args_l, dict(padding="same"), mode="projection"),
        Case("DCDConv2d layer", dc.nn.as_function(layer), (xn, *layer.params.values()), mode="projection"),
        Case("DCDConv2d layer residual_bn", dc.nn.as_function(layer_bn), (xn, *layer_bn.params.values()),
             mode="projection"),
    ]
