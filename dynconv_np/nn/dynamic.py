"""Kernel-mixing layers (docs/math.md: static mixture, CondConv, DY-CNN).

- :class:`MixtureConv2d`: the static softmax mixture of K convolutions (seed 000).
- :class:`CondConv2d`: sigmoid routing from GAP of the input (CondConv, seed 004).
- :class:`DynamicConv2d`: GAP -> FC -> ReLU -> FC -> softmax(z / tau) attention (DY-CNN, seed 001).

Every layer builds its mixing weights (a :class:`~dynconv_np.nn.routing.RoutingHead` for
CondConv2d and DynamicConv2d), calls :func:`dynconv_np.dynamic_conv2d` and chains the
pullbacks: the routing branch's gradient flows back into ``dx`` through GAP, on top of
the convolution's own ``dx``. Forward and backward run on host or device arrays (ops and
the array API only); the inference helpers ``merged_kernel(s)`` and ``fold_bn`` are
host-only. After a forward, ``layer.routing()`` holds the mixing weights (MixtureConv2d
``a``, CondConv2d ``r``, DynamicConv2d ``pi``; see :class:`dynconv_np.nn.RoutingRecorder`).
"""

from __future__ import annotations

import numpy as np

from .. import _args
from .. import arrays as xp
from ..ops import conv2d, dynamic_conv2d, sigmoid, softmax
from ..ops.linalg import add_bias, channel_mix
from .init import make_rng, uniform_init
from .layers import BatchNorm2d, ConvConfig, ConvLayer, Linear, conv_config
from .module import host_only
from .routing import RoutingHead, Temperature

__all__ = ["MixtureConv2d", "CondConv2d", "DynamicConv2d"]


def _check_bn(bn, cfg: ConvConfig) -> None:
    if not isinstance(bn, BatchNorm2d):
        raise TypeError(f"bn must be a BatchNorm2d, got {type(bn).__name__}")
    if bn.num_features != cfg.out_channels:
        raise ValueError(f"bn has {bn.num_features} channels but the conv has {cfg.out_channels} outputs")


