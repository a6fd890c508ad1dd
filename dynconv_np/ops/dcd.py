"""Dynamic convolution decomposition, DCD (docs/math.md, DCD; Li et al., ICLR 2021).

The per-sample kernel is ``W_n = diag(lam_n) W0`` plus the low-rank residual
``P phi_n Q^T`` at the centre tap ``(kh//2, kw//2)``. The op never builds the ``N``
kernels; as in the authors' code it adds features, from pieces that DCDConv2d's
batch-normalised residual reuses (``HW = Ho*Wo`` output pixels)::

    r      = conv2d(x, W0)                    (N, O, Ho, Wo)  one static conv, shared kernel
    z      = centre_projection(x, Q)          (N, L, Ho, Wo)  Q^T x at the centre taps
    v_n    = phi_n z_n                        (N, L, HW)      linalg.matmul
    y      = dcd_combine(r, lam, P, v)        (N, O, Ho, Wo)  lam_n * r_n + P v_n

The centre tap of output pixel ``(i, j)`` reads ``x[i*sh - ph + (kh//2)*dh, j*sw - pw +
(kw//2)*dw]`` (zero where it falls in the padding), so the projection is a 1x1 path at
the conv's stride.

Backward, with ``dY (N, O, HW)``::

    dlam[n, o] = sum_HW dY * r              dr = lam * dY -> (dx_static, dW0) by the conv template
    dP  = sum_n dY_n v_n^T                  dv = P^T dY
    dphi_n = dv_n z_n^T                     dz = phi_n^T dv_n
    dQ  = sum_n xs_n dz_n^T                 dxs = Q dz, added to dx at the centre-tap positions
"""

from __future__ import annotations

import numpy as np

from .. import _args, backends
from .._op import op
from .conv import conv2d
from .linalg import matmul, scale_channels


def _centre_projection(x_, Q_, g, be):
    """``z = Q^T xs`` with ``xs (N, C, HW)`` the centre taps of ``x_``: ``(z (N, L, HW), pullback)``.

    ``pullback(dz, dx)`` adds ``Q dz`` into `dx` (N, C, H, W) at the centre taps, in place
    (the caller owns `dx`), and returns ``dQ (C, L)``.
    """
    N, C = g.N, g.C
    xs = be.centre_taps(x_, g).reshape(N, C, g.P)             # (N, C, HW)
    z, pb = matmul.vjp(Q_, xs, ta=True)                       # (N, L, HW)

    def pullback(dz, dx):
        dQ, dxs = pb(dz)                                      # (C, L), (N, C, HW)
        be.add_centre_taps(dx, dxs.reshape(N, C, g.Ho, g.Wo), g)
        return dQ

    return z, pullback


@op("x", "Q")
def centre_projection(x: np.ndarray, Q: np.ndarray, kernel_size, stride=1, padding=0, dilation=1):
    """``Q^T`` applied to x at every output pixel's centre tap (DCD's residual input).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    Q : ndarray (C, L)
    kernel_size : int or (int, int)
        Odd sizes: the window whose centre tap is read.
    stride, dilation : int or (int, int)
    padding : int, (int, int), "valid" or "same"

    Returns
    -------
    z : ndarray (N, L, Ho, Wo)
        ``z[n, :, i, j] = Q^T x[n, :, i*sh - ph + (kh//2)*dh, j*sw - pw + (kw//2)*dw]`` (zero
        where that position is padding). pullback -> ``(dx (N, C, H, W), dQ (C, L))``.
    """
    dtype, device = _args.check_arrays({"x": x, "Q": Q})
    _args.check_ndim("x", x, 4, "(N, C, H, W)")
    _args.check_ndim("Q", Q, 2, "(C, L)")
    _args.check_nonempty("Q", Q, (1,), "latent channel (L)")
    kh, kw = _args.kernel_pair("kernel_size", kernel_size)
    _args.check_odd_kernel("kernel_size", kh, kw)
    N, C = x.shape[:2]
    L = Q.shape[1]
    _args.check_shape("Q", Q, (C, L), f"(C, L) to match x's C={C}")
    g = _args.geometry(x.shape, kh, kw, stride, padding, dilation, kernel_name="kernel_size")
    be = backends.get(device)

    z, pb = _centre_projection(be.contiguous(x), be.contiguous(Q), g, be)
    z = z.reshape(N, L, g.Ho, g.Wo)

    def pullback(dz):
        _args.check_cotangent(dz, z)
        dx = be.zeros(x.shape, dtype)
        dQ = pb(be.contiguous(dz).reshape(N, L, g.P), dx)
        return dx, dQ

    return z, pullback


