"""dynconv_np: a framework-free reference engine for dynamic convolutions.

Every op ``f`` has ``f(...)`` and ``f.vjp(...) -> (y, pullback)``; see ``API.md``.
"""

from ._op import vjp
from .gradcheck import GradcheckError, gradcheck
from .ops import conv2d, dynamic_conv2d

__version__ = "0.1.0"

__all__ = ["conv2d", "dynamic_conv2d", "vjp", "gradcheck", "GradcheckError"]
