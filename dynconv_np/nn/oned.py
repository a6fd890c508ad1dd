"""DynamicConv1d: DY-CNN's attention and kernel mixing on sequences ``(N, C, L)``.

The attention is DynamicConv2d's, ``pi = softmax(FC2(ReLU(FC1(GAP(x)))) / tau)`` with GAP
the mean over the length, and :func:`dynconv_np.dynamic_conv1d` mixes the experts. The
settings are checked as a 1-D user writes them and kept lifted onto the 2-D engine
(``H = 1``, ``(1, k)`` kernels) in the layer's :class:`~dynconv_np.nn.layers.ConvConfig`.
"""

from __future__ import annotations

import numpy as np

from .. import _args
from .. import arrays as xp
from ..ops import dynamic_conv1d, softmax
from .dynamic import init_dy_cnn
from .init import make_rng
from .layers import ConvConfig, ConvLayer, conv_config
from .routing import RoutingHead, Temperature

__all__ = ["DynamicConv1d", "conv1d_config"]


def conv1d_config(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                  bias=True) -> tuple[ConvConfig, dict]:
    """Validate torch.nn.Conv1d-style arguments (ints or 1-tuples; padding also "valid" or
    "same"): ``(the ConvConfig of the lifted 2-D convolution, the 1-D op's stride, padding
    and dilation)``."""
    k = _args.single("kernel_size", kernel_size, 1)
    s, p, d = _args.window1d(stride, padding, dilation)
    cfg = conv_config(in_channels, out_channels, (1, k), groups=groups, bias=bias, **_args.lift1d(s, p, d))
    return cfg, dict(stride=s, padding=p, dilation=d)


class DynamicConv1d(Temperature, ConvLayer):
    """Dynamic convolution, DY-CNN (docs/math.md, "DynamicConv (DY-CNN)"), on sequences.

    Attention ``pi = softmax(FC2(ReLU(FC1(mean_L(x)))) / tau)`` ``(N, K)``, from the layer's
    own input; kernel and bias are mixed: ``y[n] = conv1d(x[n], sum_k pi[n,k] W_k) +
    sum_k pi[n,k] b_k``. The temperature starts at 30 and is annealed to 1 by
    :class:`~dynconv_np.nn.TemperatureSchedule` (``layer.temperature = 1.0`` disables it).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, dilation : int or (int,)
    padding : int, (int,), "valid" or "same"
    groups : int
    bias : bool
    num_experts : int
        K (4 in the paper).
    reduction : int
        FC1 maps C to ``max(1, C // reduction)`` hidden units.
    temperature : float
        The softmax temperature tau (a buffer, so checkpoints keep it).
    hidden_channels : int, optional
        Overrides the hidden width.
    dtype, seed, rng
        Parameter dtype and initialisation randomness.

    Params: ``weight (K, O, C//groups, k)`` (each expert torch's default init), ``bias (K,
    O)`` (zeros), ``fc1.weight (hidden, C)``, ``fc1.bias``, ``fc2.weight (K, hidden)``,
    ``fc2.bias``. Buffer ``tau``. Input ``(N, C, L)`` -> ``(N, O, Lo)``.
    """

    head = RoutingHead(("fc1", "fc2"), softmax)
    _x_layout = "(N, C, L)"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, num_experts: int = 4, reduction: int = 4,
                 temperature: float = 30.0, hidden_channels: int | None = None, dtype=np.float32,
                 seed: int | None = None, rng: np.random.Generator | None = None):
        super().__init__()
        cfg, self.geo1d = conv1d_config(in_channels, out_channels, kernel_size, stride, padding, dilation,
                                        groups, bias)
        self.config = cfg
        self.num_experts = K = _args.positive_int("num_experts", num_experts)
        shape = (K, cfg.out_channels, cfg.in_channels // cfg.groups, cfg.kernel_size[1])
        init_dy_cnn(self, shape, _args.float_dtype("dtype", dtype), reduction, hidden_channels, temperature,
                    make_rng(seed, rng))

    def _route(self, x: np.ndarray):
        N, C, L = x.shape
        return self.head(self, xp.contiguous(x).reshape(N, C, 1, L), tau=self.temperature)   # pi (N, K)

    def routing_weights(self, x: np.ndarray) -> np.ndarray:
        """The attention ``pi (N, K)`` this layer computes for `x` (touches no cache)."""
        self._check_x(x)
        return self._route(x)[0]

    def forward_pullback(self, x: np.ndarray):
        """x ``(N, C, L)`` -> y ``(N, O, Lo)``."""
        self._check_x(x)
        pi, pb_route = self._route(x)
        self.keep_routing(pi=pi)
        y, pb = dynamic_conv1d.vjp(x, self.weight, pi, self._params.get("bias"), groups=self.config.groups,
                                   **self.geo1d)

        def pullback(dy):
            dx, dW, dpi, dbias = pb(dy)
            dx_route, grads = pb_route(dpi)                               # dx_route (N, C, 1, L)
            grads.update(weight=dW, bias=dbias)
            return xp.add(dx, dx_route.reshape(x.shape)), grads

        return y, pullback
