"""Plain layers: Conv2d, Linear, ReLU, BatchNorm, GlobalAvgPool2d, Flatten; the conv settings.

Each is an :class:`~dynconv_np.nn.compose.OpLayer`: ``forward_pullback`` calls an op's
``vjp`` and returns its pullback (see :mod:`dynconv_np.nn.module` for the protocol).
Constructors follow ``torch.nn`` (argument names, order and default initialisation),
plus ``dtype=`` and ``seed=`` / ``rng=``. Every layer runs on host or device arrays
(see ``Module.to_device``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _args
from .. import arrays as xp
from ..ops import batch_norm, conv2d, global_avg_pool, linear, relu
from ..ops.routing import batch_norm_training
from .compose import OpLayer
from .init import make_rng, uniform_init
from .module import Module, host_only

__all__ = ["ConvConfig", "conv_config", "ConvLayer", "Conv2d", "Linear", "ReLU", "BatchNorm1d", "BatchNorm2d",
           "GlobalAvgPool2d", "Flatten"]


@dataclass(frozen=True)
class ConvConfig:
    """Validated torch-style convolution settings, the one place every conv layer keeps them."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    bias: bool

    @property
    def geo(self) -> dict:
        """The keyword arguments every conv op takes."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)

    @property
    def fan_in(self) -> int:
        """Inputs of one output value, ``C//groups * kh * kw`` (the default init's scale)."""
        return self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    def weight_shape(self, *lead: int) -> tuple[int, ...]:
        """``(*lead, O, C//groups, kh, kw)``."""
        return (*lead, self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def describe(self, cls: str, extra: str = "") -> str:
        return f"{cls}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}{extra})"


def conv_config(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                bias=True) -> ConvConfig:
    """Validate torch.nn.Conv2d-style arguments at construction (errors name the argument)."""
    C = _args.positive_int("in_channels", in_channels)
    O = _args.positive_int("out_channels", out_channels)
    kh, kw = _args.kernel_pair("kernel_size", kernel_size)
    groups = _args.positive_int("groups", groups)
    if C % groups:
        raise ValueError(f"groups={groups} does not divide in_channels={C}")
    if O % groups:
        raise ValueError(f"groups={groups} does not divide out_channels={O}")
    # the geometry check on a window-sized input validates stride, padding and dilation
    dh, dw = _args.pair("dilation", dilation, 1)
    window = _args.geometry((1, C, (kh - 1) * dh + 1, (kw - 1) * dw + 1), kh, kw, stride, padding, dilation)
    pad = padding if isinstance(padding, str) else (window.ph, window.pw)
    return ConvConfig(C, O, (kh, kw), (window.sh, window.sw), pad, (window.dh, window.dw), groups,
                      _args.flag("bias", bias))


class ConvLayer(OpLayer):
    """Base of the conv layers: settings in ``self.config`` (a :class:`ConvConfig`)."""

    config: ConvConfig
    # a conv layer's children (routing branch, batch norms) are parts of it: a one-line repr
    _tree_repr = False

    #: the input's layout, for the checks (a 1-D layer's is ``"(N, C, L)"``)
    _x_layout = "(N, C, H, W)"

    def _check_x(self, x: np.ndarray) -> None:
        _args.check_arrays({"x": x})
        _args.check_ndim("x", x, self._x_layout.count(",") + 1, self._x_layout)
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"{self.name()} expects x with {self.config.in_channels} channels, "
                             f"got shape {tuple(x.shape)}")

    def _check_batch_stats(self, x: np.ndarray, what: str) -> None:
        """``ValueError`` naming the layer when, in training mode, the batch norms of `what`
        (which see ``N x Ho x Wo`` values per channel) would get a single value per channel."""
        if not self.training:
            return
        cfg = self.config
        g = _args.geometry(x.shape, *cfg.kernel_size, cfg.stride, cfg.padding, cfg.dilation)
        if g.N * g.P < 2:
            raise ValueError(
                f"{self.name()} in training mode needs more than one value per channel in the batch "
                f"norms of {what}, but x of shape {tuple(x.shape)} gives N*Ho*Wo = {g.N}*{g.Ho}*{g.Wo} = 1; "
                f"use a batch of at least 2 or a larger input, or call .eval() to use the running statistics")


def _weight_bias(pb):
    """The pullback of an op giving ``(dx, dweight, dbias)``, as a layer's ``(dx, grads)``."""

    def pullback(dy):
        dx, dw, db = pb(dy)
        return dx, {"weight": dw, "bias": db}

    return pullback


class Conv2d(ConvLayer):
    """Static 2-D convolution (``torch.nn.Conv2d``).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation : int or (int, int); padding also "same"/"valid"
    groups : int
    bias : bool
    dtype : float32 or float64
    seed, rng : int or numpy.random.Generator, optional

    Params: ``weight (O, C//groups, kh, kw)``, ``bias (O,)``; initialised uniform in
    ``+-1/sqrt(fan_in)`` as torch. Input ``(N, C, H, W)`` -> ``(N, O, Ho, Wo)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, dtype=np.float32, seed: int | None = None,
                 rng: np.random.Generator | None = None):
        super().__init__()
        self.config = cfg = conv_config(in_channels, out_channels, kernel_size, stride, padding, dilation,
                                        groups, bias)
        dt = _args.float_dtype("dtype", dtype)
        r = make_rng(seed, rng)
        self.add_param("weight", uniform_init(r, cfg.weight_shape(), cfg.fan_in, dt))
        if cfg.bias:
            self.add_param("bias", uniform_init(r, (cfg.out_channels,), cfg.fan_in, dt))

    def forward_pullback(self, x: np.ndarray):
        y, pb = conv2d.vjp(x, self.weight, self._params.get("bias"), groups=self.config.groups,
                           **self.config.geo)
        return y, _weight_bias(pb)


class Linear(OpLayer):
    """Fully connected layer ``x @ weight.T + bias`` (``torch.nn.Linear``).

    Params: ``weight (out_features, in_features)``, ``bias (out_features,)``, uniform in
    ``+-1/sqrt(in_features)``. Input ``(N, in_features)`` (or ``(..., in_features)``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype=np.float32,
                 seed: int | None = None, rng: np.random.Generator | None = None):
        super().__init__()
        self.in_features = _args.positive_int("in_features", in_features)
        self.out_features = _args.positive_int("out_features", out_features)
        has_bias = _args.flag("bias", bias)
        dt = _args.float_dtype("dtype", dtype)
        r = make_rng(seed, rng)
        self.add_param("weight", uniform_init(r, (self.out_features, self.in_features), self.in_features, dt))
        if has_bias:
            self.add_param("bias", uniform_init(r, (self.out_features,), self.in_features, dt))

    def forward_pullback(self, x: np.ndarray):
        y, pb = linear.vjp(x, self.weight, self._params.get("bias"))
        return y, _weight_bias(pb)


