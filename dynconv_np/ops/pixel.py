"""Per-pixel depthwise dynamic convolutions: Involution, DDF and the 1-D form (docs/math.md, "DDF" and "Involution").

Each output pixel has its own depthwise filter of ``T = kh*kw`` taps; ``X_t[n, c, i, j]``
is the zero-padded input at tap ``t`` of pixel ``(i, j)``::

    involution2d   y[n, c, i, j] = sum_t kernel[n, c // (C/G), t, i, j] X_t[n, c, i, j]
    ddf_conv2d     y[n, c, i, j] = sum_t F[n, c, t, i, j] X_t[n, c, i, j],
                   F = spatial[n, t, i, j] * channel[n, c, t]     (combine="add": +)
    involution1d   involution2d on (N, C, 1, L) with a (1, k) window

All run on the backend's tap engine (``be.taps_*``), which reads x at the taps and never
builds the unfolded input (``T`` times x) nor, for DDF, the per-pixel filter ``F``
(``C`` times the spatial filter): the channel filter enters as the engine's tap scale.

- Involution: ``filt = kernel (N, G, T, Ho, Wo)``, ``M = 1``, ``cdiv = C // G``.
- DDF, product form: ``filt = spatial`` shared by all channels (``cdiv = C``) times the
  tap scale ``channel``; ``dspatial`` is the engine's filter gradient under the scale,
  ``dchannel`` its scale gradient.
- DDF, sum form: the spatial pass plus a per-sample depthwise convolution with
  ``channel[n]``, the same engine with a pixel-constant filter of ones under the scale
  (one more pass over x; the conv template would build the column buffer, ``T`` times x
  per chunk, and run C tiny GEMMs per sample).

Backward, with ``dY`` the cotangent (the engine's gathers, no atomics)::

    dX_t = dY * F  gathered back at the taps       dkernel[n, g, t] = sum_{c in g} dY X_t
    dspatial[n, t] = sum_c dY * channel[n, c, t] X_t  ("add": sum_c dY X_t)
    dchannel[n, c, t] = sum_{i,j} dY spatial[n, t] X_t  ("add": sum_{i,j} dY X_t)

Two helpers for the layers' filter-generating branches: :func:`centre_pool` (the input
at each output pixel's centre tap, or its mean over a block there: RedNet's average
pooling) and :func:`filter_norm` (DDF's standardisation over the taps).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import _args, backends
from .._op import op


def _layout(what: str, N: int, g) -> str:
    return f"{what} for x's batch N={N} and output size {g.Ho}x{g.Wo}"


def _involution(be, x_, k_, g, G):
    """``(y, pullback)`` of the involution of x_ (N, C, H, W) with kernel k_ (N, G, T, Ho, Wo),
    both C-contiguous; ``pullback(dy_)`` takes a checked, C-contiguous cotangent."""
    cdiv = g.C // G
    y = be.taps_forward(x_, k_, g, 1, cdiv)                               # (N, C, Ho, Wo)

    def pullback(dy_):
        return be.taps_backward_input(k_, dy_, g, 1, cdiv), be.taps_backward_filter(x_, dy_, g, 1, cdiv)

    return y, pullback


@op("x", "kernel")
def involution2d(x: np.ndarray, kernel: np.ndarray, groups: int, stride=1, padding=0, dilation=1,
                 kernel_size=None):
    """Involution: per-pixel kernels shared by the channels of a group.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    kernel : ndarray (N, groups, kh*kw, Ho, Wo)
        One kernel per sample, group and output pixel; taps ``t = u*kw + v``.
    groups : int
        Divides C; channel ``c`` uses kernel group ``c // (C // groups)``.
    stride, dilation : int or (int, int)
    padding : int, (int, int), "valid" or "same"
    kernel_size : int or (int, int), optional
        The window; by default the square one with ``kh*kw`` taps.

    Returns
    -------
    y : ndarray (N, C, Ho, Wo)
        ``y[n,c,i,j] = sum_{u,v} kernel[n, c // (C//groups), u*kw+v, i, j] *
        xpad[n, c, i*sh+u*dh, j*sw+v*dw]``.

    ``involution2d.vjp(...)`` returns ``(y, pullback)``; ``pullback(dy)`` gives
    ``(dx, dkernel)`` with the shapes of x and kernel.
    """
    _, device = _args.check_arrays({"x": x, "kernel": kernel})
    _args.check_ndim("x", x, 4, "(N, C, H, W)")
    _args.check_ndim("kernel", kernel, 5, "(N, groups, kh*kw, Ho, Wo)")
    _args.check_nonempty("x", x, (1,), "channel")
    N, C = x.shape[:2]
    G = _args.channel_groups(groups, C)
    kh, kw = _args.per_pixel_window("kernel", kernel.shape[2], kernel_size)
    g = _args.geometry(x.shape, kh, kw, stride, padding, dilation, kernel_name="kernel")
    _args.check_shape("kernel", kernel, (N, G, g.taps, g.Ho, g.Wo),
                      _layout(f"(N, groups, kh*kw, Ho, Wo) with groups={G}", N, g))
    be = backends.get(device)

    y, pb = _involution(be, be.contiguous(x), be.contiguous(kernel), g, G)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        return pb(be.contiguous(dy))

    return y, pullback


@op("x", "kernel")
def involution1d(x: np.ndarray, kernel: np.ndarray, groups: int, stride: int = 1, padding=0, dilation: int = 1):
    """Involution over sequences, the dynamic convolution of sequence models.

    Parameters
    ----------
    x : ndarray (N, C, L)
    kernel : ndarray (N, groups, k, Lo)
        One kernel of k taps per sample, group (head) and output step. Softmax-normalised
        over the k taps, this is Wu et al.'s dynamic convolution (heads = groups).
    groups : int
        Divides C; channel ``c`` uses kernel group ``c // (C // groups)``.
    stride, dilation : int
    padding : int, "valid" or "same"

    Returns
    -------
    y : ndarray (N, C, Lo)
        ``y[n,c,l] = sum_j kernel[n, c // (C//groups), j, l] * xpad[n, c, l*s + j*d]``,
        ``Lo = (L + 2*padding - dilation*(k-1) - 1) // stride + 1``.

    ``involution1d.vjp(...)`` returns ``(y, pullback)``; ``pullback(dy)`` gives
    ``(dx, dkernel)``. It is :func:`involution2d` on the view ``(N, C, 1, L)`` with a
    ``(1, k)`` window: the same engine.
    """
    _, device = _args.check_arrays({"x": x, "kernel": kernel})
    _args.check_ndim("x", x, 3, "(N, C, L)")
    _args.check_ndim("kernel", kernel, 4, "(N, groups, k, Lo)")
    _args.check_nonempty("x", x, (1,), "channel")
    _args.check_nonempty("kernel", kernel, (2,), "tap (k)")
    N, C, L = x.shape
    G = _args.channel_groups(groups, C)
    g = _args.sequence_geometry(x.shape, kernel.shape[2], stride, padding, dilation)
    _args.check_shape("kernel", kernel, (N, G, g.taps, g.Wo),
                      f"(N, groups, k, Lo) with groups={G} for x's batch N={N} and output length {g.Wo}")
    be = backends.get(device)

    x4 = be.contiguous(x).reshape(N, C, 1, L)
    k5 = be.contiguous(kernel).reshape(N, G, g.taps, 1, g.Wo)
    y4, pb = _involution(be, x4, k5, g, G)
    y = y4.reshape(N, C, g.Wo)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dx, dk = pb(be.contiguous(dy).reshape(N, C, 1, g.Wo))
        return dx.reshape(N, C, L), dk.reshape(N, G, g.taps, g.Wo)

    return y, pullback


def _ones_filter(be, g, dtype):
    """The pixel-constant filter of ones (N, 1, T, Ho, Wo): DDF's sum form applies its
    channel filter through it as the engine's tap scale."""
    return be.fill(be.empty((g.N, 1, g.taps, g.Ho, g.Wo), dtype), 1.0)


@op("x", "spatial", "channel")
def ddf_conv2d(x: np.ndarray, spatial: np.ndarray, channel: np.ndarray, stride=1, padding=0, dilation=1,
               combine: str = "mul", kernel_size=None):
    """Decoupled dynamic filter convolution (depthwise, per pixel), without the per-pixel filter.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    spatial : ndarray (N, kh*kw, Ho, Wo)
        The spatial filter: per sample and pixel, shared by the channels.
    channel : ndarray (N, C, kh*kw)
        The channel filter: per sample and channel, shared by the pixels.
    stride, dilation : int or (int, int)
    padding : int, (int, int), "valid" or "same"
    combine : "mul" or "add"
        ``F[n,c,t,i,j] = spatial[n,t,i,j] * channel[n,c,t]`` (or ``+``).
    kernel_size : int or (int, int), optional
        The window; by default the square one with ``kh*kw`` taps.

    Returns
    -------
    y : ndarray (N, C, Ho, Wo)
        ``y[n,c,i,j] = sum_t F[n,c,t,i,j] * xpad[n, c, tap t of (i, j)]``.

    ``ddf_conv2d.vjp(...)`` returns ``(y, pullback)``; ``pullback(dy)`` gives
    ``(dx, dspatial, dchannel)`` with the shapes of the inputs.
    """
    dtype, device = _args.check_arrays({"x": x, "spatial": spatial, "channel": channel})
    _args.check_ndim("x", x, 4, "(N, C, H, W)")
    _args.check_ndim("spatial", spatial, 4, "(N, kh*kw, Ho, Wo)")
    _args.check_ndim("channel", channel, 3, "(N, C, kh*kw)")
    _args.check_nonempty("x", x, (1,), "channel")
    combine = _args.combine_mode(combine)
    N, C = x.shape[:2]
    kh, kw = _args.per_pixel_window("spatial", spatial.shape[1], kernel_size)
    g = _args.geometry(x.shape, kh, kw, stride, padding, dilation, kernel_name="spatial")
    _args.check_shape("spatial", spatial, (N, g.taps, g.Ho, g.Wo), _layout("(N, kh*kw, Ho, Wo)", N, g))
    _args.check_shape("channel", channel, (N, C, g.taps), f"(N, C, kh*kw) for x's N={N}, C={C} and "
                      f"spatial's {g.taps} taps")
    be = backends.get(device)

    x_ = be.contiguous(x)
    S = be.contiguous(spatial).reshape(N, 1, g.taps, g.Ho, g.Wo)         # one filter for all C channels
    Ch = be.contiguous(channel)                                            # (N, C, T): the tap scale
    if combine == "mul":
        y = be.taps_forward(x_, S, g, 1, C, scale=Ch)
    else:
        y = be.taps_forward(x_, S, g, 1, C)
        be.add_into(y, be.taps_forward(x_, _ones_filter(be, g, dtype), g, 1, C, scale=Ch))

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dy_ = be.contiguous(dy)
        if combine == "mul":
            dx = be.taps_backward_input(S, dy_, g, 1, C, scale=Ch)
            dS = be.taps_backward_filter(x_, dy_, g, 1, C, scale=Ch)
            dCh = be.taps_backward_scale(x_, S, dy_, g, 1, C)
        else:
            ones = _ones_filter(be, g, dtype)
            dx = be.taps_backward_input(S, dy_, g, 1, C)
            be.add_into(dx, be.taps_backward_input(ones, dy_, g, 1, C, scale=Ch))
            dS = be.taps_backward_filter(x_, dy_, g, 1, C)
            dCh = be.taps_backward_scale(x_, ones, dy_, g, 1, C)
        return dx, dS.reshape(N, g.taps, g.Ho, g.Wo), dCh

    return y, pullback


# ----------------------------------------------------------------------------- branch helpers
@op("x")
def centre_pool(x: np.ndarray, kernel_size, stride=1, padding=0, dilation=1, size=1):
    """The input a per-pixel filter is generated from, at every output pixel of a window.

    For the window (`kernel_size`, `stride`, `padding`, `dilation`) of a per-pixel op,
    the mean of x over the ``size`` block whose top-left entry is the output pixel's
    centre tap ``(kh//2, kw//2)``; entries outside x count as zero. ``size=1`` is x at
    the centre taps (DDF's 1x1 branch at the op's stride); ``size=stride`` is RedNet's
    average pooling before the involution's kernel generation. With stride 1, size 1 and
    ``padding = dilation*(k//2)`` it is x itself.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    kernel_size : int or (int, int)
        Odd sizes.
    stride, dilation : int or (int, int)
    padding : int, (int, int), "valid" or "same"
    size : int or (int, int)

    Returns
    -------
    p : ndarray (N, C, Ho, Wo)
        pullback -> ``(dx,)``.
    """
    dtype, device = _args.check_arrays({"x": x})
    _args.check_ndim("x", x, 4, "(N, C, H, W)")
    kh, kw = _args.kernel_pair("kernel_size", kernel_size)
    _args.check_odd_kernel("kernel_size", kh, kw)
    ah, aw = _args.pair("size", size, 1)
    g = _args.geometry(x.shape, kh, kw, stride, padding, dilation, kernel_name="kernel_size")
    # the block as a window of its own: its top-left tap is the centre tap (a window
    # that may start inside x, i.e. a negative padding)
    gp = replace(g, kh=ah, kw=aw, ph=g.ph - g.dh * (kh // 2), pw=g.pw - g.dw * (kw // 2), dh=1, dw=1)
    be = backends.get(device)

    filt = be.fill(be.empty((g.N, 1, gp.taps, g.Ho, g.Wo), dtype), 1.0 / gp.taps)
    p = be.taps_forward(be.contiguous(x), filt, gp, 1, g.C)

    def pullback(dp):
        _args.check_cotangent(dp, p)
        return (be.taps_backward_input(filt, be.contiguous(dp), gp, 1, g.C),)

    return p, pullback


@op("z", "gain")
def filter_norm(z: np.ndarray, gain: np.ndarray, eps: float = 1e-10):
    """DDF's filter normalisation: each filter standardised over its taps, then scaled.

    Parameters
    ----------
    z : ndarray (A, T, B)
        ``A*B`` filters of ``T >= 2`` taps along axis 1 (the spatial filter as
        ``(N, T, Ho*Wo)``, the channel filter as ``(N*C, T, 1)``).
    gain : ndarray (G, T)
        G divides A; filter row ``a`` is scaled by ``gain[a % G]``.
    eps : float
        Added to the standard deviation, as the authors' code.

    Returns
    -------
    y : ndarray (A, T, B)
        ``y[a,:,b] = gain[a % G] * (z[a,:,b] - mean) / (std + eps)``, the unbiased standard
        deviation (divisor ``T - 1``). pullback -> ``(dz, dgain)``.
    """
    _, device = _args.check_arrays({"z": z, "gain": gain})
    _args.check_ndim("z", z, 3, "(A, T, B)")
    _args.check_ndim("gain", gain, 2, "(G, T)")
    A, T, _ = z.shape
    if T < 2:
        raise ValueError(f"z must have at least 2 taps along axis 1 (an unbiased std), got shape {tuple(z.shape)}")
    G = gain.shape[0]
    if G < 1 or A % G or gain.shape[1] != T:
        raise ValueError(f"gain must have shape (G, {T}) with G dividing z's {A} rows, got {tuple(gain.shape)}")
    eps = _args.positive_float("eps", eps)
    be = backends.get(device)

    z_, gain_ = be.contiguous(z), be.contiguous(gain)
    y = be.filter_norm(z_, gain_, eps)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        return be.filter_norm_backward(z_, gain_, be.contiguous(dy), eps)

    return y, pullback
