"""Per-pixel depthwise layers with their filter-generating branches (docs/math.md, "DDF" and "Involution"):
DDFConv2d, Involution2d, Involution1d.

Each generates its filters at the output pixels from the input there, then applies them
with a per-pixel op (:mod:`dynconv_np.ops.pixel`); the branches are built as in the
authors' code:

- ``DDFConv2d`` (theFoxofSky/ddfnet, ``DDFPack``): spatial filter ``S = FN_s(conv1x1(x))``
  (C -> k*k, with bias, at the layer's stride), channel filter ``Ch = FN_c(fc2(ReLU(fc1(
  GAP(x)))))`` (C -> C*se_ratio -> C*k*k, with biases); ``FN`` standardises each filter
  over its k*k taps with the unbiased standard deviation (plus 1e-10), then multiplies
  by ``sqrt(2)/k`` (spatial: ReLU's gain over k) or by a learnable ``(C, k*k)`` scale
  initialised at random with that spread (channel); ``y = ddf_conv2d(x, S, Ch)``.
- ``Involution2d`` (d-li14/involution, RedNet): ``K = conv1x1(ReLU(BN(conv1x1(x'))))``,
  C -> C/reduction (no bias) -> groups*k*k (with bias), ``x'`` average-pooled over
  ``stride x stride`` blocks when the stride exceeds 1; ``y = involution2d(x, K, groups)``.
- ``Involution1d`` (Wu et al.'s dynamic convolution): ``K = W x + b`` at each step
  (C -> groups*k), optionally softmax-normalised over the k taps; ``y = involution1d(x, K)``.

The branches read the input at each output pixel's centre tap (``centre_pool``): with
stride 1 and ``padding = dilation*(k//2)`` (the authors' setting) that is x itself and
no copy is made; with a stride it is the strided 1x1 convolution of the authors' code
(DDF) or RedNet's pooling, whose blocks start at the centre taps; with another padding,
each pixel's filter still comes from the input at that pixel's centre. Kernel sizes are
odd, so that the centre tap exists.
"""

from __future__ import annotations

import numpy as np

from .. import _args
from .. import arrays as xp
from ..ops import conv2d, ddf_conv2d, global_avg_pool, involution1d, involution2d, linear, relu, softmax
from ..ops.pixel import centre_pool, filter_norm
from .compose import prefixed
from .init import make_rng, uniform_init
from .layers import BatchNorm2d, ConvLayer, conv_config

__all__ = ["DDFConv2d", "Involution2d", "Involution1d"]


