"""Learning-rate schedules, and the stepping protocol the training loop drives.

A :class:`Schedule` is a factor of training progress ``e``, measured in epochs (a float:
iteration ``t`` of an epoch of ``n`` iterations is ``e = t / n``). Schedules compose::

    LinearWarmup(2) * Cosine(30)                 # product: warm-up over 2 epochs, cosine over 30
    LinearWarmup(2).then(Cosine(28), at=2)       # sequence: the cosine starts (at e=0) after 2 epochs
    StepDecay(10, gamma=0.1)                     # x0.1 every 10 epochs
    MultiStep([15, 25], gamma=0.1)

A :class:`Scheduler` applies something to the model or optimiser at each step: an
:class:`LRSchedule` sets ``optimizer.lr = base_lr * schedule(e)``, and
:class:`~dynconv_np.nn.TemperatureSchedule` (DynamicConv2d's softmax temperature) is one
too. ``per="iteration"`` steps after every optimiser step, ``per="epoch"`` after every
epoch; :func:`dynconv_np.nn.fit` and :func:`dynconv_np.nn.train_epoch` step every
scheduler given to them, and tell those built with ``iters_per_epoch=None`` the number of
batches per epoch. Stepped by hand, such a scheduler counts one iteration as one epoch
until :meth:`Scheduler.set_iters_per_epoch` is called.

``state_dict()`` holds the step count and the epoch length (and the LR schedule's base
rate), so a checkpoint resumes a schedule exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .. import _args

__all__ = ["Schedule", "Constant", "StepDecay", "MultiStep", "Cosine", "LinearWarmup", "Scheduler",
           "LRSchedule"]


def _epochs(name: str, v) -> float:
    return _args.positive_float(name, v)


class Schedule:
    """A factor of training progress ``e`` (in epochs, float >= 0): ``schedule(e)``.

    ``a * b`` multiplies two schedules; ``a.then(b, at)`` is ``a`` until ``e = at``, then
    ``b(e - at)``.
    """

    def __call__(self, e: float) -> float:
        raise TypeError(f"{type(self).__name__} does not define its factor")

    def __mul__(self, other: Schedule) -> Schedule:
        if not isinstance(other, Schedule):
            return NotImplemented
        return _Product(self, other)

    def then(self, other: Schedule, at: float) -> Schedule:
        """This schedule until `at` epochs, then `other` restarted at 0."""
        if not isinstance(other, Schedule):
            raise TypeError(f"other must be a Schedule, got {type(other).__name__}")
        return _Then(self, other, _epochs("at", at))


class _Product(Schedule):
    def __init__(self, a: Schedule, b: Schedule):
        self.a, self.b = a, b

    def __call__(self, e: float) -> float:
        return self.a(e) * self.b(e)

    def __repr__(self) -> str:
        return f"{self.a!r} * {self.b!r}"


class _Then(Schedule):
    def __init__(self, a: Schedule, b: Schedule, at: float):
        self.a, self.b, self.at = a, b, at

    def __call__(self, e: float) -> float:
        return self.a(e) if e < self.at else self.b(e - self.at)

    def __repr__(self) -> str:
        return f"{self.a!r}.then({self.b!r}, at={self.at:g})"


class Constant(Schedule):
    """The factor `value` (1 by default: the base learning rate throughout)."""

    def __init__(self, value: float = 1.0):
        self.value = _args.non_negative_float("value", value)

    def __call__(self, e: float) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Constant({self.value:g})"


class StepDecay(Schedule):
    """``gamma ** floor(e / every)``: the rate times `gamma` every `every` epochs."""

    def __init__(self, every: float, gamma: float = 0.1):
        self.every = _epochs("every", every)
        self.gamma = _args.non_negative_float("gamma", gamma)

    def __call__(self, e: float) -> float:
        return self.gamma ** math.floor(e / self.every)

    def __repr__(self) -> str:
        return f"StepDecay({self.every:g}, gamma={self.gamma:g})"


class MultiStep(Schedule):
    """``gamma ** (number of milestones <= e)``."""

    def __init__(self, milestones: Sequence[float], gamma: float = 0.1):
        ms = [_epochs("milestones", m) for m in milestones]
        if ms != sorted(ms):
            raise ValueError(f"milestones must be increasing, got {list(milestones)!r}")
        self.milestones = tuple(ms)
        self.gamma = _args.non_negative_float("gamma", gamma)

    def __call__(self, e: float) -> float:
        return self.gamma ** sum(m <= e for m in self.milestones)

    def __repr__(self) -> str:
        return f"MultiStep({list(self.milestones)!r}, gamma={self.gamma:g})"


class Cosine(Schedule):
    """Cosine annealing from 1 to `final` over `epochs`, then `final`:
    ``final + (1 - final) * (1 + cos(pi * min(e, epochs) / epochs)) / 2``."""

    def __init__(self, epochs: float, final: float = 0.0):
        self.epochs = _epochs("epochs", epochs)
        self.final = _args.non_negative_float("final", final)

    def __call__(self, e: float) -> float:
        c = (1 + math.cos(math.pi * min(e, self.epochs) / self.epochs)) / 2
        return self.final + (1 - self.final) * c

    def __repr__(self) -> str:
        return f"Cosine({self.epochs:g}, final={self.final:g})"


class LinearWarmup(Schedule):
    """Linear warm-up from `start` to 1 over `epochs`, then 1: ``start + (1 - start) * min(e / epochs, 1)``."""

    def __init__(self, epochs: float, start: float = 0.0):
        self.epochs = _epochs("epochs", epochs)
        self.start = _args.non_negative_float("start", start)

    def __call__(self, e: float) -> float:
        return self.start + (1 - self.start) * min(e / self.epochs, 1.0)

    def __repr__(self) -> str:
        return f"LinearWarmup({self.epochs:g}, start={self.start:g})"


class Scheduler:
    """Base of what the training loop steps (learning rate, temperature).

    Subclasses call :meth:`_init_steps` and write :meth:`apply` (set the value for the
    current step ``t`` and return it).

    Attributes
    ----------
    per : {"iteration", "epoch"}
        When the loop calls :meth:`step`.
    t : int
        Steps taken.
    iters_per_epoch : int or None
        Iterations per epoch (``per="iteration"``); None until the loop sets it.
    """

    def _init_steps(self, per: str, iters_per_epoch: int | None) -> None:
        if per not in ("iteration", "epoch"):
            raise ValueError(f'per must be "iteration" or "epoch", got {per!r}')
        self.per = per
        self.iters_per_epoch = (None if iters_per_epoch is None
                                else _args.positive_int("iters_per_epoch", iters_per_epoch))
        self.t = 0

    @property
    def steps_per_epoch(self) -> int:
        """Steps in one epoch: ``iters_per_epoch`` (1 while unset) per iteration, 1 per epoch."""
        return (self.iters_per_epoch or 1) if self.per == "iteration" else 1

    def progress(self, t: int | None = None) -> float:
        """Epochs of training at step `t` (default: the current step)."""
        return (self.t if t is None else t) / self.steps_per_epoch

    def set_iters_per_epoch(self, n: int) -> None:
        """Set the iterations per epoch (the loop calls it with ``len(batches)``); a
        different value given at construction is a ``ValueError``."""
        n = _args.positive_int("iters_per_epoch", n)
        if self.iters_per_epoch is not None and self.iters_per_epoch != n:
            raise ValueError(f"{type(self).__name__} was built with iters_per_epoch={self.iters_per_epoch}, "
                             f"but an epoch has {n} batches")
        if self.iters_per_epoch is None:
            self.iters_per_epoch = n
            self.apply()                                      # the current step's value under the new length

    def apply(self) -> float:
        """Set the value of the current step; return it."""
        raise TypeError(f"{type(self).__name__} does not define apply")

    def step(self) -> float:
        """Advance one step (an iteration, or an epoch with ``per="epoch"``) and apply."""
        self.t += 1
        return self.apply()

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"t": step count, "iters_per_epoch": n or 0 while unset}`` (0-d arrays, for a checkpoint)."""
        return {"t": np.array(self.t, dtype=np.int64),
                "iters_per_epoch": np.array(self.iters_per_epoch or 0, dtype=np.int64)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from a :meth:`state_dict`: set the step (and the epoch length) and apply."""
        t, n = np.asarray(state["t"]), np.asarray(state.get("iters_per_epoch", 0))
        for name, v in (("t", t), ("iters_per_epoch", n)):
            if v.shape or v.dtype.kind not in "iu" or int(v) < 0:
                raise ValueError(f"state[{name!r}] must be a non-negative integer, got {v!r}")
        self.t = int(t)
        self.iters_per_epoch = int(n) or self.iters_per_epoch
        self.apply()


class LRSchedule(Scheduler):
    """Set ``optimizer.lr = base_lr * schedule(e)`` at each step (``e`` in epochs).

    Parameters
    ----------
    optimizer : SGD or Adam (anything with a float ``lr``)
        Its ``lr`` at construction is ``base_lr``.
    schedule : Schedule
    per : {"iteration", "epoch"}
        Step after every optimiser step (a smooth schedule) or after every epoch.
    iters_per_epoch : int, optional
        Needed for ``per="iteration"`` when stepping by hand; the training loop sets it.

    Construction applies ``schedule(0)``.
    """

    def __init__(self, optimizer, schedule: Schedule, per: str = "iteration", iters_per_epoch: int | None = None):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"optimizer must have an lr, got {type(optimizer).__name__}")
        self._init_steps(per, iters_per_epoch)
        self.optimizer = optimizer
        self.schedule = schedule
        self.base_lr = _args.positive_float("optimizer.lr", optimizer.lr)
        self.apply()

    def __call__(self, t: int) -> float:
        """The learning rate at step `t`."""
        return self.base_lr * self.schedule(self.progress(t))

    def apply(self) -> float:
        self.optimizer.lr = lr = self(self.t)
        return lr

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"t", "base_lr"}``."""
        return {**super().state_dict(), "base_lr": np.array(self.base_lr, dtype=np.float64)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.base_lr = _args.positive_float("base_lr", float(np.asarray(state["base_lr"])))
        super().load_state_dict(state)

    def __repr__(self) -> str:
        return f"LRSchedule({self.schedule!r}, per={self.per!r}, base_lr={self.base_lr:g})"
