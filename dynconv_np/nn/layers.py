"""Plain layers: Conv2d, Linear, ReLU, BatchNorm, GlobalAvgPool2d, Flatten.

Each calls an op's ``vjp`` in ``forward``, keeps the pullback in ``self._cache`` and calls
it in ``backward`` (see :mod:`dynconv_np.nn.module` for the protocol). Constructors follow
``torch.nn`` (argument names, order and default initialisation), plus ``dtype=`` and
``seed=`` / ``rng=``. Every layer runs on host or device arrays (see ``Module.to_device``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _args
from ..ops import conv2d, global_avg_pool, linear, relu
from ..ops.routing import batch_norm, batch_norm_update_stats
from .module import Module, array_backend, host_only, make_rng

__all__ = ["ConvConfig", "conv_config", "Conv2d", "Linear", "ReLU", "BatchNorm1d", "BatchNorm2d",
           "GlobalAvgPool2d", "Flatten"]


@dataclass(frozen=True)
class ConvConfig:
    """Validated torch-style convolution settings shared by every conv layer."""

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

    def weight_shape(self, *lead: int) -> tuple[int, ...]:
        """``(*lead, O, C//groups, kh, kw)``."""
        return (*lead, self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def describe(self, cls: str) -> str:
        return f"{cls}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size})"


def conv_config(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                bias=True) -> ConvConfig:
    """Validate torch.nn.Conv2d-style arguments at construction (errors name the argument)."""
    C = _args.positive_int("in_channels", in_channels)
    O = _args.positive_int("out_channels", out_channels)
    kh, kw = _args.kernel_pair("kernel_size", kernel_size)
    g = _args.positive_int("groups", groups)
    if C % g:
        raise ValueError(f"groups={g} does not divide in_channels={C}")
    if O % g:
        raise ValueError(f"groups={g} does not divide out_channels={O}")
    # the geometry check on a window-sized input validates stride, padding and dilation
    dh, dw = _args.pair("dilation", dilation, 1)
    g0 = _args.geometry((1, C, (kh - 1) * dh + 1, (kw - 1) * dw + 1), kh, kw, stride, padding, dilation)
    pad = padding if isinstance(padding, str) else (g0.ph, g0.pw)
    return ConvConfig(C, O, (kh, kw), (g0.sh, g0.sw), pad, (g0.dh, g0.dw), g, _args.flag("bias", bias))


def _uniform(rng: np.random.Generator, shape: tuple, bound: float, dtype) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class _WeightBias(Module):
    """A layer whose op's pullback gives ``(dx, dweight, dbias)``."""

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dx, dw, db = self.cache()(dy)
        self.accumulate("weight", dw)
        if "bias" in self._params:
            self.accumulate("bias", db)
        return dx


class Conv2d(_WeightBias):
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
        self.config = conv_config(in_channels, out_channels, kernel_size, stride, padding, dilation,
                                  groups, bias)
        dt = _args.float_dtype("dtype", dtype)
        r = make_rng(seed, rng)
        cfg = self.config
        bound = 1 / np.sqrt(cfg.in_channels // cfg.groups * cfg.kernel_size[0] * cfg.kernel_size[1])
        self.add_param("weight", _uniform(r, cfg.weight_shape(), bound, dt))
        if cfg.bias:
            self.add_param("bias", _uniform(r, (cfg.out_channels,), bound, dt))

    def name(self) -> str:
        return self.config.describe("Conv2d")

    def forward(self, x: np.ndarray) -> np.ndarray:
        y, pb = conv2d.vjp(x, self.weight, self._params.get("bias"), groups=self.config.groups,
                           **self.config.geo)
        self._cache = pb
        return y



class Linear(_WeightBias):
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
        bound = 1 / np.sqrt(self.in_features)
        self.add_param("weight", _uniform(r, (self.out_features, self.in_features), bound, dt))
        if has_bias:
            self.add_param("bias", _uniform(r, (self.out_features,), bound, dt))

    def name(self) -> str:
        return f"Linear({self.in_features}, {self.out_features})"

    def forward(self, x: np.ndarray) -> np.ndarray:
        y, pb = linear.vjp(x, self.weight, self._params.get("bias"))
        self._cache = pb
        return y



class _Stateless(Module):
    """A layer that wraps one single-input op with no parameters."""

    def _op(self):
        raise TypeError(f"{type(self).__name__} does not define its op")

    def forward(self, x: np.ndarray) -> np.ndarray:
        y, pb = self._op().vjp(x)
        self._cache = pb
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return self.cache()(dy)[0]


class ReLU(_Stateless):
    """``max(x, 0)``, any shape."""

    def _op(self):
        return relu


class GlobalAvgPool2d(_Stateless):
    """``(N, C, H, W) -> (N, C)``: the mean over the spatial axes."""

    def _op(self):
        return global_avg_pool


class Flatten(Module):
    """``(N, ...) -> (N, prod(...))``."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        _args.check_arrays({"x": x})
        shape = tuple(x.shape)
        if len(shape) < 1:
            raise ValueError("x must have a batch axis, got a 0-D array")
        self._cache = shape
        # device arrays reshape only when C-contiguous (a copy otherwise, as NumPy's reshape)
        return array_backend(x).contiguous(x).reshape(shape[0], int(np.prod(shape[1:])))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        shape = self.cache()
        _args.check_arrays({"dy": dy})
        if int(np.prod(dy.shape)) != int(np.prod(shape)):
            raise ValueError(f"dy must have {int(np.prod(shape))} entries to unflatten into {shape}, "
                             f"got shape {tuple(dy.shape)}")
        return array_backend(dy).contiguous(dy).reshape(shape)


def inner_batch_norm(layer: Module, prefix: str, z: np.ndarray):
    """Batch norm of `z` with the params ``{prefix}_weight/_bias`` and buffers
    ``{prefix}_running_mean/_var`` of `layer` (a BN inside a layer's own branch).

    Uses ``layer.training``, ``layer.momentum`` and ``layer.eps``; in training mode the
    running statistics are replaced by updated copies. Returns ``(y, pullback)``.
    """
    rm, rv = layer._buffers[f"{prefix}_running_mean"], layer._buffers[f"{prefix}_running_var"]
    y, pb = batch_norm.vjp(z, layer._params[f"{prefix}_weight"], layer._params[f"{prefix}_bias"], rm, rv,
                           training=layer.training, momentum=layer.momentum, eps=layer.eps)
    if layer.training:
        nm, nv = batch_norm_update_stats(z, rm, rv, layer.momentum)
        layer._buffers[f"{prefix}_running_mean"], layer._buffers[f"{prefix}_running_var"] = nm, nv
    return y, pb


class _BatchNorm(Module):
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
        if self.affine:
            self.add_param("weight", np.ones(C, dtype=dt))
            self.add_param("bias", np.zeros(C, dtype=dt))
        else:
            self.add_buffer("weight", np.ones(C, dtype=dt))
            self.add_buffer("bias", np.zeros(C, dtype=dt))
        self.add_buffer("running_mean", np.zeros(C, dtype=dt))
        self.add_buffer("running_var", np.ones(C, dtype=dt))

    def name(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def forward(self, x: np.ndarray) -> np.ndarray:
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
            y, pb = batch_norm.vjp(x, self.weight, self.bias, training=True, eps=self.eps)
            be = array_backend(x)
            rm, rv = batch_norm_update_stats(x, be.astype(self.running_mean, x.dtype),
                                             be.astype(self.running_var, x.dtype), self.momentum)
            # the layer owns its running statistics: update them in place
            be.copy_into(self.running_mean, rm)
            be.copy_into(self.running_var, rv)
        else:
            y, pb = batch_norm.vjp(x, self.weight, self.bias, self.running_mean, self.running_var,
                                   training=False, eps=self.eps)
        self._cache = pb
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dx, dgamma, dbeta, _, _ = self.cache()(dy)
        if self.affine:
            self.accumulate("weight", dgamma)
            self.accumulate("bias", dbeta)
        return dx

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
