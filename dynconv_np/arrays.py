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
from .backends import interface


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


def _on_first_device(name: str):
    """The ArrayAPI member `name`, run by the backend of its first argument's device."""
    sig = interface.array_api()[name]

    def f(a, *args):
        return getattr(_be(a), name)(a, *args)

    f.__name__ = f.__qualname__ = name
    f.__doc__ = f"{getattr(interface.ArrayAPI, name).__doc__} On the first argument's device."
    f.__signature__ = sig
    return f


contiguous = _on_first_device("contiguous")
astype = _on_first_device("astype")
copy = _on_first_device("copy")
fill = _on_first_device("fill")
copy_into = _on_first_device("copy_into")
add_into = _on_first_device("add_into")
add = _on_first_device("add")
sub = _on_first_device("sub")
mul = _on_first_device("mul")
scale = _on_first_device("scale")


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
