"""ODConv2d: omni-dimensional dynamic convolution with its attention branch (docs/math.md,
"ODConv"; Li et al., ICLR 2022; the branch as the authors' code, OSVAI/ODConv, builds it).

One trunk ``h = ReLU(BN(FC(GAP(x))))`` of width ``max(int(C * reduction), min_channels)``
feeds four heads, each a Linear with bias::

    a_c = sigmoid(channel_fc(h) / tau)    (N, C)
    a_f = sigmoid(filter_fc(h) / tau)     (N, O)      1 for a depthwise conv (C == groups == O)
    a_s = sigmoid(spatial_fc(h) / tau)    (N, kh, kw) 1 for a 1x1 kernel
    a_w = softmax(kernel_fc(h) / tau)     (N, K)      1 for K = 1

and :func:`dynconv_np.odconv2d` applies them. The pullback takes the four attentions'
gradients back through their heads, sums them into ``dh``, and the trunk's gradient
flows into ``dx`` through GAP, on top of the convolution's own ``dx``.

A training batch of one sample: the trunk's BatchNorm1d has one value per channel, no
batch statistics exist (PyTorch raises, and the authors' code with it). Here the
branch's batch norm then normalises with its running statistics, as in eval mode, and
leaves them unchanged (:class:`BranchBatchNorm1d`): the attentions stay functions of the
input, and a batch of one trains the rest of the layer. Skipping the BN instead would
feed the heads an unnormalised ``h`` they were not trained on.
"""

from __future__ import annotations

import numpy as np

from .. import _args
from .. import arrays as xp
from ..ops import global_avg_pool, odconv2d, relu, sigmoid, softmax
from .compose import chain
from .init import make_rng
from .layers import BatchNorm1d, ConvLayer, Linear, conv_config
from .routing import Temperature

__all__ = ["ODConv2d", "BranchBatchNorm1d"]


class BranchBatchNorm1d(BatchNorm1d):
    """The BatchNorm1d of an attention branch: a training batch of one sample uses the
    running statistics (as in eval mode) and does not update them; larger batches are
    BatchNorm1d's training mode."""

    def forward_pullback(self, x: np.ndarray):
        if not (self.training and x.shape[0] == 1):
            return super().forward_pullback(x)
        # eval mode's computation; its pullback does not read the mode
        self.training = False
        try:
            return super().forward_pullback(x)
        finally:
            self.training = True


def _kaiming_normal(r: np.random.Generator, shape: tuple, fan_out: int, dtype) -> np.ndarray:
    """Normal with std ``sqrt(2 / fan_out)`` (torch's kaiming_normal_, mode="fan_out", ReLU)."""
    return (r.standard_normal(shape) * np.sqrt(2.0 / fan_out)).astype(dtype)


