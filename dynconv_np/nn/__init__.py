"""Layers, losses, optimisers, schedules and the training kit (the layer protocol is in ``module``).

A layer is not an autograd node: ``y = layer(x)`` caches, ``dx = layer.backward(dy)``
chains the ops' pullbacks by hand and adds parameter gradients to ``layer.grads``;
:func:`as_function` turns a whole layer into a vjp-convention function for gradcheck.
"""

from .atoms import AtomConv2d
from .block import CondConvBlock
from .checkpoint import load_checkpoint, save_checkpoint
from .compose import Sequential
from .data import Batches
from .dcd import DCDConv2d
from .dynamic import CondConv2d, DynamicConv2d, MixtureConv2d
from .function import as_function
from .hooks import forward_hook
from .init import default_generator, make_rng, manual_seed
from .layers import BatchNorm1d, BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d, Linear, ReLU
from .loop import History, evaluate, fit, train_epoch
from .module import Module
from .odconv import ODConv2d
from .oned import DynamicConv1d
from .pixel import DDFConv2d, Involution1d, Involution2d
from .record import RoutingRecorder, attention_entropy, expert_usage, per_class_mean
from .routing import TemperatureSchedule
from .schedules import Constant, Cosine, LinearWarmup, LRSchedule, MultiStep, Schedule, Scheduler, StepDecay
from .summary import num_params, summary
from .train import SGD, Adam, SoftmaxCrossEntropy

__all__ = [
    "Module", "Sequential", "as_function", "make_rng", "manual_seed", "default_generator", "forward_hook",
    "Conv2d", "Linear", "ReLU", "BatchNorm1d", "BatchNorm2d", "GlobalAvgPool2d", "Flatten",
    "CondConv2d", "DynamicConv2d", "MixtureConv2d", "TemperatureSchedule", "CondConvBlock",
    "DCDConv2d", "AtomConv2d", "ODConv2d", "DynamicConv1d", "DDFConv2d", "Involution2d", "Involution1d",
    "SoftmaxCrossEntropy", "SGD", "Adam",
    "Batches", "train_epoch", "evaluate", "fit", "History", "save_checkpoint", "load_checkpoint",
    "Schedule", "Constant", "StepDecay", "MultiStep", "Cosine", "LinearWarmup", "Scheduler", "LRSchedule",
    "summary", "num_params", "RoutingRecorder", "attention_entropy", "per_class_mean", "expert_usage",
]
