"""Default checks: the routing building blocks (GAP, linear, activations, softmax, BN)."""

import dynconv_np as dc

from . import Case, rng


def cases():
    r = rng(3)
    x = r.standard_normal((3, 4, 5, 6))
    a = r.standard_normal((5, 6))
    w = r.standard_normal((3, 6))
    b = r.standard_normal(3)
    # away from the kinks of relu (0) and hard_sigmoid (+-3)
    z = r.uniform(0.1, 2.5, (4, 5)) * r.choice([-1.0, 1.0], (4, 5))
    g = r.uniform(0.5, 1.5, 4)
    beta = r.standard_normal(4)
    rm = r.standard_normal(4)
    rv = r.uniform(0.5, 1.5, 4)
    g6, b6 = r.uniform(0.5, 1.5, 6), r.standard_normal(6)
    return [
        Case("global_avg_pool", dc.global_avg_pool, (x,), mode="full"),
        Case("linear", dc.linear, (a, w, b), mode="full"),
        Case("linear no bias, 3-D a", dc.linear, (r.standard_normal((2, 3, 6)), w), mode="full"),
        Case("relu", dc.relu, (z,), mode="full"),
        Case("sigmoid tau=2", dc.sigmoid, (z,), dict(tau=2.0), mode="full"),
        Case("softmax tau=3 axis=0", dc.softmax, (z,), dict(tau=3.0, axis=0), mode="full"),
        Case("softmax axis=-1", dc.softmax, (z * 4,), mode="full"),
        Case("hard_sigmoid", dc.hard_sigmoid, (z,), mode="full"),
        Case("hard_sigmoid scale=6", dc.hard_sigmoid, (z,), dict(scale=6.0), mode="full"),
        Case("tanh", dc.tanh, (z,), mode="full"),
        Case("batch_norm train NCHW", dc.batch_norm, (x, g, beta), mode="full"),
        Case("batch_norm eval NCHW", dc.batch_norm, (x, g, beta, rm, rv), dict(training=False), mode="full"),
        Case("batch_norm train (N,C)", dc.batch_norm, (a, g6, b6), mode="full"),
    ]
