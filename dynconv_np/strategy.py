"""Which strategy runs each convolution on the CPU: see the choice, or force it.

The CPU backend picks, per call and per pass, how a convolution runs (a cost model over
the shapes; never the thread count, so results stay bitwise identical whatever the
threads):

- conv strategies (:data:`STRATEGIES`): ``"tiles"`` (one GEMM per sample and tile of
  output rows), ``"batched"`` (shared kernels: several samples' columns in one GEMM),
  ``"winograd2"`` and ``"winograd4"`` (Winograd F(2x2, 3x3) and F(4x4, 3x3): 3x3
  windows, stride 1; dilated ones by phases, their padding a multiple of the dilation),
  ``"shifted"`` (stride 1: one GEMM per tap over shifted
  views of a padded copy of the input, no unfold);
- formulations of ``dynamic_conv2d`` with per-sample weights (:data:`MIXINGS`):
  ``"kernel_mixing"`` (mix the K kernels per sample, one convolution) or
  ``"output_mixing"`` (K convolutions as one shared convolution, then mix the outputs).

::

    print(dc.explain(dc.dynamic_conv2d, x, W, pi, bias, padding=1))   # the plan, with estimates
    with dc.strategy.force("winograd4"):                              # this context only
        y = dc.conv2d(x, w, padding=1)
    with dc.strategy.force("output_mixing", "batched"): ...           # both axes
    with dc.strategy.force(forward="winograd4", backward="tiles"): ...
    dc.strategy.set_default("tiles")                                  # the whole process
    DYNCONV_STRATEGY=tiles python train.py                            # the same, at import

A conv strategy forced alone runs on the op's own kernels, so it implies
``"kernel_mixing"`` unless ``"output_mixing"`` is named too (then it runs output mixing's
shared convolution). Forcing a strategy that cannot run a call raises ``ValueError``
naming it. ``force()`` with no names and ``set_default()`` restore the cost model's
choice. Forcing applies to the CPU backend; the CUDA backend always mixes kernels.
Every decision is logged at DEBUG level on the ``dynconv_np.strategy`` logger.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from . import arrays as xp
from .backends.cpu import plan

__all__ = ["STRATEGIES", "MIXINGS", "ENV", "force", "set_default", "current", "explain", "Explanation"]

#: The conv strategies of one pass.
STRATEGIES = plan.CONV_STRATEGIES
#: The formulations of a kernel-mixing op.
MIXINGS = plan.MIXINGS
#: The environment variable read at import: names separated by commas, as for
#: :func:`set_default` (``"forward=NAME"`` and ``"backward=NAME"`` pin one pass).
ENV = "DYNCONV_STRATEGY"


def _parse(names: tuple, forward: str | None, backward: str | None) -> plan.Forced:
    mixing = None
    conv = None
    for name in names:
        if name in MIXINGS:
            if mixing is not None and mixing != name:
                raise ValueError(f"two mixing formulations forced: {mixing!r} and {name!r}")
            mixing = name
        elif name in STRATEGIES:
            if conv is not None and conv != name:
                raise ValueError(f"two conv strategies forced: {conv!r} and {name!r}; use forward= and "
                                 "backward= to force each pass")
            conv = name
        else:
            raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES + MIXINGS)}")
    for pass_, name in (("forward", forward), ("backward", backward)):
        if name is not None and name not in STRATEGIES:
            raise ValueError(f"unknown {pass_} strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
        if name is not None and conv is not None and name != conv:
            raise ValueError(f"{pass_}={name!r} contradicts the strategy {conv!r} forced for both passes")
    forward = forward or conv
    backward = backward or conv
    if mixing is None and (forward or backward):
        mixing = "kernel_mixing"
    return plan.Forced(mixing, forward, backward)


@contextlib.contextmanager
def force(*names: str, forward: str | None = None, backward: str | None = None) -> Iterator[None]:
    """Within the context (this thread), run the named strategies.

    Parameters
    ----------
    *names : str
        At most one conv strategy (:data:`STRATEGIES`, both passes) and one formulation
        (:data:`MIXINGS`). None at all: the cost model chooses, whatever the default.
    forward, backward : str, optional
        A conv strategy for one pass only.

    Raises
    ------
    ValueError
        For an unknown name or contradicting names (here), or, inside the context, for a
        convolution the forced strategy cannot run.
    """
    with plan.forcing(_parse(names, forward, backward)):
        yield


def set_default(*names: str, forward: str | None = None, backward: str | None = None) -> str:
    """Force strategies for the whole process (as :func:`force`; no names: the cost model
    again). Returns the previous default, as a string :func:`set_default` accepts back
    (``"auto"`` for the cost model)."""
    new = _parse(tuple(n for n in names if n != "auto"), forward, backward)
    return _spell(plan.set_default(new))


def _spell(f: plan.Forced) -> str:
    return f.names()


def current() -> str:
    """What is forced here (a context's :func:`force`, else the default): ``"auto"`` when
    the cost model chooses."""
    return _spell(plan.forced())


def _from_environment() -> None:
    value = os.environ.get(ENV, "").strip()
    if not value:
        return
    names, passes = [], {}
    for item in filter(None, (v.strip() for v in value.split(","))):
        key, eq, name = item.partition("=")
        if eq:
            if key not in plan.PASSES:
                raise ValueError(f"{ENV}={value!r}: {item!r} should be forward=NAME or backward=NAME")
            passes[key] = name
        elif item != "auto":
            names.append(item)
    try:
        set_default(*names, **passes)
    except ValueError as e:
        raise ValueError(f"{ENV}={value!r}: {e}") from None


class Explanation(list):
    """The decisions of one call (:func:`explain`), in the order they were made: each a
    record with ``pass_`` (``"mixing"``, ``"forward"`` or ``"backward"``), ``chosen``,
    ``costs`` (``(strategy, estimated seconds or None)`` pairs; None: it cannot run the
    call), ``forced`` and ``call`` (the convolution's shapes). ``str()`` gives one line
    per decision."""

    op: str = ""

    def __str__(self) -> str:
        head = f"{self.op}: plan of one forward and backward (CPU cost model, estimates in ms)"
        if not self:
            return head + "\n  (no CPU convolution decisions: the op runs no conv template on the CPU)"
        return "\n".join([head, *(f"  {d}" for d in self)])

    def __repr__(self) -> str:
        return str(self)


def explain(f: Callable, *args, **kwargs) -> Explanation:
    """Run ``f.vjp(*args, **kwargs)`` and its pullback (on a cotangent of ones) and return
    every strategy decision they made, with the cost model's estimates.

    ``print(dc.explain(dc.dynamic_conv2d, x, W, pi, bias, padding=1))`` shows, per pass,
    the strategy that ran and every candidate's estimated time (what is forced counts:
    call it inside :func:`force` to see a forced plan). `f` is any op (or callable with a
    ``vjp`` following the ops' convention).
    """
    if not hasattr(f, "vjp"):
        raise TypeError(f"f must be a dynconv_np op (with a .vjp method), got {f!r}")
    with plan.recording() as rec:
        y, pullback = f.vjp(*args, **kwargs)
        pullback(xp.fill(xp.empty_like(y), 1))
    out = Explanation(rec)
    out.op = getattr(f, "__name__", repr(f))
    return out


_from_environment()
