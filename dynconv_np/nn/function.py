"""``as_function``: any layer as a vjp-convention function, for :func:`dynconv_np.gradcheck`."""

from __future__ import annotations

import inspect
import keyword
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from .module import Module, _locate

__all__ = ["as_function"]


def _identifiers(keys: list[str]) -> list[str]:
    """Parameter names usable in a Python signature (``"fc1.weight"`` -> ``"fc1_weight"``)."""
    out, seen = [], {"x"}
    for k in keys:
        s = re.sub(r"\W", "_", k)
        if not s or s[0].isdigit() or keyword.iskeyword(s):
            s = "p_" + s
        base, i = s, 1
        while s in seen:
            s, i = f"{base}_{i}", i + 1
        seen.add(s)
        out.append(s)
    return out


_STATE = ("_params", "_buffers", "_grads", "_cache", "_routing", "training")


def _snapshot(layer: Module) -> list:
    return [(m, [m.__dict__.get(k) for k in _STATE]) for _, m in layer.named_modules()]


def _restore(snap: list) -> None:
    for m, values in snap:
        m.__dict__.update(zip(_STATE, values))


def as_function(layer: Module, **forward_kwargs: Any) -> Callable:
    """A vjp-convention function ``f(x, *params)`` computing ``layer(x)``.

    Parameters
    ----------
    layer : Module
        Any layer; its current mode (train/eval) is used at each call.
    **forward_kwargs
        Extra keyword arguments passed to every ``layer.forward``.

    Returns
    -------
    f : callable
        ``f(x, p1, p2, ...)`` with the parameters in ``layer.params`` order (omitted or
        None ones are the layer's own), ``f.vjp(...) -> (y, pullback)`` with
        ``pullback(dy) -> (dx, dp1, dp2, ...)``, and ``f.array_params``, so that
        ``dc.gradcheck(as_function(layer), (x, *layer.params.values()))`` checks the whole
        layer. Calls leave the layer exactly as they found it: its arrays, running
        statistics, gradients, cache and routing record are swapped out for the call and restored
        (buffers are copied and cast to x's dtype, so a float32 layer can be checked in
        float64). Host layers and NumPy arrays only (gradcheck differentiates on the host):
        call ``layer.to_host()`` first.
    """
    if not isinstance(layer, Module):
        raise TypeError(f"layer must be a dynconv_np.nn.Module, got {type(layer).__name__}")
    keys = list(layer.params.keys())
    idents = _identifiers(keys)
    locations = [_locate(layer, "_params", k) for k in keys]

    def enter(x, params):
        if len(params) > len(keys):
            raise TypeError(f"{layer.name()} has {len(keys)} parameters ({', '.join(keys)}), "
                            f"got {len(params)} parameter arrays")
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
        snap = _snapshot(layer)
        for _, m in layer.named_modules():
            d = m.__dict__
            d["_params"] = dict(m._params)
            d["_grads"] = dict(m._grads)
            d["_buffers"] = {k: (np.array(b, dtype=x.dtype) if b.dtype.kind == "f" and b.ndim
                                 else np.array(b, copy=True)) for k, b in m._buffers.items()}
        for (mod, name), ident, p in zip(locations, idents, params):
            if p is None:
                continue
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{ident} must be a numpy.ndarray, got {type(p).__name__}")
            if p.shape != mod._params[name].shape:
                raise ValueError(f"{ident} must have shape {mod._params[name].shape}, got {p.shape}")
            mod._params[name] = p
        return snap

    def f(x, *params):
        snap = enter(x, params)
        try:
            return layer.forward(x, **forward_kwargs)
        finally:
            _restore(snap)

    def vjp(x, *params):
        snap = enter(x, params)
        try:
            y = layer.forward(x, **forward_kwargs)
            state = _snapshot(layer)
        finally:
            _restore(snap)

        def pullback(dy):
            outer = _snapshot(layer)
            _restore(state)
            try:
                for _, m in layer.named_modules():
                    m.__dict__["_grads"] = {k: np.zeros_like(p) for k, p in m._params.items()}
                dx = layer.backward(dy)
                grads = tuple(mod._grads[name].copy() for mod, name in locations)
            finally:
                _restore(outer)
            return (dx, *grads)

        return y, pullback

    P = inspect.Parameter
    f.__signature__ = inspect.Signature(
        [P("x", P.POSITIONAL_OR_KEYWORD)] + [P(n, P.POSITIONAL_OR_KEYWORD, default=None) for n in idents])
    f.__name__ = f.__qualname__ = f"as_function({layer.name()})"
    f.array_params = ("x", *idents)
    f.param_keys = tuple(keys)
    f.vjp = vjp
    return f
