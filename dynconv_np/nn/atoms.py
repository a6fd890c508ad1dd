"""AtomConv2d: ACDA's per-pixel dynamic filter atoms with their generator (SPEC section 5).

Forward::

    h1   = tanh(BN1(conv3x3_s(x, gen1_weight)))          (N, hidden, Ho, Wo)   stride s, padding 1
    beta = tanh(BN2(conv3x3(h1, gen2_weight)))           (N, M*T, Ho, Wo)      padding 1
    atoms[n, m, :, :, i, j] = sum_t beta[n, m*T + t, i, j] * bases[t]    (N, M, k, k, Ho, Wo)
    y    = atom_conv2d(x, atoms, coeff, bias, stride=s, padding=d*(k//2), dilation=d)

``bases (T, k, k)`` are the fixed multi-scale Fourier-Bessel bases
(:func:`dynconv_np.bases.fourier_bessel_bases`, a buffer), ``T = (k//2) * num_bases``.
The generator's 3x3 convs at padding 1 (the first at the layer's stride) give exactly
the main convolution's output size. The backward runs the same chain in reverse: the
atoms' gradient goes to ``beta`` through the bases, then through tanh, BN and the convs,
and the generator's input gradient is added to the main path's ``dx``. Host or device
arrays: the bases product is a backend GEMM (``be.matmul_tn`` / ``be.matmul``).
"""

from __future__ import annotations

import numpy as np

from .. import _args
from ..bases import fourier_bessel_bases
from ..ops import atom_conv2d, conv2d, tanh
from .layers import inner_batch_norm
from .module import Module, array_backend, make_rng, uniform_init

__all__ = ["AtomConv2d"]


