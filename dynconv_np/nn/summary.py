"""``summary(model, input_shape)``: a table of every layer with its output shape,
parameters and multiply-adds; :func:`num_params`.

::

    >>> print(nn.summary(net, (1, 16, 16)))
    layer                                      output shape      params  mult-adds
    0: DynamicConv2d(1, 16, 3, padding=1)      (1, 16, 16, 16)      656    147,520
      fc1: Linear(1, 1)                        (1, 1)                 2          1
    ...

The table runs one forward of a ``(batch_size, *input_shape)`` array through the model in
eval mode (no running statistic changes; the model's modes, caches and routing records
are restored) and lists every layer that ran, in tree order, routing branches included.
"params" counts a row's own parameters (not its children's, which have rows of their
own), so the column adds up to the total. "mult-adds" counts the multiply-adds of a
row's own products (convolutions, linear maps, kernel mixing), for the whole batch;
elementwise work (activations, batch norm, pooling) counts 0. A layer class of your
own reports its count with a method ``mult_adds(x_shape, y_shape) -> int``; a layer that
has neither such a method nor a built-in formula shows "?".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .atoms import AtomConv2d
from .dcd import DCDConv2d
from .dynamic import CondConv2d, DynamicConv2d, MixtureConv2d
from .function import _restore, _snapshot
from .hooks import forward_hook
from .layers import BatchNorm1d, BatchNorm2d, Conv2d, ConvLayer, Linear
from .module import Module
from .odconv import ODConv2d
from .oned import DynamicConv1d

__all__ = ["summary", "num_params", "Summary", "mult_adds"]


def num_params(model: Module) -> int:
    """The number of trainable values of `model` (``model.num_params()``)."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a Module, got {type(model).__name__}")
    return model.num_params()


def _prod(*v) -> int:
    return int(np.prod([int(a) for a in v], dtype=np.int64))


