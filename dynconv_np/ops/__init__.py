"""Ops: each a forward plus a hand-written backward, exposed as ``f`` and ``f.vjp``."""

from .atoms import atom_conv2d
from .conv import conv2d
from .dcd import dcd_conv2d
from .mixing import dynamic_conv2d
from .odconv import odconv2d
from .oned import conv1d, dynamic_conv1d
from .pixel import ddf_conv2d, involution1d, involution2d
from .routing import batch_norm, global_avg_pool, hard_sigmoid, linear, relu, sigmoid, softmax, tanh

__all__ = ["conv2d", "dynamic_conv2d", "dcd_conv2d", "atom_conv2d", "odconv2d", "conv1d", "dynamic_conv1d",
           "involution2d", "ddf_conv2d", "involution1d",
           "global_avg_pool", "linear", "relu", "sigmoid", "softmax", "hard_sigmoid", "tanh", "batch_norm"]
