"""The index helpers of :mod:`dynconv_np.backends._index`, compiled for the CPU kernels
(``numba.njit(inline="always")``: inlined into each kernel, no call overhead)."""

from __future__ import annotations

from numba import njit

from .._index import compiled

_helpers = compiled(njit(inline="always"))

split = _helpers["split"]
unravel3 = _helpers["unravel3"]
tap_input = _helpers["tap_input"]
tap_output = _helpers["tap_output"]
valid_range = _helpers["valid_range"]
