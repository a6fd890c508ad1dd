"""The training loop: :func:`train_epoch`, :func:`evaluate`, :func:`fit`.

::

    train = nn.Batches(x_train, y_train, batch_size=64, shuffle=True, seed=0)
    opt = nn.SGD(net, lr=0.1, momentum=0.9)
    history = nn.fit(net, train, nn.SoftmaxCrossEntropy(), opt, epochs=10, val=(x_test, y_test),
                     schedules=[nn.LRSchedule(opt, nn.Cosine(10)), nn.TemperatureSchedule(net)])
    history["val_accuracy"]            # one value per epoch
    nn.evaluate(net, x_test, y_test)   # {"loss": ..., "accuracy": ...}

One training step is ``loss(model(x), y)``, ``optimizer.zero_grad()``,
``model.backward(loss.backward())``, ``optimizer.step()``, then every scheduler with
``per="iteration"`` steps; after the last batch of an epoch every scheduler with
``per="epoch"`` steps. Schedulers built without ``iters_per_epoch`` are told
``len(batches)``. A progress bar is drawn on stderr when it is a terminal (``progress=True``
forces it, ``False`` silences it).

Accuracy is the fraction of samples whose largest logit is the label (for probability
targets: the target's largest entry). On a layer moved with ``to_device()``, host
batches are copied to the device.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .. import _args
from .. import arrays as xp
from .data import Batches
from .module import Module
from .progress import Progress
from .schedules import Scheduler
from .train import SoftmaxCrossEntropy

__all__ = ["train_epoch", "evaluate", "fit", "History"]


class History(list):
    """The per-epoch metrics of :func:`fit`: a list of dicts, one per epoch
    (``"epoch", "loss", "accuracy", "time", "lr"`` and, with validation data,
    ``"val_loss", "val_accuracy"``); ``history["loss"]`` is the list of one metric."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return [row[key] for row in self]
        return super().__getitem__(key)


def _on_model_device(model: Module, a: np.ndarray):
    """`a` on the device of the model's parameters (host batches copied to a device model)."""
    for p in model.params.values():
        if xp.on_device(p) and not xp.on_device(a):
            return xp.to_device(a)
        break
    return a


def _correct(logits, target: np.ndarray) -> int:
    pred = np.asarray(xp.to_host(logits)).argmax(axis=1)
    t = np.asarray(xp.to_host(target))
    labels = t.argmax(axis=1) if t.ndim == 2 else t
    return int((pred == labels).sum())


def _check_schedulers(schedules: Iterable, n_batches: int) -> list[Scheduler]:
    out = []
    for i, s in enumerate(schedules):
        if not isinstance(s, Scheduler):
            raise TypeError(f"schedules[{i}] must be a Scheduler (LRSchedule, TemperatureSchedule), "
                            f"got {type(s).__name__}")
        if s.per == "iteration":
            s.set_iters_per_epoch(n_batches)
        out.append(s)
    return out


def train_epoch(model: Module, batches: Iterable, loss: Module, optimizer, schedules: Sequence[Scheduler] = (),
                *, progress: bool | None = None, desc: str = "train") -> dict[str, float]:
    """One epoch of training over `batches` (model in training mode).

    Parameters
    ----------
    model : Module
    batches : Batches, or any sized iterable of ``(x, y)``
    loss : Module
        A loss layer: ``loss(logits, y) -> float``, ``loss.backward() -> dlogits``.
    optimizer : SGD, Adam
    schedules : sequence of Scheduler
        Stepped after each optimiser step (``per="iteration"``) or at the end (``"epoch"``).
    progress : bool, optional
        Draw a progress bar (default: when stderr is a terminal).
    desc : str
        The bar's label.

    Returns
    -------
    dict
        ``loss`` (mean over samples), ``accuracy``, ``time`` (seconds), ``lr`` (the
        optimiser's rate at the end of the epoch).
    """
    if not isinstance(model, Module) or not isinstance(loss, Module):
        raise TypeError(f"model and loss must be Modules, got {type(model).__name__} and {type(loss).__name__}")
    n = len(batches)
    scheds = _check_schedulers(schedules, n)
    model.train()
    t0 = time.perf_counter()
    total = correct = count = 0
    with Progress(n, desc, enabled=progress) as bar:
        for xb, yb in batches:
            logits = model(_on_model_device(model, xb))
            value = loss(logits, yb)
            optimizer.zero_grad()
            model.backward(loss.backward())
            optimizer.step()
            for s in scheds:
                if s.per == "iteration":
                    s.step()
            m = int(xb.shape[0])
            total += value * m
            correct += _correct(logits, yb)
            count += m
            bar.update(loss=f"{total / count:.4f}")
    for s in scheds:
        if s.per == "epoch":
            s.step()
    if count == 0:
        raise ValueError("batches yielded no batch")
    return {"loss": total / count, "accuracy": correct / count, "time": time.perf_counter() - t0,
            "lr": float(getattr(optimizer, "lr", float("nan")))}


