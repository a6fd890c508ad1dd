"""The one vjp mechanism shared by every op.

An op is written once as a function ``impl(*args, **kwargs) -> (y, pullback)``.
:func:`op` turns it into an object with two faces::

    y = f(x, w)                  # forward only
    y, pullback = f.vjp(x, w)    # forward plus a closure for the backward
    grads = pullback(dy)         # one entry per array parameter, in order

Nothing records a tape: layers chain pullbacks by hand.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any


class Op:
    """A differentiable operation with a hand-written backward.

    Parameters
    ----------
    impl : callable
        ``impl(*args, **kwargs) -> (y, pullback)``; ``pullback(dy)`` returns a tuple
        with one entry per name in `array_params`.
    array_params : sequence of str
        The array parameters of the signature, in positional order (optional ones
        included: their gradient is ``None`` when they were not given).
    """

    def __init__(self, impl: Callable, array_params: Sequence[str]):
        self._impl = impl
        self.array_params = tuple(array_params)
        self.__signature__ = inspect.signature(impl)
        functools.update_wrapper(self, impl)

    def __call__(self, *args: Any, **kwargs: Any):
        y, _ = self._impl(*args, **kwargs)
        return y

    def vjp(self, *args: Any, **kwargs: Any):
        """Run the forward and return ``(y, pullback)``.

        ``pullback(dy)`` returns a tuple with one gradient per array parameter
        (``None`` for an optional array that was not given); it may be called more
        than once.
        """
        y, pullback = self._impl(*args, **kwargs)
        n = len(self.array_params)
        name = self.__name__

        def checked_pullback(dy):
            grads = pullback(dy)
            if len(grads) != n:  # pragma: no cover - guards the op authors, not users
                raise RuntimeError(f"{name}: pullback returned {len(grads)} entries, expected {n}")
            return tuple(grads)

        return y, checked_pullback

    def __repr__(self) -> str:
        return f"<dynconv_np op {self.__name__}{self.__signature__}>"


def op(*array_params: str) -> Callable[[Callable], Op]:
    """Decorator: ``@op("x", "w", "bias")`` over an ``impl`` returning ``(y, pullback)``."""

    def wrap(impl: Callable) -> Op:
        return Op(impl, array_params)

    return wrap


def vjp(f: Callable, *args: Any, **kwargs: Any):
    """``vjp(f, *args, **kwargs)`` is ``f.vjp(*args, **kwargs)``.

    Works for every dynconv_np op and for any user callable that has a ``vjp``
    attribute following the same convention.
    """
    if not hasattr(f, "vjp"):
        raise TypeError(f"f must be a dynconv_np op or a callable with a .vjp method, got {f!r}")
    return f.vjp(*args, **kwargs)
