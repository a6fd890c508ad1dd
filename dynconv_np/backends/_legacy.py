"""Legacy names used by nn/ and ops/dcd.py until the nn rewrite lands.

The pre-interface GEMM entry points, as thin wrappers over a backend's ``gemm``. Not
part of :mod:`dynconv_np.backends.interface`; nothing new should call them.
"""

from __future__ import annotations

#: The legacy names each backend package still exports.
LEGACY = ("blas_single_thread", "matmul", "matmul_tn", "matmul_nt", "matmul_nt_sum")


def gemm_aliases(gemm):
    """``(matmul, matmul_tn, matmul_nt)`` over the backend's `gemm`."""

    def matmul(a, b):
        """``a @ b``: ``gemm(a, b)``."""
        return gemm(a, b)

    def matmul_tn(a, b):
        """``a^T @ b`` over the last two axes: ``gemm(a, b, ta=True)``."""
        return gemm(a, b, ta=True)

    def matmul_nt(a, b):
        """``a @ b^T`` over the last two axes: ``gemm(a, b, tb=True)``."""
        return gemm(a, b, tb=True)

    return matmul, matmul_tn, matmul_nt
