"""The CUDA backend: numba.cuda kernels on device arrays.

Implements every member of :mod:`dynconv_np.backends.interface` (see there for the
contracts) with the same parameter names and defaults, each bound here from the topic
module that defines it. This package is the only part
of dynconv_np that imports ``numba.cuda``; :func:`dynconv_np.backends.get` imports it
lazily, the first time device arrays reach an op. Every primitive takes numba device
arrays or any object with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors) and
returns numba device arrays on the same device; nothing inside an op copies to or from
the host. By topic:

- :mod:`.array`: device arrays (allocation, host/device moves, copies, layout);
- :mod:`.elementwise`: elementwise maps, per-row and per-channel broadcasts, optimisers;
- :mod:`.reduce`: per-row and per-channel reductions, softmaxes, batch norm, channel mixing;
- :mod:`.products`: the tiled GEMM (``gemm``, ``gemm_nt_sum``);
- :mod:`.conv`: the conv template and ``im2col`` / ``col2im``;
- :mod:`.taps`: the per-pixel tap engine and the centre taps of DCD;
- :mod:`.kernel_scale`: ODConv's kernel scaling (``scale_kernels`` and its backward);
- :mod:`.filters`: DDF's filter normalisation;
- :mod:`.launch` and :mod:`.index`: launch shapes, per-dtype kernel factories, the shared
  index helpers compiled as device functions.

Determinism: every output element is written by exactly one thread, which sums its terms
in a fixed order; there are no atomics, so the same call on the same inputs gives bitwise
the same result on every run.

Extra to the interface: ``workspace`` (the
:class:`~dynconv_np.backends._workspace.Workspace` behind ``set_workspace_bytes`` and
``chunk_size``, 256 MiB by default), ``is_device_array``, ``as_device_array`` and
:data:`SIMULATOR` (True under ``NUMBA_ENABLE_CUDASIM=1``, where the kernels run as Python
threads with smaller blocks).
"""

from .._exports import export_interface
from . import array, conv, elementwise, filters, kernel_scale, products, reduce, taps
from .array import as_device_array, is_device_array
from .launch import SIMULATOR, workspace

set_workspace_bytes = workspace.set_workspace_bytes
chunk_size = workspace.chunk_size

__all__ = [*export_interface(globals(), (array, conv, elementwise, filters, kernel_scale, products, reduce, taps)),
           "workspace", "SIMULATOR", "as_device_array", "is_device_array"]
