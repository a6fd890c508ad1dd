"""Kernel mixing, the step the kernel-mixing ops share (CondConv, DY-CNN, the static
mixture, ODConv's kernel attention): K expert kernels, flattened to ``Wf (K, D)``
(``D = O * C//groups * kh * kw``), mixed by weights ``pi`` per sample ``(N, K)`` or shared
by the batch ``(K,)``::

    Wmix = pi @ Wf              (N, D) or (D,)     one thin GEMM (short K, long D)
    bmix = pi @ bias            (N, O) or (O,)     expert biases (K, O), when given

and back, with ``G`` the gradient of ``Wmix`` and ``dbt`` that of ``bmix`` (for a shared
``pi``, the sums over the batch, ``(D,)`` and ``(O,)``)::

    dW    = pi^T G              (K, D)
    dpi   = G Wf^T + dbt bias^T   pi's shape
    dbias = pi^T dbt            (K, O)

A shared ``pi`` runs these as a batch of one, ``(1, K)``. Each product is one call of the
backend's GEMM, so the results are what the backend's GEMM gives, deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import numpy as np


def mix_kernels(be: ModuleType, W, pi, bias=None) -> tuple[object, object, Callable]:
    """Mix expert kernels (and biases) with per-sample or shared weights.

    Parameters
    ----------
    be : module
        The backend of the arrays.
    W : array (K, ...)
        The K experts, any trailing shape (``(K, O, C//groups, kh, kw)`` for a convolution).
    pi : array (N, K) or (K,)
        Mixing weights, one row per sample or one set for the batch.
    bias : array (K, O), optional
        Expert biases, mixed with the same weights.

    Returns
    -------
    wt : array (N, D) or (D,)
        ``pi @ W`` with the experts flattened, ``D = W[0].size``.
    bt : array (N, O) or (O,), or None
    pullback : callable
        ``pullback(gw, dbt=None) -> (dW (W's shape), dpi (pi's shape), dbias (K, O) or None)``
        for ``gw`` the gradient of `wt` (any shape of its size) and ``dbt`` that of `bt`
        (needed when there is a bias).
    """
    K = W.shape[0]
    D = int(np.prod(W.shape[1:]))
    per_sample = len(pi.shape) == 2
    rows = pi.shape[0] if per_sample else 1
    pi_ = be.contiguous(pi)
    Wf = be.contiguous(W).reshape(K, D)                       # (K, D)
    b_ = None if bias is None else be.contiguous(bias)        # (K, O)
    wt = be.gemm(pi_, Wf)                                     # (N, D) or (D,)
    bt = None if b_ is None else be.gemm(pi_, b_)             # (N, O) or (O,)

    def pullback(gw, dbt=None):
        g2 = gw.reshape(rows, D)                              # (N|1, D)
        p2 = pi_ if per_sample else pi_.reshape(1, K)         # (N|1, K)
        dW = be.gemm(p2, g2, ta=True).reshape(W.shape)        # (K, ...)
        dpi = be.gemm(g2, Wf, tb=True)                        # (N|1, K)
        dbias = None
        if b_ is not None:
            d2 = dbt if per_sample else dbt.reshape(1, b_.shape[1])   # (N|1, O)
            dpi = be.add(dpi, be.gemm(d2, b_, tb=True))
            dbias = be.gemm(p2, d2, ta=True)                  # (K, O)
        return dW, dpi.reshape(pi.shape), dbias

    return wt, bt, pullback
