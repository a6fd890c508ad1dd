"""Ops: each a forward plus a hand-written backward, exposed as ``f`` and ``f.vjp``."""

from .conv import conv2d
from .mixing import dynamic_conv2d

__all__ = ["conv2d", "dynamic_conv2d"]