class _Mixing(ConvLayer):
    """Shared plumbing of the kernel-mixing layers (experts ``weight (K, O, Cg, kh, kw)``, ``bias (K, O)``)."""

    def _init_conv(self, args: tuple, num_experts: int, dtype) -> tuple[ConvConfig, int, np.dtype]:
        self.config = cfg = conv_config(*args)
        self.num_experts = K = _args.positive_int("num_experts", num_experts)
        return cfg, K, _args.float_dtype("dtype", dtype)

    def _mixed_conv(self, x: np.ndarray, pi: np.ndarray, route_pullback):
        """``dynamic_conv2d`` of the layer's experts mixed by `pi`, as ``(y, pullback)``.

        ``route_pullback(dpi) -> (dx of the routing or None, its grads)`` takes the mixing
        weights' gradient back through whatever computed them.
        """
        y, pb = dynamic_conv2d.vjp(x, self.weight, pi, self._params.get("bias"),
                                   groups=self.config.groups, **self.config.geo)

        def pullback(dy):
            dx, dW, dpi, dbias = pb(dy)
            dx_route, grads = route_pullback(dpi)
            grads.update(weight=dW, bias=dbias)
            return (dx if dx_route is None else xp.add(dx, dx_route)), grads   # routing's share of dx

        return y, pullback

    def routing_weights(self, x: np.ndarray) -> np.ndarray:
        """The mixing weights this layer computes for `x` (current mode): ``(N, K)``.

        Touches no cache, so it may be called between a forward and its backward.
        """
        self._check_x(x)
        return self._route(x)[0]

    def merged_kernels(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-sample kernels and biases that the layer applies to `x` (inference helper).

        Returns
        -------
        W : ndarray (N, O, C//groups, kh, kw)
            ``sum_k pi[n, k] weight[k]``.
        b : ndarray (N, O) or None
            ``sum_k pi[n, k] bias[k]`` (plus a static bias if the layer has one).
        """
        host_only(self, "merged_kernels")
        pi = self.routing_weights(x)                                      # (N, K)
        K = self.num_experts
        W = (pi @ self.weight.reshape(K, -1)).reshape((x.shape[0],) + self.weight.shape[1:])
        b = pi @ self.bias if "bias" in self._params else None           # (N, O)
        return W, b

    def _route(self, x: np.ndarray):
        raise TypeError(f"{type(self).__name__} does not define its routing")


class MixtureConv2d(_Mixing):
    """Static softmax-weighted mixture of K convolutions (docs/math.md, static mixture; seed 000).

    ``y = sum_k a_k (W_k * x + b_k)`` with ``a = softmax(theta)`` learned but independent of
    the input; by linearity one convolution with the merged kernel ``sum_k a_k W_k``.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        As ``torch.nn.Conv2d``.
    num_branches : int
        K, the number of convolutions mixed.
    per_channel : bool
        ``theta (K, O)``: one mixture per output channel, instead of ``theta (K,)``.
    dtype, seed, rng
        Parameter dtype and initialisation randomness.

    Params: ``weight (K, O, C//groups, kh, kw)`` (each branch torch's default init),
    ``bias (K, O)``, ``theta (K,)`` or ``(K, O)`` (zeros: the uniform mixture).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, num_branches: int = 4, per_channel: bool = False,
                 dtype=np.float32, seed: int | None = None, rng: np.random.Generator | None = None):
        super().__init__()
        K = _args.positive_int("num_branches", num_branches)
        cfg, K, dt = self._init_conv((in_channels, out_channels, kernel_size, stride, padding, dilation,
                                      groups, bias), K, dtype)
        self.per_channel = _args.flag("per_channel", per_channel)
        r = make_rng(seed, rng)
        # each branch initialised on its own, as torch's default conv init
        self.add_param("weight", uniform_init(r, cfg.weight_shape(K), cfg.fan_in, dt))
        if cfg.bias:
            self.add_param("bias", uniform_init(r, (K, cfg.out_channels), cfg.fan_in, dt))
        self.add_param("theta", np.zeros((K, cfg.out_channels) if self.per_channel else (K,), dtype=dt))

    def mixture(self) -> np.ndarray:
        """``a = softmax(theta)`` over the branches: ``(K,)`` or ``(K, O)``."""
        return softmax(self.theta, axis=0)

    def merged_kernel(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The single equivalent convolution: ``(W (O, C//groups, kh, kw), b (O,) or None)``."""
        host_only(self, "merged_kernel")
        a = self.mixture()
        K = self.num_experts
        if self.per_channel:
            W = np.einsum("ko,koabc->oabc", a, self.weight)
            b = (a * self.bias).sum(axis=0) if "bias" in self._params else None
        else:
            W = (a @ self.weight.reshape(K, -1)).reshape(self.weight.shape[1:])
            b = a @ self.bias if "bias" in self._params else None
        return W, b

    def merged_kernels(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The merged kernel repeated for each sample of `x` (the same for all)."""
        self._check_x(x)
        W, b = self.merged_kernel()
        N = x.shape[0]
        return (np.broadcast_to(W, (N,) + W.shape).copy(),
                None if b is None else np.broadcast_to(b, (N,) + b.shape).copy())

    def routing(self) -> dict[str, np.ndarray]:
        """``{"a": (N, K) or (N, K, O)}``: the last forward's mixture, the same for each of its
        N samples (a host array; the mixture does not depend on the input)."""
        rec = super().routing()
        if "a" in rec:
            a = xp.to_host(rec["a"])
            rec["a"] = np.broadcast_to(a, (self.__dict__.get("_routing_batch", 1),) + a.shape)
        return rec

    def _route(self, x: np.ndarray):
        host_only(self, "routing_weights")
        a, pb = softmax.vjp(self.theta, axis=0)
        return np.broadcast_to(a, (x.shape[0],) + a.shape).copy(), pb

    def forward_pullback(self, x: np.ndarray):
        """x ``(N, C, H, W)`` -> y ``(N, O, Ho, Wo)``."""
        self._check_x(x)
        a, pb_a = softmax.vjp(self.theta, axis=0)                         # (K,) or (K, O)
        self.keep_routing(a=a)
        object.__setattr__(self, "_routing_batch", x.shape[0])
        if not self.per_channel:
            return self._mixed_conv(x, a, lambda da: (None, {"theta": pb_a(da)[0]}))
        # per-output-channel mixture: merge the kernels here, then one static conv
        Wm, pb_w = channel_mix.vjp(a, self.weight)                        # (O, Cg, kh, kw)
        bm, pb_b = channel_mix.vjp(a, self.bias) if "bias" in self._params else (None, None)   # (O,)
        y, pb = conv2d.vjp(x, Wm, bm, groups=self.config.groups, **self.config.geo)

        def pullback(dy):
            dx, dWm, dbm = pb(dy)                                         # (O, Cg, kh, kw), (O,)
            da, dW = pb_w(dWm)                                            # (K, O), (K, O, Cg, kh, kw)
            dbias = None
            if pb_b is not None:
                da_b, dbias = pb_b(dbm)                                   # (K, O), (K, O)
                da = xp.add(da, da_b)
            return dx, {"weight": dW, "bias": dbias, "theta": pb_a(da)[0]}

        return y, pullback


class CondConv2d(_Mixing):
    """Conditionally parameterised convolution (docs/math.md, CondConv; seed 004).

    Routing ``r = sigmoid(GAP(x) @ R.T + b_R)`` ``(N, E)`` from the layer's own input
    (standalone); ``y[n] = conv(x[n], sum_e r[n,e] W_e) + sum_e r[n,e] b_e``. The weights
    do not sum to 1. To share one routing among several convs of a block, as the official
    code does, pass it in: ``y = layer(x, routing=r)``; ``backward`` then stores
    ``d loss / d r`` in ``layer.routing_grad`` and ``dx`` holds only the conv's part.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        As ``torch.nn.Conv2d``.
    num_experts : int
        E (the official code uses 4 or 8).
    static_bias : bool
        An extra input-independent bias ``shift (O,)`` added after the mixture; set by
        :meth:`fold_bn` (the BN shift cannot go into experts whose weights do not sum to 1).
    dtype, seed, rng
        Parameter dtype and initialisation randomness.

    Params: ``weight (E, O, C//groups, kh, kw)`` (each expert normal with std
    ``sqrt(2 / fan_out)``, ``fan_out = kh*kw*O``), ``bias (E, O)`` (zeros), ``route.weight
    (E, C)`` and ``route.bias (E,)`` (torch's Linear init), ``shift (O,)`` if `static_bias`.
    """

    head = RoutingHead(("route",), sigmoid)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, num_experts: int = 4, static_bias: bool = False,
                 dtype=np.float32, seed: int | None = None, rng: np.random.Generator | None = None):
        super().__init__()
        cfg, E, dt = self._init_conv((in_channels, out_channels, kernel_size, stride, padding, dilation,
                                      groups, bias), num_experts, dtype)
        self.static_bias = _args.flag("static_bias", static_bias)
        r = make_rng(seed, rng)
        fan_out = cfg.kernel_size[0] * cfg.kernel_size[1] * cfg.out_channels
        std = np.sqrt(2.0 / fan_out)
        self.add_param("weight", (r.standard_normal(cfg.weight_shape(E)) * std).astype(dt))
        if cfg.bias:
            self.add_param("bias", np.zeros((E, cfg.out_channels), dtype=dt))
        if self.static_bias:
            self.add_param("shift", np.zeros(cfg.out_channels, dtype=dt))
        self.add_child("route", Linear(cfg.in_channels, E, dtype=dt, rng=r))
        self.routing_grad = None

    def _route(self, x: np.ndarray):
        return self.head(self, x)                                         # r (N, E)

    def _check_routing(self, x, routing) -> None:
        _args.check_arrays({"x": x, "routing": routing})
        _args.check_shape("routing", routing, (x.shape[0], self.num_experts),
                          f"(N, num_experts) with N={x.shape[0]}")

    def forward_pullback(self, x: np.ndarray, routing: np.ndarray | None = None):
        """``y = layer(x)`` or ``y = layer(x, routing=r)`` with ``r (N, E)`` computed elsewhere.

        x ``(N, C, H, W)`` -> y ``(N, O, Ho, Wo)``. Its backward sets ``routing_grad``.
        """
        self._check_x(x)
        if routing is not None:
            self._check_routing(x, routing)
            r, pb_route = routing, None
        else:
            r, pb_route = self._route(x)
        self.keep_routing(r=r)

        def route_pullback(dr):                                           # dr (N, E)
            self.routing_grad = dr if pb_route is None else None
            return (None, {}) if pb_route is None else pb_route(dr)

        y, pb = self._mixed_conv(x, r, route_pullback)
        if not self.static_bias:
            return y, pb
        y, pb_shift = add_bias.vjp(y, self.shift)

        def pullback(dy):
            dy, dshift = pb_shift(dy)
            dx, grads = pb(dy)
            return dx, {**grads, "shift": dshift}

        return y, pullback

    def merged_kernels(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        host_only(self, "merged_kernels")
        W, b = super().merged_kernels(x)
        if self.static_bias:
            b = np.broadcast_to(self.shift, (x.shape[0], self.config.out_channels)) + (0 if b is None else b)
        return W, b

    def fold_bn(self, bn: BatchNorm2d) -> CondConv2d:
        """A new CondConv2d whose output equals ``bn(self(x))`` with bn in eval mode.

        Experts (and their biases) are scaled by ``s = gamma / sqrt(running_var + eps)``;
        the shift ``beta - s * running_mean`` becomes the static bias ``shift (O,)``
        (the routing weights do not sum to 1, so it cannot go into the experts). Host layers only.
        """
        _check_bn(bn, self.config)
        host_only(self, "fold_bn")
        cfg = self.config
        out = CondConv2d(cfg.in_channels, cfg.out_channels, cfg.kernel_size, cfg.stride, cfg.padding,
                         cfg.dilation, cfg.groups, cfg.bias, num_experts=self.num_experts, static_bias=True,
                         dtype=self.weight.dtype, seed=0)
        s, t = (v.astype(self.weight.dtype) for v in bn.scale_shift())
        out.params["weight"] = self.weight * s[:, None, None, None]
        if cfg.bias:
            out.params["bias"] = self.bias * s
        old_shift = self.shift if self.static_bias else 0
        out.params["shift"] = (s * old_shift + t).astype(self.weight.dtype)
        out.params["route.weight"] = self.route.weight.copy()
        out.params["route.bias"] = self.route.bias.copy()
        out.train(self.training)
        return out


def init_dy_cnn(layer: ConvLayer, weight_shape: tuple, dt: np.dtype, reduction: int, hidden_channels: int | None,
                temperature: float, r: np.random.Generator) -> None:
    """DY-CNN's parameters on `layer` (2-D or 1-D, its ``config`` set): K experts of
    `weight_shape` ``(K, O, C//groups, ...)``, each with torch's default conv init, zero
    expert biases, the routing FCs ``fc1 (C -> hidden)`` and ``fc2 (hidden -> K)``, and
    the temperature buffer."""
    cfg = layer.config
    K = weight_shape[0]
    red = _args.positive_int("reduction", reduction)
    hidden = (max(1, cfg.in_channels // red) if hidden_channels is None
              else _args.positive_int("hidden_channels", hidden_channels))
    layer.hidden_channels = hidden
    layer.add_param("weight", uniform_init(r, weight_shape, cfg.fan_in, dt))
    if cfg.bias:
        layer.add_param("bias", np.zeros((K, cfg.out_channels), dtype=dt))
    layer.add_child("fc1", Linear(cfg.in_channels, hidden, dtype=dt, rng=r))
    layer.add_child("fc2", Linear(hidden, K, dtype=dt, rng=r))
    layer._init_temperature(temperature)


class DynamicConv2d(Temperature, _Mixing):
    """Dynamic convolution, DY-CNN (docs/math.md, DY-CNN; seed 001).

    Attention ``pi = softmax(FC2(ReLU(FC1(GAP(x)))) / tau)`` ``(N, K)``, one per layer from
    its own input; kernel and bias are mixed: ``y[n] = conv(x[n], sum_k pi[n,k] W_k) +
    sum_k pi[n,k] b_k``. The temperature starts at 30 (near-uniform attention, so every
    kernel trains) and is annealed to 1 by :class:`TemperatureSchedule`; set
    ``layer.temperature = 1.0`` to disable the annealing.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        As ``torch.nn.Conv2d``.
    num_experts : int
        K (4 in the paper).
    reduction : int
        FC1 maps C to ``max(1, C // reduction)`` hidden units (the paper's C/4).
    temperature : float
        The softmax temperature tau (a buffer, so checkpoints keep it).
    hidden_channels : int, optional
        Overrides the hidden width (the popular port uses ``int(C/4) + 1``).
    dtype, seed, rng
        Parameter dtype and initialisation randomness.

    Params: ``weight (K, O, C//groups, kh, kw)`` (each expert torch's default init),
    ``bias (K, O)`` (zeros), ``fc1.weight (hidden, C)``, ``fc1.bias``, ``fc2.weight (K,
    hidden)``, ``fc2.bias``. Buffer ``tau`` (0-d, float64).
    """

    head = RoutingHead(("fc1", "fc2"), softmax)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, num_experts: int = 4, reduction: int = 4,
                 temperature: float = 30.0, hidden_channels: int | None = None, dtype=np.float32,
                 seed: int | None = None, rng: np.random.Generator | None = None):
        super().__init__()
        cfg, K, dt = self._init_conv((in_channels, out_channels, kernel_size, stride, padding, dilation,
                                      groups, bias), num_experts, dtype)
        init_dy_cnn(self, cfg.weight_shape(K), dt, reduction, hidden_channels, temperature, make_rng(seed, rng))

    def _route(self, x: np.ndarray):
        return self.head(self, x, tau=self.temperature)                   # pi (N, K)

    def forward_pullback(self, x: np.ndarray):
        """x ``(N, C, H, W)`` -> y ``(N, O, Ho, Wo)``."""
        self._check_x(x)
        pi, pb_route = self._route(x)
        self.keep_routing(pi=pi)
        return self._mixed_conv(x, pi, pb_route)

    def fold_bn(self, bn: BatchNorm2d) -> DynamicConv2d:
        """A new DynamicConv2d whose output equals ``bn(self(x))`` with bn in eval mode.

        Exact: the attention sums to 1, so ``s * (sum_k pi_k W_k) = sum_k pi_k (s W_k)`` and the
        shift ``t = beta - s * running_mean`` goes into every expert bias. The result has
        expert biases even when this layer has none. Host layers only.
        """
        _check_bn(bn, self.config)
        host_only(self, "fold_bn")
        cfg = self.config
        out = DynamicConv2d(cfg.in_channels, cfg.out_channels, cfg.kernel_size, cfg.stride, cfg.padding,
                            cfg.dilation, cfg.groups, True, num_experts=self.num_experts,
                            temperature=self.temperature, hidden_channels=self.hidden_channels,
                            dtype=self.weight.dtype, seed=0)
        dt = self.weight.dtype
        s, t = (v.astype(dt) for v in bn.scale_shift())
        out.params["weight"] = self.weight * s[:, None, None, None]
        b = self.bias if cfg.bias else np.zeros((self.num_experts, cfg.out_channels), dtype=dt)
        out.params["bias"] = (b * s + t).astype(dt)
        for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
            out.params[k] = self.params[k].copy()
        out.train(self.training)
        return out
