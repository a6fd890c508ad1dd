"""gradcheck: passes on the ops, fails loudly on planted errors, works for user callables."""

import numpy as np
import pytest

import dynconv_np as dc


class Planted:
    """Wrap an op and corrupt one element of one gradient by a relative `factor`."""

    def __init__(self, f, which, index, factor=1.01):
        self.f, self.which, self.index, self.factor = f, which, index, factor
        self.__name__ = f"planted_{f.__name__}"
        self.array_params = f.array_params

    def __call__(self, *a, **k):
        return self.f(*a, **k)

    def vjp(self, *a, **k):
        y, pb = self.f.vjp(*a, **k)

        def pullback(dy):
            g = list(pb(dy))
            bad = g[self.which].copy()
            bad.flat[self.index] *= self.factor
            g[self.which] = bad
            return tuple(g)

        return y, pullback


@pytest.fixture
def conv_args(rng):
    x = rng.standard_normal((2, 3, 6, 5))
    W = rng.standard_normal((3, 4, 3, 3, 3))
    pi = rng.random((2, 3))
    b = rng.standard_normal((3, 4))
    return (x, W, pi, b), dict(stride=(2, 1), padding=1, dilation=(1, 2))


@pytest.mark.parametrize("mode", ["full", "projection", "auto"])
def test_ops_pass(conv_args, mode):
    args, kw = conv_args
    rep = dc.gradcheck(dc.dynamic_conv2d, args, kw, mode=mode)
    assert rep.passed and [a.name for a in rep.args] == ["x", "W", "pi", "bias"]
    assert all(a.mode == (mode if mode != "auto" else "full") for a in rep.args)
    assert all(a.max_abs_err < 1e-6 for a in rep.args)
    rep = dc.gradcheck(dc.conv2d, (args[0], args[1][0]), {"bias": args[3][0], "groups": 1}, mode=mode)
    assert [a.name for a in rep.args] == ["x", "w", "bias"] and rep.passed
    assert "pass" in str(rep)


@pytest.mark.parametrize("which,index", [(0, 7), (1, 30), (2, 4), (3, 5)])
@pytest.mark.parametrize("mode", ["full", "projection"])
def test_planted_one_percent_error_is_caught(conv_args, which, index, mode):
    args, kw = conv_args
    f = Planted(dc.dynamic_conv2d, which, index)
    with pytest.raises(dc.GradcheckError) as e:
        dc.gradcheck(f, args, kw, mode=mode)
    rep = e.value.report
    failed = [a.name for a in rep.args if not a.passed]
    assert failed == [["x", "W", "pi", "bias"][which]]
    assert "FAIL" in str(e.value)


def test_planted_error_in_conv2d_realistic_projection(rng):
    x = rng.standard_normal((2, 8, 12, 12))
    w = rng.standard_normal((8, 8, 3, 3))
    f = Planted(dc.conv2d, 1, 100)
    with pytest.raises(dc.GradcheckError):
        dc.gradcheck(f, (x, w), {"padding": 1}, mode="projection")


def test_transposed_gradient_is_caught(rng):
    """A classic bug that an all-ones cotangent would hide."""

    def f(a, b):
        return a @ b

    def vjp(a, b):
        return a @ b, lambda dy: (dy @ b, a.T @ dy)  # dx should use b.T

    f.vjp = vjp
    a, b = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    with pytest.raises(dc.GradcheckError) as e:
        dc.gradcheck(f, (a, b))
    assert [r.passed for r in e.value.report.args] == [False, True]


def test_user_callable_and_wrt(rng):
    def f(a, scale):
        return np.tanh(a) * scale

    f.vjp = lambda a, scale: (f(a, scale), lambda dy: (dy * scale * (1 - np.tanh(a) ** 2), None))
    a = rng.standard_normal((4, 5))
    rep = dc.gradcheck(f, (a, 2.0))
    assert rep.passed and [r.name for r in rep.args] == ["a"]
    rep = dc.gradcheck(dc.dynamic_conv2d, (a[None, None], rng.standard_normal((2, 3, 1, 3, 3)), rng.random(2)),
                       wrt=[2], mode="full")
    assert [r.name for r in rep.args] == ["pi"]


def test_float32_inputs_are_promoted(rng):
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    rep = dc.gradcheck(dc.conv2d, (x, w))
    assert rep.passed and all(a.max_abs_err < 1e-6 for a in rep.args)


def test_bad_arguments():
    with pytest.raises(TypeError, match="vjp"):
        dc.gradcheck(np.sum, (np.zeros(3),))
    with pytest.raises(ValueError, match="mode"):
        dc.gradcheck(dc.conv2d, (np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 3, 3))), mode="exact")


def test_check_cli_runs_and_reports():
    from dynconv_np.__main__ import main

    assert main(["check", "-k", "conv2d s2", "--no-progress"]) == 0