def _default_groups(channels: int, groups) -> int:
    """``groups``, or ``max(1, channels // 16)`` (RedNet's 16 channels per group) when None."""
    G = max(1, channels // 16) if groups is None else _args.positive_int("groups", groups)
    if channels % G:
        raise ValueError(f"groups={G} does not divide channels={channels}"
                         + (" (the default channels // 16): pass groups=" if groups is None else ""))
    return G


class _PixelLayer(ConvLayer):
    """Settings in ``self.config`` (``in_channels == out_channels``, odd kernel sizes)
    and the branches' input at the output pixels."""

    def _configure(self, channels, kernel_size, stride, padding, dilation):
        self.config = cfg = conv_config(channels, channels, kernel_size, stride, padding, dilation, bias=False)
        _args.check_odd_kernel("kernel_size", *cfg.kernel_size)
        return cfg

    def _at_pixels(self, x, size):
        """``(u, pullback)``: x at every output pixel's centre tap (the mean of a `size`
        block there), x itself when that is the identity; ``pullback(du) -> dx``."""
        c = self.config
        (kh, kw), (dh, dw) = c.kernel_size, c.dilation
        g = _args.geometry(x.shape, kh, kw, c.stride, c.padding, c.dilation)
        if (size == (1, 1) and (g.sh, g.sw) == (1, 1) and (g.Ho, g.Wo) == (g.H, g.W)
                and (g.ph, g.pw) == (dh * (kh // 2), dw * (kw // 2))):
            return x, lambda du: du
        u, pb = centre_pool.vjp(x, c.kernel_size, size=size, **c.geo)
        return u, lambda du: pb(du)[0]


class DDFConv2d(_PixelLayer):
    """Decoupled dynamic filter convolution (DDF) with its spatial and channel branches.

    Parameters
    ----------
    channels : int
    kernel_size : int or (int, int)
        Odd, with at least two taps.
    stride, padding, dilation : int or (int, int); padding also "same"/"valid"
        ``padding = dilation * (kernel_size // 2)`` is the authors' setting.
    combine : "mul" or "add"
        How the spatial and channel filters combine.
    se_ratio : float
        Hidden width of the channel branch, ``max(1, int(channels * se_ratio))``.
    dtype : float32 or float64
    seed, rng : int or numpy.random.Generator, optional

    Params
    ------
    spatial_weight (k*k, C, 1, 1), spatial_bias (k*k,); channel_weight1 (hidden, C),
    channel_bias1 (hidden,), channel_weight2 (C*k*k, hidden), channel_bias2 (C*k*k,);
    channel_std (C, k*k), the channel filter's learnable scale. Convolution weights are
    uniform in ``+-1/sqrt(fan_in)`` as torch's; channel_std is normal with standard
    deviation ``sqrt(2)/k`` as the authors'.

    Input ``(N, C, H, W)`` -> ``(N, C, Ho, Wo)``.
    """

    def __init__(self, channels: int, kernel_size, stride=1, padding=0, dilation=1, combine: str = "mul", *,
                 se_ratio: float = 0.2, dtype=np.float32, seed: int | None = None,
                 rng: np.random.Generator | None = None):
        super().__init__()
        cfg = self._configure(channels, kernel_size, stride, padding, dilation)
        self.combine = _args.combine_mode(combine)
        se_ratio = _args.positive_float("se_ratio", se_ratio)
        dt = _args.float_dtype("dtype", dtype)
        C, T = cfg.in_channels, cfg.kernel_size[0] * cfg.kernel_size[1]
        if T < 2:
            raise ValueError(f"kernel_size must have at least two taps (the filters are standardised over "
                             f"them), got {kernel_size!r}")
        self.hidden_channels = hid = max(1, int(C * se_ratio))
        self.gain = float(np.sqrt(2.0 / T))                  # ReLU's gain sqrt(2), over k = sqrt(T)
        r = make_rng(seed, rng)
        self.add_param("spatial_weight", uniform_init(r, (T, C, 1, 1), C, dt))
        self.add_param("spatial_bias", uniform_init(r, (T,), C, dt))
        self.add_param("channel_weight1", uniform_init(r, (hid, C), C, dt))
        self.add_param("channel_bias1", uniform_init(r, (hid,), C, dt))
        self.add_param("channel_weight2", uniform_init(r, (C * T, hid), hid, dt))
        self.add_param("channel_bias2", uniform_init(r, (C * T,), hid, dt))
        self.add_param("channel_std", (r.standard_normal((C, T)) * self.gain).astype(dt))

    def mult_adds(self, x_shape: tuple, y_shape: tuple) -> int:
        """One forward's multiply-adds: the spatial branch's 1x1 conv (C -> k*k at every
        output pixel), the channel branch's two FCs, and per output value and tap one
        multiply-add plus the one product or sum that combines the two filters."""
        N, C, Ho, Wo = y_shape
        T = self.spatial_bias.shape[0]
        hid = self.channel_bias1.shape[0]
        return N * (Ho * Wo * T * C + hid * C + C * T * hid + 2 * C * Ho * Wo * T)

    def forward_pullback(self, x: np.ndarray):
        """``(N, C, H, W) -> (N, C, Ho, Wo)``: both branches, then ``ddf_conv2d``."""
        self._check_x(x)
        cfg = self.config
        N, C = x.shape[:2]
        T = self.channel_std.shape[1]
        # spatial branch: conv1x1 at the output pixels -> filter norm (times sqrt(2)/k)
        u, pb_u = self._at_pixels(x, (1, 1))
        zs, pb_s = conv2d.vjp(u, self.spatial_weight, self.spatial_bias)           # (N, T, Ho, Wo)
        Ho, Wo = zs.shape[2:]
        gain_s = xp.fill(xp.empty_like(x, (1, T)), self.gain)
        S, pb_ns = filter_norm.vjp(zs.reshape(N, T, Ho * Wo), gain_s)
        # channel branch: GAP -> fc1 -> ReLU -> fc2 -> filter norm (times channel_std)
        h, pb_g = global_avg_pool.vjp(x)
        h1, pb_l1 = linear.vjp(h, self.channel_weight1, self.channel_bias1)
        h2, pb_r = relu.vjp(h1)
        zc, pb_l2 = linear.vjp(h2, self.channel_weight2, self.channel_bias2)       # (N, C*T)
        Ch, pb_nc = filter_norm.vjp(zc.reshape(N * C, T, 1), self.channel_std)
        self.keep_routing(spatial=S.reshape(N, T, Ho, Wo), channel=Ch.reshape(N, C, T))
        y, pb = ddf_conv2d.vjp(x, S.reshape(N, T, Ho, Wo), Ch.reshape(N, C, T), combine=self.combine,
                               kernel_size=cfg.kernel_size, **cfg.geo)

        def pullback(dy):
            dx, dS, dCh = pb(dy)
            dzs, _ = pb_ns(xp.contiguous(dS).reshape(N, T, Ho * Wo))
            du, dws, dbs = pb_s(dzs.reshape(N, T, Ho, Wo))
            dzc, dstd = pb_nc(xp.contiguous(dCh).reshape(N * C, T, 1))
            dh2, dw2, db2 = pb_l2(dzc.reshape(N, C * T))
            dh, dw1, db1 = pb_l1(pb_r(dh2)[0])
            dx = xp.add(xp.add(dx, pb_u(du)), pb_g(dh)[0])
            return dx, {"spatial_weight": dws, "spatial_bias": dbs, "channel_weight1": dw1, "channel_bias1": db1,
                        "channel_weight2": dw2, "channel_bias2": db2, "channel_std": dstd}

        return y, pullback


class Involution2d(_PixelLayer):
    """Involution with RedNet's kernel generation.

    Parameters
    ----------
    channels : int
    kernel_size : int or (int, int)
        Odd (7 in RedNet).
    stride, padding, dilation : int or (int, int); padding also "same"/"valid"
        ``padding = dilation * (kernel_size // 2)`` is RedNet's setting.
    groups : int, optional
        Kernel groups; default ``max(1, channels // 16)``. Must divide channels.
    reduction : int
        The generator's hidden width is ``max(1, channels // reduction)``.
    momentum, eps : float
        The generator's batch-norm settings.
    dtype : float32 or float64
    seed, rng : int or numpy.random.Generator, optional

    Params
    ------
    reduce_weight (hidden, C, 1, 1), span_weight (groups*k*k, hidden, 1, 1),
    span_bias (groups*k*k,), uniform in ``+-1/sqrt(fan_in)``; child ``bn``
    (``BatchNorm2d(hidden)``).

    Input ``(N, C, H, W)`` -> ``(N, C, Ho, Wo)``.
    """

    def __init__(self, channels: int, kernel_size, stride=1, padding=0, dilation=1, groups: int | None = None,
                 reduction: int = 4, *, momentum: float = 0.1, eps: float = 1e-5, dtype=np.float32,
                 seed: int | None = None, rng: np.random.Generator | None = None):
        super().__init__()
        cfg = self._configure(channels, kernel_size, stride, padding, dilation)
        C, T = cfg.in_channels, cfg.kernel_size[0] * cfg.kernel_size[1]
        self.groups = G = _default_groups(C, groups)
        self.hidden_channels = hid = max(1, C // _args.positive_int("reduction", reduction))
        dt = _args.float_dtype("dtype", dtype)
        r = make_rng(seed, rng)
        self.add_param("reduce_weight", uniform_init(r, (hid, C, 1, 1), C, dt))
        self.add_child("bn", BatchNorm2d(hid, eps, momentum, dtype=dt))
        self.add_param("span_weight", uniform_init(r, (G * T, hid, 1, 1), hid, dt))
        self.add_param("span_bias", uniform_init(r, (G * T,), hid, dt))

    def mult_adds(self, x_shape: tuple, y_shape: tuple) -> int:
        """One forward's multiply-adds: the kernel branch's two 1x1 convs at every output
        pixel (C -> C/r, C/r -> G*k*k; its batch norm is a child, counted there) and one
        multiply-add per output value and tap."""
        N, C, Ho, Wo = y_shape
        hid = self.reduce_weight.shape[0]
        GT = self.span_bias.shape[0]
        T = self.config.kernel_size[0] * self.config.kernel_size[1]
        return N * Ho * Wo * (hid * C + GT * hid + C * T)

    def forward_pullback(self, x: np.ndarray):
        """``(N, C, H, W) -> (N, C, Ho, Wo)``: the kernel generator, then ``involution2d``."""
        self._check_x(x)
        cfg = self.config
        N, G = x.shape[0], self.groups
        T = cfg.kernel_size[0] * cfg.kernel_size[1]
        u, pb_u = self._at_pixels(x, cfg.stride)                     # RedNet: AvgPool2d(stride) if stride > 1
        h, pb_c1 = conv2d.vjp(u, self.reduce_weight, None)
        hn, pb_bn = self.bn.forward_pullback(h)
        hr, pb_r = relu.vjp(hn)
        K, pb_c2 = conv2d.vjp(hr, self.span_weight, self.span_bias)  # (N, G*T, Ho, Wo)
        Ho, Wo = K.shape[2:]
        self.keep_routing(kernel=K.reshape(N, G, T, Ho, Wo))
        y, pb = involution2d.vjp(x, K.reshape(N, G, T, Ho, Wo), G, kernel_size=cfg.kernel_size, **cfg.geo)

        def pullback(dy):
            dx, dK = pb(dy)
            dhr, dw2, db2 = pb_c2(xp.contiguous(dK).reshape(N, G * T, Ho, Wo))
            dh, grads_bn = pb_bn(pb_r(dhr)[0])
            du, dw1, _ = pb_c1(dh)
            grads = {"reduce_weight": dw1, "span_weight": dw2, "span_bias": db2, **prefixed("bn", grads_bn)}
            return xp.add(dx, pb_u(du)), grads

        return y, pullback


class Involution1d(_PixelLayer):
    """Involution over sequences: the dynamic convolution of sequence models (Wu et al., 2019).

    Parameters
    ----------
    channels : int
    kernel_size : int
        Odd.
    stride, dilation : int
    padding : int, "valid" or "same"
        ``"same"`` (stride 1) is the non-causal setting of fairseq's encoders.
    groups : int, optional
        Kernel groups (heads); default ``max(1, channels // 16)``. Must divide channels.
    bias : bool
        A bias in the kernel projection (fairseq's default: none).
    softmax : bool
        Softmax-normalise each kernel over its k taps (Wu et al.'s ``weight_softmax``).
    dtype : float32 or float64
    seed, rng : int or numpy.random.Generator, optional

    Params
    ------
    weight (groups*k, C), bias (groups*k,): the projection of the input at each step,
    uniform in ``+-1/sqrt(C)``. Input ``(N, C, L)`` -> ``(N, C, Lo)``.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, padding=0, dilation: int = 1,
                 groups: int | None = None, bias: bool = False, softmax: bool = False, *, dtype=np.float32,
                 seed: int | None = None, rng: np.random.Generator | None = None):
        super().__init__()
        k = _args.positive_int("kernel_size", kernel_size)
        s = _args.positive_int("stride", stride)
        d = _args.positive_int("dilation", dilation)
        _args.sequence_geometry((1, 1, (k - 1) * d + 1), k, s, padding, d)     # validates padding
        self.kernel_size, self.stride, self.padding, self.dilation = k, s, padding, d
        self._configure(channels, (1, k), (1, s), padding if isinstance(padding, str) else (0, padding), (1, d))
        C = self.config.in_channels
        self.groups = G = _default_groups(C, groups)
        self.softmax = _args.flag("softmax", softmax)
        dt = _args.float_dtype("dtype", dtype)
        r = make_rng(seed, rng)
        self.add_param("weight", uniform_init(r, (G * k, C), C, dt))
        if _args.flag("bias", bias):
            self.add_param("bias", uniform_init(r, (G * k,), C, dt))

    def _check_x(self, x: np.ndarray) -> None:
        _args.check_arrays({"x": x})
        _args.check_ndim("x", x, 3, "(N, C, L)")
        C = self.config.in_channels
        _args.check_shape("x", x, (x.shape[0], C, x.shape[2]), f"(N, C, L): {self.name()} takes C={C}")

    def mult_adds(self, x_shape: tuple, y_shape: tuple) -> int:
        """One forward's multiply-adds: the kernel branch's projection (C -> G*k at every
        output position) and one multiply-add per output value and tap."""
        N, C, Lo = y_shape
        Gk = self.weight.shape[0]
        return N * Lo * (Gk * C + C * self.kernel_size)

    def forward_pullback(self, x: np.ndarray):
        """``(N, C, L) -> (N, C, Lo)``: the projection at each step, then ``involution1d``."""
        self._check_x(x)
        N, C, L = x.shape
        G, k = self.groups, self.kernel_size
        u, pb_u = self._at_pixels(xp.contiguous(x).reshape(N, C, 1, L), (1, 1))
        w = self.weight
        z, pb_p = conv2d.vjp(u, w.reshape(G * k, C, 1, 1), self._params.get("bias"))   # (N, G*k, 1, Lo)
        Lo = z.shape[3]
        K, pb_sm = (softmax.vjp(z.reshape(N, G, k, Lo), axis=2) if self.softmax
                    else (z.reshape(N, G, k, Lo), lambda dK: (dK,)))
        self.keep_routing(kernel=K)
        y, pb = involution1d.vjp(x, K, G, stride=self.stride, padding=self.padding, dilation=self.dilation)

        def pullback(dy):
            dx, dK = pb(dy)
            dz = pb_sm(dK)[0]
            du, dw, db = pb_p(xp.contiguous(dz).reshape(N, G * k, 1, Lo))
            dx = xp.add(dx, xp.contiguous(pb_u(du)).reshape(N, C, L))
            return dx, {"weight": dw.reshape(G * k, C), "bias": db}

        return y, pullback
