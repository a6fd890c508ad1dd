"""Fourier-Bessel bases for ACDA atoms (docs/math.md; the DCFNet construction).

Single scale, for a kernel of radius ``L1`` (size ``k = 2*L1 + 1``): the grid points
``(y, x)`` with integer offsets in ``[-L1, L1]`` are scaled by ``R = L1 + 0.5`` so the
grid's circumscribed radius maps to 1. With ``(r, theta)`` the polar coordinates of a
point and ``R_kq`` the q-th positive zero of the Bessel function ``J_k``::

    psi_kq(r)  = J_k(R_kq r) / |J_{k+1}(R_kq)|        (r < 1; zero for r >= 1)
    k = 0:  psi_0q
    k > 0:  sqrt(2) cos(k theta) psi_kq  and  sqrt(2) sin(k theta) psi_kq

Zeros are kept up to ``pi * R * f`` (``f = 2`` if ``L1 < 2`` else ``1.5``) for angular
frequencies ``k <= 15``, sorted by ``R_kq`` (low frequencies first; ties broken by
``k`` then ``q``, the cosine before the sine), and the first ``k*k - 1`` bases are kept.
The set is divided by one global constant ``c = sqrt(mean_b sum_grid psi_b^2)``, so the
bases have unit mean squared norm.

Multi-scale (ACDA): the first ``M`` bases of each scale 3x3, 5x5, ..., kxk, zero-padded
(centred) to kxk and stacked smallest scale first: ``T = (k//2) * M`` bases. The 3x3
bases are therefore the first ``M`` bases of the 5x5 multi-scale set, and so on.

Everything is computed with :mod:`scipy.special` (``jn_zeros``, ``jv``) and cached;
the functions return read-only arrays.
"""

from __future__ import annotations

import functools

import numpy as np

#: Highest angular frequency considered (as in DCFNet).
MAX_ANGULAR_FREQUENCY = 15


def _check_kernel_size(kernel_size) -> int:
    if isinstance(kernel_size, (bool, np.bool_)) or not isinstance(kernel_size, (int, np.integer)):
        raise TypeError(f"kernel_size must be an int, got {kernel_size!r}")
    k = int(kernel_size)
    if k < 3 or k % 2 == 0:
        raise ValueError(f"kernel_size must be an odd int >= 3, got {kernel_size!r}")
    return k


def _check_num_bases(num_bases, limit: int) -> int:
    if isinstance(num_bases, (bool, np.bool_)) or not isinstance(num_bases, (int, np.integer)):
        raise TypeError(f"num_bases must be an int, got {num_bases!r}")
    if not 1 <= num_bases <= limit:
        raise ValueError(f"num_bases must be between 1 and {limit} for this kernel size, got {num_bases!r}")
    return int(num_bases)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=64)
def _single_scale(k: int) -> np.ndarray:
    # scipy is imported on first use: importing dynconv_np stays light
    from scipy import special

    L1 = k // 2
    R = L1 + 0.5
    f = 2.0 if L1 < 2 else 1.5
    bound = np.pi * R * f
    # Candidate (R_kq, k, q) triples below the frequency bound.
    freqs = []
    for ang in range(MAX_ANGULAR_FREQUENCY + 1):
        n = 1
        while True:
            zeros = special.jn_zeros(ang, n)
            if zeros[-1] > bound:
                break
            n += 1
        freqs.extend((float(z), ang, q) for q, z in enumerate(zeros[:-1], start=1))
    freqs.sort()
    offs = np.arange(-L1, L1 + 1) / R
    yy, xx = np.meshgrid(offs, offs, indexing="ij")
    r = np.hypot(xx, yy)
    theta = np.arctan2(yy, xx)
    inside = r < 1
    keep = k * k - 1
    psi = []
    for rkq, ang, _ in freqs:
        radial = np.where(inside, special.jv(ang, rkq * r) / abs(special.jv(ang + 1, rkq)), 0.0)
        if ang == 0:
            psi.append(radial)
        else:
            psi.append(np.sqrt(2) * np.cos(ang * theta) * radial)
            psi.append(np.sqrt(2) * np.sin(ang * theta) * radial)
        if len(psi) >= keep:
            break
    B = np.stack(psi[:keep])
    c = np.sqrt(np.mean(np.sum(B * B, axis=(1, 2))))
    return _frozen(B / c)


def fourier_bessel_single(kernel_size: int, num_bases: int | None = None) -> np.ndarray:
    """The single-scale Fourier-Bessel bases of a ``k x k`` kernel, lowest frequencies first.

    Parameters
    ----------
    kernel_size : int
        Odd, at least 3.
    num_bases : int, optional
        How many to return (at most ``k*k - 1``); all of them by default.

    Returns
    -------
    B : ndarray (num_bases, k, k), float64, read-only
    """
    k = _check_kernel_size(kernel_size)
    B = _single_scale(k)
    if num_bases is None:
        return B
    return B[:_check_num_bases(num_bases, k * k - 1)]


@functools.lru_cache(maxsize=64)
def _multi_scale(k: int, M: int) -> np.ndarray:
    out = np.zeros(((k // 2) * M, k, k))
    for s, ks in enumerate(range(3, k + 1, 2)):
        a = (k - ks) // 2
        out[s * M:(s + 1) * M, a:a + ks, a:a + ks] = _single_scale(ks)[:M]
    return _frozen(out)


def fourier_bessel_bases(kernel_size: int, num_bases: int) -> np.ndarray:
    """Multi-scale Fourier-Bessel bases: the first `num_bases` of each scale 3x3 ... kxk.

    Parameters
    ----------
    kernel_size : int
        Odd, at least 3.
    num_bases : int
        Bases per scale, ``M``; at most 8 (the 3x3 scale has ``3*3 - 1 = 8``).

    Returns
    -------
    B : ndarray (T, k, k), float64, read-only
        ``T = (k//2) * M``; rows ``s*M:(s+1)*M`` hold scale ``2*s + 3``, zero-padded
        (centred) to ``k x k``.
    """
    k = _check_kernel_size(kernel_size)
    M = _check_num_bases(num_bases, 8)
    return _multi_scale(k, M)
