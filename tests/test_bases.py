"""Fourier-Bessel bases: shapes, support, nesting of scales, normalisation, determinism."""

import numpy as np
import pytest
from scipy import special

from dynconv_np.bases import fourier_bessel_bases, fourier_bessel_single


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("M", [1, 3, 6, 8])
def test_multiscale_shape(k, M):
    B = fourier_bessel_bases(k, M)
    assert B.shape == ((k // 2) * M, k, k)
    assert B.dtype == np.float64
    assert np.all(np.isfinite(B))


@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_single_scale_count_support_and_norm(k):
    B = fourier_bessel_single(k)
    assert B.shape == (k * k - 1, k, k)
    R = k // 2 + 0.5
    off = np.arange(-(k // 2), k // 2 + 1) / R
    r = np.hypot(*np.meshgrid(off, off, indexing="ij"))
    assert np.all(B[:, r >= 1] == 0)                      # zero outside the unit disk
    assert np.isclose(np.mean(np.sum(B * B, axis=(1, 2))), 1.0)   # one global normalisation


def test_first_bases_of_3x3():
    """Lowest frequencies first: the radial J_0 basis, then the J_1 cos/sin pair."""
    B = fourier_bessel_single(3)
    b0 = B[0]
    assert np.allclose(b0, b0.T) and np.allclose(b0, b0[::-1, ::-1])    # rotation invariant
    assert b0[1, 1] > b0[0, 1] > b0[0, 0] > 0
    # J_1 pair: antisymmetric, one along each axis, same energy
    assert np.allclose(B[1], -B[1][:, ::-1]) and np.allclose(B[2], -B[2][::-1, :])
    assert np.isclose(np.sum(B[1] ** 2), np.sum(B[2] ** 2))
    # the radial profile is J_0(R_01 r) / |J_1(R_01)| up to the global constant
    z = special.jn_zeros(0, 1)[0]
    ratio = special.jv(0, z * 1 / 1.5) / special.jv(0, 0.0)
    assert np.isclose(b0[0, 1] / b0[1, 1], ratio)


@pytest.mark.parametrize("M", [1, 4, 6])
def test_scales_are_nested(M):
    B3, B5, B7 = (fourier_bessel_bases(k, M) for k in (3, 5, 7))
    np.testing.assert_array_equal(B5[:M, 1:4, 1:4], B3)
    assert np.all(B5[:M, 0] == 0) and np.all(B5[:M, :, 0] == 0)     # zero-padded border
    np.testing.assert_array_equal(B7[:2 * M, 1:6, 1:6], B5)
    np.testing.assert_array_equal(B5[M:], fourier_bessel_single(5, M))


def test_deterministic_cached_and_read_only():
    a = fourier_bessel_bases(5, 6)
    b = fourier_bessel_bases(5, 6)
    np.testing.assert_array_equal(a, b)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0, 0] = 1.0
    c = a.copy()
    c[0] = 0                                              # a copy is the caller's to change
    np.testing.assert_array_equal(fourier_bessel_bases(5, 6), b)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        fourier_bessel_bases(4, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        fourier_bessel_bases(1, 2)
    with pytest.raises(TypeError, match="kernel_size"):
        fourier_bessel_bases(3.0, 2)
    with pytest.raises(ValueError, match="num_bases"):
        fourier_bessel_bases(5, 9)
    with pytest.raises(ValueError, match="num_bases"):
        fourier_bessel_single(3, 0)
