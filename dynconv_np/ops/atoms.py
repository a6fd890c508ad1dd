"""Per-pixel dynamic filter atoms, ACDA (docs/math.md, ACDA; Wang et al., ICCV 2021).

The per-pixel filters ``W[n, o, c, :, :, i, j] = sum_m coeff[o, c, m] atoms[n, m, :, :, i, j]``
are never materialised. The paper's two-layer computation::

    Z[c*M + m, n, i, j] = sum_{u,v} atoms[n, m, u, v, i, j] * xpad[n, c, i*sh + u*dh, j*sw + v*dw]
                                            (C*M, N, Ho, Wo)  tap engine, atoms shared by channels
    y = A Z + bias                          (O, N*P) -> (N, O, Ho, Wo)   one 1x1 GEMM, A = coeff as (O, C*M)

Z is laid out channel-major so the GEMM (and the two of the backward) is one GEMM for
the whole batch (chunk), not one per sample.

Backward, with ``dY (N, O, P)``::

    dcoeff = dY Z^T (over all n, P)     dbias = dY summed over n and P     dZ = A^T dY
    datoms[n, m, t, i, j] = sum_c dZ[n, c*M+m, i, j] * xpad[n, c, tap t of (i, j)]
    dx = the tap engine's gather of atoms * dZ

The op is written once against the backend's kernel API (``be.taps_*``, ``be.gemm``,
``be.swap01``, ``be.add_channel_bias``, ``be.channel_sum``): the same code runs on host
arrays and on CUDA device arrays, end to end on the device.

The workspace is ``Z`` and ``dZ`` (``M/(kh*kw)`` times the unfolded input each), bounded
by batch chunks within the backend's workspace bound (``be.chunk_size``; see
``set_workspace_bytes``), and never the unfolded input itself. When the whole batch
fits, Z is kept from the forward; otherwise the backward recomputes each chunk's Z (one
extra tap pass) instead of holding it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import _args, backends
from .._op import op


@op("x", "atoms", "coeff", "bias")
def atom_conv2d(x: np.ndarray, atoms: np.ndarray, coeff: np.ndarray, bias: np.ndarray | None = None,
                stride=1, padding=0, dilation=1):
    """Convolution with per-pixel filters decomposed over dynamic atoms.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    atoms : ndarray (N, M, kh, kw, Ho, Wo)
        One set of M kh x kw atoms per output pixel, shared by all channels.
    coeff : ndarray (O, C, M)
        Static atom coefficients.
    bias : ndarray (O,), optional
    stride, dilation : int or (int, int)
    padding : int, (int, int), "valid" or "same"

    Returns
    -------
    y : ndarray (N, O, Ho, Wo)
        ``y[n,o,i,j] = bias[o] + sum_{c,m} coeff[o,c,m] sum_{u,v} atoms[n,m,u,v,i,j] *
        xpad[n,c,i*sh+u*dh,j*sw+v*dw]``.

    ``atom_conv2d.vjp(...)`` returns ``(y, pullback)``; ``pullback(dy)`` gives
    ``(dx, datoms, dcoeff, dbias)`` with the shapes of the inputs (dbias None if no bias).
    """
    _, device = _args.check_arrays({"x": x, "atoms": atoms, "coeff": coeff, "bias": bias},
                                   optional=("bias",))
    _args.check_ndim("x", x, 4, "(N, C, H, W)")
    _args.check_ndim("atoms", atoms, 6, "(N, M, kh, kw, Ho, Wo)")
    _args.check_ndim("coeff", coeff, 3, "(O, C, M)")
    _args.check_nonempty("x", x, (1,), "channel")
    _args.check_nonempty("atoms", atoms, (1,), "atom (M)")
    _args.check_nonempty("coeff", coeff, (0,), "output channel")
    N, C = x.shape[:2]
    M, kh, kw = atoms.shape[1:4]
    O = coeff.shape[0]
    g = _args.geometry(x.shape, kh, kw, stride, padding, dilation, kernel_name="atoms")
    _args.check_shape("atoms", atoms, (N, M, kh, kw, g.Ho, g.Wo),
                      f"(N, M, kh, kw, Ho, Wo) for x's batch N={N} and output size {g.Ho}x{g.Wo}")
    _args.check_shape("coeff", coeff, (O, C, M), f"(O, C, M) for x's C={C} and atoms' M={M}")
    if bias is not None:
        _args.check_shape("bias", bias, (O,), f"(O,) for coeff's O={O}")
    be = backends.get(device)

    x_ = be.contiguous(x)
    filt = be.contiguous(atoms).reshape(N, M, g.taps, g.Ho, g.Wo)   # (N, M, T, Ho, Wo)
    A = be.contiguous(coeff).reshape(O, C * M)                     # (O, C*M)
    chunks = _chunks(be, N, C * M * g.P * x_.dtype.itemsize)
    y = be.empty((N, O, g.P), x_.dtype)
    # Z is kept for the backward when the whole batch fits the budget; otherwise each
    # chunk's Z is dropped here and recomputed in the backward (bounded workspace).
    Z_kept = None
    for n0, n1 in chunks:
        Zc = _z(be, x_, filt, g, M, n0, n1)                        # (C*M, nb*P) channel-major
        # one GEMM for the chunk; the (O, nb, P) result is transposed into y
        be.swap01(be.gemm(A, Zc).reshape(O, n1 - n0, g.P), out=y[n0:n1])
        if len(chunks) == 1:
            Z_kept = Zc
    if bias is not None:
        be.add_channel_bias(y, bias)
    y = y.reshape(N, O, g.Ho, g.Wo)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dyr = be.contiguous(dy).reshape(N, O, g.P)
        dcoeff = be.zeros((O, C * M), x_.dtype)
        dx = be.empty((N, C, g.H, g.W), x_.dtype)
        datoms = be.empty((N, M, g.taps, g.Ho, g.Wo), x_.dtype)
        for n0, n1 in chunks:
            nb = n1 - n0
            Zc = Z_kept if Z_kept is not None else _z(be, x_, filt, g, M, n0, n1)   # (C*M, nb*P)
            dyc = be.swap01(dyr[n0:n1]).reshape(O, nb * g.P)              # (O, nb*P)
            be.gemm(dyc, Zc, tb=True, out=dcoeff, accumulate=True)        # (O, C*M)
            dZ = be.gemm(A, dyc, ta=True).reshape(C * M, nb, g.Ho, g.Wo)   # channel-major
            gc = replace(g, N=nb)
            be.taps_backward_input(filt[n0:n1], dZ, gc, M, C, out=dx[n0:n1], channel_major=True)
            be.taps_backward_filter(x_[n0:n1], dZ, gc, M, C, out=datoms[n0:n1], channel_major=True)
        dbias = None if bias is None else be.channel_sum(dyr)
        return dx, datoms.reshape(atoms.shape), dcoeff.reshape(O, C, M), dbias

    return y, pullback


def _chunks(be, N: int, bytes_per_sample: int) -> list[tuple[int, int]]:
    """Batch chunks whose ``Z`` fits the backend's workspace budget (shape-dependent only)."""
    nb = be.chunk_size(N, bytes_per_sample)
    return [(n0, min(N, n0 + nb)) for n0 in range(0, N, nb)]


def _z(be, x_, filt, g, M, n0, n1):
    """``Z`` of samples ``n0:n1``, channel-major: ``(C*M, (n1-n0)*P)``."""
    gc = replace(g, N=n1 - n0)
    Z = be.taps_forward(x_[n0:n1], filt[n0:n1], gc, M, g.C, channel_major=True)
    return Z.reshape(g.C * M, (n1 - n0) * g.P)