class ODConv2d(Temperature, ConvLayer):
    """Omni-dimensional dynamic convolution (no bias).

    ``y[n] = a_f[n] * conv2d(a_c[n] * x[n], sum_k a_w[n, k] (a_s[n] * W_k))`` with the four
    attentions of the branch above, all with the temperature tau (a buffer; 30 at first,
    annealed to 1 by :class:`~dynconv_np.nn.TemperatureSchedule`, per iteration over 10
    epochs in the authors' code; ``layer.temperature = 1.0`` disables the annealing).

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups
        As ``torch.nn.Conv2d`` (there is no bias).
    num_experts : int
        K, the number of expert kernels (4 in the paper's ODConv 4x).
    reduction : float
        The trunk's width is ``max(int(in_channels * reduction), min_channels)``.
    temperature : float
        The attentions' temperature tau.
    min_channels : int
        The smallest trunk width (16, as the authors').
    dtype, seed, rng
        Parameter dtype and initialisation randomness.

    Params (the authors' names; their 1x1 convolutions are Linears here):
    ``weight (K, O, C//groups, kh, kw)``, ``fc.weight (A, C)`` (no bias), ``bn.weight``,
    ``bn.bias`` (A,), ``channel_fc.weight (C, A)``, ``channel_fc.bias``, and where the
    attention exists ``filter_fc (O, A)``, ``spatial_fc (kh*kw, A)``, ``kernel_fc (K, A)``
    with biases. Initialisation as the authors': every weight normal with std
    ``sqrt(2 / fan_out)`` (the experts ``fan_out = O*kh*kw``, a Linear its output width),
    biases 0, BN weight 1. Buffers ``bn.running_mean``, ``bn.running_var`` and ``tau``.
    Input ``(N, C, H, W)`` -> ``(N, O, Ho, Wo)``; a training batch of one is supported
    (see the module docstring).
    """

    #: The heads (child name, activation), in the order of the pullback's sum of their gradients.
    _HEADS = (("channel_fc", sigmoid), ("filter_fc", sigmoid), ("spatial_fc", sigmoid), ("kernel_fc", softmax))

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, *, num_experts: int = 4, reduction: float = 0.0625, temperature: float = 30.0,
                 min_channels: int = 16, dtype=np.float32, seed: int | None = None,
                 rng: np.random.Generator | None = None):
        super().__init__()
        self.config = cfg = conv_config(in_channels, out_channels, kernel_size, stride, padding, dilation,
                                        groups, bias=False)
        self.num_experts = K = _args.positive_int("num_experts", num_experts)
        red = _args.positive_float("reduction", reduction)
        dt = _args.float_dtype("dtype", dtype)
        C, O = cfg.in_channels, cfg.out_channels
        kh, kw = cfg.kernel_size
        self.attention_channels = A = max(int(C * red), _args.positive_int("min_channels", min_channels))
        r = make_rng(seed, rng)
        self.add_param("weight", _kaiming_normal(r, cfg.weight_shape(K), O * kh * kw, dt))
        self._linear(r, "fc", C, A, bias=False)
        self.add_child("bn", BranchBatchNorm1d(A, dtype=dt))
        self._linear(r, "channel_fc", A, C)
        if not (C == cfg.groups == O):                   # depthwise: no filter attention
            self._linear(r, "filter_fc", A, O)
        if kh * kw > 1:                                  # 1x1: no spatial attention
            self._linear(r, "spatial_fc", A, kh * kw)
        if K > 1:                                        # one kernel: no kernel attention
            self._linear(r, "kernel_fc", A, K)
        self._init_temperature(temperature)

    def _linear(self, r, name: str, fan_in: int, fan_out: int, bias: bool = True) -> None:
        fc = self.add_child(name, Linear(fan_in, fan_out, bias, dtype=self.weight.dtype, rng=r))
        fc.params["weight"] = _kaiming_normal(r, (fan_out, fan_in), fan_out, self.weight.dtype)
        if bias:
            fc.params["bias"] = np.zeros(fan_out, dtype=self.weight.dtype)

    def _attend(self, x: np.ndarray):
        """``((a_w, a_s, a_c, a_f), pullback)``; ``pullback(da_w, da_s, da_c, da_f) -> (dx, grads)``
        takes the attentions' gradients back through the heads and the trunk."""
        N = x.shape[0]
        O, (kh, kw) = self.config.out_channels, self.config.kernel_size
        tau = self.temperature
        h, pb_trunk = chain(self, x, global_avg_pool, "fc", "bn", relu)       # (N, A)
        out, pbs = {}, []
        for name, act in self._HEADS:
            if name in self._children:
                out[name], pb = chain(self, h, name, (act, {"tau": tau}))
                pbs.append((name, pb))
        ones = {"filter_fc": (N, O), "spatial_fc": (N, kh * kw), "kernel_fc": (N, self.num_experts)}
        for name, shape in ones.items():
            if name not in out:
                out[name] = xp.fill(xp.empty_like(x, shape), 1)
        atts = (out["kernel_fc"], out["spatial_fc"].reshape(N, kh, kw), out["channel_fc"], out["filter_fc"])

        def pullback(da_w, da_s, da_c, da_f):
            d = {"kernel_fc": da_w, "spatial_fc": da_s.reshape(N, kh * kw), "channel_fc": da_c, "filter_fc": da_f}
            dh, grads = None, {}
            for name, pb in pbs:
                dh_i, g = pb(d[name])
                grads.update(g)
                dh = dh_i if dh is None else xp.add(dh, dh_i)
            dx, g = pb_trunk(dh)
            grads.update(g)
            return dx, grads

        return atts, pullback

    def attentions(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The attentions ``(a_w (N, K), a_s (N, kh, kw), a_c (N, C), a_f (N, O))`` this layer
        computes for `x` in its current mode (ones where an attention does not exist).

        Touches no cache, so it may be called between a forward and its backward; in
        training mode it updates the branch's running statistics, as a forward does.
        """
        self._check_x(x)
        return self._attend(x)[0]

    def forward_pullback(self, x: np.ndarray):
        """x ``(N, C, H, W)`` -> y ``(N, O, Ho, Wo)``."""
        self._check_x(x)
        atts, pb_att = self._attend(x)
        self.keep_routing(**dict(zip(("a_w", "a_s", "a_c", "a_f"), atts)))
        y, pb = odconv2d.vjp(x, self.weight, *atts, groups=self.config.groups, **self.config.geo)

        def pullback(dy):
            dx, dW, *datts = pb(dy)
            dx_att, grads = pb_att(*datts)
            grads["weight"] = dW
            return xp.add(dx, dx_att), grads

        return y, pullback
