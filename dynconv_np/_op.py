"""The one vjp mechanism shared by every op.

An op is written once as a function ``impl(*args, **kwargs) -> (y, pullback)``.
:func:`op` turns it into an object with two faces::

    y = f(x, w)                  # forward only
    y, pullback = f.vjp(x, w)    # forward plus a closure for the backward
    grads = pullback(dy)         # one entry per array parameter, in order

Nothing records a tape: layers chain pullbacks by hand. Every NumPy array argument and
cotangent goes through :func:`~dynconv_np._args.host_array` first (read-only, strided or
big-endian arrays become C-contiguous native copies), the one place where what reaches
the kernels is normalised.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from . import _args


def _host_args(args: tuple) -> tuple:
    return tuple(_args.host_array(a) for a in args)


def _host_kwargs(kwargs: dict) -> dict:
    return {k: _args.host_array(v) for k, v in kwargs.items()}


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

    ``help(f)`` and ``inspect.signature(f)`` show the op's full signature and docstring;
    ``f.vjp`` has the same signature and a docstring naming its gradients.
    """

    def __init__(self, impl: Callable, array_params: Sequence[str]):
        self._impl = impl
        self.array_params = tuple(array_params)
        self.__signature__ = inspect.signature(impl)
        functools.update_wrapper(self, impl)
        # an instance attribute (shadowing nothing): help() and inspect see its signature
        self.vjp = self._make_vjp()

    def __call__(self, *args: Any, **kwargs: Any):
        y, _ = self._impl(*_host_args(args), **_host_kwargs(kwargs))
        return y

    def __get__(self, obj, objtype=None):
        # A routine for pydoc and inspect (help() prints the whole signature, not a cut
        # repr); used as a class attribute it stays the op itself, like a staticmethod.
        return self

    def _make_vjp(self) -> Callable:
        impl, n, name = self._impl, len(self.array_params), self.__name__

        def vjp(*args: Any, **kwargs: Any):
            y, pullback = impl(*_host_args(args), **_host_kwargs(kwargs))

            def checked_pullback(dy):
                grads = pullback(_args.host_array(dy))
                if len(grads) != n:  # pragma: no cover - guards the op authors, not users
                    raise RuntimeError(f"{name}: pullback returned {len(grads)} entries, expected {n}")
                return tuple(grads)

            return y, checked_pullback

        grads = ", ".join(f"d{p}" for p in self.array_params)
        vjp.__name__ = "vjp"
        vjp.__qualname__ = f"{name}.vjp"
        vjp.__module__ = impl.__module__
        vjp.__signature__ = self.__signature__.replace(return_annotation="tuple[ndarray, Callable]")
        vjp.__doc__ = (
            f"Run ``{name}`` and return ``(y, pullback)``.\n\n"
            f"Takes exactly the arguments of ``{name}`` (see ``help({name})``). "
            f"``pullback(dy)``, with `dy` of y's shape, dtype and device, returns the tuple "
            f"``({grads}{',' if n == 1 else ''})``: one gradient per array parameter, in signature order, "
            f"``None`` for an optional array that was not given. It may be called more than once.")
        return vjp

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
