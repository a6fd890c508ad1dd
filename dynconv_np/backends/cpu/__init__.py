"""The CPU backend: NumPy arrays, Numba-parallel kernels and BLAS.

Implements every member of :mod:`dynconv_np.backends.interface` (see there for the
contracts) with the same parameter names and defaults; each is bound here from the
topic module that defines it:

- :mod:`.array`: the array API and the elementwise, per-row, per-channel, layout and
  optimiser primitives, in NumPy;
- :mod:`.channels`: batch statistics, batch normalisation, the ReLU and its gradient, as
  Numba kernels (fewer passes over memory than the NumPy expressions);
- :mod:`.products`: ``gemm`` and ``gemm_nt_sum``, and the BLAS threading policy;
- :mod:`.conv`: the conv template (``conv_forward``, ``conv_backward``, ``conv_plan``),
  each pass by the strategy that :mod:`.plan`'s cost model picks;
- :mod:`.unfold`: ``im2col`` and ``col2im``;
- :mod:`.taps`: the per-pixel tap engine;
- :mod:`.filters`: DDF's filter normalisation;
- :mod:`.centre`: the centre taps of dynamic convolution decomposition;
- :mod:`.kernel_scale`: ODConv's kernel scaling (``scale_kernels`` and its backward);
- :mod:`.index`: the shared index helpers, compiled for the CPU.

Extra to the interface: ``workspace``, the :class:`~dynconv_np.backends._workspace.Workspace`
behind ``set_workspace_bytes`` and ``chunk_size`` (64 MiB by default; it bounds
``atom_conv2d``'s features: the conv template's buffers are per thread,
``conv.TILE_BYTES``). Every result is bitwise identical whatever ``NUMBA_NUM_THREADS`` is.

The kernels are cached by Numba (``cache=True``) and compiled from helpers of sibling
modules too (:mod:`.unfold`, :mod:`.index`, :mod:`dynconv_np.backends._index`,
:mod:`dynconv_np.backends._kernel_scale`): :mod:`dynconv_np.backends._cache` stamps each
cached kernel with a hash of all those sources, so that editing any of them compiles the
kernels again. Its locator is installed here, before any kernel is decorated.
"""

from .. import _cache

_cache.install()

from .._exports import export_interface  # noqa: E402  (after the cache locator)
from .._workspace import Workspace  # noqa: E402
from . import array, centre, channels, conv, filters, kernel_scale, products, taps, unfold  # noqa: E402

workspace = Workspace(64 * 2**20)
set_workspace_bytes = workspace.set_workspace_bytes
chunk_size = workspace.chunk_size

__all__ = [*export_interface(globals(), (array, centre, channels, conv, filters, kernel_scale, products, taps, unfold)),
           "workspace"]