class _Stateless(OpLayer):
    """A layer that wraps one single-input op with no parameters."""

    def _op(self):
        raise TypeError(f"{type(self).__name__} does not define its op")

    def forward_pullback(self, x: np.ndarray):
        y, pb = self._op().vjp(x)
        return y, lambda dy: (pb(dy)[0], {})


class ReLU(_Stateless):
    """``max(x, 0)``, any shape."""

    def _op(self):
        return relu


class GlobalAvgPool2d(_Stateless):
    """``(N, C, H, W) -> (N, C)``: the mean over the spatial axes."""

    def _op(self):
        return global_avg_pool


class Flatten(Module):
    """``(N, ...) -> (N, prod(...))``; backward takes any dy with the output's size."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        _args.check_arrays({"x": x})
        shape = tuple(x.shape)
        if len(shape) < 1:
            raise ValueError("x must have a batch axis, got a 0-D array")
        self._cache = shape
        # device arrays reshape only when C-contiguous (a copy otherwise, as NumPy's reshape)
        return xp.contiguous(x).reshape(shape[0], int(np.prod(shape[1:])))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape = self.cache()
        _args.check_arrays({"dy": dy})
        if int(np.prod(dy.shape)) != int(np.prod(shape)):
            raise ValueError(f"dy must have {int(np.prod(shape))} entries to unflatten into {shape}, "
                             f"got shape {tuple(dy.shape)}")
        return xp.contiguous(dy).reshape(shape)


class _BatchNorm(OpLayer):
    """Per-channel batch normalisation with running statistics (buffers)."""

    _ndim = 4
    _layout = "(N, C, H, W)"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 *, dtype=np.float32):
        super().__init__()
        self.num_features = C = _args.positive_int("num_features", num_features)
        self.eps = _args.positive_float("eps", eps)
        self.momentum = _args.unit_interval("momentum", momentum)
        self.affine = _args.flag("affine", affine)
        dt = _args.float_dtype("dtype", dtype)
        add = self.add_param if self.affine else self.add_buffer
        add("weight", np.ones(C, dtype=dt))
        add("bias", np.zeros(C, dtype=dt))
        self.add_buffer("running_mean", np.zeros(C, dtype=dt))
        self.add_buffer("running_var", np.ones(C, dtype=dt))

    def forward_pullback(self, x: np.ndarray):
        """Batch statistics (and the running statistics updated in place) in training mode,
        the running statistics in eval mode."""
        _args.check_arrays({"x": x})
        _args.check_ndim("x", x, self._ndim, self._layout)
        if x.shape[1] != self.num_features:
            raise ValueError(f"{self.name()} expects {self.num_features} channels, x has shape {tuple(x.shape)}")
        if self.training and int(np.prod(x.shape)) // self.num_features < 2:
            raise ValueError(
                f"{self.name()} in training mode needs more than one value per channel to compute "
                f"batch statistics, got x of shape {tuple(x.shape)}; use a larger batch or spatial "
                f"size, or call .eval() to use the running statistics")
        if self.training:
            y, pb, rm, rv = batch_norm_training(x, self.weight, self.bias, xp.astype(self.running_mean, x.dtype),
                                                xp.astype(self.running_var, x.dtype), self.momentum, self.eps)
            # the layer owns its running statistics: update them in place
            xp.copy_into(self.running_mean, rm)
            xp.copy_into(self.running_var, rv)
        else:
            y, pb = batch_norm.vjp(x, self.weight, self.bias, self.running_mean, self.running_var,
                                   training=False, eps=self.eps)

        def pullback(dy):
            dx, dgamma, dbeta = pb(dy)[:3]
            return dx, ({"weight": dgamma, "bias": dbeta} if self.affine else {})

        return y, pullback

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """The eval-mode affine map ``y = s * x + t`` per channel: ``(s (C,), t (C,))`` (host layers)."""
        host_only(self, "scale_shift")
        s = self.weight / np.sqrt(self.running_var + self.running_var.dtype.type(self.eps))
        return s, self.bias - s * self.running_mean


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of ``(N, C, H, W)`` over N, H, W (``torch.nn.BatchNorm2d``).

    Params ``weight (C,)`` (gamma, ones) and ``bias (C,)`` (beta, zeros); buffers
    ``running_mean`` and ``running_var`` (updated in training mode with `momentum` and the
    unbiased batch variance, used in eval mode). Training with one value per channel
    (``N*H*W == 1``) raises a ``ValueError`` naming the layer.
    """


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of ``(N, C)`` over N (routing branches); see :class:`BatchNorm2d`."""

    _ndim = 2
    _layout = "(N, C)"
