"""The array API for layers: the backend's :class:`~dynconv_np.backends.interface.ArrayAPI`,
picked from the arrays' device.

Layers (``nn``) compute through ops; for the little that is not an op (allocating a
gradient, adding two gradients, moving a parameter to the device) they use these
functions, which run on host NumPy arrays and on CUDA device arrays alike. ``nn`` never
imports a backend module::

    from .. import arrays as xp
    g = xp.zeros_like(p)          # on p's device
    xp.add_into(g, grad)          # in place
"""

from __future__ import annotations

from types import ModuleType

from . import _args, backends


def device_of(a) -> str:
    """``"cpu"`` for a NumPy array, ``"cuda"`` for a CUDA device array; ``TypeError`` otherwise."""
    device = _args.device_of(a)
    if not device:
        raise TypeError(f"expected a numpy.ndarray or a CUDA device array, got {type(a).__name__}")
    return device


def is_array(a) -> bool:
    """True for a NumPy array or a CUDA device array (what layers hold and take)."""
    return bool(_args.device_of(a))


def _be(a) -> ModuleType:
    return backends.get(device_of(a))


def on_device(a) -> bool:
    """True for a CUDA device array."""
    return device_of(a) == "cuda"


def empty_like(a, shape=None, dtype=None):
    """An uninitialised C-contiguous array on a's device (a's shape and dtype by default)."""
    return _be(a).empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def zeros_like(a, shape=None, dtype=None):
    """Zeros on a's device (a's shape and dtype by default)."""
    return _be(a).zeros(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def contiguous(a):
    """`a` as a C-contiguous array on its device."""
    return _be(a).contiguous(a)


def astype(a, dtype):
    """`a` in `dtype` on its device (`a` itself when it already has it)."""
    return _be(a).astype(a, dtype)


def copy(a):
    """A C-contiguous copy of `a` on its device."""
    return _be(a).copy(a)


def fill(a, value):
    """Set every entry of `a` to `value`, in place; returns `a`."""
    return _be(a).fill(a, value)


def copy_into(dst, src):
    """``dst[...] = src`` in place; returns `dst`."""
    return _be(dst).copy_into(dst, src)


def add_into(dst, src):
    """``dst += src`` in place (`src` on dst's device, any shape of its size); returns `dst`."""
    return _be(dst).add_into(dst, src)


def add(a, b):
    """``a + b`` (a new array on their device)."""
    return _be(a).add(a, b)


def sub(a, b):
    """``a - b`` (a new array on their device)."""
    return _be(a).sub(a, b)


def mul(a, b):
    """``a * b`` (a new array on their device)."""
    return _be(a).mul(a, b)


def scale(a, s):
    """``a * s`` (a new array on a's device)."""
    return _be(a).scale(a, s)


def require(device: str) -> None:
    """Raise ``TypeError`` unless the backend of `device` (``"cpu"`` or ``"cuda"``) can run here."""
    backends.get(device)


def to_device(a):
    """`a` as a CUDA device array (``TypeError`` when the CUDA backend is unavailable)."""
    return backends.get("cuda").to_device(a)


def to_host(a):
    """`a` as a host NumPy array."""
    return a if device_of(a) == "cpu" else backends.get("cuda").to_host(a)


def to(a, device: str):
    """`a` on `device` (``"cpu"`` or ``"cuda"``)."""
    return to_host(a) if device == "cpu" else to_device(a)
