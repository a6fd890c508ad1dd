"""Forward hooks: functions run after the forward of every layer (the summary and the
routing recorder are built on them). :class:`~dynconv_np.nn.Module` wraps each layer
class's forward method with :func:`hooked` when the class is defined."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .module import Module

__all__ = ["forward_hook", "hooked"]

#: Functions ``fn(layer, inputs, y)`` run after each layer's forward (see :func:`forward_hook`).
_HOOKS: list[Callable] = []
#: ids of the layers whose hooked forward is running (a super() call inside fires no second hook)
_RUNNING: set[int] = set()


@contextlib.contextmanager
def forward_hook(fn: Callable[[Module, tuple, Any], None]) -> Iterator[None]:
    """Within the block, ``fn(layer, inputs, y)`` runs after the forward of every layer.

    `inputs` is the tuple of positional arguments (``(x,)`` usually), `y` the output. It
    fires for each ``forward_pullback`` of an :class:`OpLayer` (children called by their
    parent, such as a routing branch's ``Linear``, included) and each ``forward`` of
    another :class:`Module`. Hooks nest; the summary and the routing recorder use them.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    _HOOKS.append(fn)
    try:
        yield
    finally:
        _HOOKS.remove(fn)


def hooked(f: Callable, returns_pair: bool) -> Callable:
    """`f` (a forward method) running the active hooks after it."""

    @functools.wraps(f)
    def run(self, *args, **kwargs):
        if not _HOOKS or id(self) in _RUNNING:
            return f(self, *args, **kwargs)
        _RUNNING.add(id(self))
        try:
            out = f(self, *args, **kwargs)
        finally:
            _RUNNING.discard(id(self))
        for hook in list(_HOOKS):
            hook(self, args, out[0] if returns_pair else out)
        return out

    run._hooked = True
    return run
