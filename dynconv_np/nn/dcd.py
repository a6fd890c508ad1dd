"""DCDConv2d: dynamic convolution decomposition with its routing branch (docs/math.md, DCD).

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
is composed from the op pieces of :func:`dynconv_np.dcd_conv2d` (``conv2d``,
``centre_projection``, ``linalg.matmul``, ``dcd_combine``) with two ``BatchNorm2d``
children, ``bn1`` and ``bn2``. By default the residual has no batch norm (the
eval-folded form) and the layer calls ``dcd_conv2d`` itself.

Forward and backward run on host or device arrays: everything goes through the ops and
the array API.
"""

from __future__ import annotations

import numpy as np

from .. import _args
from .. import arrays as xp
from ..ops import conv2d, dcd_conv2d, global_avg_pool, hard_sigmoid, linear
from ..ops.dcd import centre_projection, dcd_combine
from ..ops.linalg import add_eye, matmul
from .compose import prefixed
from .init import make_rng, uniform_init
from .layers import BatchNorm2d, ConvLayer, conv_config

__all__ = ["DCDConv2d", "MIN_SQUEEZE"]

#: Smallest squeeze width S of the routing branch (the code's ``max(C, L*L) // 16`` is 0
#: for C < 16).
MIN_SQUEEZE = 4


