"""The index helpers of :mod:`dynconv_np.backends._index`, compiled as CUDA device functions."""

from __future__ import annotations

from numba import cuda

from .._index import compiled

_helpers = compiled(cuda.jit(device=True))

split = _helpers["split"]
unravel3 = _helpers["unravel3"]
unravel4 = _helpers["unravel4"]
tap_input = _helpers["tap_input"]
window_input = _helpers["window_input"]
window_output = _helpers["window_output"]
