"""Built-in gradient checks run by ``python -m dynconv_np check``.

One module per op family; each defines ``cases() -> list[Case]`` on default shapes.
Modules are discovered automatically, so a new family only adds its own module.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Case:
    """One gradient check: ``gradcheck(f, args, kwargs, mode=mode)``."""

    label: str
    f: Callable
    args: tuple
    kwargs: dict = field(default_factory=dict)
    mode: str = "auto"
    atol: float = 1e-5
    rtol: float = 1e-4


def rng(seed: int = 0) -> np.random.Generator:
    """The seeded generator every built-in case draws from."""
    return np.random.default_rng(seed)


def all_cases() -> list[Case]:
    """Every case of every family module, in module-name order."""
    out: list[Case] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{__name__}.{info.name}")
        out.extend(mod.cases())
    return out
