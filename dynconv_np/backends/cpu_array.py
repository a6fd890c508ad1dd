"""CPU backend, array-level primitives (NumPy): the counterparts of the CUDA backend's
elementwise, reduction and layout kernels used by the routing ops, atom_conv2d and the
layers. Re-exported by :mod:`dynconv_np.backends.cpu`; list every public name in ``__all__``.
"""

from __future__ import annotations

__all__: list[str] = []
