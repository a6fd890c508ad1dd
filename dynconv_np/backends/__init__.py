"""Backends: the loops and kernels under the ops. Picked from the arrays' device.

Each backend is a package implementing the written contract of :mod:`.interface`:
``cpu`` (NumPy, Numba, BLAS) is always there; ``cuda`` (numba.cuda) is imported lazily,
only when device arrays arrive, so importing dynconv_np on a machine without CUDA costs
nothing and fails nothing. The index arithmetic of their kernels is written once in
:mod:`._index`, the workspace bound once in :mod:`._workspace`.
"""

from __future__ import annotations

from types import ModuleType


def get(device: str) -> ModuleType:
    """The backend module for ``device`` (``"cpu"`` or ``"cuda"``)."""
    if device == "cpu":
        from . import cpu

        return cpu
    if device == "cuda":
        try:
            from . import cuda
        except ImportError as e:  # numba-cuda missing or no CUDA driver
            raise TypeError(
                "CUDA device arrays were given but the CUDA backend is unavailable "
                f"({e}); install it from a clone with `pip install -e \".[cuda]\"`"
            ) from e
        return cuda
    raise TypeError(f"unknown device {device!r}")
