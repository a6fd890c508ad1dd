"""Dynamic convolution decomposition, DCD (SPEC section 4; Li et al., ICLR 2021).

The per-sample kernel is ``W_n = diag(lam_n) W0`` plus the low-rank residual
``P phi_n Q^T`` at the centre tap ``(kh//2, kw//2)``. The op never builds the ``N``
kernels; as in the authors' code it adds features::

    r      = conv2d(x, W0)                    (N, O, Ho, Wo)  one static conv, shared kernel
    xs     = x at the centre-tap positions    (N, C, Ho, Wo)  (zeros where they fall in the padding)
    z_n    = Q^T xs_n                         (N, L, P)
    v_n    = phi_n z_n                        (N, L, P)
    y_n    = lam_n * r_n + P v_n              (N, O, P)

The centre tap of output pixel ``(i, j)`` reads ``x[i*sh - ph + (kh//2)*dh, j*sw - pw +
(kw//2)*dw]``, so ``xs`` is a strided slice of ``x``: a 1x1 path at the conv's stride.

Backward, with ``dY (N, O, P)``::

    dlam[n, o] = sum_P dY * r               dr = lam * dY -> (dx_static, dW0) by the conv template
    dP  = sum_n dY_n v_n^T                  dv = P^T dY
    dphi_n = dv_n z_n^T                     dz = phi_n^T dv_n
    dQ  = sum_n xs_n dz_n^T                 dxs = Q dz, added to dx at the centre-tap positions
"""

from __future__ import annotations

import numpy as np

from .. import _args, backends
from .._op import op


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

    x_ = be.contiguous(x)
    w0t = be.contiguous(W0).reshape(O, C * kh * kw)           # (O, F)
    lam_, phi_, P_, Q_ = (be.contiguous(a) for a in (lam, phi, P, Q))
    r = be.conv_forward(x_, w0t, None, g, 1).reshape(N, O, g.P)   # (N, O, P) static conv
    xs = be.centre_taps(x_, g).reshape(N, C, g.P)             # (N, C, P) centre taps
    z = be.matmul_tn(Q_, xs)                                  # (N, L, P)
    v = be.matmul(phi_, z)                                    # (N, L, P)
    y = be.add(be.scale_rows(r, lam_), be.matmul(P_, v))      # (N, O, P)
    y = y.reshape(N, O, g.Ho, g.Wo)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dyr = be.contiguous(dy).reshape(N, O, g.P)
        dlam = be.rowdot(dyr, r)
        dr = be.scale_rows(dyr, lam_).reshape(N, O, g.Ho, g.Wo)
        dx, dW0, _ = be.conv_backward(x_, w0t, dr, g, 1)
        dP = be.matmul_nt_sum(dyr, v)                             # (O, L)
        dv = be.matmul_tn(P_, dyr)                                # (N, L, P)
        dphi = be.matmul_nt(dv, z)                                # (N, L, L)
        dz = be.matmul_tn(phi_, dv)                               # (N, L, P)
        dQ = be.matmul_nt_sum(xs, dz)                             # (C, L)
        dxs = be.matmul(Q_, dz).reshape(N, C, g.Ho, g.Wo)         # (N, C, Ho, Wo)
        dx = be.add_centre_taps(dx, dxs, g)
        return dx, dW0.reshape(W0.shape), dlam, dphi, dP, dQ

    return y, pullback
