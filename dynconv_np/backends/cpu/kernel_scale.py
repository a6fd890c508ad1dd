"""CPU kernel scaling (ODConv): per-sample kernels scaled along their output-channel,
input-channel and tap axes, and the gradients of that scaling (the entries and sums of
:mod:`dynconv_np.backends._kernel_scale`, compiled here).

The forward and the kernel gradient are items ``(n, o)``, each owning ``out[n, o]``
(``dw[n, o]``) and ``da_f[n, o]``; ``da_c`` and ``da_s`` are gathers, the item of ``(n, c)``
(``(n, t)``) summing every term that reaches its entry. Every entry has one writer and
sums its terms in a fixed order, in float64, so results are bitwise the same whatever
``NUMBA_NUM_THREADS`` is.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import _kernel_scale
from .index import split

_inline = njit(inline="always")
_scaled = _inline(_kernel_scale.scaled)
_filter_sum = _inline(_kernel_scale.filter_sum)
_gather_sum = _inline(_kernel_scale.gather_sum)


@njit(inline="always")
def _scale_row(w, a_f, a_c, a_s, groups, out, item):
    # item (n, o) writes out[n, o], the scaled row of w; returns (n, o, c0)
    N, O, Cg, T = w.shape
    n, o = split(item, O)
    c0 = (o // (O // groups)) * Cg
    for c in range(Cg):
        for t in range(T):
            out[n, o, c, t] = _scaled(w, a_f, a_c, a_s, n, o, c, t, c0)
    return n, o, c0


@njit(parallel=True, cache=True)
def _scale(w, a_f, a_c, a_s, groups, out):
    for item in prange(w.shape[0] * w.shape[1]):
        _scale_row(w, a_f, a_c, a_s, groups, out, item)


@njit(parallel=True, cache=True)
def _scale_backward(G, w, a_f, a_c, a_s, groups, dw, da_f, da_c, da_s):
    # One parallel loop over three kinds of items, the (n, o) rows, then the (n, c) and
    # (n, t) gathers: each parallel loop is compiled as a region of its own, and three
    # cost a first run about 1 s more than one.
    N, O, Cg, T = w.shape
    C = groups * Cg
    for item in prange(N * (O + C + T)):
        if item < N * O:
            n, o, c0 = _scale_row(G, a_f, a_c, a_s, groups, dw, item)
            da_f[n, o] = _filter_sum(G, w, a_c, a_s, n, o, c0, 0.0)
        elif item < N * (O + C):
            n, c = split(item - N * O, C)
            da_c[n, c] = _gather_sum(G, w, a_f, a_c, a_s, groups, n, c, False, 0.0)
        else:
            n, t = split(item - N * (O + C), T)
            da_s[n, t] = _gather_sum(G, w, a_f, a_c, a_s, groups, n, t, True, 0.0)


def scale_kernels(w: np.ndarray, a_f: np.ndarray, a_c: np.ndarray, a_s: np.ndarray, groups: int) -> np.ndarray:
    """``w[n, o, c, t] * ((a_f[n, o] * a_c[n, g(o)*Cg + c]) * a_s[n, t])``.

    Parameters
    ----------
    w : ndarray (N, O, Cg, T)
    a_f : ndarray (N, O)
    a_c : ndarray (N, groups*Cg)
    a_s : ndarray (N, T)
    groups : int

    Returns
    -------
    out : ndarray (N, O, Cg, T), a new array
    """
    w = np.ascontiguousarray(w)
    out = np.empty(w.shape, dtype=w.dtype)
    _scale(w, np.ascontiguousarray(a_f), np.ascontiguousarray(a_c), np.ascontiguousarray(a_s), groups, out)
    return out


def scale_kernels_backward(G: np.ndarray, w: np.ndarray, a_f: np.ndarray, a_c: np.ndarray, a_s: np.ndarray,
                           groups: int):
    """Gradients of :func:`scale_kernels` for the cotangent ``G (N, O, Cg, T)``.

    Returns
    -------
    dw : ndarray (N, O, Cg, T)
    da_f : ndarray (N, O)
    da_c : ndarray (N, groups*Cg)
    da_s : ndarray (N, T)
    """
    w = np.ascontiguousarray(w)
    N, O, Cg, T = w.shape
    dt = w.dtype
    dw = np.empty(w.shape, dtype=dt)
    da_f = np.empty((N, O), dtype=dt)
    da_c = np.empty((N, groups * Cg), dtype=dt)
    da_s = np.empty((N, T), dtype=dt)
    _scale_backward(np.ascontiguousarray(G), w, np.ascontiguousarray(a_f), np.ascontiguousarray(a_c),
                    np.ascontiguousarray(a_s), groups, dw, da_f, da_c, da_s)
    return dw, da_f, da_c, da_s
