"""Training and measuring: one variant for one seed (:func:`train_one`), the whole study
(:func:`run_study`).

Every run: :func:`~dynconv_np.study.models.build_model` after ``nn.manual_seed(seed)``,
shuffled batches seeded with the same seed, Adam with a linear warm-up (over the first
epoch, or the first sixth of a shorter run) times a cosine decay to 0 over the run
(stepped per iteration), and for the annealed variants a
:class:`~dynconv_np.nn.TemperatureSchedule` from 30 to 1 over the first half of the
epochs. After each epoch the test set is evaluated with a
:class:`~dynconv_np.nn.RoutingRecorder`, which gives the attention entropy of every
dynamic layer over training; the last epoch's attention also gives the per-class mean
attention and the expert usage.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import nn
from .data import Digits
from .models import Variant, build_model

__all__ = ["Settings", "train_one", "run_study", "ATTENTION_NAMES"]

#: Routing arrays that are attentions over experts (batch, experts): the ones the entropy,
#: per-class and usage statistics are computed for (DCD's lam and phi, ACDA's atoms are not).
ATTENTION_NAMES = ("pi", "r", "a", "a_w")


@dataclass(frozen=True)
class Settings:
    """What one study run does (the command's options)."""

    seeds: int = 3
    epochs: int = 6
    batch_size: int = 64
    lr: float = 5e-3
    limit: int | None = None

    @classmethod
    def quick(cls, **changes: Any) -> Settings:
        """One seed, three epochs, 512 training images: a smoke run in under a minute."""
        return dataclasses.replace(cls(seeds=1, epochs=3, limit=512), **changes)


def _attention(rec: nn.RoutingRecorder) -> dict[str, np.ndarray]:
    return {f"{key}:{name}": a for key in rec.layers() for name, a in rec[key].items()}


def train_one(variant: Variant, seed: int, data: Digits, settings: Settings,
              progress: bool | None = None) -> dict[str, Any]:
    """Train `variant` with `seed`; return its record.

    Returns
    -------
    dict
        ``seed``, ``params``, ``mult_adds`` (per image; None when a layer does not count
        its own), ``history`` (one dict per epoch:
        ``loss``, ``accuracy``, ``time``, ``cpu_time``, ``lr``, ``test_loss``, ``test_accuracy``),
        ``entropy`` (``{"<layer>:<name>": relative entropy per epoch}``), ``per_class``
        (``{"<layer>:<name>": (10, K)}`` mean test attention per class, last epoch),
        ``usage`` (``{"<layer>:<name>": (K,)}``), ``test_accuracy`` (last epoch),
        ``seconds_per_epoch`` and ``cpu_seconds_per_epoch`` (median wall and process CPU
        time of an epoch's training).
    """
    model = build_model(variant, seed)
    counted = nn.summary(model, data.x_train.shape[1:])
    record: dict[str, Any] = {"seed": seed, "params": model.num_params(),
                              "mult_adds": counted.total_mult_adds if counted.complete else None}
    train = nn.Batches(data.x_train, data.y_train, batch_size=settings.batch_size, shuffle=True, seed=seed)
    opt = nn.Adam(model, lr=settings.lr)
    warmup = min(1.0, settings.epochs / 6)
    schedules: list[nn.Scheduler] = [nn.LRSchedule(opt, nn.LinearWarmup(warmup) * nn.Cosine(settings.epochs))]
    if variant.anneal:
        schedules.append(nn.TemperatureSchedule(model, epochs=max(1, settings.epochs // 2)))
    entropy: dict[str, list[float]] = {}
    last: dict[str, np.ndarray] = {}
    # CPU time of this process for the training part of each epoch: on a shared machine
    # it varies far less than the wall time
    cpu = [time.process_time()]

    def after_epoch(row: dict) -> None:
        row["cpu_time"] = time.process_time() - cpu[0]
        with nn.RoutingRecorder(model, names=ATTENTION_NAMES) as rec:
            test = nn.evaluate(model, data.x_test, data.y_test)
        row.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
        last.clear()
        last.update(_attention(rec))
        for key, a in last.items():
            entropy.setdefault(key, []).append(nn.attention_entropy(a, relative=True))
        cpu[0] = time.process_time()

    history = nn.fit(model, train, nn.SoftmaxCrossEntropy(), opt, settings.epochs, schedules=schedules,
                     progress=progress, callback=after_epoch)
    record.update(
        history=[dict(row) for row in history],
        entropy=entropy,
        per_class={k: nn.per_class_mean(a, data.y_test, data.num_classes) for k, a in last.items()},
        usage={k: nn.expert_usage(a) for k, a in last.items()},
        test_accuracy=history[-1]["test_accuracy"],
        seconds_per_epoch=float(np.median(history["time"])),
        cpu_seconds_per_epoch=float(np.median(history["cpu_time"])),
    )
    return record


def run_study(settings: Settings, variants: list[Variant], data: Digits, progress: bool | None = None,
              log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Train every variant for every seed (0, 1, ...).

    Returns
    -------
    list of dict
        One per variant: ``name``, ``label``, ``runs`` (the :func:`train_one` records).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = []
    total, done = len(variants) * settings.seeds, 0
    t0 = time.perf_counter()
    for v in variants:
        runs = []
        for seed in range(settings.seeds):
            rec = train_one(v, seed, data, settings, progress=progress)
            runs.append(rec)
            done += 1
            log(f"[{done}/{total}] {v.name} seed {seed}: test accuracy {100 * rec['test_accuracy']:.1f}%, "
                f"{rec['seconds_per_epoch']:.2f} s/epoch ({time.perf_counter() - t0:.0f} s so far)")
        results.append({"name": v.name, "label": v.label, "runs": runs})
    return results
