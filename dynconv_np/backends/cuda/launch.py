"""Launch shapes and kernel factories shared by the CUDA backend's modules.

Every kernel but the GEMM and the per-channel reductions runs one thread per element it
writes, over a 1-D grid: it is written as the body for one element (:func:`per_element`),
which decodes its flat index with the helpers of :mod:`~dynconv_np.backends.cuda.index`,
and run by :func:`launch`. Accumulators start from a ``zero`` argument in the arrays'
dtype, so that a float32 call accumulates in float32 (as BLAS does on the CPU) instead of
being promoted by a float64 literal; kernels whose shared arrays or constants must have
the arrays' dtype are built once per dtype by a :func:`per_dtype` factory.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the kernels run as Python threads,
one per CUDA thread, so the block sizes shrink (:data:`THREADS` here, the GEMM's tile and
the reductions' blocks in their modules); the kernels are the same.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import config as _numba_config
from numba import cuda, from_dtype

from .._index import ceil_div
from .._workspace import Workspace

#: True when the kernels run in the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).
SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)

#: Threads per block of the one-thread-per-element kernels (fewer idle threads in the
#: simulator's last block).
THREADS = 32 if SIMULATOR else 256

#: CUDA caps gridDim.y and gridDim.z at 65535.
MAX_GRID_YZ = 65535

#: The workspace bound of one batch chunk (the conv template's column buffer,
#: ``atom_conv2d``'s features): device memory is scarcer than host memory.
workspace = Workspace(256 * 2**20)


def per_element(body):
    """Decorator: ``body(t, *args)`` writes element `t` (a device function taking the flat
    index first); the result is its kernel, one thread per element, run by :func:`launch`."""
    element = cuda.jit(device=True)(body)

    @cuda.jit
    def kernel(size, args):
        t = cuda.grid(1)
        if t < size:
            element(t, *args)

    kernel.__doc__ = body.__doc__
    return kernel


def launch(kernel, size: int, *args) -> None:
    """Run a :func:`per_element` kernel over `size` elements (nothing when empty: CUDA
    refuses a zero-sized grid)."""
    if size > 0:
        kernel[ceil_div(size, THREADS), THREADS](size, args)


def size_of(a) -> int:
    """The number of entries of `a`."""
    return int(np.prod(a.shape))


def per_dtype(build):
    """Decorator: ``build(t, nbtype)`` returns a kernel (or device function) whose
    constants are built from the scalar type `t` (``np.float32`` or ``np.float64``) and
    whose shared arrays have the numba type `nbtype`. The decorated name, called with a
    dtype, returns that kernel, built once per dtype."""

    @functools.cache
    def get(dtype):
        dt = np.dtype(dtype)
        return build(dt.type, from_dtype(dt))

    get.__doc__ = build.__doc__
    return get
