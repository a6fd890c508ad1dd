"""Default checks: conv2d and dynamic_conv2d."""

import dynconv_np as dc

from . import Case, rng


def cases():
    r = rng(1)
    x = r.standard_normal((2, 4, 7, 6))
    w = r.standard_normal((6, 2, 3, 3))
    b = r.standard_normal(6)
    W = r.standard_normal((3, 6, 2, 3, 3))
    pi = r.random((2, 3))
    bK = r.standard_normal((3, 6))
    geo = dict(stride=2, padding=1, dilation=(1, 2), groups=2)
    xl = r.standard_normal((4, 8, 12, 12))
    Wl = r.standard_normal((4, 8, 8, 3, 3))
    pil = r.random((4, 4))
    return [
        Case("conv2d s2 p1 d(1,2) g2", dc.conv2d, (x, w, b), geo, mode="full"),
        Case("dynamic_conv2d pi(N,K)", dc.dynamic_conv2d, (x, W, pi, bK), geo, mode="full"),
        Case("dynamic_conv2d pi(K,)", dc.dynamic_conv2d, (x, W, pi[0], bK),
             dict(padding="same", groups=2), mode="full"),
        Case("dynamic_conv2d 8x12x12", dc.dynamic_conv2d, (xl, Wl, pil, None), dict(padding=1), mode="projection"),
    ]
