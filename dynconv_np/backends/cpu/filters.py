"""DDF's filter normalisation on the CPU (the contract is
:meth:`dynconv_np.backends.interface.KernelAPI.filter_norm`).

The filters are small (``kh*kw`` taps each, one per pixel or one per channel): NumPy's
reductions along the tap axis do the work. They run in one thread in a fixed order, so
the results do not depend on any thread count.
"""

from __future__ import annotations

import numpy as np


def _standardised(z: np.ndarray, eps: float):
    """``(yhat, inv, std)``: z (A, T, B) standardised over axis 1; ``inv = 1/(std + eps)``."""
    T = z.shape[1]
    c = z - z.mean(axis=1, keepdims=True)
    std = np.sqrt((c * c).sum(axis=1, keepdims=True) / z.dtype.type(T - 1))   # (A, 1, B)
    inv = 1 / (std + z.dtype.type(eps))
    return c * inv, inv, std


def _per_row(a: np.ndarray, G: int) -> np.ndarray:
    """a (A, T, B) as (A//G, G, T, B): row ``a`` is ``[a // G, a % G]``."""
    A, T, B = a.shape
    return a.reshape(A // G, G, T, B)


def filter_norm(z: np.ndarray, gain: np.ndarray, eps: float) -> np.ndarray:
    """``y[a, :, b] = gain[a % G] * (z[a, :, b] - mean) / (std + eps)`` over the taps.

    Parameters
    ----------
    z : ndarray (A, T, B)
        ``A*B`` filters of ``T >= 2`` taps along axis 1.
    gain : ndarray (G, T), G dividing A
    eps : float

    Returns
    -------
    y : ndarray (A, T, B)
    """
    yhat, _, _ = _standardised(z, eps)
    G = gain.shape[0]
    return (_per_row(yhat, G) * gain[None, :, :, None]).reshape(z.shape)


def filter_norm_backward(z: np.ndarray, gain: np.ndarray, dy: np.ndarray, eps: float):
    """Gradients of :func:`filter_norm`: ``(dz (A, T, B), dgain (G, T))``.

    With ``yhat`` the standardised filter, ``g = gain * dy`` and ``s`` the standard deviation::

        dz = (g - mean(g)) / (s + eps) - yhat * sum(g * yhat) / ((T - 1) * s)

    (the second term vanishes where ``s = 0``, since yhat does); sums and means over the taps.
    """
    T = z.shape[1]
    G = gain.shape[0]
    yhat, inv, std = _standardised(z, eps)
    gdy = (_per_row(dy, G) * gain[None, :, :, None]).reshape(z.shape)
    proj = (gdy * yhat).sum(axis=1, keepdims=True)
    denom = np.where(std > 0, std * z.dtype.type(T - 1), z.dtype.type(1))
    dz = (gdy - gdy.mean(axis=1, keepdims=True)) * inv - yhat * (proj / denom)
    dgain = (_per_row(dy * yhat, G)).sum(axis=(0, 3))
    return dz, dgain
