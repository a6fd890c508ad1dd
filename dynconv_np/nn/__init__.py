"""Layers, losses, optimisers and temperature schedules (the layer protocol is in ``module``).

A layer is not an autograd node: ``y = layer(x)`` caches, ``dx = layer.backward(dy)``
chains the ops' pullbacks by hand and adds parameter gradients to ``layer.grads``;
:func:`as_function` turns a whole layer into a vjp-convention function for gradcheck.
"""

from .atoms import AtomConv2d
from .dcd import DCDConv2d
from .dynamic import CondConv2d, DynamicConv2d, MixtureConv2d
from .function import as_function
from .layers import BatchNorm1d, BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d, Linear, ReLU
from .module import Module, Sequential, make_rng
from .pixel import DDFConv2d, Involution1d, Involution2d
from .routing import TemperatureSchedule
from .train import SGD, Adam, SoftmaxCrossEntropy

__all__ = [
    "Module", "Sequential", "as_function", "make_rng",
    "Conv2d", "Linear", "ReLU", "BatchNorm1d", "BatchNorm2d", "GlobalAvgPool2d", "Flatten",
    "CondConv2d", "DynamicConv2d", "MixtureConv2d", "TemperatureSchedule",
    "DCDConv2d", "AtomConv2d", "DDFConv2d", "Involution2d", "Involution1d",
    "SoftmaxCrossEntropy", "SGD", "Adam",
]
