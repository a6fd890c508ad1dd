"""Loss and optimisers: softmax cross-entropy, SGD (momentum, weight decay), Adam.

Optimisers update a layer's parameter arrays in place from its accumulated gradients::

    opt = SGD(model, lr=0.1, momentum=0.9)
    loss = crit(model(x), labels)
    opt.zero_grad(); model.backward(crit.backward()); opt.step()

The loss is a layer (:class:`~dynconv_np.nn.module.Module`): ``crit(logits, target)``,
``crit.backward()``. ``opt.state_dict()`` / ``opt.load_state_dict(sd)`` save and restore
the learning rate and the optimiser's state (SGD's momentum buffers, Adam's moments and
step count) as host arrays, so a resumed run continues bitwise as the uninterrupted one
(see :mod:`dynconv_np.nn.checkpoint`).

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


class SoftmaxCrossEntropy(Module):
    """Mean softmax cross-entropy of logits against integer labels or target distributions.

    A layer without parameters: ``loss = crit(logits, target)`` with logits ``(N, K)`` and
    target ``(N,)`` integer class indices in ``[0, K)`` or ``(N, K)`` probabilities (rows
    summing to 1) returns a float; ``dlogits = crit.backward(dloss=1.0)`` gives ``(N, K)``:
    ``dloss * (softmax(logits) - onehot) / N``. ``forward_pullback(logits, target)`` returns
    ``(loss, pullback)`` with ``pullback(dloss) -> (dlogits, {})`` and leaves the cache
    alone. Log-sum-exp with the row maximum subtracted
    (:func:`dynconv_np.ops.loss.softmax_cross_entropy`).
    """

    def forward(self, logits: np.ndarray, target: np.ndarray) -> float:
        loss, pullback = self.forward_pullback(logits, target)
        self._cache = pullback
        return loss

    def backward(self, dloss: float = 1.0) -> np.ndarray:
        """``d (dloss * loss) / d logits``, shape ``(N, K)``, on the logits' device."""
        return self.cache()(dloss)[0]

    def forward_pullback(self, logits: np.ndarray, target: np.ndarray):
        """``(loss (float), pullback)``; ``pullback(dloss) -> (dlogits (N, K), {})``."""
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
        loss, pb = softmax_cross_entropy.vjp(logits, onehot)
        return float(loss), lambda dloss: (pb(dloss)[0], {})


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

    # ------------------------------------------------------------------ state
    #: the per-parameter state arrays, saved as ``"<name>.<param key>"``
    _slots: tuple[str, ...] = ()

    def _scalars(self) -> dict[str, np.ndarray]:
        return {"lr": np.array(self.lr, dtype=np.float64)}

    def _load_scalars(self, state: Mapping) -> None:
        self.lr = _args.non_negative_float("lr", float(np.asarray(state["lr"])))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of the optimiser's state: ``"lr"`` and, per parameter key, the
        :attr:`_slots` arrays as ``"<slot>.<key>"`` (only those that exist yet); Adam adds ``"t"``."""
        out = self._scalars()
        for key, st in self.state.items():
            for slot in self._slots:
                if st.get(slot) is not None:
                    out[f"{slot}.{key}"] = np.array(xp.to_host(st[slot]), copy=True)
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore a :meth:`state_dict` (checked against the parameters before anything is set);
        the state arrays move to the parameters' device at the next step."""
        params = self.params
        new: dict[str, dict] = {}
        for name, a in state.items():
            if name in self._scalars():
                continue
            slot, _, key = name.partition(".")
            if slot not in self._slots or key not in params:
                raise KeyError(f"{type(self).__name__} state has no entry {name!r} (its parameters: "
                               f"{', '.join(params)})")
            a = np.asarray(xp.to_host(a) if xp.is_array(a) else a)
            p = params[key]
            if a.shape != tuple(p.shape):
                raise ValueError(f"state[{name!r}] has shape {a.shape}, the parameter has {tuple(p.shape)}")
            new.setdefault(key, {s: None for s in self._slots})[slot] = a.astype(p.dtype, copy=True)
        missing = sorted(set(self._scalars()) - set(state))
        if missing:
            raise KeyError(f"{type(self).__name__} state lacks {missing}")
        self._load_scalars(state)
        self.state = new


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

    _slots = ("buf",)

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

    _slots = ("m", "v")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, grads=None):
        super().__init__(params, grads, lr, weight_decay)
        if len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (_args.below_one("betas[0]", betas[0]), _args.below_one("betas[1]", betas[1]))
        self.eps = _args.positive_float("eps", eps)
        self.t = 0

    def _scalars(self) -> dict[str, np.ndarray]:
        return {**super()._scalars(), "t": np.array(self.t, dtype=np.int64)}

    def _load_scalars(self, state: Mapping) -> None:
        super()._load_scalars(state)
        t = np.asarray(state["t"])
        if t.shape or t.dtype.kind not in "iu" or int(t) < 0:
            raise ValueError(f"state['t'] must be a non-negative integer step count, got {t!r}")
        self.t = int(t)

    def step(self) -> None:
        """Update every parameter in place."""
        self.t += 1
        grads = self.grads
        for key, p in self.params.items():
            st = self.state.setdefault(key, {"m": None, "v": None})
            st["m"], st["v"] = adam_update(p, grads[key], _follow(st["m"], p), _follow(st["v"], p), self.t,
                                           self.lr, self.betas, self.eps, self.weight_decay)