class DCDConv2d(ConvLayer):
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
        Batch-norm settings (only used with ``residual_bn``).
    dtype : float32 or float64
    seed, rng : int or numpy.random.Generator, optional

    Params
    ------
    weight (O, C, kh, kw), fc_weight (S, C), se_weight (S, S), phi_weight (L*L, S),
    scale_weight (O, S), p_weight (O, L), q_weight (C, L); with ``residual_bn`` the
    children ``bn1`` and ``bn2`` (``BatchNorm2d(L)``: ``bn1.weight``, ``bn1.bias``,
    buffers ``bn1.running_mean``, ``bn1.running_var``, the same for bn2).

    Input ``(N, C, H, W)`` -> ``(N, O, Ho, Wo)``. Routing record (:meth:`routing`):
    ``lam (N, O)`` and ``phi (N, L, L)`` (the dynamic residual's Phi, before adding I).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None,
                 dilation=1, *, latent_dim: int | None = None, squeeze: int | None = None,
                 residual_bn: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                 dtype=np.float32, seed: int | None = None, rng: np.random.Generator | None = None):
        super().__init__()
        kh, kw = _args.kernel_pair("kernel_size", kernel_size)
        dh, dw = _args.pair("dilation", dilation, 1)
        if padding is None:
            padding = (dh * (kh // 2), dw * (kw // 2))
        self.config = cfg = conv_config(in_channels, out_channels, (kh, kw), stride, padding, (dh, dw),
                                        bias=False)
        _args.check_odd_kernel("kernel_size", kh, kw)
        C, O = cfg.in_channels, cfg.out_channels
        L = int(np.sqrt(C)) if latent_dim is None else _args.positive_int("latent_dim", latent_dim)
        S = (max(max(C, L * L) // 16, MIN_SQUEEZE) if squeeze is None
             else _args.positive_int("squeeze", squeeze))
        self.residual_bn = _args.flag("residual_bn", residual_bn)
        momentum = _args.unit_interval("momentum", momentum)
        eps = _args.positive_float("eps", eps)
        dt = _args.float_dtype("dtype", dtype)
        self.latent_dim, self.squeeze = L, S
        r = make_rng(seed, rng)
        self.add_param("weight", uniform_init(r, cfg.weight_shape(), cfg.fan_in, dt))
        self.add_param("fc_weight", uniform_init(r, (S, C), C, dt))
        self.add_param("se_weight", uniform_init(r, (S, S), S, dt))
        self.add_param("phi_weight", uniform_init(r, (L * L, S), S, dt))
        self.add_param("scale_weight", uniform_init(r, (O, S), S, dt))
        self.add_param("p_weight", uniform_init(r, (O, L), L, dt))
        self.add_param("q_weight", uniform_init(r, (C, L), C, dt))
        if self.residual_bn:
            for b in ("bn1", "bn2"):
                self.add_child(b, BatchNorm2d(L, eps, momentum, dtype=dt))

    # ------------------------------------------------------------------ routing branch
    def _route(self, x):
        """``lam (N, O)``, ``Phi (N, L, L)`` and ``pullback(dlam, dPhi) -> (dx, grads)``."""
        N, L = x.shape[0], self.latent_dim
        a, pb_gap = global_avg_pool.vjp(x)                    # (N, C)
        t0, pb_fc = linear.vjp(a, self.fc_weight)             # (N, S)
        gate_in, pb_se = linear.vjp(t0, self.se_weight)       # (N, S)
        gate, pb_hg = hard_sigmoid.vjp(gate_in)               # (N, S)
        t = xp.mul(t0, gate)
        phi, pb_phi = linear.vjp(t, self.phi_weight)          # (N, L*L)
        s, pb_sc = linear.vjp(t, self.scale_weight)           # (N, O)
        lam, pb_hl = hard_sigmoid.vjp(s)                      # (N, O)

        def pullback(dlam, dPhi):
            ds, = pb_hl(dlam)
            dt, dscale, _ = pb_sc(ds)
            dt_phi, dphi_w, _ = pb_phi(xp.contiguous(dPhi).reshape(N, L * L))
            dt = xp.add(dt, dt_phi)
            dgate, = pb_hg(xp.mul(dt, t0))
            dt0, dse, _ = pb_se(dgate)
            dt0 = xp.add(dt0, xp.mul(dt, gate))
            da, dfc, _ = pb_fc(dt0)
            dx, = pb_gap(da)
            return dx, {"fc_weight": dfc, "se_weight": dse, "phi_weight": dphi_w, "scale_weight": dscale}

        return lam, phi.reshape(N, L, L), pullback

    # ------------------------------------------------------------------ residual with BN
    def _residual_bn(self, x, lam, Phi):
        """``lam * conv(x, W0) + P (z + BN2(Phi z))`` with ``z = BN1(Q^T x_centre)``, from the op pieces."""
        cfg = self.config
        r, pb_r = conv2d.vjp(x, self.weight, None, **cfg.geo)                         # (N, O, Ho, Wo)
        zq, pb_q = centre_projection.vjp(x, self.q_weight, cfg.kernel_size, **cfg.geo)  # (N, L, Ho, Wo)
        z, pb_b1 = self.bn1.forward_pullback(zq)
        N, L, Ho, Wo = z.shape
        w, pb_w = matmul.vjp(Phi, xp.contiguous(z).reshape(N, L, Ho * Wo))             # (N, L, Ho*Wo)
        wb, pb_b2 = self.bn2.forward_pullback(w.reshape(N, L, Ho, Wo))
        v = xp.add(z, wb)                                                              # (N, L, Ho, Wo)
        y, pb_y = dcd_combine.vjp(r, lam, self.p_weight, v)                            # (N, O, Ho, Wo)

        def pullback(dy):
            dr, dlam, dP, dv = pb_y(dy)
            dx, dW0, _ = pb_r(dr)
            dw, grads2 = pb_b2(dv)
            dPhi, dz_w = pb_w(xp.contiguous(dw).reshape(N, L, Ho * Wo))
            dzq, grads1 = pb_b1(xp.add(dv, dz_w.reshape(N, L, Ho, Wo)))
            dx_q, dQ = pb_q(dzq)
            grads = {"weight": dW0, "p_weight": dP, "q_weight": dQ,
                     **prefixed("bn1", grads1), **prefixed("bn2", grads2)}
            return xp.add(dx, dx_q), dlam, dPhi, grads

        return y, pullback

    # ------------------------------------------------------------------ protocol
    def forward_pullback(self, x: np.ndarray):
        """``(N, C, H, W) -> (N, O, Ho, Wo)``: the conv path plus the routing branch."""
        self._check_x(x)
        if self.residual_bn:
            self._check_batch_stats(x, "its residual (residual_bn=True)")
        lam, Phi, pb_route = self._route(x)
        self.keep_routing(lam=lam, phi=Phi)
        if self.residual_bn:
            y, pb_main = self._residual_bn(x, lam, Phi)
        else:
            phi, pb_eye = add_eye.vjp(Phi)                                             # I + Phi
            y, pb_op = dcd_conv2d.vjp(x, self.weight, lam, phi, self.p_weight, self.q_weight,
                                      **self.config.geo)

            def pb_main(dy):
                dx, dW0, dlam, dphi, dP, dQ = pb_op(dy)
                return dx, dlam, pb_eye(dphi)[0], {"weight": dW0, "p_weight": dP, "q_weight": dQ}

        def pullback(dy):
            dx, dlam, dPhi, grads = pb_main(dy)
            dx_route, grads_route = pb_route(dlam, dPhi)
            return xp.add(dx, dx_route), {**grads, **grads_route}

        return y, pullback
