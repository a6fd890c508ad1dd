"""dynconv_np: a framework-free reference engine for dynamic convolutions.

Every op ``f`` has ``f(...)`` and ``f.vjp(...) -> (y, pullback)``. The public contract is
``docs/api.md`` in the repository, the math of every variant ``docs/math.md``.
"""

from . import nn, strategy, testing
from ._op import vjp
from .gradcheck import GradcheckError, gradcheck
from .ops import (
    atom_conv2d,
    batch_norm,
    conv1d,
    conv2d,
    dcd_conv2d,
    ddf_conv2d,
    dynamic_conv1d,
    dynamic_conv2d,
    global_avg_pool,
    hard_sigmoid,
    involution1d,
    involution2d,
    linear,
    odconv2d,
    relu,
    sigmoid,
    softmax,
    tanh,
)
from .strategy import explain
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = ["conv2d", "dynamic_conv2d", "dcd_conv2d", "atom_conv2d", "odconv2d", "conv1d", "dynamic_conv1d",
           "involution2d", "ddf_conv2d", "involution1d",
           "global_avg_pool", "linear", "relu", "sigmoid", "softmax", "hard_sigmoid", "tanh", "batch_norm",
           "nn", "vjp", "gradcheck", "GradcheckError", "testing", "set_num_threads", "get_num_threads",
           "strategy", "explain"]
