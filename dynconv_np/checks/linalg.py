"""Default checks: the ops layers compose (small linear algebra, DCD's pieces, the loss)."""

from ..ops.dcd import centre_projection, dcd_combine
from ..ops.linalg import add_bias, add_eye, channel_mix, matmul, scale_channels
from ..ops.loss import softmax_cross_entropy
from . import Case, rng


def cases():
    r = rng(5)
    x = r.standard_normal((3, 4, 7, 6))
    return [
        Case("matmul shared a^T", matmul, (r.standard_normal((4, 3)), r.standard_normal((5, 4, 6))),
             dict(ta=True), mode="full"),
        Case("matmul per sample", matmul, (r.standard_normal((5, 3, 4)), r.standard_normal((5, 4, 6))),
             mode="full"),
        Case("scale_channels", scale_channels, (x, r.standard_normal((3, 4))), mode="full"),
        Case("channel_mix", channel_mix, (r.standard_normal((3, 4)), r.standard_normal((3, 4, 2, 3, 3))),
             mode="full"),
        Case("add_bias", add_bias, (x, r.standard_normal(4)), mode="full"),
        Case("add_eye", add_eye, (r.standard_normal((3, 2, 2)),), mode="full"),
        Case("centre_projection k3 s2 d(1,2)", centre_projection, (x, r.standard_normal((4, 2))),
             dict(kernel_size=3, stride=2, padding=1, dilation=(1, 2)), mode="full"),
        Case("dcd_combine", dcd_combine, (r.standard_normal((3, 5, 2, 3)), r.random((3, 5)) * 2,
                                          r.standard_normal((5, 2)), r.standard_normal((3, 2, 2, 3))),
             mode="full"),
        Case("softmax_cross_entropy", softmax_cross_entropy,
             (3 * r.standard_normal((4, 5)), r.dirichlet([1.0] * 5, 4)), mode="full"),
    ]
