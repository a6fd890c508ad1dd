"""Routing branches shared by the dynamic layers, the softmax temperature and its schedule.

- :class:`RoutingHead`: ``GAP -> FC [-> ReLU -> FC ...] -> activation(z / tau)`` over a
  layer's :class:`~dynconv_np.nn.layers.Linear` children (CondConv2d: one FC and a
  sigmoid; DynamicConv2d: two FCs and a softmax). It composes the ops and the children's
  ``forward_pullback`` and returns its own pullback, so computing a routing never
  touches a cache.
- :class:`Temperature`: the mixin of layers whose attention has a temperature (the 0-d
  host buffer ``tau`` and the ``temperature`` property).
- :class:`TemperatureSchedule`: linear annealing of tau from 30 to 1 over 10 epochs, set
  on every :class:`Temperature` layer of a model (a scheduler the training loop steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _args
from .._op import Op
from ..ops import global_avg_pool, relu
from .compose import chain
from .module import Module
from .schedules import Scheduler

__all__ = ["RoutingHead", "Temperature", "TemperatureSchedule"]


@dataclass(frozen=True)
class RoutingHead:
    """``GAP -> FC [-> ReLU -> FC ...] -> activation(z, tau)``: (N, C, H, W) -> (N, K).

    Parameters
    ----------
    fcs : tuple of str
        The names of the owner's Linear children, in order (a ReLU between two).
    activation : Op
        A one-input op taking ``tau`` (``sigmoid`` or ``softmax``).
    """

    fcs: tuple[str, ...]
    activation: Op

    def __call__(self, layer: Module, x: np.ndarray, tau: float = 1.0):
        """``(r (N, K), pullback)``; ``pullback(dr) -> (dx (N, C, H, W), grads of the FCs)``."""
        steps = [global_avg_pool]
        for i, fc in enumerate(self.fcs):
            steps += [relu, fc] if i else [fc]
        return chain(layer, x, *steps, (self.activation, {"tau": tau}))


class Temperature:
    """Mixin: a softmax temperature tau, kept in the 0-d host buffer ``tau`` (so
    checkpoints keep it) and read and set through the ``temperature`` property.

    Call :meth:`_init_temperature` in ``__init__``; :class:`TemperatureSchedule` anneals
    every sub-layer that has this mixin.
    """

    def _init_temperature(self, value: float) -> None:
        self.add_buffer("tau", np.array(_args.positive_float("temperature", value)))

    @property
    def temperature(self) -> float:
        """The softmax temperature tau (positive)."""
        return float(self.tau)

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._buffers["tau"] = np.array(_args.positive_float("temperature", value))


class TemperatureSchedule(Scheduler):
    """Linear annealing of the softmax temperature (DY-CNN; ODConv's per-iteration code).

    ``tau(t) = final + max(0, (tau0 - final) * (T - t) / T)`` with ``T = epochs *
    iters_per_epoch`` steps when ``per="iteration"`` (t counts iterations) or ``T = epochs``
    when ``per="epoch"`` (t counts epochs). So tau is `tau0` at t = 0, halfway at T/2,
    `final` from t = T on.

    Parameters
    ----------
    model : Module, optional
        :meth:`step` and :meth:`apply` set ``temperature`` on every sub-layer with the
        :class:`Temperature` mixin (DynamicConv2d).
    tau0 : float
        Initial temperature (30 in the papers; 1 disables the annealing).
    epochs : int
        Annealing length in epochs (10 in the papers).
    iters_per_epoch : int, optional
        Iterations per epoch (``per="iteration"``). None: :func:`dynconv_np.nn.fit` and
        :func:`~dynconv_np.nn.train_epoch` set it to the number of batches; stepped by
        hand before that, it counts as 1.
    per : {"iteration", "epoch"}
    final : float
        Temperature after the annealing (1).

    A :class:`~dynconv_np.nn.schedules.Scheduler`: give it to ``fit(..., schedules=[sched])``
    and the loop steps it (per iteration or per epoch); ``state_dict()`` keeps the step.
    By hand::

        sched = TemperatureSchedule(model, iters_per_epoch=len(batches))
        for epoch in range(E):
            for xb, yb in batches:
                ...                     # forward, backward, optimiser step
                sched.step()            # t += 1, then sets tau(t) on the model
    """

    def __init__(self, model: Module | None = None, tau0: float = 30.0, epochs: int = 10,
                 iters_per_epoch: int | None = None, per: str = "iteration", final: float = 1.0):
        if model is not None and not isinstance(model, Module):
            raise TypeError(f"model must be a Module or None, got {type(model).__name__}")
        self._init_steps(per, iters_per_epoch)
        self.model = model
        self.tau0 = _args.positive_float("tau0", tau0)
        self.final = _args.positive_float("final", final)
        self.epochs = _args.positive_int("epochs", epochs)
        self.apply()

    @property
    def total(self) -> int:
        """T, the number of steps over which tau decreases."""
        return self.epochs * self.steps_per_epoch

    def __call__(self, t: int) -> float:
        """tau at step `t` (iterations or epochs, from 0)."""
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"t must be an int, got {t!r}")
        if t < 0:
            raise ValueError(f"t must be non-negative, got {t}")
        T = self.total
        return self.final + max(0.0, (self.tau0 - self.final) * (T - int(t)) / T)

    @property
    def value(self) -> float:
        """tau at the current step ``self.t``."""
        return self(self.t)

    def apply(self, t: int | None = None) -> float:
        """Set tau(t) (default: the current step) on the model's layers; returns it."""
        tau = self(self.t if t is None else t)
        if self.model is not None:
            for _, m in self.model.named_modules():
                if isinstance(m, Temperature):
                    m.temperature = tau
        return tau

    def __repr__(self) -> str:
        return (f"TemperatureSchedule(tau0={self.tau0:g}, epochs={self.epochs}, per={self.per!r}, "
                f"final={self.final:g})")
