"""The index helpers of :mod:`dynconv_np.backends._index`, compiled as CUDA device functions."""

from __future__ import annotations

from numba import cuda

from .._index import compiled

(ceil_div, split, unravel3, unravel4, tap_input, tap_output, valid_range, window_input,
 window_output) = compiled(cuda.jit(device=True)).values()