@op("r", "lam", "P", "v")
def dcd_combine(r: np.ndarray, lam: np.ndarray, P: np.ndarray, v: np.ndarray):
    """DCD's output from its parts: ``y_n = lam_n * r_n + P v_n``.

    Parameters
    ----------
    r : ndarray (N, O, Ho, Wo)
        The static convolution's output.
    lam : ndarray (N, O)
        Per-sample output-channel scales.
    P : ndarray (O, L)
    v : ndarray (N, L, Ho, Wo)
        The latent residual features.

    Returns
    -------
    y : ndarray (N, O, Ho, Wo)
        pullback -> ``(dr, dlam, dP, dv)`` with the shapes of the inputs.
    """
    _, device = _args.check_arrays({"r": r, "lam": lam, "P": P, "v": v})
    _args.check_ndim("r", r, 4, "(N, O, Ho, Wo)")
    _args.check_ndim("P", P, 2, "(O, L)")
    N, O, Ho, Wo = r.shape
    L = P.shape[1]
    _args.check_shape("P", P, (O, L), f"(O, L) to match r's O={O}")
    _args.check_shape("v", v, (N, L, Ho, Wo), f"(N, L, Ho, Wo) to match r and P's L={L}")
    be = backends.get(device)
    HW = Ho * Wo

    rs, pb_s = scale_channels.vjp(r, lam)                     # (N, O, Ho, Wo)
    pv, pb_p = matmul.vjp(P, be.contiguous(v).reshape(N, L, HW))   # (N, O, HW)
    y = be.add(rs.reshape(N, O, HW), pv).reshape(N, O, Ho, Wo)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dr, dlam = pb_s(dy)
        dP, dv = pb_p(be.contiguous(dy).reshape(N, O, HW))    # (O, L), (N, L, HW)
        return dr, dlam, dP, dv.reshape(v.shape)

    return y, pullback


@op("x", "W0", "lam", "phi", "P", "Q")
def dcd_conv2d(x: np.ndarray, W0: np.ndarray, lam: np.ndarray, phi: np.ndarray, P: np.ndarray,
               Q: np.ndarray, stride=1, padding=0, dilation=1):
    """Dynamic convolution decomposition: channel-wise scaling plus a low-rank centre-tap residual.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    W0 : ndarray (O, C, kh, kw)
        The static kernel; kh and kw must be odd.
    lam : ndarray (N, O)
        Per-sample output-channel scales (Lambda, dynamic channel-wise attention).
    phi : ndarray (N, L, L)
        Per-sample channel fusion matrices.
    P : ndarray (O, L)
    Q : ndarray (C, L)
    stride, dilation : int or (int, int)
    padding : int, (int, int), "valid" or "same"

    Returns
    -------
    y : ndarray (N, O, Ho, Wo)
        ``y[n] = conv2d(x[n], W_n)`` with ``W_n = lam[n][:, None, None, None] * W0`` plus
        ``P @ phi[n] @ Q.T`` at tap ``(kh//2, kw//2)``.

    ``dcd_conv2d.vjp(...)`` returns ``(y, pullback)``; ``pullback(dy)`` gives
    ``(dx, dW0, dlam, dphi, dP, dQ)`` with the shapes of the inputs.
    """
    _, device = _args.check_arrays({"x": x, "W0": W0, "lam": lam, "phi": phi, "P": P, "Q": Q})
    _args.check_ndim("x", x, 4, "(N, C, H, W)")
    _args.check_ndim("W0", W0, 4, "(O, C, kh, kw)")
    _args.check_ndim("lam", lam, 2, "(N, O)")
    _args.check_ndim("phi", phi, 3, "(N, L, L)")
    _args.check_ndim("P", P, 2, "(O, L)")
    _args.check_ndim("Q", Q, 2, "(C, L)")
    _args.check_nonempty("W0", W0, (0, 1), "output and input channel")
    _args.check_nonempty("phi", phi, (1,), "latent channel (L)")
    N, C = x.shape[:2]
    O, Cw, kh, kw = W0.shape
    L = phi.shape[1]
    _args.check_odd_kernel("W0", kh, kw)
    if Cw != C:
        raise ValueError(f"W0 has {Cw} input channels, but x has {C} channels")
    _args.check_shape("lam", lam, (N, O), f"(N, O) to match x's batch N={N} and W0's O={O}")
    _args.check_shape("phi", phi, (N, L, L), f"(N, L, L) to match x's batch N={N}")
    _args.check_shape("P", P, (O, L), f"(O, L) to match W0's O={O} and phi's L={L}")
    _args.check_shape("Q", Q, (C, L), f"(C, L) to match x's C={C} and phi's L={L}")
    g = _args.geometry(x.shape, kh, kw, stride, padding, dilation, kernel_name="W0")
    be = backends.get(device)

    r, pb_r = conv2d.vjp(x, W0, None, stride=stride, padding=padding, dilation=dilation)   # (N, O, Ho, Wo)
    z, pb_z = _centre_projection(be.contiguous(x), be.contiguous(Q), g, be)   # (N, L, HW)
    v, pb_v = matmul.vjp(phi, z)                                              # (N, L, HW)
    y, pb_y = dcd_combine.vjp(r, lam, P, v.reshape(N, L, g.Ho, g.Wo))         # (N, O, Ho, Wo)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dr, dlam, dP, dv = pb_y(dy)
        dx, dW0, _ = pb_r(dr)                                 # dx is ours: the residual adds in place
        dphi, dz = pb_v(be.contiguous(dv).reshape(N, L, g.P))
        dQ = pb_z(dz, dx)
        return dx, dW0, dlam, dphi, dP, dQ

    return y, pullback
