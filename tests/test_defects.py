"""First-run defects (issue 14): dtype errors naming the layer, save/load paths, pickling,
op signatures in help(), batch-norm errors at 1x1, 0-d activations, huge stride/padding/dilation."""

import copy
import inspect
import pickle
import pydoc

import numpy as np
import pytest

import dynconv_np as dc
from dynconv_np import nn

F32, F64 = np.float32, np.float64

LAYERS = {
    "Conv2d(": lambda dt: nn.Conv2d(3, 4, 3, dtype=dt, seed=0),
    "MixtureConv2d(": lambda dt: nn.MixtureConv2d(3, 4, 3, dtype=dt, seed=0),
    "CondConv2d(": lambda dt: nn.CondConv2d(3, 4, 3, dtype=dt, seed=0),
    "DynamicConv2d(": lambda dt: nn.DynamicConv2d(3, 16, 3, dtype=dt, seed=0),
    "DCDConv2d(": lambda dt: nn.DCDConv2d(3, 4, dtype=dt, seed=0),
    "AtomConv2d(": lambda dt: nn.AtomConv2d(3, 4, dtype=dt, seed=0),
    "BatchNorm2d(": lambda dt: nn.BatchNorm2d(3, dtype=dt),
    "Linear(": lambda dt: nn.Linear(3, 4, dtype=dt, seed=0),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_dtype_errors_name_the_layer_and_its_input(name):
    layer = LAYERS[name](F32)
    x = np.zeros((2, 3) if name == "Linear(" else (2, 3, 5, 5))
    with pytest.raises(TypeError) as info:
        layer(x)                                              # float64 into a float32 layer
    msg = str(info.value)
    assert msg.startswith(name) and "float32 parameters but x has dtype float64" in msg, msg
    with pytest.raises(TypeError, match=rf"^{name[:-1]}\(.*x with dtype int64"):
        layer(x.astype(np.int64))
    with pytest.raises(TypeError, match=rf"^{name[:-1]}\(.*got list"):
        layer([[1.0]])
    assert layer(x.astype(F32)).dtype == F32                  # the right dtype still works


def test_dtype_error_in_a_sequential_names_its_first_layer():
    net = nn.Sequential(nn.DynamicConv2d(3, 16, 3, seed=0), nn.ReLU())
    with pytest.raises(TypeError, match=r"^DynamicConv2d\(3, 16, 3\) has float32 parameters but x has dtype float64"):
        net(np.zeros((1, 3, 8, 8)))


def test_save_then_load_without_the_suffix(tmp_path):
    a, b = nn.Conv2d(2, 3, 3, seed=0), nn.Conv2d(2, 3, 3, seed=1)
    a.save(tmp_path / "ck")                                   # numpy.savez writes ck.npz
    assert (tmp_path / "ck.npz").exists()
    b.load(tmp_path / "ck")
    assert np.array_equal(a.weight, b.weight)
    c = nn.Conv2d(2, 3, 3, seed=2)
    c.load(str(tmp_path / "ck.npz"))
    assert np.array_equal(a.weight, c.weight)
    with pytest.raises(FileNotFoundError):
        c.load(tmp_path / "nothing")


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.DynamicConv2d(3, 4, 3, padding=1, seed=0), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.CondConv2d(4, 4, 3, seed=0), nn.GlobalAvgPool2d(), nn.Linear(4, 2, seed=0)),
    lambda: nn.DCDConv2d(3, 4, residual_bn=True, seed=0),
    lambda: nn.AtomConv2d(3, 4, hidden_channels=4, seed=0),
])
def test_layers_pickle_and_deepcopy_after_a_forward(make, rng):
    layer = make()
    x = rng.standard_normal((2, 3, 6, 6)).astype(F32)
    y = layer(x)
    layer.eval()
    y_eval = layer(x)
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert clone._cache is None and clone.routing() == {}     # the cache is dropped
        assert repr(clone) == repr(layer)
        with pytest.raises(RuntimeError, match="before forward"):
            clone.backward(np.ones_like(y))
        assert np.array_equal(clone(x), y_eval)                    # same parameters and buffers
        clone.train()
        out = clone(x)
        clone.backward(np.ones_like(out))                          # trains as before
    assert layer._cache is not None                                # the original keeps its cache


OPS = [getattr(dc, name) for name in dc.__all__ if isinstance(getattr(dc, name), dc._op.Op)]


@pytest.mark.parametrize("f", OPS, ids=lambda f: f.__name__)
def test_help_shows_the_full_signature_of_ops_and_their_vjp(f):
    sig = inspect.signature(f)
    text = pydoc.render_doc(f, renderer=pydoc.plaintext)
    assert f"{f.__name__}{sig}" in text                       # not a cut repr
    assert f.__doc__.splitlines()[0] in text
    vjp_sig = inspect.signature(f.vjp)
    assert list(vjp_sig.parameters) == list(sig.parameters)
    vtext = pydoc.render_doc(f.vjp, renderer=pydoc.plaintext)
    assert "(*args, **kwargs)" not in vtext and f"vjp{vjp_sig}" in vtext
    grads = ", ".join(f"d{p}" for p in f.array_params)
    assert f"({grads}" in f.vjp.__doc__ and "pullback(dy)" in f.vjp.__doc__


