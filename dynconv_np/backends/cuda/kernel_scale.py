"""CUDA kernel scaling (ODConv): per-sample kernels scaled along their output-channel,
input-channel and tap axes, and the gradients of that scaling (the entries and sums of
:mod:`dynconv_np.backends._kernel_scale`, compiled here as device functions).

One thread per output entry: the scaled kernel and its gradient entry by entry, and
``da_f``, ``da_c``, ``da_s`` as gathers, the thread of an entry summing, in a fixed order
from a zero of the arrays' dtype, every term that reaches it. No atomics: the same call
gives bitwise the same result on every run.
"""

from __future__ import annotations

from numba import cuda

from .. import _kernel_scale
from .array import contiguous, empty
from .index import split, unravel4
from .launch import launch, per_element, size_of

_device = cuda.jit(device=True)
_scaled = _device(_kernel_scale.scaled)
_filter_sum = _device(_kernel_scale.filter_sum)
_gather_sum = _device(_kernel_scale.gather_sum)


@per_element
def _scale(e, w, a_f, a_c, a_s, groups, out):
    O, Cg, T = w.shape[1], w.shape[2], w.shape[3]
    n, o, c, t = unravel4(e, O, Cg, T)
    out[n, o, c, t] = _scaled(w, a_f, a_c, a_s, n, o, c, t, (o // (O // groups)) * Cg)


@per_element
def _scale_f(item, G, w, a_c, a_s, groups, da_f, zero):
    O, Cg = w.shape[1], w.shape[2]
    n, o = split(item, O)
    da_f[n, o] = _filter_sum(G, w, a_c, a_s, n, o, (o // (O // groups)) * Cg, zero)


@per_element
def _scale_gather(item, G, w, a_f, a_c, a_s, groups, out, by_tap, zero):
    # out = da_s (N, T) when by_tap, else da_c (N, C)
    n, i = split(item, out.shape[1])
    out[n, i] = _gather_sum(G, w, a_f, a_c, a_s, groups, n, i, by_tap, zero)


def scale_kernels(w, a_f, a_c, a_s, groups):
    """``w[n, o, c, t] * ((a_f[n, o] * a_c[n, g(o)*Cg + c]) * a_s[n, t])`` on the device.

    Parameters
    ----------
    w : device array (N, O, Cg, T)
    a_f : device array (N, O)
    a_c : device array (N, groups*Cg)
    a_s : device array (N, T)
    groups : int

    Returns
    -------
    out : device array (N, O, Cg, T), a new array
    """
    w = contiguous(w)
    out = empty(w.shape, w.dtype)
    launch(_scale, size_of(w), w, contiguous(a_f), contiguous(a_c), contiguous(a_s), int(groups), out)
    return out


def scale_kernels_backward(G, w, a_f, a_c, a_s, groups):
    """Gradients of :func:`scale_kernels` for the cotangent ``G (N, O, Cg, T)``, on the device.

    Returns
    -------
    dw : device array (N, O, Cg, T)
    da_f : device array (N, O)
    da_c : device array (N, groups*Cg)
    da_s : device array (N, T)
    """
    w, G = contiguous(w), contiguous(G)
    a_f, a_c, a_s = contiguous(a_f), contiguous(a_c), contiguous(a_s)
    N, O, Cg, T = (int(s) for s in w.shape)
    groups = int(groups)
    zero = w.dtype.type(0)
    da_f = empty((N, O), w.dtype)
    da_c = empty((N, groups * Cg), w.dtype)
    da_s = empty((N, T), w.dtype)
    launch(_scale_f, N * O, G, w, a_c, a_s, groups, da_f, zero)
    launch(_scale_gather, N * groups * Cg, G, w, a_f, a_c, a_s, groups, da_c, False, zero)
    launch(_scale_gather, N * T, G, w, a_f, a_c, a_s, groups, da_s, True, zero)
    return scale_kernels(G, a_f, a_c, a_s, groups), da_f, da_c, da_s
