"""DDF's filter normalisation on the device (the contract is
:meth:`dynconv_np.backends.interface.KernelAPI.filter_norm`).

One thread per element written, each summing in a fixed order, no atomics: the
statistics of a filter (one thread per filter, its taps in order), then one thread per
entry of the result; a gain's gradient has one thread per ``(g, t)``, summing over the
filters that use it in order. Scalars arrive in the arrays' dtype (a float32 call stays
in float32).
"""

from __future__ import annotations

import math

from .array import contiguous, empty
from .index import split, unravel3
from .launch import launch, per_element


@per_element
def _stats(r, z, mean, inv, std, c):
    # Filter r = (a, b): its mean, unbiased standard deviation and 1/(std + eps), taps in order.
    zero, one, taps, taps1, eps = c
    a, b = split(r, z.shape[2])
    acc = zero
    for t in range(z.shape[1]):
        acc += z[a, t, b]
    mu = acc / taps
    ss = zero
    for t in range(z.shape[1]):
        d = z[a, t, b] - mu
        ss += d * d
    s = math.sqrt(ss / taps1)
    mean[a, b] = mu
    std[a, b] = s
    inv[a, b] = one / (s + eps)


@per_element
def _apply(e, z, mean, inv, gain, y):
    a, t, b = unravel3(e, z.shape[1], z.shape[2])
    y[a, t, b] = (z[a, t, b] - mean[a, b]) * inv[a, b] * gain[a % gain.shape[0], t]


@per_element
def _tap_sums(r, z, dy, gain, mean, inv, gsum, proj, zero):
    # Filter r: the sums of g = gain * dy and of g * yhat over its taps, in order.
    a, b = split(r, z.shape[2])
    s1 = zero
    s2 = zero
    for t in range(z.shape[1]):
        gd = gain[a % gain.shape[0], t] * dy[a, t, b]
        s1 += gd
        s2 += gd * ((z[a, t, b] - mean[a, b]) * inv[a, b])
    gsum[a, b] = s1
    proj[a, b] = s2


@per_element
def _dz(e, z, dy, gain, mean, inv, std, gsum, proj, dz, c):
    zero, one, taps, taps1, eps = c
    a, t, b = unravel3(e, z.shape[1], z.shape[2])
    s = std[a, b]
    # where s = 0 the filter is constant, yhat = 0 and the term vanishes
    term = proj[a, b] / (s * taps1) if s > zero else zero
    yhat = (z[a, t, b] - mean[a, b]) * inv[a, b]
    gd = gain[a % gain.shape[0], t] * dy[a, t, b]
    dz[a, t, b] = (gd - gsum[a, b] / taps) * inv[a, b] - yhat * term


@per_element
def _dgain(e, z, dy, mean, inv, dgain, zero):
    # dgain[g, t]: over the filters a = g, g + G, ... and their pixels b, in order.
    g, t = split(e, dgain.shape[1])
    acc = zero
    for a in range(g, z.shape[0], dgain.shape[0]):
        for b in range(z.shape[2]):
            acc += dy[a, t, b] * ((z[a, t, b] - mean[a, b]) * inv[a, b])
    dgain[g, t] = acc


def _statistics(z, eps: float):
    """``(mean, inv, std, constants)`` of every filter of z (A, T, B): (A, B) each."""
    A, T, B = z.shape
    t = z.dtype.type
    c = (t(0), t(1), t(T), t(T - 1), t(eps))
    mean, inv, std = (empty((A, B), z.dtype) for _ in range(3))
    launch(_stats, A * B, z, mean, inv, std, c)
    return mean, inv, std, c


def filter_norm(z, gain, eps: float):
    """``y[a, :, b] = gain[a % G] * (z[a, :, b] - mean) / (std + eps)`` over the taps, on the device.

    Parameters
    ----------
    z : device array (A, T, B)
        ``A*B`` filters of ``T >= 2`` taps along axis 1.
    gain : device array (G, T), G dividing A
    eps : float

    Returns
    -------
    y : device array (A, T, B)
    """
    z, gain = contiguous(z), contiguous(gain)
    mean, inv, _, _ = _statistics(z, eps)
    y = empty(z.shape, z.dtype)
    launch(_apply, z.shape[0] * z.shape[1] * z.shape[2], z, mean, inv, gain, y)
    return y


def filter_norm_backward(z, gain, dy, eps: float):
    """Gradients of :func:`filter_norm` for the cotangent dy (A, T, B): ``(dz (A, T, B),
    dgain (G, T))``, on the device."""
    z, gain, dy = contiguous(z), contiguous(gain), contiguous(dy)
    A, T, B = z.shape
    mean, inv, std, c = _statistics(z, eps)
    gsum, proj = empty((A, B), z.dtype), empty((A, B), z.dtype)
    launch(_tap_sums, A * B, z, dy, gain, mean, inv, gsum, proj, c[0])
    dz = empty(z.shape, z.dtype)
    launch(_dz, A * T * B, z, dy, gain, mean, inv, std, gsum, proj, dz, c)
    dgain = empty(gain.shape, z.dtype)
    launch(_dgain, gain.shape[0] * T, z, dy, mean, inv, dgain, c[0])
    return dz, dgain
