"""Naive float64 oracles: plain NumPy, no Numba, slow and obviously right.

Every fast path in dynconv_np is tested against a function here. Each reference
converts its inputs to float64, loops over kernel taps (and samples, experts, groups)
explicitly, and returns float64 results. Backward references take the cotangent ``dy``
and return the gradients in the op's pullback order.

Geometry arguments are normalised by the same ``_args.geometry`` as the ops (the
validation is shared; the arithmetic is not).

The package has one module per family (``conv``, ``odconv``, ``oned``, ``routing``, ``small``); every public
The package has one module per family (``conv``, ``routing``, ``small``, ``pixel``); every public
name is re-exported here, so ``reference.conv2d`` and ``reference.conv2d_backward`` are the
twins of ``dc.conv2d``.
"""

from .conv import *  # noqa: F403
from .odconv import *  # noqa: F403
from .oned import *  # noqa: F403
from .pixel import *  # noqa: F403
from .routing import *  # noqa: F403
from .small import *  # noqa: F403