def _conv(layer: ConvLayer, y: tuple) -> int:
    """The main convolution: ``N*Ho*Wo * O * C//groups * kh * kw``."""
    cfg = layer.config
    return _prod(y[0], y[2], y[3], cfg.out_channels, cfg.in_channels // cfg.groups, *cfg.kernel_size)


def _kernel_size(layer: ConvLayer) -> int:
    cfg = layer.config
    return _prod(cfg.out_channels, cfg.in_channels // cfg.groups, *cfg.kernel_size)


def _dcd(layer: DCDConv2d, x: tuple, y: tuple) -> int:
    N, P = y[0], y[2] * y[3]
    C, O, L, S = layer.config.in_channels, layer.config.out_channels, layer.latent_dim, layer.squeeze
    routing = N * (C * S + S * S + S * L * L + S * O)
    residual = N * P * (C * L + L * L + O * L + O)           # Q^T x, Phi z, P v, lam * r
    return _conv(layer, y) + routing + residual


def _atoms(layer: AtomConv2d, x: tuple, y: tuple) -> int:
    N, P = y[0], y[2] * y[3]
    C, O = layer.config.in_channels, layer.config.out_channels
    M, hid = layer.num_atoms, layer.hidden_channels
    B, k = layer.bases.shape[0], layer.config.kernel_size[0]
    generator = N * P * 9 * (C * hid + hid * M * B)          # the two 3x3 convs
    atoms = N * P * M * k * k * B                            # bases -> atoms
    conv = N * P * C * M * (k * k + O)                       # atoms over x, then coeff
    return generator + atoms + conv


#: built-in formulas ``f(layer, x_shape, y_shape) -> int``, by class (subclasses inherit them)
FORMULAS: list[tuple[type, Callable]] = [
    (MixtureConv2d, lambda m, x, y: _conv(m, y) + m.num_experts * _kernel_size(m)),
    (CondConv2d, lambda m, x, y: _conv(m, y) + x[0] * m.num_experts * _kernel_size(m)),
    (DynamicConv2d, lambda m, x, y: _conv(m, y) + x[0] * m.num_experts * _kernel_size(m)),
    (ODConv2d, lambda m, x, y: _conv(m, y) + x[0] * (m.num_experts + 3) * _kernel_size(m)),
    (DynamicConv1d, lambda m, x, y: _prod(y[0], y[2]) * _kernel_size(m) + x[0] * m.num_experts * _kernel_size(m)),
    (DCDConv2d, _dcd),
    (AtomConv2d, _atoms),
    (Conv2d, lambda m, x, y: _conv(m, y)),
    (Linear, lambda m, x, y: _prod(*y[:-1]) * m.in_features * m.out_features),
    (BatchNorm1d, lambda m, x, y: 0),
    (BatchNorm2d, lambda m, x, y: 0),
]


def mult_adds(layer: Module, x_shape: tuple, y_shape: tuple) -> int | None:
    """Multiply-adds of one forward of `layer` (its own products, children excluded), or
    None when unknown: the layer's ``mult_adds`` method, else a built-in formula for the
    package's layers (0 for a layer without parameters)."""
    own = getattr(layer, "mult_adds", None)
    if callable(own):
        return int(own(x_shape, y_shape))
    formulas = dict(FORMULAS)
    for cls in type(layer).__mro__:                            # the closest class with a formula
        if cls in formulas:
            return formulas[cls](layer, x_shape, y_shape)
    if not layer._params:
        return 0
    return None


@dataclass
class Summary:
    """The rows of :func:`summary`; ``str()`` is the table."""

    rows: list[tuple[str, str, int, int | None]] = field(default_factory=list)
    input_shape: tuple = ()

    @property
    def total_params(self) -> int:
        return sum(r[2] for r in self.rows)

    @property
    def total_mult_adds(self) -> int:
        """The sum of the known counts (see :attr:`complete`)."""
        return sum(r[3] or 0 for r in self.rows)

    @property
    def complete(self) -> bool:
        """True when every row's multiply-adds are known."""
        return all(r[3] is not None for r in self.rows)

    def __str__(self) -> str:
        head = ("layer", "output shape", "params", "mult-adds")
        body = [(a, b, f"{p:,}", "?" if m is None else f"{m:,}") for a, b, p, m in self.rows]
        w = [max(len(r[i]) for r in [head, *body]) for i in range(4)]
        line = lambda r: f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}"
        rule = "-" * (sum(w) + 6)
        unknown = "" if self.complete else " (rows with ? not counted)"
        return "\n".join([line(head), rule, *map(line, body), rule,
                          f"input {self.input_shape}: {self.total_params:,} parameters, "
                          f"{self.total_mult_adds:,} multiply-adds{unknown}"])

    def __repr__(self) -> str:
        return str(self)


def summary(model: Module, input_shape: tuple[int, ...], batch_size: int = 1, dtype=None) -> Summary:
    """Every layer of `model` with its output shape, parameters and multiply-adds.

    Parameters
    ----------
    model : Module
        A host layer.
    input_shape : tuple of int
        The shape of one sample, without the batch axis (``(C, H, W)`` for images).
    batch_size : int
        The batch of the forward (multiply-adds are for the whole batch).
    dtype : float32 or float64, optional
        Default: the model's dtype.

    Returns
    -------
    Summary
        ``print(summary(...))`` shows the table; ``.rows``, ``.total_params``,
        ``.total_mult_adds``.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a Module, got {type(model).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    dt = np.dtype(dtype or model.dtype() or np.float32)
    shape = (int(batch_size), *(int(s) for s in input_shape))
    x = np.random.default_rng(0).standard_normal(shape).astype(dt)
    calls: dict[int, list] = {}

    def hook(layer, inputs, y):
        calls.setdefault(id(layer), []).append((tuple(inputs[0].shape), tuple(y.shape)))

    snap = _snapshot(model)
    try:
        for _, m in model.named_modules():
            object.__setattr__(m, "training", False)
        with forward_hook(hook):
            model(x)
    finally:
        _restore(snap)

    out = Summary(input_shape=shape)
    for key, m in model.named_modules():
        if id(m) not in calls or (key == "" and m._children and m._tree_repr):
            continue
        depth = key.count(".") - 1 if key else 0
        label = "  " * max(depth, 0) + (f"{key.rstrip('.').rsplit('.', 1)[-1]}: " if key else "") + m.name()
        own = sum(int(np.prod(p.shape)) for p in m._params.values())
        counts = [mult_adds(m, xs, ys) for xs, ys in calls[id(m)]]
        macs = None if any(c is None for c in counts) else sum(counts)
        out.rows.append((label, str(calls[id(m)][0][1]), own, macs))
    return out
