"""DCDConv2d: dynamic convolution decomposition with its routing branch (SPEC section 4).

The branch of the authors' ``conv_dy`` (liyunsheng13/dcd)::

    a    = GAP(x)                                    (N, C)
    t0   = a @ fc_weight.T                           (N, S)   Linear C -> S, no bias
    t    = t0 * hsig(t0 @ se_weight.T)               (N, S)   the small SE gate, no bias
    Phi  = (t @ phi_weight.T).reshape(N, L, L)       (N, L, L)
    lam  = hsig(t @ scale_weight.T)                  (N, O)   range [0, 2], 1 at 0
    y    = dcd_conv2d(x, weight, lam, I + Phi, p_weight, q_weight)

with ``hsig(u) = relu6(u + 3) / 3``, ``L = int(sqrt(C))`` and ``S = max(C, L*L) // 16``
(at least :data:`MIN_SQUEEZE`). ``(I + Phi)`` is the code's ``v = z + Phi z``.

With ``residual_bn=True`` the residual follows the code's batch norms exactly::

    z = BN1(Q^T x_centre)        v = z + BN2(Phi z)        y = lam * conv(x, W0) + P v

which is no longer a per-sample kernel (the batch statistics couple the samples), so it
is computed from the parts: the static conv, ``Q^T`` applied to x at the centre taps
(the backends' ``centre_taps``, as in :func:`dynconv_np.dcd_conv2d`) and the batch
norms. By default the residual has no batch norm (the eval-folded form).

Forward and backward run on host or device arrays: everything goes through the ops and
backend primitives (``be.mul``, ``be.matmul*``, ``be.add_eye``, ...).
"""

from __future__ import annotations

import numpy as np

from .. import _args
from ..ops import conv2d, dcd_conv2d, global_avg_pool, hard_sigmoid, linear
from .layers import inner_batch_norm
from .module import Module, array_backend, make_rng, uniform_init

__all__ = ["DCDConv2d", "MIN_SQUEEZE"]

#: Smallest squeeze width S of the routing branch (the code's ``max(C, L*L) // 16`` is 0
#: for C < 16).
MIN_SQUEEZE = 4


