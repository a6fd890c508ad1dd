"""Checkpoints of a whole training state: model, optimiser, schedules, data order.

::

    nn.save_checkpoint("run/ck.npz", model=net, optimizer=opt, lr=lr_sched, tau=tau_sched, data=train)
    ...
    nn.load_checkpoint("run/ck.npz", model=net, optimizer=opt, lr=lr_sched, tau=tau_sched, data=train)

Every keyword names one part, any object with ``state_dict()`` and
``load_state_dict(sd)`` (a Module, an optimiser, a scheduler, :class:`Batches`); loading
takes the same names. After loading, training continues bitwise as the uninterrupted
run would have: the model's parameters and buffers (batch-norm statistics,
temperatures), the optimiser's rate and state (momentum buffers, Adam's moments and step),
each schedule's step, and the data order (the epoch counter of :class:`Batches`) are
all restored. Save at the end of an epoch (the data order is per epoch).

Formats: a `path` ending in ``.npz`` is one file whose keys are ``"<part>/<key>"``; any
other path is a folder (created when needed) holding one ``<part>.npz`` per part.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from .module import npz_path

__all__ = ["save_checkpoint", "load_checkpoint"]


def _check_parts(parts: Mapping) -> None:
    if not parts:
        raise TypeError("give at least one part, e.g. model=net")
    for name, obj in parts.items():
        if "/" in name:
            raise ValueError(f"part names cannot contain '/', got {name!r}")
        if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
            raise TypeError(f"{name} must have state_dict() and load_state_dict(), got {type(obj).__name__}")


def _is_file(path: str) -> bool:
    return path.endswith(".npz")


def save_checkpoint(path: str | os.PathLike, **parts) -> str:
    """Write the state of every part (see the module docstring); returns the path written.

    Parameters
    ----------
    path : str or PathLike
        ``*.npz``: one file; otherwise a folder with ``<part>.npz`` files.
    **parts
        ``name=object`` with ``state_dict()``.
    """
    _check_parts(parts)
    path = os.fspath(path)
    states = {name: obj.state_dict() for name, obj in parts.items()}
    if _is_file(path):
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        np.savez(path, **{f"{name}/{k}": v for name, sd in states.items() for k, v in sd.items()})
    else:
        os.makedirs(path, exist_ok=True)
        for name, sd in states.items():
            np.savez(os.path.join(path, f"{name}.npz"), **sd)
    return path


def load_checkpoint(path: str | os.PathLike, **parts) -> None:
    """Restore the parts named as when saving (others in the checkpoint are left unread).

    Raises ``KeyError`` naming a part the checkpoint lacks, before any part is changed.
    """
    _check_parts(parts)
    path = os.fspath(path)
    states: dict[str, dict] = {}
    if os.path.isdir(path):
        for name in parts:
            f = os.path.join(path, f"{name}.npz")
            if not os.path.exists(f):
                raise KeyError(f"checkpoint folder {path} has no {name}.npz")
            with np.load(f) as data:
                states[name] = {k: data[k] for k in data.files}
    else:
        with np.load(npz_path(path)) as data:
            for key in data.files:
                name, _, k = key.partition("/")
                if name in parts:
                    states.setdefault(name, {})[k] = data[key]
        missing = [name for name in parts if name not in states]
        if missing:
            raise KeyError(f"checkpoint {path} has no part {', '.join(map(repr, missing))}")
    for name, obj in parts.items():
        obj.load_state_dict(states[name])
