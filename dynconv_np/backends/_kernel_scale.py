"""ODConv's kernel scaling entry by entry, written once in plain Python and compiled for
both backends (as :mod:`._index`): ``numba.njit(inline="always")`` in
``cpu/kernel_scale.py``, CUDA device functions in ``cuda/kernel_scale.py``.

Arrays: ``w`` and its cotangent ``G`` (N, O, Cg, T), ``a_f`` (N, O), ``a_c`` (N, C) with
``C = groups*Cg``, ``a_s`` (N, T). Output channel ``o`` belongs to the group ``o // Og``
(``Og = O // groups``), whose input channels start at ``c0 = (o // Og) * Cg``. The scaled
kernel and its gradients::

    out[n, o, c, t] = w[n, o, c, t] * ((a_f[n, o] * a_c[n, c0 + c]) * a_s[n, t])
    dw              = G scaled alike
    da_f[n, o]      = sum_{c, t} G w a_c a_s
    da_c[n, c0 + c] = sum_{o in the group, t} G w a_f a_s
    da_s[n, t]      = sum_{o, c} G w a_f a_c

Each sum runs in a fixed order from ``zero``, whose type is the accumulator's (the CPU
sums in float64, the CUDA kernels in the arrays' dtype).
"""

from __future__ import annotations


def scaled(w, a_f, a_c, a_s, n, o, c, t, c0):
    """``w[n, o, c, t] * ((a_f[n, o] * a_c[n, c0 + c]) * a_s[n, t])``: an entry of the scaled
    kernel (or of its gradient, for ``w = G``)."""
    return w[n, o, c, t] * ((a_f[n, o] * a_c[n, c0 + c]) * a_s[n, t])


def filter_sum(G, w, a_c, a_s, n, o, c0, zero):
    """``da_f[n, o]``: the sum over the kernel columns c, then the taps t."""
    acc = zero
    for c in range(w.shape[2]):
        ac = a_c[n, c0 + c]
        for t in range(w.shape[3]):
            acc += G[n, o, c, t] * w[n, o, c, t] * (ac * a_s[n, t])
    return acc


def gather_sum(G, w, a_f, a_c, a_s, groups, n, i, by_tap, zero):
    """``da_s[n, i]`` when `by_tap` (the sum over every output channel o, then its kernel
    columns), else ``da_c[n, i]`` (the sum over the output channels of channel i's group,
    then the taps)."""
    O, Cg, T = w.shape[1], w.shape[2], w.shape[3]
    Og = O // groups
    o0, o1 = (0, O) if by_tap else ((i // Cg) * Og, (i // Cg + 1) * Og)
    acc = zero
    for o in range(o0, o1):
        f = a_f[n, o]
        c0 = (o // Og) * Cg
        for j in range(Cg if by_tap else T):
            c, t = (j, i) if by_tap else (i - c0, j)
            acc += G[n, o, c, t] * w[n, o, c, t] * (f * (a_c[n, c0 + c] if by_tap else a_s[n, t]))
    return acc
