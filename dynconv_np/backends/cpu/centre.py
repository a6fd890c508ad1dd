"""CPU centre taps (dynamic convolution decomposition): x at each output pixel's centre
tap and its adjoint, as strided NumPy slices.

Output pixel ``(i, j)`` reads its centre tap at ``x[i*sh - ph + (kh//2)*dh, j*sw - pw +
(kw//2)*dw]``: a strided slice of x over the output pixels whose centre tap falls inside
x. Distinct output pixels have distinct centre taps, so no index repeats.
"""

from __future__ import annotations

import numpy as np

from .._index import tap_input, valid_range


def _centre_slices(g) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    # (output slices, input slices) of the pixels whose centre tap lies inside x; None if none does
    spans = []
    for k, s, p, d, size, out in ((g.kh, g.sh, g.ph, g.dh, g.H, g.Ho), (g.kw, g.sw, g.pw, g.dw, g.W, g.Wo)):
        lo, hi = valid_range(p, (k // 2) * d, s, size, out)
        if hi == lo:
            return None
        first = tap_input(lo, s, p, (k // 2) * d)
        spans.append((slice(lo, hi), slice(first, first + (hi - lo - 1) * s + 1, s)))
    (oh, ih), (ow, iw) = spans
    return (oh, ow), (ih, iw)


def centre_taps(x: np.ndarray, g) -> np.ndarray:
    """xs (N, C, Ho, Wo): x (N, C, H, W) at every output pixel's centre tap, zero in the padding."""
    xs = np.zeros((g.N, g.C, g.Ho, g.Wo), dtype=x.dtype)
    sl = _centre_slices(g)
    if sl is not None:
        (oh, ow), (ih, iw) = sl
        xs[:, :, oh, ow] = x[:, :, ih, iw]
    return xs


def add_centre_taps(dx: np.ndarray, dxs: np.ndarray, g) -> np.ndarray:
    """``dx (N, C, H, W) += dxs (N, C, Ho, Wo)`` at the centre-tap positions, in place; returns `dx`."""
    sl = _centre_slices(g)
    if sl is not None:
        (oh, ow), (ih, iw) = sl
        dx[:, :, ih, iw] += dxs[:, :, oh, ow]
    return dx
