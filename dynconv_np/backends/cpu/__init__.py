"""The CPU backend: NumPy arrays, Numba-parallel kernels and BLAS.

Implements every member of :mod:`dynconv_np.backends.interface` (see there for the
contracts) with the same parameter names and defaults. By topic:

- :mod:`.array`: the array API and the elementwise, per-row, per-channel, layout and
  optimiser primitives, in NumPy;
- :mod:`.products`: ``gemm`` and ``gemm_nt_sum``, and the BLAS threading policy;
- :mod:`.conv`: the conv template (``conv_forward``, ``conv_backward``);
- :mod:`.unfold`: ``im2col`` and ``col2im``;
- :mod:`.taps`: the per-pixel tap engine;
- :mod:`.centre`: the centre taps of dynamic convolution decomposition;
- :mod:`.index`: the shared index helpers, compiled for the CPU.

Extra to the interface: ``workspace``, the :class:`~dynconv_np.backends._workspace.Workspace`
behind ``set_workspace_bytes`` and ``chunk_size`` (64 MiB by default). Every result is
bitwise identical whatever ``NUMBA_NUM_THREADS`` is.
"""

from .._legacy import gemm_aliases
from .._workspace import Workspace
from .array import (
    adam_step,
    add,
    add_channel_bias,
    add_eye,
    add_into,
    astype,
    batch_norm_backward,
    batch_norm_forward,
    batch_stats,
    channel_mix,
    channel_mix_backward,
    channel_sum,
    contiguous,
    copy,
    copy_into,
    empty,
    exp,
    fill,
    hard_sigmoid,
    hard_sigmoid_backward,
    log_softmax,
    mean_pool,
    mean_pool_backward,
    mul,
    relu,
    relu_backward,
    rowdot,
    running_update,
    scale,
    scale_rows,
    sgd_step,
    sigmoid,
    sigmoid_backward,
    softmax,
    softmax_backward,
    sub,
    swap01,
    tanh,
    tanh_backward,
    to_device,
    to_host,
    total,
    zeros,
)
from .centre import add_centre_taps, centre_taps
from .conv import conv_backward, conv_forward
from .products import blas_single_thread, gemm, gemm_nt_sum
from .taps import taps_backward_filter, taps_backward_input, taps_forward
from .unfold import col2im, im2col

#: The workspace bound of one batch chunk (``atom_conv2d``'s features; the conv template's
#: buffers are per thread, ``conv.TILE_BYTES``).
workspace = Workspace(64 * 2**20)
set_workspace_bytes = workspace.set_workspace_bytes
chunk_size = workspace.chunk_size

# legacy names used by nn/ and ops/dcd.py until the nn rewrite lands
matmul, matmul_tn, matmul_nt = gemm_aliases(gemm)
matmul_nt_sum = gemm_nt_sum

__all__ = [
    "adam_step", "add", "add_centre_taps", "add_channel_bias", "add_eye", "add_into", "astype",
    "batch_norm_backward", "batch_norm_forward", "batch_stats", "channel_mix", "channel_mix_backward",
    "channel_sum", "chunk_size", "col2im", "contiguous", "conv_backward", "conv_forward", "copy",
    "copy_into", "centre_taps", "empty", "exp", "fill", "gemm", "gemm_nt_sum", "hard_sigmoid",
    "hard_sigmoid_backward", "im2col", "log_softmax", "mean_pool", "mean_pool_backward", "mul", "relu",
    "relu_backward", "rowdot", "running_update", "scale", "scale_rows", "set_workspace_bytes",
    "sgd_step", "sigmoid", "sigmoid_backward", "softmax", "softmax_backward", "sub", "swap01",
    "taps_backward_filter", "taps_backward_input", "taps_forward", "tanh", "tanh_backward",
    "to_device", "to_host", "total", "zeros", "workspace",
    # legacy
    "blas_single_thread", "matmul", "matmul_tn", "matmul_nt", "matmul_nt_sum",
]