class AtomConv2d(Module):
    """Adaptive convolution with per-pixel dynamic filter atoms (ACDA).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int
        Odd, at least 3 (the Fourier-Bessel scales are 3x3, 5x5, ...).
    stride, dilation : int or (int, int)
    padding : None, int, (int, int) or "same"
        Must be ``dilation * (kernel_size // 2)`` (the default; ``"same"`` at stride 1):
        the output is then ``ceil(H / stride) x ceil(W / stride)``, the size the atom
        generator (3x3 convs, padding 1, the layer's stride) produces.
    num_atoms : int
        ``M``, atoms per pixel (default 6).
    num_bases : int, optional
        Bases per scale (at most 8); default ``min(num_atoms, 8)``. ``T = (k//2) * num_bases``.
    bias : bool
    hidden_channels : int, optional
        Generator width; default ``max(64, M*T // 2)`` as the authors' code.
    momentum, eps : float
        Generator batch-norm settings.
    dtype : float32 or float64
    seed, rng : int or numpy.random.Generator, optional

    Params
    ------
    coeff (O, C, M), bias (O,), gen1_weight (hidden, C, 3, 3), bn1_weight, bn1_bias
    (hidden,), gen2_weight (M*T, hidden, 3, 3), bn2_weight, bn2_bias (M*T,). Buffers:
    bases (T, k, k), bn1/bn2 running_mean and running_var.

    Input ``(N, C, H, W)`` -> ``(N, O, Ho, Wo)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride=1, padding=None,
                 dilation=1, *, num_atoms: int = 6, num_bases: int | None = None, bias: bool = True,
                 hidden_channels: int | None = None, momentum: float = 0.1, eps: float = 1e-5,
                 dtype=np.float32, seed: int | None = None, rng: np.random.Generator | None = None):
        super().__init__()
        C = _args.positive_int("in_channels", in_channels)
        O = _args.positive_int("out_channels", out_channels)
        k = _args.positive_int("kernel_size", kernel_size)
        if k < 3 or k % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 3, got {kernel_size!r}")
        M = _args.positive_int("num_atoms", num_atoms)
        nb = min(M, 8) if num_bases is None else _args.positive_int("num_bases", num_bases)
        if nb > 8:
            raise ValueError(f"num_bases must be at most 8 (the 3x3 scale has 8 bases), got {nb}")
        T = (k // 2) * nb
        hid = (max(64, M * T // 2) if hidden_channels is None
               else _args.positive_int("hidden_channels", hidden_channels))
        dh, dw = _args.pair("dilation", dilation, 1)
        sh, sw = _args.pair("stride", stride, 1)
        pad = (dh * (k // 2), dw * (k // 2))
        if isinstance(padding, str) and padding == "same" and (sh, sw) == (1, 1):
            padding = pad
        if padding is not None and (isinstance(padding, str) or _args.pair("padding", padding, 0) != pad):
            raise ValueError(f"padding must be dilation*(kernel_size//2) = {pad} (or None) so the atoms "
                             f"match the output size, got {padding!r}")
        self.momentum = _args.unit_interval("momentum", momentum)
        self.eps = _args.positive_float("eps", eps)
        dt = _args.float_dtype("dtype", dtype)
        self.in_channels, self.out_channels, self.kernel_size = C, O, k
        self.num_atoms, self.num_bases, self.hidden_channels = M, nb, hid
        self.geo = dict(stride=(sh, sw), padding=pad, dilation=(dh, dw))
        r = make_rng(seed, rng)
        self.add_param("coeff", uniform_init(r, (O, C, M), C * M, dt))
        if _args.flag("bias", bias):
            self.add_param("bias", uniform_init(r, (O,), C * M, dt))
        self.add_param("gen1_weight", uniform_init(r, (hid, C, 3, 3), C * 9, dt))
        self.add_param("gen2_weight", uniform_init(r, (M * T, hid, 3, 3), hid * 9, dt))
        for b, width in (("bn1", hid), ("bn2", M * T)):
            self.add_param(f"{b}_weight", np.ones(width, dtype=dt))
            self.add_param(f"{b}_bias", np.zeros(width, dtype=dt))
            self.add_buffer(f"{b}_running_mean", np.zeros(width, dtype=dt))
            self.add_buffer(f"{b}_running_var", np.ones(width, dtype=dt))
        self.add_buffer("bases", fourier_bessel_bases(k, nb).astype(dt))

    def name(self) -> str:
        return (f"AtomConv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"num_atoms={self.num_atoms})")

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``(N, C, H, W) -> (N, O, Ho, Wo)``."""
        _args.check_arrays({"x": x, "coeff": self.coeff})
        _args.check_ndim("x", x, 4, "(N, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels, but {self.name()} expects {self.in_channels}")
        k, M = self.kernel_size, self.num_atoms
        be = array_backend(x)
        T = self.bases.shape[0]
        B = be.astype(self.bases, x.dtype).reshape(T, k * k)            # (T, k*k)
        # generator: conv3x3_s -> BN -> tanh -> conv3x3 -> BN -> tanh
        g1, pb_c1 = conv2d.vjp(x, self.gen1_weight, None, stride=self.geo["stride"], padding=1)
        g1n, pb_b1 = inner_batch_norm(self, "bn1", g1)
        h1, pb_t1 = tanh.vjp(g1n)
        g2, pb_c2 = conv2d.vjp(h1, self.gen2_weight, None, padding=1)
        g2n, pb_b2 = inner_batch_norm(self, "bn2", g2)
        beta, pb_t2 = tanh.vjp(g2n)                               # (N, M*T, Ho, Wo)
        N, _, Ho, Wo = beta.shape
        atoms = be.matmul_tn(B, be.contiguous(beta).reshape(N * M, T, Ho * Wo))   # (N*M, k*k, P)
        atoms = atoms.reshape(N, M, k, k, Ho, Wo)
        y, pb_ac = atom_conv2d.vjp(x, atoms, self.coeff, self._params.get("bias"), **self.geo)

        def pullback(dy):
            dx, datoms, dcoeff, dbias = pb_ac(dy)
            dbeta = be.matmul(B, be.contiguous(datoms).reshape(N * M, k * k, Ho * Wo)).reshape(beta.shape)
            dg2, dgam2, dbet2 = pb_b2(pb_t2(dbeta)[0])[:3]
            dh1, dw2, _ = pb_c2(dg2)
            dg1, dgam1, dbet1 = pb_b1(pb_t1(dh1)[0])[:3]
            dxg, dw1, _ = pb_c1(dg1)
            grads = {"coeff": dcoeff, "bias": dbias, "gen1_weight": dw1, "gen2_weight": dw2,
                     "bn1_weight": dgam1, "bn1_bias": dbet1, "bn2_weight": dgam2, "bn2_bias": dbet2}
            return be.add(dx, dxg), grads

        self._cache = (pullback, y.shape, y.dtype)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Gradient w.r.t. x (main path plus generator); adds every parameter gradient."""
        pullback, shape, dtype = self.cache()
        _args.check_arrays({"dy": dy})
        if dy.dtype != dtype:
            raise TypeError(f"dy must have the output's dtype {np.dtype(dtype)}, got {dy.dtype}")
        if tuple(dy.shape) != tuple(shape):
            raise ValueError(f"dy must have the output's shape {tuple(shape)}, got {tuple(dy.shape)}")
        dx, grads = pullback(array_backend(dy).contiguous(dy))
        for name, g in grads.items():
            if name in self._params:
                self.accumulate(name, g)
        return dx