def evaluate(model: Module, x: np.ndarray, y: np.ndarray, loss: Module | None = None,
             batch_size: int = 256) -> dict[str, float]:
    """Loss and accuracy of `model` on ``(x, y)``, in eval mode, in batches.

    The model's modes (train/eval of each sub-layer) are restored afterwards and no
    running statistic changes.

    Parameters
    ----------
    x : ndarray (N, ...)
    y : ndarray (N,) integer labels or (N, K) probabilities
    loss : Module, optional
        Default :class:`SoftmaxCrossEntropy`.
    batch_size : int

    Returns
    -------
    dict
        ``loss`` (mean over samples) and ``accuracy``.
    """
    loss = SoftmaxCrossEntropy() if loss is None else loss
    batches = Batches(x, y, batch_size=_args.positive_int("batch_size", batch_size))
    modes = [(m, m.training) for _, m in model.named_modules()]
    model.eval()
    total = correct = 0.0
    try:
        for xb, yb in batches:
            logits = model(_on_model_device(model, xb))
            value, _ = loss.forward_pullback(logits, yb)
            total += value * xb.shape[0]
            correct += _correct(logits, yb)
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
    n = batches.num_samples
    return {"loss": total / n, "accuracy": correct / n}


def fit(model: Module, train: Iterable, loss: Module, optimizer, epochs: int, *,
        val: tuple[np.ndarray, np.ndarray] | None = None, schedules: Sequence[Scheduler] = (),
        progress: bool | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
        eval_batch_size: int = 256) -> History:
    """Train for `epochs` epochs; return the per-epoch metrics.

    Parameters
    ----------
    model, loss, optimizer, schedules, progress
        As :func:`train_epoch`.
    train : Batches, or any sized iterable of ``(x, y)``
    epochs : int
    val : (x, y), optional
        Evaluated after every epoch (:func:`evaluate`).
    callback : callable, optional
        ``callback(row)`` after every epoch with that epoch's metrics (a dict it may add to).
    eval_batch_size : int

    Returns
    -------
    History
        One dict per epoch: ``epoch`` (epochs completed, counting those before a resume
        when `train` is a :class:`Batches`), ``loss``, ``accuracy``, ``time``, ``lr`` and
        with `val` ``val_loss``, ``val_accuracy``. With a bar, each epoch also ends with a
        one-line summary on stderr.
    """
    epochs = _args.positive_int("epochs", epochs)
    history = History()
    show = sys.stderr.isatty() if progress is None else bool(progress)
    for i in range(epochs):
        done = getattr(train, "epoch", i)
        row: dict[str, Any] = {"epoch": done + 1}
        row.update(train_epoch(model, train, loss, optimizer, schedules, progress=show,
                               desc=f"epoch {i + 1}/{epochs}"))
        if val is not None:
            v = evaluate(model, *val, loss=loss, batch_size=eval_batch_size)
            row.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
        if callback is not None:
            callback(row)
        history.append(row)
        if show:
            msg = f"epoch {row['epoch']}: loss {row['loss']:.4f}, accuracy {100 * row['accuracy']:.1f}%"
            if val is not None:
                msg += f", val_loss {row['val_loss']:.4f}, val_accuracy {100 * row['val_accuracy']:.1f}%"
            print(msg + f" ({row['time']:.1f} s)", file=sys.stderr)
    return history