class DCDConv2d(Module):
    """Dynamic convolution decomposition layer with its own routing branch.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
        Odd sizes only (the residual sits at the centre tap).
    stride, dilation : int or (int, int)
    padding : int, (int, int), "same", "valid" or None
        None (default): ``dilation * (k // 2)``, as the authors' code.
    latent_dim : int, optional
        ``L``; default ``int(sqrt(in_channels))``.
    squeeze : int, optional
        ``S``; default ``max(max(C, L*L) // 16, MIN_SQUEEZE)``.
    residual_bn : bool
        The code's BN1/BN2 in the residual (training statistics in train mode, running
        statistics in eval mode). Off by default.
    momentum, eps : float
        Batch-norm settings (only with ``residual_bn``).
    dtype : float32 or float64
    seed, rng : int or numpy.random.Generator, optional

    Params
    ------
    weight (O, C, kh, kw), fc_weight (S, C), se_weight (S, S), phi_weight (L*L, S),
    scale_weight (O, S), p_weight (O, L), q_weight (C, L); with ``residual_bn`` also
    bn1_weight, bn1_bias, bn2_weight, bn2_bias (L,) and buffers bn1/bn2 running_mean,
    running_var (L,).

    Input ``(N, C, H, W)`` -> ``(N, O, Ho, Wo)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None,
                 dilation=1, *, latent_dim: int | None = None, squeeze: int | None = None,
                 residual_bn: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                 dtype=np.float32, seed: int | None = None, rng: np.random.Generator | None = None):
        super().__init__()
        C = _args.positive_int("in_channels", in_channels)
        O = _args.positive_int("out_channels", out_channels)
        kh, kw = _args.kernel_pair("kernel_size", kernel_size)
        _args.check_odd_kernel("kernel_size", kh, kw)
        dh, dw = _args.pair("dilation", dilation, 1)
        if padding is None:
            padding = (dh * (kh // 2), dw * (kw // 2))
        # validates stride, padding and dilation on a window-sized input
        _args.geometry((1, C, (kh - 1) * dh + 1, (kw - 1) * dw + 1), kh, kw, stride, padding, dilation)
        L = int(np.sqrt(C)) if latent_dim is None else _args.positive_int("latent_dim", latent_dim)
        S = (max(max(C, L * L) // 16, MIN_SQUEEZE) if squeeze is None
             else _args.positive_int("squeeze", squeeze))
        self.residual_bn = _args.flag("residual_bn", residual_bn)
        self.momentum = _args.unit_interval("momentum", momentum)
        self.eps = _args.positive_float("eps", eps)
        dt = _args.float_dtype("dtype", dtype)
        self.in_channels, self.out_channels, self.kernel_size = C, O, (kh, kw)
        self.latent_dim, self.squeeze = L, S
        self.geo = dict(stride=stride, padding=padding, dilation=dilation)
        r = make_rng(seed, rng)
        self.add_param("weight", uniform_init(r, (O, C, kh, kw), C * kh * kw, dt))
        self.add_param("fc_weight", uniform_init(r, (S, C), C, dt))
        self.add_param("se_weight", uniform_init(r, (S, S), S, dt))
        self.add_param("phi_weight", uniform_init(r, (L * L, S), S, dt))
        self.add_param("scale_weight", uniform_init(r, (O, S), S, dt))
        self.add_param("p_weight", uniform_init(r, (O, L), L, dt))
        self.add_param("q_weight", uniform_init(r, (C, L), C, dt))
        if self.residual_bn:
            for b in ("bn1", "bn2"):
                self.add_param(f"{b}_weight", np.ones(L, dtype=dt))
                self.add_param(f"{b}_bias", np.zeros(L, dtype=dt))
                self.add_buffer(f"{b}_running_mean", np.zeros(L, dtype=dt))
                self.add_buffer(f"{b}_running_var", np.ones(L, dtype=dt))

    def name(self) -> str:
        return (f"DCDConv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"L={self.latent_dim}, S={self.squeeze})")

    # ------------------------------------------------------------------ routing branch
    def _route(self, x):
        """``lam (N, O)``, ``Phi (N, L, L)`` and the pullback of the branch into x."""
        N, L = x.shape[0], self.latent_dim
        be = array_backend(x)
        a, pb_gap = global_avg_pool.vjp(x)                    # (N, C)
        t0, pb_fc = linear.vjp(a, self.fc_weight)             # (N, S)
        gate_in, pb_se = linear.vjp(t0, self.se_weight)       # (N, S)
        gate, pb_hg = hard_sigmoid.vjp(gate_in)               # (N, S)
        t = be.mul(t0, gate)
        phi, pb_phi = linear.vjp(t, self.phi_weight)          # (N, L*L)
        s, pb_sc = linear.vjp(t, self.scale_weight)           # (N, O)
        lam, pb_hl = hard_sigmoid.vjp(s)                      # (N, O)

        def pullback(dlam, dPhi):
            """Gradients of the branch; returns ``(dx (N, C, H, W), {param: grad})``."""
            ds, = pb_hl(dlam)
            dt, dscale, _ = pb_sc(ds)
            dt_phi, dphi_w, _ = pb_phi(be.contiguous(dPhi).reshape(N, L * L))
            dt = be.add(dt, dt_phi)
            dgate, = pb_hg(be.mul(dt, t0))
            dt0, dse, _ = pb_se(dgate)
            dt0 = be.add(dt0, be.mul(dt, gate))
            da, dfc, _ = pb_fc(dt0)
            dx, = pb_gap(da)
            return dx, {"fc_weight": dfc, "se_weight": dse, "phi_weight": dphi_w, "scale_weight": dscale}

        return lam, phi.reshape(N, L, L), pullback

    # ------------------------------------------------------------------ residual with BN
    def _forward_bn(self, x, lam, Phi):
        """``lam * conv(x, W0) + P (z + BN2(Phi z))`` with ``z = BN1(Q^T x_centre)``."""
        W0, Pw, Qw = self.weight, self.p_weight, self.q_weight
        O, C, kh, kw = W0.shape
        L = self.latent_dim
        be = array_backend(x)
        r, pb_r = conv2d.vjp(x, W0, None, **self.geo)                 # (N, O, Ho, Wo)
        N, _, Ho, Wo = r.shape
        P = Ho * Wo
        g = _args.geometry(x.shape, kh, kw, **self.geo)
        # Q^T applied to x at the centre taps: the residual reads x there for any padding
        # and dilation (zeros where a centre tap falls in the padding)
        xs = be.centre_taps(be.contiguous(x), g).reshape(N, C, P)     # (N, C, P)
        zq = be.matmul_tn(Qw, xs).reshape(N, L, Ho, Wo)               # (N, L, Ho, Wo)
        z, pb_b1 = inner_batch_norm(self, "bn1", zq)
        zr = be.contiguous(z).reshape(N, L, P)
        w = be.matmul(Phi, zr).reshape(N, L, Ho, Wo)
        wb, pb_b2 = inner_batch_norm(self, "bn2", w)
        v = be.add(zr, be.contiguous(wb).reshape(N, L, P))            # (N, L, P)
        r3 = r.reshape(N, O, P)
        y = be.add(be.scale_rows(r3, lam), be.matmul(Pw, v)).reshape(N, O, Ho, Wo)

        def pullback(dy):
            dyr = be.contiguous(dy).reshape(N, O, P)
            dlam = be.rowdot(dyr, r3)
            dx, dW0, _ = pb_r(be.scale_rows(dyr, lam).reshape(N, O, Ho, Wo))
            dP = be.matmul_nt_sum(dyr, v)                             # (O, L)
            dv = be.matmul_tn(Pw, dyr).reshape(N, L, Ho, Wo)
            dw, dg2, db2 = pb_b2(dv)[:3]
            dw = be.contiguous(dw).reshape(N, L, P)
            dPhi = be.matmul_nt(dw, zr)                               # (N, L, L)
            dz = be.add(dv, be.matmul_tn(Phi, dw).reshape(N, L, Ho, Wo))
            dzq, dg1, db1 = pb_b1(dz)[:3]
            dzq = be.contiguous(dzq).reshape(N, L, P)
            dQ = be.matmul_nt_sum(xs, dzq)                            # (C, L)
            dx = be.add_centre_taps(dx, be.matmul(Qw, dzq).reshape(N, C, Ho, Wo), g)   # dx is ours
            grads = {"weight": dW0, "p_weight": dP, "q_weight": dQ,
                     "bn1_weight": dg1, "bn1_bias": db1, "bn2_weight": dg2, "bn2_bias": db2}
            return dx, dlam, dPhi, grads

        return y, pullback

    # ------------------------------------------------------------------ protocol
    def forward(self, x: np.ndarray) -> np.ndarray:
        """``(N, C, H, W) -> (N, O, Ho, Wo)``."""
        _args.check_arrays({"x": x, "weight": self.weight})
        _args.check_ndim("x", x, 4, "(N, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels, but {self.name()} expects {self.in_channels}")
        lam, Phi, pb_route = self._route(x)
        if self.residual_bn:
            y, pb_main = self._forward_bn(x, lam, Phi)
        else:
            y, pb_op = dcd_conv2d.vjp(x, self.weight, lam, array_backend(x).add_eye(Phi), self.p_weight,
                                      self.q_weight, **self.geo)

            def pb_main(dy):
                dx, dW0, dlam, dphi, dP, dQ = pb_op(dy)
                return dx, dlam, dphi, {"weight": dW0, "p_weight": dP, "q_weight": dQ}

        self._cache = (pb_main, pb_route, y.shape, y.dtype)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Gradient w.r.t. x (conv path plus routing branch); adds every parameter gradient."""
        pb_main, pb_route, shape, dtype = self.cache()
        _args.check_arrays({"dy": dy})
        if dy.dtype != dtype:
            raise TypeError(f"dy must have the output's dtype {np.dtype(dtype)}, got {dy.dtype}")
        if tuple(dy.shape) != tuple(shape):
            raise ValueError(f"dy must have the output's shape {tuple(shape)}, got {tuple(dy.shape)}")
        be = array_backend(dy)
        dx, dlam, dPhi, grads = pb_main(be.contiguous(dy))
        dx_route, grads_route = pb_route(dlam, dPhi)
        for k, v in {**grads, **grads_route}.items():
            self.accumulate(k, v)
        return be.add(dx, dx_route)