def test_vjp_still_follows_the_convention():
    y, pb = dc.dynamic_conv2d.vjp(np.ones((1, 2, 3, 3)), np.ones((2, 3, 2, 1, 1)), np.ones((1, 2)))
    dx, dW, dpi, dbias = pb(np.ones_like(y))
    assert dx.shape == (1, 2, 3, 3) and dbias is None
    assert dc.vjp(dc.relu, np.ones(3))[0].shape == (3,)


@pytest.mark.parametrize("make, what", [
    (lambda: nn.DCDConv2d(4, 4, residual_bn=True, seed=0), "DCDConv2d(4, 4, residual_bn=True)"),
    (lambda: nn.AtomConv2d(4, 4, seed=0), "AtomConv2d(4, 4)"),
    (lambda: nn.AtomConv2d(4, 4, stride=2, seed=0), "AtomConv2d(4, 4, stride=2)"),
])
def test_batch_norm_at_one_value_per_channel_names_the_layer(make, what):
    layer = make()
    x = np.ones((1, 4, 1, 1) if "stride" not in what else (1, 4, 2, 2), F32)
    with pytest.raises(ValueError) as info:
        layer(x)
    msg = str(info.value)
    assert msg.startswith(what) and "N*Ho*Wo" in msg and ".eval()" in msg and "batch of at least 2" in msg, msg
    assert layer(np.ones((2,) + x.shape[1:], F32)).shape[0] == 2   # a batch of 2 trains
    layer.eval()
    assert layer(x).shape == (1, 4, 1, 1)                           # eval mode works at 1x1


@pytest.mark.parametrize("f", [dc.relu, dc.tanh, dc.hard_sigmoid, dc.sigmoid], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_activations_on_0d_arrays_return_0d_arrays(f, dtype, backend):
    z = dc.arrays.to(np.array(0.5, dtype), backend.name)
    assert z.shape == ()                                      # moving a 0-d array keeps it 0-d
    y, pb = f.vjp(z)
    assert dc.arrays.is_array(y) and y.shape == () and y.dtype == dtype
    grads = pb(dc.arrays.to(np.array(2.0, dtype), backend.name))
    assert isinstance(grads, tuple) and len(grads) == 1
    g = backend.get(grads[0])
    assert isinstance(g, np.ndarray) and g.shape == () and g.dtype == dtype
    # the 0-d results equal the 1-d ones
    y1, pb1 = f.vjp(backend.put(np.array([0.5], dtype)))
    assert backend.get(y).item() == backend.get(y1)[0]
    assert g.item() == backend.get(pb1(backend.put(np.array([2.0], dtype)))[0])[0]


def test_0d_gradients_match_torch():
    torch = pytest.importorskip("torch")
    for f, tf in ((dc.relu, torch.relu), (dc.tanh, torch.tanh), (dc.sigmoid, torch.sigmoid)):
        for v in (-0.7, 0.0, 1.3):
            t = torch.tensor(v, dtype=torch.float64, requires_grad=True)
            tf(t).backward()
            y, pb = f.vjp(np.array(v))
            assert y.item() == pytest.approx(tf(torch.tensor(v, dtype=torch.float64)).item(), rel=1e-15)
            assert pb(np.array(1.0))[0].item() == pytest.approx(t.grad.item(), rel=1e-15)


def _conv_calls():
    x = np.ones((1, 1, 4, 4))
    return {
        "conv2d": lambda **kw: dc.conv2d(x, np.ones((1, 1, 3, 3)), **kw),
        "dynamic_conv2d": lambda **kw: dc.dynamic_conv2d(x, np.ones((2, 1, 1, 3, 3)), np.ones((1, 2)), **kw),
        "dcd_conv2d": lambda **kw: dc.dcd_conv2d(x, np.ones((1, 1, 3, 3)), np.ones((1, 1)), np.ones((1, 1, 1)),
                                                 np.ones((1, 1)), np.ones((1, 1)), **kw),
        "atom_conv2d": lambda **kw: dc.atom_conv2d(x, np.ones((1, 1, 3, 3, 1, 1)), np.ones((1, 1, 1)), **kw),
    }


@pytest.mark.parametrize("op", list(_conv_calls()))
@pytest.mark.parametrize("arg", ["stride", "padding", "dilation"])
@pytest.mark.parametrize("value", [2**64, 2**63, (1, 2**70), -(2**64)])
def test_huge_geometry_is_a_value_error_naming_it(op, arg, value):
    with pytest.raises(ValueError, match=rf"^{arg} must be"):
        _conv_calls()[op](**{arg: value})


def test_a_stride_beyond_the_input_still_gives_the_one_pixel_output():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    y = dc.conv2d(x, np.ones((1, 1, 3, 3)), stride=2**31 - 1)
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == x[0, 0, :3, :3].sum()
    with pytest.raises(ValueError, match=r"output size would be .* \(above 2\*\*31 - 1\)"):
        dc.conv2d(x, np.ones((1, 1, 3, 3)), padding=2**30)
    with pytest.raises(ValueError, match="^stride must be at most"):
        nn.Conv2d(1, 1, 3, stride=2**64)
