"""CPU conv by shifted views (strategy ``shifted``): stride-1 windows without an unfold.

The same contract as the conv template (:func:`~dynconv_np.backends.cpu.conv.conv_forward`,
:func:`~dynconv_np.backends.cpu.conv.conv_backward`). A sample's channels are copied
once into a zero-padded plane per channel (``Hp x Wp``, plus a tail of ``(kw-1)*dw``
zeros), stored ``PS`` floats apart. With stride 1, the inputs that tap ``(u, v)`` reads
for the output rows, each row extended to the plane's width ``Wp``, are one contiguous
run per channel starting ``s = u*dh*Wp + v*dw`` into the plane: a ``(C, Ho*Wp)`` matrix
with row stride ``PS``, which BLAS reads in place. So, per sample and group::

    Y_ext (Og, Ho*Wp)  = sum_t W_t (Og, Cg) @ Xp[:, s_t : s_t + Ho*Wp]      (then drop the
                                                                           Wp - Wo gap columns)
    G_t   (Og, Cg)     = dY_ext (Og, Ho*Wp) @ Xp[:, s_t : s_t + Ho*Wp]^T   (gap columns of dY_ext zero)
    dXp[:, s_t : ...] += W_t^T (Cg, Og) @ dY_ext                           (dx: dXp's interior)

``kh*kw`` GEMMs with ``C`` as the inner dimension instead of one with ``C*kh*kw``, and
``Wp/Wo`` times the columns, but no unfolded columns written and read back, and no fold:
on small images, where the unfold costs a quarter of the forward, it pays (see
docs/performance.md, "Shifted views"). The kernels are rearranged tap-major
(``W_t = wt[:, c*T + t]``) per sample into the thread's buffer.

Work items: samples (forward; per-sample kernels' backward), or, for a shared kernel's
backward, :data:`~dynconv_np.backends.cpu.conv.SLOTS` fixed slots of samples, each
summing its samples' gradients in order into its own partial (then summed in slot order),
as the conv template does. Every item owns what it writes and the order of every sum is
fixed by the shapes, so results are bitwise identical whatever ``NUMBA_NUM_THREADS`` is.
BLAS holds at one thread meanwhile, as in the conv template.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange

from .blas import gemm_view
from .conv import SLOTS, _padded_plane, _pixel_sums, _scratch, empty_backward
from .products import blas_single_thread


@njit(inline="always")
def _pad(x, n, xp, ph, pw, Wp):
    # xp (C*PS,) <- the zero-padded planes of x[n], plane c from xp[c*PS]
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    PS = xp.shape[0] // C
    xp[:] = 0
    for c in range(C):
        for h in range(H):
            d = c * PS + (h + ph) * Wp + pw
            for w in range(W):
                xp[np.uint64(d + w)] = x[n, c, h, w]


@njit(inline="always")
def _tap_major(w_n, wr, T):
    # wr (T*O*Cg,): wr[(t*O + o)*Cg + c] = w_n[o, c*T + t], w_n (O, Cg*T)
    O, F = w_n.shape
    Cg = F // T
    for t in range(T):
        for o in range(O):
            d = (t * O + o) * Cg
            for c in range(Cg):
                wr[np.uint64(d + c)] = w_n[o, c * T + t]


@njit(parallel=True, cache=True)
def _fwd(x, wt, bt, y, ws, G, window, plane):
    # y (N, O, Ho, Wo) = the correlation of x (N, C, H, W) with wt (N or 1, O, Cg*T),
    # plus bt (N or 1, O), or (0, O) for no bias; ws (threads, floats); plane (Hp, Wp, PS).
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = window
    Hp, Wp, PS = plane
    N, C = x.shape[0], x.shape[1]
    O, F = wt.shape[1], wt.shape[2]
    T = kh * kw
    Cg, Og = F // T, O // G
    L = Ho * Wp
    for n in prange(N):
        buf = ws[get_thread_id()]
        xp = buf[:C * PS]
        ye = buf[C * PS:C * PS + O * L]
        wr = buf[C * PS + O * L:C * PS + O * L + T * O * Cg]
        _pad(x, n, xp, ph, pw, Wp)
        _tap_major(wt[n] if wt.shape[0] > 1 else wt[0], wr, T)
        for t in range(T):
            s = (t // kw) * dh * Wp + (t % kw) * dw
            for g in range(G):
                gemm_view(False, False, Og, L, Cg, wr, (t * O + g * Og) * Cg, Cg, xp, g * Cg * PS + s, PS,
                          ye, g * Og * L, L, 0.0 if t == 0 else 1.0)
        for o in range(O):
            for i in range(Ho):
                r = o * L + i * Wp
                if bt.shape[0] > 0:
                    b = bt[n, o] if bt.shape[0] > 1 else bt[0, o]
                    for j in range(Wo):
                        y[n, o, i, j] = ye[np.uint64(r + j)] + b
                else:
                    for j in range(Wo):
                        y[n, o, i, j] = ye[np.uint64(r + j)]


@njit
def _bwd_item(x, w_n, dy, dx, g_n, dbt, buf, n, first, G, need_dx, need_dw, window, plane):
    # Sample n's backward: dbt[n] the pixel sums of dy[n]; g_n (O, Cg*T) (first: set,
    # else: add) dY X^T; dx[n] the input gradient. buf: the item's work space.
    kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = window
    Hp, Wp, PS = plane
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    O, F = w_n.shape
    T = kh * kw
    Cg, Og = F // T, O // G
    L = Ho * Wp
    _pixel_sums(dy, dbt, n)
    xp = buf[:C * PS]                                  # the padded planes, then their gradient
    de = buf[C * PS:C * PS + O * L]
    wt_ = buf[C * PS + O * L:C * PS + O * L + T * O * Cg]   # G_t, then the tap-major kernels
    de[:] = 0
    for o in range(O):
        for i in range(Ho):
            r = o * L + i * Wp
            for j in range(Wo):
                de[np.uint64(r + j)] = dy[n, o, i * Wo + j]
    if need_dw:
        _pad(x, n, xp, ph, pw, Wp)
        for t in range(T):
            s = (t // kw) * dh * Wp + (t % kw) * dw
            for g in range(G):
                gemm_view(False, True, Og, Cg, L, de, g * Og * L, L, xp, g * Cg * PS + s, PS,
                          wt_, (t * O + g * Og) * Cg, Cg, 0.0)
        for o in range(O):
            for c in range(Cg):
                for t in range(T):
                    v = wt_[np.uint64((t * O + o) * Cg + c)]
                    if first:
                        g_n[o, c * T + t] = v
                    else:
                        g_n[o, c * T + t] += v
    if need_dx:
        _tap_major(w_n, wt_, T)
        xp[:] = 0
        for t in range(T):
            s = (t // kw) * dh * Wp + (t % kw) * dw
            for g in range(G):
                gemm_view(True, False, Cg, L, Og, wt_, (t * O + g * Og) * Cg, Cg, de, g * Og * L, L,
                          xp, g * Cg * PS + s, PS, 1.0)
        for c in range(C):
            for h in range(H):
                d = c * PS + (h + ph) * Wp + pw
                for w in range(W):
                    dx[n, c, h, w] = xp[np.uint64(d + w)]


@njit(parallel=True, cache=True)
def _bwd(x, wt, dy, dx, gw, dbt, ws, S, G, need_dx, need_dw, window, plane):
    # x (N, C, H, W); wt (N or 1, O, F); dy (N, O, Ho*Wo); dx (N, C, H, W) (or (0, ...));
    # gw (N, O, F) per sample, or (S, O, F) slot partials for a shared kernel; dbt (N, O).
    # _bwd_item is called, not inlined, with the same argument types from both loops.
    N = x.shape[0]
    if wt.shape[0] == 1:
        # slot s sums samples s, s+S, ... in order into gw[s]; ws (S, floats)
        for s in prange(S):
            k = 0
            for n in range(s, N, S):
                _bwd_item(x, wt[0], dy, dx, gw[s], dbt, ws[s], np.int64(n), k == 0, np.int64(G), need_dx,
                          need_dw, window, plane)
                k += 1
    else:
        for n in prange(N):
            _bwd_item(x, wt[n], dy, dx, gw[n], dbt, ws[get_thread_id()], np.int64(n), n >= 0, np.int64(G),
                      need_dx, need_dw, window, plane)


# ----------------------------------------------------------------------------- plans
def plane(g) -> tuple[int, int, int]:
    """``(Hp, Wp, PS)``: a padded plane's rows and width, and the floats between planes
    (``Hp*Wp`` and a tail of zeros that the last tap's view reads past the last row)."""
    Hp, Wp = _padded_plane(g)
    return Hp, Wp, Hp * Wp + (g.kw - 1) * g.dw


def _floats(g, O: int, F: int) -> int:
    # work space of an item: the planes, the extended output (or its gradient), the taps
    Hp, Wp, PS = plane(g)
    return g.C * PS + O * g.Ho * Wp + O * F


def forward(x, wt, bt, g, groups):
    """``y (N, O, Ho, Wo) = conv(x, w) + b`` by shifted views, for a stride-1 window (the
    planner's rule, ``plan.unsupported``): the parameters and result of
    :func:`~dynconv_np.backends.cpu.conv.conv_forward` (x (N, C, H, W) C-contiguous; wt
    (O, F) shared or (N, O, F) per sample; bt (O,), (N, O) or None)."""
    O, F = wt.shape[-2], wt.shape[-1]
    y = np.empty((g.N, O, g.Ho, g.Wo), dtype=x.dtype)
    if g.N == 0:
        return y
    w3 = wt.reshape(1, O, F) if wt.ndim == 2 else wt
    b2 = np.zeros((0, O), x.dtype) if bt is None else np.ascontiguousarray(bt.reshape(-1, O))
    ws = _scratch(get_num_threads(), _floats(g, O, F), x.dtype)
    with blas_single_thread():
        _fwd(x, np.ascontiguousarray(w3), b2, y, ws, groups, g.window, plane(g))
    return y


def backward(x, wt, dy, g, groups, need_dx=True, need_dw=True):
    """Backward of :func:`forward`: the parameters and results of
    :func:`~dynconv_np.backends.cpu.conv.conv_backward` (dy (N, O, Ho, Wo) C-contiguous;
    returns dx (N, C, H, W) or None, gw (O, F) shared or (N, O, F) per sample or None,
    dbt (O,) shared or (N, O) per sample)."""
    O, F = wt.shape[-2], wt.shape[-1]
    shared = wt.ndim == 2
    if g.N == 0:
        return empty_backward(g, wt, x.dtype, need_dx, need_dw)
    w3 = np.ascontiguousarray(wt.reshape(1, O, F) if shared else wt)
    dx = np.empty((g.N, g.C, g.H, g.W), dtype=x.dtype) if need_dx else np.empty((0, g.C, g.H, g.W), x.dtype)
    S = min(g.N, SLOTS)
    gw = np.empty((S if shared else g.N, O, F), dtype=x.dtype)
    dbt = np.empty((g.N, O), dtype=x.dtype)
    ws = _scratch(S if shared else get_num_threads(), _floats(g, O, F), x.dtype)
    with blas_single_thread():
        _bwd(x, w3, dy.reshape(g.N, O, g.P), dx, gw, dbt, ws, S, groups, need_dx, need_dw, g.window, plane(g))
    if shared:
        if need_dw:                                     # (never written otherwise)
            gw = np.add.reduce(gw, axis=0)              # slot partials, in slot order
        dbt = np.add.reduce(dbt, axis=0)
    return (dx if need_dx else None), (gw if need_dw else None), dbt

