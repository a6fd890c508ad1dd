"""Loss and optimisers: softmax cross-entropy, SGD (momentum, weight decay), Adam.

Optimisers update a layer's parameter arrays in place from its accumulated gradients::

    opt = SGD(model, lr=0.1, momentum=0.9)
    loss = crit(model(x), labels)
    opt.zero_grad(); model.backward(crit.backward()); opt.step()

On a layer moved with ``to_device()`` the loss takes device logits (labels stay a host
array; the one-hot targets are copied over) and the optimisers update the device
parameters in place (:mod:`dynconv_np.ops.optim`); their state follows the parameters'
device.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import _args
from .. import arrays as xp
from ..ops.loss import softmax_cross_entropy
from ..ops.optim import adam_update, sgd_update
from .module import Module

__all__ = ["SoftmaxCrossEntropy", "SGD", "Adam"]


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy of logits against integer labels or target distributions.

    ``loss = crit(logits, target)`` with logits ``(N, K)`` and target ``(N,)`` integer
    class indices in ``[0, K)`` or ``(N, K)`` probabilities (rows summing to 1); returns a
    float. ``dlogits = crit.backward(dloss=1.0)`` gives ``(N, K)``:
    ``(softmax(logits) - onehot) / N``. Log-sum-exp with the row maximum subtracted
    (:func:`dynconv_np.ops.loss.softmax_cross_entropy`).
    """

    def __init__(self) -> None:
        self._cache = None

    def __call__(self, logits: np.ndarray, target: np.ndarray) -> float:
        return self.forward(logits, target)

    def forward(self, logits: np.ndarray, target: np.ndarray) -> float:
        dtype, device = _args.check_arrays({"logits": logits})
        _args.check_ndim("logits", logits, 2, "(N, K)")
        N, K = logits.shape
        if N < 1 or K < 1:
            raise ValueError(f"logits must have at least one sample and one class, got shape {tuple(logits.shape)}")
        if not xp.is_array(target):
            raise TypeError(f"target must be a numpy.ndarray, got {type(target).__name__}")
        kind = np.dtype(target.dtype).kind
        if kind in "iu":
            if xp.on_device(target):
                raise TypeError("integer target labels must be a numpy.ndarray (host), got a CUDA array")
            _args.check_shape("target", target, (N,), f"(N,) integer labels with N={N}")
            if target.min() < 0 or target.max() >= K:
                raise ValueError(f"target labels must be in [0, {K}), got values in "
                                 f"[{target.min()}, {target.max()}]")
            onehot = np.zeros((N, K), dtype)
            onehot[np.arange(N), target] = 1
        elif kind == "f":
            onehot = xp.astype(target, dtype)
        else:
            raise TypeError(f"target must hold integer labels or float probabilities, got dtype {target.dtype}")
        if device == "cuda" and not xp.on_device(onehot):
            onehot = xp.to_device(onehot)                      # host targets copied over
        loss, self._cache = softmax_cross_entropy.vjp(logits, onehot)
        return float(loss)

    def backward(self, dloss: float = 1.0) -> np.ndarray:
        """``d (dloss * loss) / d logits``, shape ``(N, K)``, on the logits' device."""
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        return self._cache(dloss)[0]


class _Optimizer:
    def __init__(self, params, grads, lr: float, weight_decay: float):
        self._module = None
        if isinstance(params, Module):
            if grads is not None:
                raise ValueError("give a Module, or params and grads mappings, not both")
            # read the module's dicts at every step, so replaced arrays are followed
            self._module = params
            params, grads = params.params, params.grads
        if not isinstance(params, Mapping) or not isinstance(grads, Mapping):
            raise TypeError("params must be a Module, or params and grads must both be mappings of arrays")
        if set(params) != set(grads):
            raise ValueError("params and grads must have the same keys")
        self._params, self._grads = params, grads
        self.lr = _args.positive_float("lr", lr)
        self.weight_decay = _args.non_negative_float("weight_decay", weight_decay)
        self.state: dict[str, dict] = {}

    @property
    def params(self) -> Mapping:
        """The parameters being optimised."""
        return self._module.params if self._module is not None else self._params

    @property
    def grads(self) -> Mapping:
        """Their gradients (same keys)."""
        return self._module.grads if self._module is not None else self._grads

    def zero_grad(self) -> None:
        """Set every gradient to zero (in place)."""
        for grad in self.grads.values():
            xp.fill(grad, 0)


def _follow(a, p):
    """Optimiser state `a` on the device of its parameter `p` (moved after ``to_device`` /
    ``to_host`` of the model); None stays None."""
    return None if a is None else xp.to(a, xp.device_of(p))


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum and L2 weight decay (PyTorch's rule).

    ``g = grad + weight_decay * p``; ``buf = momentum * buf + g`` (``buf = g`` at the first
    step); ``p -= lr * (g + momentum * buf if nesterov else buf)``.

    Parameters
    ----------
    params : Module or Mapping[str, ndarray]
        A layer (its ``params`` and ``grads`` are used), or a params mapping with `grads`.
    lr, momentum, weight_decay : float
    nesterov : bool
    grads : Mapping[str, ndarray], optional
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, grads=None):
        super().__init__(params, grads, lr, weight_decay)
        self.momentum = _args.below_one("momentum", momentum)
        self.nesterov = _args.flag("nesterov", nesterov)

    def step(self) -> None:
        """Update every parameter in place."""
        grads = self.grads
        for key, p in self.params.items():
            st = self.state.setdefault(key, {}) if self.momentum else {}
            buf = sgd_update(p, grads[key], _follow(st.get("buf"), p), self.lr, self.momentum,
                             self.weight_decay, self.nesterov)
            if self.momentum:
                st["buf"] = buf


class Adam(_Optimizer):
    """Adam (Kingma and Ba) with bias correction and L2 weight decay (PyTorch's rule).

    Parameters
    ----------
    params : Module or Mapping[str, ndarray]
    lr : float
    betas : (float, float)
    eps : float
    weight_decay : float
    grads : Mapping[str, ndarray], optional
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, grads=None):
        super().__init__(params, grads, lr, weight_decay)
        if len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (_args.below_one("betas[0]", betas[0]), _args.below_one("betas[1]", betas[1]))
        self.eps = _args.positive_float("eps", eps)
        self.t = 0

    def step(self) -> None:
        """Update every parameter in place."""
        self.t += 1
        grads = self.grads
        for key, p in self.params.items():
            st = self.state.setdefault(key, {"m": None, "v": None})
            st["m"], st["v"] = adam_update(p, grads[key], _follow(st["m"], p), _follow(st["v"], p), self.t,
                                           self.lr, self.betas, self.eps, self.weight_decay)