def test_wrt_by_name_and_report_lookup(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    rep = dc.gradcheck(dc.conv2d, (x, w), {"bias": b}, wrt=["w", "bias"])
    assert [a.name for a in rep] == ["w", "bias"] and len(rep) == 2
    assert rep["w"].passed and rep["w"].evaluations == 2 * w.size
    with pytest.raises(KeyError):
        rep["x"]
    with pytest.raises(ValueError, match="wrt names 'z'"):
        dc.gradcheck(dc.conv2d, (x, w), wrt=["z"])


# ----------------------------------------------------------------------------- kinks


def _relu_cnn():
    f64 = np.float64
    return dc.nn.Sequential(
        dc.nn.Conv2d(3, 16, 3, padding=1, dtype=f64, seed=2), dc.nn.ReLU(),
        dc.nn.Conv2d(16, 16, 3, padding=1, dtype=f64, seed=3), dc.nn.ReLU(),
        dc.nn.GlobalAvgPool2d(), dc.nn.Linear(16, 10, dtype=f64, seed=4))


def test_relu_cnn_kinks_are_not_reported_as_wrong_gradients():
    """At this size the finite differences at eps=1e-6 cross ReLU kinks in most
    projections (relative errors up to 1e-2 used to FAIL); the report now says kink?."""
    net = _relu_cnn()
    x = np.random.default_rng(2).standard_normal((8, 3, 32, 32))
    f = dc.nn.as_function(net)
    rep = dc.gradcheck(f, (x, *net.params.values()), mode="projection")
    assert [a.name for a in rep] == ["x", "0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias"]
    kinks = [a for a in rep if a.verdict == "kink?"]
    assert kinks and rep.passed and all(a.passed for a in kinks)
    assert max(a.max_rel_err for a in kinks) > 1e-3  # what used to fail
    for a in kinks:
        assert len(a.estimates) == 3 and a.steps == (1e-6, 1e-7, 1e-8) and a.analytic is not None
        assert a.evaluations > 6  # re-estimated with the smaller steps
        assert a.name in str(rep) and "move with the step" in a.note()
    assert rep["5.weight"].verdict == "pass"  # after the last ReLU: smooth


@pytest.mark.parametrize("which", [1, 3])
def test_relu_cnn_planted_error_still_fails(which):
    net = _relu_cnn()
    x = np.random.default_rng(2).standard_normal((8, 3, 32, 32))
    f = dc.nn.as_function(net)
    planted = Planted(f, which, 5)
    planted.param_keys = f.param_keys
    with pytest.raises(dc.GradcheckError) as e:
        dc.gradcheck(planted, (x, *net.params.values()), mode="projection")
    rep = e.value.report
    assert [a.name for a in rep if a.verdict == "FAIL"] == [list(net.params)[which - 1]]


@pytest.mark.parametrize("mode", ["full", "projection"])
def test_planted_error_in_smooth_op_fails_not_kink(rng, mode):
    """The re-estimates of a smooth function agree with each other: a wrong gradient
    stays a FAIL, with every step size tried."""
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    for eps in (1e-6, 1e-5):
        with pytest.raises(dc.GradcheckError) as e:
            dc.gradcheck(Planted(dc.conv2d, 1, 11), (x, w), {"padding": 1}, mode=mode, eps=eps)
        rep = e.value.report
        assert [a.verdict for a in rep] == ["pass", "FAIL"]
        assert "kink?" not in str(rep)


def test_kink_inside_the_step_full_mode():
    """relu at 3e-7: the step 1e-6 straddles the kink (estimate 0.65), 1e-7 does not."""
    z = np.array([[0.5, 3e-7, -0.4], [-3e-7, 1.2, -2.0]])
    rep = dc.gradcheck(dc.relu, (z,), mode="full")
    a = rep["z"]
    assert a.verdict == "kink?" and a.passed and a.settled
    assert a.estimates[0] == pytest.approx(0.65) and a.estimates[1:] == pytest.approx((1.0, 1.0))
    assert a.analytic == 1.0 and "[0, 1]" in a.where
    assert "not a gradient error" in str(rep)
    # a wrong derivative at that very entry is still caught: the smaller steps settle on 1
    with pytest.raises(dc.GradcheckError) as e:
        dc.gradcheck(Planted(dc.relu, 0, 1), (z,), mode="full")
    assert e.value.report["z"].verdict == "FAIL"


def test_layer_parameters_named_as_params_and_wrt_by_key(rng):
    layer = dc.nn.DynamicConv2d(4, 6, 3, padding=1, temperature=1.0, dtype=np.float64, seed=0)
    f = dc.nn.as_function(layer)
    x = rng.standard_normal((2, 4, 5, 5))
    rep = dc.gradcheck(f, (x, *layer.params.values()), mode="projection")
    assert [a.name for a in rep] == ["x", *layer.params]
    assert any("." in k for k in layer.params)  # dotted keys, e.g. fc1.weight
    key = next(k for k in layer.params if "." in k)
    rep = dc.gradcheck(f, (x, *layer.params.values()), wrt=[key], mode="projection")
    assert [a.name for a in rep] == [key] and rep.passed
    assert f"{key} " in str(rep)
