"""AtomConv2d: ACDA's per-pixel dynamic filter atoms with their generator (docs/math.md, ACDA).

Forward, with ``B = (k//2) * num_bases`` fixed bases::

    h1   = tanh(BN1(conv3x3_s(x, gen1_weight)))          (N, hidden, Ho, Wo)   stride s, padding 1
    beta = tanh(BN2(conv3x3(h1, gen2_weight)))           (N, M*B, Ho, Wo)      padding 1
    atoms[n, m, :, :, i, j] = sum_b beta[n, m*B + b, i, j] * bases[b]    (N, M, k, k, Ho, Wo)
    y    = atom_conv2d(x, atoms, coeff, bias, stride=s, padding=d*(k//2), dilation=d)

``bases (B, k, k)`` are the fixed multi-scale Fourier-Bessel bases
(:func:`dynconv_np.bases.fourier_bessel_bases`, a buffer). The generator's 3x3 convs at
padding 1 (the first at the layer's stride) give exactly the main convolution's output
size. The backward runs the same chain in reverse: the atoms' gradient goes to ``beta``
through the bases, then through tanh, BN and the convs, and the generator's input
gradient is added to the main path's ``dx``. Host or device arrays: the bases product is
the batched :func:`dynconv_np.ops.linalg.matmul`, the batch norms are ``BatchNorm2d``
children ``bn1`` and ``bn2``.
"""

from __future__ import annotations

import numpy as np

from .. import _args
from .. import arrays as xp
from ..bases import fourier_bessel_bases
from ..ops import atom_conv2d, conv2d, tanh
from ..ops.linalg import matmul
from .compose import prefixed
from .init import make_rng, uniform_init
from .layers import BatchNorm2d, ConvLayer, conv_config

__all__ = ["AtomConv2d"]


