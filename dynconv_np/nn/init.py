"""Layer initialisation: the package-wide generator (:func:`manual_seed`), the generator
a layer draws from (:func:`make_rng`) and PyTorch's default uniform initialisation."""

from __future__ import annotations

import numpy as np

__all__ = ["manual_seed", "default_generator", "make_rng", "uniform_init"]

_default_rng: np.random.Generator | None = None


def manual_seed(seed: int) -> None:
    """Seed the package-wide generator that layers (and shuffled :class:`~dynconv_np.nn.Batches`)
    draw from when given neither ``seed`` nor ``rng``.

    After ``manual_seed(s)``, building the same layers in the same order gives the same
    parameters, as ``torch.manual_seed``. Layers given ``seed=`` or ``rng=`` are unaffected.
    """
    global _default_rng
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    _default_rng = np.random.default_rng(seed)


def default_generator() -> np.random.Generator:
    """The package-wide generator (seeded by :func:`manual_seed`; fresh entropy before)."""
    global _default_rng
    if _default_rng is None:
        _default_rng = np.random.default_rng()
    return _default_rng


def make_rng(seed: int | None = None, rng: np.random.Generator | None = None) -> np.random.Generator:
    """The generator a layer initialises from: `rng` if given, else one seeded with `seed`,
    else the package-wide :func:`default_generator`."""
    if rng is not None and seed is not None:
        raise ValueError(f"give seed or rng, not both (got seed={seed!r} and an rng)")
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return rng
    if seed is None:
        return default_generator()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    return np.random.default_rng(seed)


def uniform_init(r: np.random.Generator, shape: tuple, fan_in: int, dtype) -> np.ndarray:
    """Uniform in ``+-1/sqrt(fan_in)`` (PyTorch's default for conv and linear layers)."""
    bound = 1 / np.sqrt(fan_in)
    return r.uniform(-bound, bound, size=shape).astype(dtype)
