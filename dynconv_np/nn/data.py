"""Mini-batches over arrays: :class:`Batches`.

::

    train = Batches(x_train, y_train, batch_size=64, shuffle=True, seed=0)
    for epoch in range(E):
        for xb, yb in train:          # a new permutation each epoch, from (seed, epoch)
            ...
    len(train)                        # batches per epoch (what schedules per iteration need)

The permutation of epoch ``e`` is drawn from a generator seeded with ``(seed, e)``, so an
epoch's order depends only on the seed and the epoch number: a run resumed from a
checkpoint (``state_dict`` keeps the epoch counter) sees the same batches as the
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from .. import _args
from .init import default_generator

__all__ = ["Batches"]


class Batches:
    """Iterate over aligned arrays in mini-batches.

    Parameters
    ----------
    *arrays : ndarray
        One or more host arrays with the same length along axis 0 (inputs, labels, ...).
    batch_size : int
    shuffle : bool
        A new permutation every epoch (else the arrays' order, every epoch).
    seed : int, optional
        Seed of the permutations; default: drawn once from the package-wide generator
        (:func:`dynconv_np.nn.manual_seed` makes it reproducible).
    drop_last : bool
        Leave out the last batch when it is smaller than `batch_size`.

    Iterating yields one tuple ``(a[idx] for a in arrays)`` per batch (a single array
    when one array was given): slices (views) without shuffling, copies with. Each full
    iteration is one epoch and advances :attr:`epoch`. ``len(batches)`` is the number
    of batches per epoch.
    """

    def __init__(self, *arrays: np.ndarray, batch_size: int = 32, shuffle: bool = False,
                 seed: int | None = None, drop_last: bool = False):
        if not arrays:
            raise TypeError("Batches needs at least one array")
        for i, a in enumerate(arrays):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"arrays[{i}] must be a numpy.ndarray, got {type(a).__name__}")
            if a.ndim < 1:
                raise ValueError(f"arrays[{i}] must have a batch axis, got a 0-D array")
        n = arrays[0].shape[0]
        for i, a in enumerate(arrays[1:], 1):
            if a.shape[0] != n:
                raise ValueError(f"arrays[{i}] has {a.shape[0]} entries along axis 0, arrays[0] has {n}")
        self.arrays = arrays
        self.batch_size = _args.positive_int("batch_size", batch_size)
        self.shuffle = _args.flag("shuffle", shuffle)
        self.drop_last = _args.flag("drop_last", drop_last)
        if seed is None:
            seed = int(default_generator().integers(2**63))
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.seed = int(seed)
        #: epochs completed (the next iteration is epoch ``epoch``)
        self.epoch = 0
        if len(self) == 0:
            raise ValueError(f"no batch: {n} entries, batch_size={self.batch_size}, drop_last=True")

    @property
    def num_samples(self) -> int:
        """Entries along axis 0."""
        return self.arrays[0].shape[0]

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of `epoch` (a permutation, or ``arange`` without shuffling)."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_samples)

    def __iter__(self) -> Iterator:
        idx = self.order(self.epoch)
        b = self.batch_size
        for i in range(len(self)):
            take = slice(i * b, (i + 1) * b) if not self.shuffle else idx[i * b:(i + 1) * b]
            out = tuple(a[take] for a in self.arrays)
            yield out if len(out) > 1 else out[0]
        self.epoch += 1

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"epoch", "seed"}`` as 0-d arrays (for a checkpoint)."""
        return {"epoch": np.array(self.epoch, dtype=np.int64), "seed": np.array(self.seed, dtype=np.int64)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from a :meth:`state_dict` (the same arrays assumed)."""
        self.epoch = int(np.asarray(state["epoch"]))
        self.seed = int(np.asarray(state["seed"]))

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(a.shape)) for a in self.arrays)
        return (f"Batches({shapes}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last})")
