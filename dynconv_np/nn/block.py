"""CondConvBlock: several CondConv2d sharing one routing, computed once per block.

The official CondConv code (an EfficientNet block) computes the routing weights once from
the block's input, ``r = sigmoid(route(GAP(x)))`` ``(N, E)``, and hands them to every
CondConv layer of the block (expansion, depthwise, projection). :class:`CondConvBlock` is
that: a :class:`~dynconv_np.nn.Sequential`-like container with its own routing
``Linear(in_channels, E)`` child named ``route``; each :class:`CondConv2d` child runs with
``routing=r``, the others as usual. In the backward, the routing gradients of all the
CondConv2d children are summed and taken back through the shared routing branch into
the block's ``dx``.
"""

from __future__ import annotations

import numpy as np

from .. import _args
from .. import arrays as xp
from ..ops import sigmoid
from .compose import OpLayer, prefixed
from .dynamic import CondConv2d
from .init import make_rng
from .layers import Linear
from .module import Module
from .routing import RoutingHead

__all__ = ["CondConvBlock"]


class CondConvBlock(OpLayer):
    """Layers applied in order, every CondConv2d among them with one shared routing.

    Parameters
    ----------
    *layers : OpLayer
        The block's layers (CondConv2d, BatchNorm2d, ReLU, ...), at least one CondConv2d;
        all CondConv2d must have the same ``num_experts``.
    in_channels : int, optional
        Channels of the block's input (the routing's input); default: the first layer's
        ``in_channels``.
    dtype, seed, rng
        The routing Linear's dtype (default: the first CondConv2d's) and initialisation.

    Params: the layers' as ``"<i>.<key>"`` (``"0.weight"``), the routing's ``route.weight
    (E, C)`` and ``route.bias (E,)``. Input ``(N, C, H, W)``; output as the last layer's.
    ``routing_weights(x)`` returns the shared ``(N, E)`` routing.
    """

    head = RoutingHead(("route",), sigmoid)

    def __init__(self, *layers: OpLayer, in_channels: int | None = None, dtype=None, seed: int | None = None,
                 rng: np.random.Generator | None = None):
        super().__init__()
        conds = [m for m in layers if isinstance(m, CondConv2d)]
        if not conds:
            raise ValueError("CondConvBlock needs at least one CondConv2d among its layers")
        for i, m in enumerate(layers):
            if not isinstance(m, OpLayer):
                raise TypeError(f"layers[{i}] must be a layer with forward_pullback (an OpLayer), "
                                f"got {type(m).__name__}")
        E = conds[0].num_experts
        if any(m.num_experts != E for m in conds):
            raise ValueError(f"every CondConv2d of the block must have the same num_experts, got "
                             f"{[m.num_experts for m in conds]}")
        if in_channels is None:
            cfg = getattr(layers[0], "config", None)
            if cfg is None:
                raise ValueError("give in_channels: the first layer has no in_channels")
            in_channels = cfg.in_channels
        C = _args.positive_int("in_channels", in_channels)
        dt = conds[0].weight.dtype if dtype is None else _args.float_dtype("dtype", dtype)
        self.num_experts = E
        self.in_channels = C
        for i, m in enumerate(layers):
            self.add_child(str(i), m)
        self.add_child("route", Linear(C, E, dtype=dt, rng=make_rng(seed, rng)))

    def layers(self) -> list[Module]:
        """The block's layers, in order (without the routing)."""
        return [m for k, m in self._children.items() if k != "route"]

    def check_input(self, x) -> None:
        super().check_input(x)
        _args.check_ndim("x", x, 4, "(N, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self.name()} expects x with {self.in_channels} channels, got shape {tuple(x.shape)}")

    def routing_weights(self, x: np.ndarray) -> np.ndarray:
        """The shared routing ``(N, E)`` for `x` (current mode; touches no cache)."""
        self.check_input(x)
        return self.head(self, x)[0]

    def forward_pullback(self, x: np.ndarray):
        """x ``(N, C, H, W)`` -> the last layer's output."""
        r, pb_route = self.head(self, x)                                   # (N, E)
        steps = []
        h = x
        for key, m in self._children.items():
            if key == "route":
                continue
            if isinstance(m, CondConv2d):
                h, pb = m.forward_pullback(h, routing=r)
            else:
                h, pb = m.forward_pullback(h)
            steps.append((key, m, pb))

        def pullback(dy):
            grads, dr = {}, None
            for key, m, pb in reversed(steps):
                dy, own = pb(dy)
                grads.update(prefixed(key, own))
                if isinstance(m, CondConv2d):
                    # the CondConv2d pullback of a given routing leaves d loss / d r here
                    dr = m.routing_grad if dr is None else xp.add(dr, m.routing_grad)
            dx_route, route_grads = pb_route(dr)                            # keys "route.<key>"
            grads.update(route_grads)
            return xp.add(dy, dx_route), grads

        return h, pullback
