"""PyTorch as an extra oracle: conv2d and dynamic_conv2d, forward and backward, against
torch autograd on a few random configurations (skipped when torch is not installed)."""

import numpy as np
import pytest

import dynconv_np as dc

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch

# (N, C, O, H, W, k, stride, padding, dilation, groups, K)
CONFIGS = [
    (5, 6, 8, 9, 10, 3, 1, 1, 1, 1, 4),
    (4, 8, 6, 11, 9, 3, 2, (1, 0), (1, 2), 2, 3),
    (6, 12, 9, 7, 7, 1, 1, 0, 1, 3, 2),
    (1, 4, 5, 8, 8, 5, (2, 1), 2, 1, 1, 8),
]


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_()


def _close(ours, theirs, name):
    theirs = theirs.detach().numpy().astype(np.float64)
    scale = max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(np.asarray(ours, dtype=np.float64) - theirs).max())
    assert err <= 1e-10 * scale, f"{name}: max abs error {err:.3e}"


@pytest.mark.parametrize("cfg", CONFIGS)
def test_conv2d_matches_torch(cfg, rng):
    N, C, O, H, W, k, s, p, d, G, K = cfg
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((O, C // G, k, k))
    b = rng.standard_normal(O)
    y, pb = dc.conv2d.vjp(x, w, b, stride=s, padding=p, dilation=d, groups=G)
    dy = rng.standard_normal(y.shape)
    xt, wt, bt = _t(x), _t(w), _t(b)
    yt = F.conv2d(xt, wt, bt, s, p, d, G)
    yt.backward(torch.from_numpy(dy))
    _close(y, yt, "y")
    for ours, t, name in zip(pb(dy), (xt, wt, bt), ("dx", "dw", "dbias")):
        _close(ours, t.grad, name)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_dynamic_conv2d_matches_torch_grouped_trick(cfg, shared, rng):
    N, C, O, H, W, k, s, p, d, G, K = cfg
    x = rng.standard_normal((N, C, H, W))
    Wk = rng.standard_normal((K, O, C // G, k, k))
    pi = rng.dirichlet(np.ones(K), size=None if shared else N)
    b = rng.standard_normal((K, O))
    y, pb = dc.dynamic_conv2d.vjp(x, Wk, pi, b, stride=s, padding=p, dilation=d, groups=G)
    dy = rng.standard_normal(y.shape)

    xt, Wt, pt, bt = _t(x), _t(Wk), _t(pi), _t(b)
    p2 = pt.expand(N, K) if shared else pt
    kernels = (p2 @ Wt.reshape(K, -1)).reshape(N * O, C // G, k, k)   # per-sample kernels
    biases = (p2 @ bt).reshape(-1)
    yt = F.conv2d(xt.reshape(1, N * C, H, W), kernels, biases, s, p, d, N * G)
    yt = yt.reshape(y.shape)
    yt.backward(torch.from_numpy(dy))
    _close(y, yt, "y")
    for ours, t, name in zip(pb(dy), (xt, Wt, pt, bt), ("dx", "dW", "dpi", "dbias")):
        _close(ours, t.grad, name)
