"""The engine's threads: :func:`set_num_threads` and :func:`get_num_threads`.

The CPU engine runs on two thread pools: Numba's (the parallel kernels) and the BLAS
library's (the GEMMs NumPy and SciPy call). ``set_num_threads(n)`` sets both:

- Numba: ``numba.set_num_threads(n)``, at most ``NUMBA_NUM_THREADS`` (the pool size,
  fixed when Numba starts: set the environment variable before importing to allow
  more). Numba keeps this setting per Python thread: call it in the thread that runs
  the computation (threads started afterwards begin with the full pool).
- BLAS: limited to n threads for the whole process with ``threadpoolctl``.

The CPU backend keeps its own BLAS policy on top of this: its products run BLAS on one
thread, inside and outside its Numba regions (``backends/cpu/products.py``), and restore
the process setting afterwards, so set_num_threads changes what NumPy code around the
engine gets, not how the engine splits work. Results are bitwise the same for every n:
the kernels split work into fixed chunks whatever the thread count, and reductions
never depend on it.
"""

from __future__ import annotations

import numba

from . import _args

__all__ = ["set_num_threads", "get_num_threads"]

_blas_limit = None


def _blas(n: int) -> None:
    global _blas_limit
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return
    # The limiter object only records the previous limits (for a `with` block, which
    # this is not): the new limit holds until the next call.
    _blas_limit = threadpool_limits(limits=n, user_api="blas")


def set_num_threads(n: int) -> None:
    """Run the engine on `n` threads: Numba's parallel kernels and BLAS.

    Parameters
    ----------
    n : int
        From 1 to ``numba.config.NUMBA_NUM_THREADS`` (the cores, unless the environment
        variable ``NUMBA_NUM_THREADS`` said otherwise before Numba was imported).

    Raises
    ------
    TypeError, ValueError
        `n` not an int, below 1 or above the Numba pool.
    """
    n = _args.positive_int("n", n)
    limit = numba.config.NUMBA_NUM_THREADS
    if n > limit:
        raise ValueError(f"n must be at most {limit}, the size of Numba's thread pool "
                         f"(NUMBA_NUM_THREADS); set that environment variable before importing "
                         f"dynconv_np to allow more, got n={n}")
    numba.set_num_threads(n)
    _blas(n)


def get_num_threads() -> int:
    """The number of threads the engine's Numba kernels use (in this Python thread)."""
    return numba.get_num_threads()
