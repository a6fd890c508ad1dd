"""Routing statistics: :class:`RoutingRecorder` and what papers report about attention.

::

    with nn.RoutingRecorder(net) as rec:
        nn.evaluate(net, x_test, y_test)              # any number of forwards
    pi = rec["2"]["pi"]                               # (N_test, K): layer "2"'s attention
    nn.attention_entropy(pi)                          # mean entropy (nats)
    nn.per_class_mean(pi, y_test)                     # (classes, K)
    nn.expert_usage(pi)                               # (K,) share of samples per top expert

The recorder collects, after the forward of every layer of the model, the arrays that the
layer's :meth:`~dynconv_np.nn.Module.routing` returns (the layer protocol: a dynamic layer
calls ``self.keep_routing(name=array, ...)`` in its forward). Built in: MixtureConv2d
``a``, CondConv2d ``r``, DynamicConv2d ``pi`` (each ``(N, K)``; ``(N, K, O)`` for a
per-channel mixture), DCDConv2d ``lam (N, O)`` and ``phi (N, L, L)``, AtomConv2d
``atoms (N, M, k, k, Ho, Wo)``. Any layer that keeps routing arrays the same way is
recorded too. Arrays are copied to the host and concatenated along the batch axis.

The statistics take attention arrays with the batch on axis 0 and the experts on axis 1.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .. import arrays as xp
from .hooks import forward_hook
from .module import Module

__all__ = ["RoutingRecorder", "attention_entropy", "per_class_mean", "expert_usage"]


class RoutingRecorder:
    """Context manager collecting the routing arrays of every layer of `model`.

    Parameters
    ----------
    model : Module
    names : iterable of str, optional
        Keep only these routing names (e.g. ``("pi", "r", "a")``); default: all.

    ``rec[key]`` is ``{name: array}`` for the layer with that dotted key (as in
    ``model.named_modules()``, without the trailing dot; ``""`` for the model itself),
    the arrays of all recorded forwards concatenated along axis 0. :meth:`layers` lists
    the keys that recorded something, in model order.
    """

    def __init__(self, model: Module, names: Iterable[str] | None = None):
        if not isinstance(model, Module):
            raise TypeError(f"model must be a Module, got {type(model).__name__}")
        self.model = model
        self.names = None if names is None else frozenset(names)
        self._keys = {id(m): key.rstrip(".") for key, m in model.named_modules()}
        self._parts: dict[str, dict[str, list[np.ndarray]]] = {}
        self._ctx = None

    def _hook(self, layer: Module, inputs: tuple, y) -> None:
        key = self._keys.get(id(layer))
        if key is None:
            return
        for name, a in layer.routing().items():
            if self.names is None or name in self.names:
                self._parts.setdefault(key, {}).setdefault(name, []).append(np.array(xp.to_host(a), copy=True))

    def __enter__(self) -> RoutingRecorder:
        if self._ctx is not None:
            raise RuntimeError("this RoutingRecorder is already recording")
        self._ctx = forward_hook(self._hook)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        ctx, self._ctx = self._ctx, None
        ctx.__exit__(*exc)

    def layers(self) -> list[str]:
        """Keys of the layers that recorded routing arrays, in model order."""
        return [k for k in (key.rstrip(".") for key, _ in self.model.named_modules()) if k in self._parts]

    def __getitem__(self, key: str) -> dict[str, np.ndarray]:
        if key not in self._parts:
            raise KeyError(f"no routing recorded for layer {key!r} (recorded: {self.layers()})")
        return {name: np.concatenate(parts, axis=0) for name, parts in self._parts[key].items()}

    def arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """``{layer key: {name: array}}`` for every recorded layer."""
        return {k: self[k] for k in self.layers()}

    def clear(self) -> None:
        """Forget what was recorded."""
        self._parts.clear()


def _attention(p, name: str = "p") -> np.ndarray:
    p = np.asarray(xp.to_host(p) if xp.is_array(p) else p, dtype=np.float64)
    if p.ndim < 2:
        raise ValueError(f"{name} must be (N, K, ...) with the batch on axis 0 and experts on axis 1, "
                         f"got shape {p.shape}")
    if (p < 0).any():
        raise ValueError(f"{name} must be non-negative (attention weights)")
    return p


def attention_entropy(p, relative: bool = False) -> float:
    """Mean entropy of the attention over the experts (axis 1), in nats.

    Each distribution is normalised to sum to 1 first (CondConv's sigmoid weights do not).
    With `relative`, divided by ``log K``: 1 for uniform attention, 0 for one expert.

    Parameters
    ----------
    p : array (N, K) or (N, K, ...)
    relative : bool

    Returns
    -------
    float
        The mean over samples (and trailing axes) of ``-sum_k q_k log q_k``, ``q = p / sum_k p``.
    """
    p = _attention(p)
    q = p / np.maximum(p.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    h = -(q * np.log(np.where(q > 0, q, 1.0))).sum(axis=1)
    mean = float(h.mean())
    K = p.shape[1]
    if not relative:
        return mean
    return float(mean / np.log(K)) if K > 1 else 0.0


def per_class_mean(p, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """The mean attention of the samples of each class.

    Parameters
    ----------
    p : array (N, K, ...)
    labels : ndarray (N,) integer classes
    num_classes : int, optional
        Default ``labels.max() + 1``.

    Returns
    -------
    ndarray (num_classes, K, ...)
        Row c is the mean of ``p[labels == c]`` (NaN for a class without samples).
    """
    p = _attention(p)
    labels = np.asarray(labels)
    if labels.shape != (p.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be ({p.shape[0]},) integers, got shape {labels.shape}, dtype {labels.dtype}")
    n = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    out = np.full((n,) + p.shape[1:], np.nan)
    for c in range(n):
        sel = labels == c
        if sel.any():
            out[c] = p[sel].mean(axis=0)
    return out


def expert_usage(p) -> np.ndarray:
    """The share of samples (and trailing positions) whose largest weight is expert k: ``(K,)``.

    A balanced routing gives ``1/K`` each; a collapsed one puts 1 on a single expert.
    """
    p = _attention(p)
    top = p.argmax(axis=1)
    return np.bincount(top.ravel(), minlength=p.shape[1]) / top.size
