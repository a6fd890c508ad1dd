"""Every bad input of docs/api.md's conventions raises the named error, before any work."""

import numpy as np
import pytest

import dynconv_np as dc


class FakeDeviceArray:
    """Looks like a CUDA array to the dispatcher; must never reach a kernel."""

    def __init__(self, shape, typestr="<f4"):
        self.shape = shape
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0, False), "version": 3}


@pytest.fixture
def ok(rng):
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    W = rng.standard_normal((3, 6, 4, 3, 3)).astype(np.float32)
    pi = rng.random((2, 3)).astype(np.float32)
    return x, w, W, pi


def raises(exc, match, f, *a, **k):
    with pytest.raises(exc, match=match):
        f(*a, **k)


def test_type_errors(ok):
    x, w, W, pi = ok
    raises(TypeError, "x must have dtype float32 or float64, got int64", dc.conv2d, x.astype(np.int64), w)
    raises(TypeError, "w must have dtype float32 or float64, got float16", dc.conv2d, x, w.astype(np.float16))
    raises(TypeError, "w has dtype float64 but x has dtype float32", dc.conv2d, x, w.astype(np.float64))
    raises(TypeError, "bias has dtype float64", dc.conv2d, x, w, np.zeros(6))
    raises(TypeError, "pi has dtype float64", dc.dynamic_conv2d, x, W, pi.astype(np.float64))
    raises(TypeError, "x must be a numpy.ndarray", dc.conv2d, x.tolist(), w)
    raises(TypeError, "W must be a numpy.ndarray", dc.dynamic_conv2d, x, 3.0, pi)
    raises(TypeError, "pi must be an array, got None", dc.dynamic_conv2d, x, W, None)
    raises(TypeError, "w is a cuda array but x is a cpu array", dc.conv2d, x, FakeDeviceArray(w.shape))
    raises(TypeError, "pi is a cuda array but x is a cpu array", dc.dynamic_conv2d, x, W, FakeDeviceArray(pi.shape))
    raises(TypeError, "stride must be an int", dc.conv2d, x, w, stride=1.5)
    raises(TypeError, "stride must be an int", dc.conv2d, x, w, stride=True)
    raises(TypeError, "groups must be a positive int", dc.conv2d, x, w, groups=1.0)
    raises(TypeError, "dilation must be an int", dc.conv2d, x, w, dilation=(1, "2"))


def test_value_errors(ok):
    x, w, W, pi = ok
    raises(ValueError, r"x must be 4-D .*got 3-D", dc.conv2d, x[0], w)
    raises(ValueError, r"w must be 4-D", dc.conv2d, x, W)
    raises(ValueError, r"W must be 5-D", dc.dynamic_conv2d, x, w, pi)
    raises(ValueError, "W has 2 input channels per group, but x has 4 channels and groups=1",
           dc.dynamic_conv2d, x, W[:, :, :2], pi)
    raises(ValueError, "w has 4 input channels per group, but x has 4 channels and groups=2",
           dc.conv2d, x, w, groups=2)
    raises(ValueError, "groups=3 does not divide x's 4 channels", dc.conv2d, x, w[:, :1], groups=3)
    raises(ValueError, "does not divide w's 6 output channels", dc.conv2d, x, w[:, :1], groups=4)
    raises(ValueError, "groups must be a positive int", dc.conv2d, x, w, groups=0)
    raises(ValueError, "stride must be positive", dc.conv2d, x, w, stride=0)
    raises(ValueError, "stride must be positive", dc.conv2d, x, w, stride=(1, -1))
    raises(ValueError, "dilation must be positive", dc.conv2d, x, w, dilation=0)
    raises(ValueError, "padding must be non-negative", dc.conv2d, x, w, padding=-1)
    raises(ValueError, "stride must be an int or a pair", dc.conv2d, x, w, stride=(1, 1, 1))
    raises(ValueError, 'padding="same" needs stride 1', dc.conv2d, x, w, stride=2, padding="same")
    raises(ValueError, "padding must be an int, a pair", dc.conv2d, x, w, padding="full")
    raises(ValueError, "output size would be", dc.conv2d, x[:, :, :2, :2], w)
    raises(ValueError, "output size would be", dc.conv2d, x, w, dilation=5)
    raises(ValueError, r"bias must have shape \(6,\)", dc.conv2d, x, w, np.zeros(5, np.float32))
    raises(ValueError, r"pi must have shape \(2, 3\)", dc.dynamic_conv2d, x, W, pi[:1])
    raises(ValueError, r"pi must have shape \(2, 3\)", dc.dynamic_conv2d, x, W, pi[:, :2])
    raises(ValueError, r"pi must have shape \(3,\)", dc.dynamic_conv2d, x, W, pi[0, :2])
    raises(ValueError, "pi must be", dc.dynamic_conv2d, x, W, pi[None])
    raises(ValueError, r"bias must have shape \(3, 6\)", dc.dynamic_conv2d, x, W, pi, np.zeros((6, 3), np.float32))
    raises(ValueError, "at least one", dc.conv2d, x, w[:0])


def test_cotangent_checked(ok):
    x, w, W, pi = ok
    y, pb = dc.dynamic_conv2d.vjp(x, W, pi, padding=1)
    raises(ValueError, "dy must have the output's shape", pb, np.zeros((2, 6, 8, 7), np.float32))
    raises(TypeError, "dy must have the output's dtype float32", pb, np.zeros(y.shape))
    raises(TypeError, "dy must be a numpy.ndarray", pb, 1.0)


def test_errors_leave_inputs_untouched(ok):
    x, w, W, pi = ok
    before = [a.copy() for a in ok]
    with pytest.raises(ValueError):
        dc.dynamic_conv2d(x, W, pi, padding=-2)
    for a, b in zip(ok, before):
        np.testing.assert_array_equal(a, b)


def test_same_padding_matches_explicit(rng):
    x = rng.standard_normal((1, 2, 7, 8))
    w = rng.standard_normal((3, 2, 3, 4))  # even width: one extra column at the right
    y = dc.conv2d(x, w, padding="same", dilation=(2, 1))
    assert y.shape == (1, 3, 7, 8)
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (1, 2)))
    np.testing.assert_allclose(y, dc.conv2d(xp, w, dilation=(2, 1)), rtol=1e-12, atol=1e-12)
    y2 = dc.conv2d(x, w, padding="valid")
    assert y2.shape == (1, 3, 5, 5)


def test_vjp_requires_vjp():
    raises(TypeError, "must be a dynconv_np op", dc.vjp, np.sum, np.zeros(3))
