"""Index arithmetic of the kernels, written once in plain Python and compiled per target.

Every CPU and CUDA kernel decodes its work item and walks the sliding window with these
helpers instead of spelling the arithmetic out again: :func:`compiled` builds them with
``numba.njit(inline="always")`` for the CPU kernels (``backends/cpu/index.py``) and as
CUDA device functions (``backends/cuda/index.py``). Being plain Python, they also run as
they are, in host code and in tests.

The window is the tuple ``Geometry.window = (kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)``
(kernel size, stride, top/left padding, dilation, output size). Along one axis, output
index ``i`` reads at the tap of offset ``off = u*dh`` the input index ``i*sh - ph + off``;
indices outside ``[0, H)`` fall in the zero padding. Taps are numbered ``t = u*kw + v``.
"""

from __future__ import annotations

import types

#: The helpers, in the order :func:`compiled` builds them.
HELPERS = ("ceil_div", "split", "unravel3", "unravel4", "tap_input", "tap_output", "valid_range",
           "window_input", "window_output")


def ceil_div(a, b):
    """``ceil(a / b)`` for integers, ``b > 0``."""
    return -((-a) // b)


def split(t, n):
    """``(t // n, t % n)`` for ``t >= 0``: peel the last axis, of size `n`, off a flat index."""
    q = t // n
    return q, t - q * n


def unravel3(t, n1, n2):
    """The index ``(i0, i1, i2)`` of flat index `t` in a C-ordered ``(n0, n1, n2)`` array."""
    q, i2 = split(t, n2)
    i0, i1 = split(q, n1)
    return i0, i1, i2


def unravel4(t, n1, n2, n3):
    """The index ``(i0, i1, i2, i3)`` of flat index `t` in a C-ordered ``(n0, n1, n2, n3)`` array."""
    q, i3 = split(t, n3)
    i0, i1, i2 = unravel3(q, n1, n2)
    return i0, i1, i2, i3


def tap_input(i, stride, pad, off):
    """The input index that output index `i` reads at the tap of offset `off` (may be padding)."""
    return i * stride - pad + off


def tap_output(h, stride, pad, off, out):
    """The output index in ``[0, out)`` that reads input index `h` at the tap of offset
    `off`, or -1 when there is none (the gather of col2im and of the tap engine's backward)."""
    a = h + pad - off
    if a < 0 or a % stride != 0:
        return -1
    i = a // stride
    return i if i < out else -1


def valid_range(pad, off, stride, size, out):
    """Output indices ``[lo, hi)`` (within ``[0, out)``) whose tap of offset `off` reads
    inside ``[0, size)``; empty (``lo == hi``) when none does."""
    lo = max(0, ceil_div(pad - off, stride))
    hi = min(out, (size - 1 + pad - off) // stride + 1)
    return lo, max(lo, hi)


def window_input(i, j, t, window):
    """The input position ``(ih, iw)`` that output pixel ``(i, j)`` reads at tap `t`."""
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = window
    u, v = split(t, kw)
    return tap_input(i, sh, ph, u * dh), tap_input(j, sw, pw, v * dw)


def window_output(h, w, t, window):
    """The output pixel ``(i, j)`` that reads input ``(h, w)`` at tap `t`, or ``(-1, -1)``."""
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = window
    u, v = split(t, kw)
    i = tap_output(h, sh, ph, u * dh, Ho)
    j = tap_output(w, sw, pw, v * dw, Wo)
    if i < 0 or j < 0:
        return -1, -1
    return i, j


def compiled(jit) -> dict:
    """Every helper compiled with the decorator `jit`, by name.

    Each compiled helper sees the other compiled helpers under their names, so a helper
    that calls another calls its compiled twin, on either target.
    """
    scope = {"__builtins__": __builtins__, "__name__": __name__}
    for name in HELPERS:
        f = globals()[name]
        scope[name] = jit(types.FunctionType(f.__code__, scope, name, f.__defaults__))
    return {name: scope[name] for name in HELPERS}
