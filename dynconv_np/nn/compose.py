"""Layers built from pullbacks: :class:`OpLayer` (a layer whose backward is the pullback
its forward returns), :func:`chain` (a straight line of child layers and ops as one
pullback), :func:`prefixed` and :class:`Sequential`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import _args
from .module import Module

__all__ = ["OpLayer", "Sequential", "chain", "prefixed"]


class OpLayer(Module):
    """A layer whose backward is the pullback its forward returns (the usual case).

    Subclasses write ``forward_pullback(x, **kwargs) -> (y, pullback)`` with
    ``pullback(dy) -> (dx, {param key: gradient or None})`` (see the module docstring);
    this class checks ``dy`` against the output and adds the gradients, once for every layer.
    """

    _hooked_method = "forward_pullback"

    def forward_pullback(self, x: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, Callable]:
        """``(y, pullback)`` for `x`, leaving every cache alone."""
        raise TypeError(f"{type(self).__name__} does not define forward_pullback")

    def forward(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        y, pullback = self.forward_pullback(x, **kwargs)
        self._cache = (y, pullback)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y, pullback = self.cache()
        _args.check_cotangent(dy, y)
        dx, grads = pullback(dy)
        for key, grad in grads.items():
            self.accumulate(key, grad)
        return dx


def prefixed(name: str, grads: Mapping) -> dict:
    """A child's gradients ``{key: grad}`` keyed as its parent sees them (``"name.key"``)."""
    return {f"{name}.{k}": grad for k, grad in grads.items()}


def chain(layer: Module, x: np.ndarray, *steps) -> tuple[np.ndarray, Callable]:
    """Run `x` through `steps` in order, as one ``forward_pullback``.

    Each step is the name of a child :class:`OpLayer` of `layer` (its ``forward_pullback``;
    its gradients come back under ``"name.<key>"``), a one-input op ``f`` (``f.vjp(h)``),
    or ``(f, kwargs)`` for ``f.vjp(h, **kwargs)``.

    Returns
    -------
    y, pullback
        ``pullback(dy) -> (dx, grads)`` as an :class:`OpLayer`'s.
    """
    pbs = []
    h = x
    for step in steps:
        if isinstance(step, str):
            h, pb = getattr(layer, step).forward_pullback(h)
        else:
            f, kwargs = step if isinstance(step, tuple) else (step, {})
            h, pb = f.vjp(h, **kwargs)
        pbs.append((step, pb))

    def pullback(dy):
        grads = {}
        for step, pb in reversed(pbs):
            if isinstance(step, str):
                dy, own = pb(dy)
                grads.update(prefixed(step, own))
            else:
                dy = pb(dy)[0]
        return dy, grads

    return h, pullback


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    Children are named ``"0"``, ``"1"``, ...; ``seq[i]`` returns the i-th layer. Its repr
    is the tree of its layers. To share one CondConv routing among several layers, use
    :class:`~dynconv_np.nn.CondConvBlock`.
    """

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_child(str(i), layer)

    def __getitem__(self, i: int) -> Module:
        return list(self._children.values())[i]

    def __len__(self) -> int:
        return len(self._children)

    def check_input(self, x) -> None:
        """The first layer's check (errors name that layer)."""
        if self._children:
            self[0].check_input(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self._children.values():
            x = layer(x)
        self._cache = True
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self.cache()
        for layer in reversed(list(self._children.values())):
            dy = layer.backward(dy)
        return dy
