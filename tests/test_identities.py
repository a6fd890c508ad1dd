"""Mathematical identities from the seeds."""

import numpy as np
import pytest

import dynconv_np as dc


@pytest.mark.parametrize("groups", [1, 2])
def test_kernel_mixing_equals_output_mixing(rng, groups):
    """CondConv's equivalence: mix kernels then convolve == convolve with each then mix outputs."""
    N, C, O, K = 3, 4, 6, 4
    x = rng.standard_normal((N, C, 9, 10))
    W = rng.standard_normal((K, O, C // groups, 3, 3))
    b = rng.standard_normal((K, O))
    pi = rng.random((N, K))
    kw = dict(stride=2, padding=1, groups=groups)
    y = dc.dynamic_conv2d(x, W, pi, b, **kw)
    outs = np.stack([dc.conv2d(x, W[k], b[k], **kw) for k in range(K)])  # (K, N, O, Ho, Wo)
    np.testing.assert_allclose(y, np.einsum("nk,knoij->noij", pi, outs), rtol=1e-12, atol=1e-12)


def test_shared_pi_equals_one_conv_with_mixed_kernel(rng):
    """Seed 000: a static mixture is one convolution with sum_k pi_k W_k."""
    K = 5
    x = rng.standard_normal((2, 3, 8, 8))
    W = rng.standard_normal((K, 4, 3, 3, 3))
    b = rng.standard_normal((K, 4))
    pi = rng.dirichlet(np.ones(K))
    y = dc.dynamic_conv2d(x, W, pi, b, padding="same")
    y1 = dc.conv2d(x, np.tensordot(pi, W, 1), pi @ b, padding="same")
    np.testing.assert_allclose(y, y1, rtol=1e-12, atol=1e-12)
    # and the per-sample form with identical rows is the same thing
    y2 = dc.dynamic_conv2d(x, W, np.tile(pi, (2, 1)), b, padding="same")
    np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)


def test_one_hot_pi_selects_expert(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    W = rng.standard_normal((3, 5, 3, 1, 3))
    pi = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    y = dc.dynamic_conv2d(x, W, pi, padding=(0, 1))
    for n, k in enumerate((1, 2)):
        np.testing.assert_allclose(y[n], dc.conv2d(x[n:n + 1], W[k], padding=(0, 1))[0], rtol=1e-12, atol=1e-12)


def test_static_mixture_gradients_follow_the_chain_rule(rng):
    """docs/math.md, static mixture: dW_k = a_k dW and dpi_k = <dW, W_k> + <db, b_k> for a shared mixture."""
    K = 3
    x = rng.standard_normal((2, 3, 7, 7))
    W = rng.standard_normal((K, 4, 3, 3, 3))
    b = rng.standard_normal((K, 4))
    a = rng.dirichlet(np.ones(K))
    y, pb = dc.dynamic_conv2d.vjp(x, W, a, b)
    dy = rng.standard_normal(y.shape)
    _, dW, dpi, db = pb(dy)
    _, pbc = dc.conv2d.vjp(x, np.tensordot(a, W, 1), a @ b)
    _, dWc, dbc = pbc(dy)
    np.testing.assert_allclose(dW, a[:, None, None, None, None] * dWc, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, np.outer(a, dbc), rtol=1e-10, atol=1e-12)
    g = np.array([np.sum(dWc * W[k]) + dbc @ b[k] for k in range(K)])
    np.testing.assert_allclose(dpi, g, rtol=1e-10, atol=1e-10)
