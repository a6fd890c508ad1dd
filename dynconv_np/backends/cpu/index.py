"""The index helpers of :mod:`dynconv_np.backends._index`, compiled for the CPU kernels
(``numba.njit(inline="always")``: inlined into each kernel, no call overhead)."""

from __future__ import annotations

from numba import njit

from .._index import compiled

(ceil_div, split, unravel3, unravel4, tap_input, tap_output, valid_range, window_input,
 window_output) = compiled(njit(inline="always")).values()