class AtomConv2d(ConvLayer):
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
        Bases per scale (at most 8); default ``min(num_atoms, 8)``; ``B = (k//2) * num_bases``
        bases in all.
    bias : bool
    hidden_channels : int, optional
        Generator width; default ``max(64, M*B // 2)`` as the authors' code. The generator
        holds most of the layer's parameters: at the default width a 16 -> 32 layer has
        about 7 times the parameters of ``Conv2d(16, 32, 3)`` (a 32 -> 32 one about 5
        times). Lower it (e.g. 8 or 16) for a comparison at (nearly) equal parameters.
    momentum, eps : float
        Generator batch-norm settings.
    dtype : float32 or float64
    seed, rng : int or numpy.random.Generator, optional

    Params
    ------
    coeff (O, C, M), bias (O,), gen1_weight (hidden, C, 3, 3), gen2_weight (M*B, hidden, 3, 3);
    children ``bn1`` (``BatchNorm2d(hidden)``) and ``bn2`` (``BatchNorm2d(M*B)``). Buffer:
    bases (B, k, k).

    Input ``(N, C, H, W)`` -> ``(N, O, Ho, Wo)``. Routing record (:meth:`routing`):
    ``atoms (N, M, k, k, Ho, Wo)``. Training needs more than one value per channel in the
    generator's batch norms (``N*Ho*Wo >= 2``); else a ``ValueError`` names the layer.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride=1, padding=None,
                 dilation=1, *, num_atoms: int = 6, num_bases: int | None = None, bias: bool = True,
                 hidden_channels: int | None = None, momentum: float = 0.1, eps: float = 1e-5,
                 dtype=np.float32, seed: int | None = None, rng: np.random.Generator | None = None):
        super().__init__()
        k = _args.positive_int("kernel_size", kernel_size)
        if k < 3 or k % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 3, got {kernel_size!r}")
        M = _args.positive_int("num_atoms", num_atoms)
        nb = min(M, 8) if num_bases is None else _args.positive_int("num_bases", num_bases)
        if nb > 8:
            raise ValueError(f"num_bases must be at most 8 (the 3x3 scale has 8 bases), got {nb}")
        B = (k // 2) * nb
        hid = (max(64, M * B // 2) if hidden_channels is None
               else _args.positive_int("hidden_channels", hidden_channels))
        dh, dw = _args.pair("dilation", dilation, 1)
        sh, sw = _args.pair("stride", stride, 1)
        pad = (dh * (k // 2), dw * (k // 2))
        if isinstance(padding, str) and padding == "same" and (sh, sw) == (1, 1):
            padding = pad
        if padding is not None and (isinstance(padding, str) or _args.pair("padding", padding, 0) != pad):
            raise ValueError(f"padding must be dilation*(kernel_size//2) = {pad} (or None) so the atoms "
                             f"match the output size, got {padding!r}")
        self.config = cfg = conv_config(in_channels, out_channels, k, (sh, sw), pad, (dh, dw), bias=bias)
        momentum = _args.unit_interval("momentum", momentum)
        eps = _args.positive_float("eps", eps)
        dt = _args.float_dtype("dtype", dtype)
        C, O = cfg.in_channels, cfg.out_channels
        self.num_atoms, self.num_bases, self.hidden_channels = M, nb, hid
        r = make_rng(seed, rng)
        self.add_param("coeff", uniform_init(r, (O, C, M), C * M, dt))
        if cfg.bias:
            self.add_param("bias", uniform_init(r, (O,), C * M, dt))
        self.add_param("gen1_weight", uniform_init(r, (hid, C, 3, 3), C * 9, dt))
        self.add_param("gen2_weight", uniform_init(r, (M * B, hid, 3, 3), hid * 9, dt))
        self.add_child("bn1", BatchNorm2d(hid, eps, momentum, dtype=dt))
        self.add_child("bn2", BatchNorm2d(M * B, eps, momentum, dtype=dt))
        self.add_buffer("bases", fourier_bessel_bases(k, nb).astype(dt))

    def forward_pullback(self, x: np.ndarray):
        """``(N, C, H, W) -> (N, O, Ho, Wo)``: the atom generator, then the atom convolution."""
        self._check_x(x)
        self._check_batch_stats(x, "its atom generator")
        k, M = self.config.kernel_size[0], self.num_atoms
        B = self.bases.shape[0]
        bases = xp.astype(self.bases, x.dtype).reshape(B, k * k)                   # (B, k*k)
        # generator: conv3x3_s -> BN -> tanh -> conv3x3 -> BN -> tanh
        g1, pb_c1 = conv2d.vjp(x, self.gen1_weight, None, stride=self.config.stride, padding=1)
        g1n, pb_b1 = self.bn1.forward_pullback(g1)
        h1, pb_t1 = tanh.vjp(g1n)
        g2, pb_c2 = conv2d.vjp(h1, self.gen2_weight, None, padding=1)
        g2n, pb_b2 = self.bn2.forward_pullback(g2)
        beta, pb_t2 = tanh.vjp(g2n)                                               # (N, M*B, Ho, Wo)
        N, _, Ho, Wo = beta.shape
        atoms, pb_at = matmul.vjp(bases, xp.contiguous(beta).reshape(N * M, B, Ho * Wo), ta=True)
        atoms = atoms.reshape(N, M, k, k, Ho, Wo)
        self.keep_routing(atoms=atoms)
        y, pb_ac = atom_conv2d.vjp(x, atoms, self.coeff, self._params.get("bias"), **self.config.geo)

        def pullback(dy):
            dx, datoms, dcoeff, dbias = pb_ac(dy)
            _, dbeta = pb_at(xp.contiguous(datoms).reshape(N * M, k * k, Ho * Wo))   # (N*M, B, Ho*Wo)
            dg2, grads2 = pb_b2(pb_t2(dbeta.reshape(beta.shape))[0])
            dh1, dw2, _ = pb_c2(dg2)
            dg1, grads1 = pb_b1(pb_t1(dh1)[0])
            dxg, dw1, _ = pb_c1(dg1)
            grads = {"coeff": dcoeff, "bias": dbias, "gen1_weight": dw1, "gen2_weight": dw2,
                     **prefixed("bn1", grads1), **prefixed("bn2", grads2)}
            return xp.add(dx, dxg), grads

        return y, pullback
