"""The layer protocol: a few conventions, not an autograd framework.

A layer is a :class:`Module`. Nothing records a tape; each layer writes its own
``forward`` and ``backward`` and chains the pullbacks of the ops (and of its child
layers) by hand::

    y = layer(x)             # forward; caches what backward needs in layer._cache
    dx = layer.backward(dy)  # gradient w.r.t. x; parameter gradients are ADDED to layer.grads
    layer.zero_grad()        # grads back to zero
    layer.train(); layer.eval()                       # propagate to child layers
    sd = layer.state_dict(); layer.load_state_dict(sd)  # params + buffers (copies)
    layer.save("ckpt.npz"); layer.load("ckpt.npz")

Writing a layer (the whole contract for subclasses)
---------------------------------------------------
1. In ``__init__`` call ``super().__init__()``, then register arrays and sub-layers::

       self.add_param("weight", w)         # trainable; a zero gradient is created
       self.add_buffer("running_mean", m)  # state that is not trained (saved in state_dict)
       self.add_child("fc1", Linear(...))  # a sub-layer; its keys appear as "fc1.weight"

   Registered names read back as attributes (``self.weight``, ``self.fc1``).
2. ``forward(self, x, **kwargs)`` reads parameters and buffers through those names at
   every call (never keep private copies: :func:`as_function` swaps them) and stores
   everything ``backward`` needs in ONE new object assigned to ``self._cache``
   (for example the pullbacks of the ops it called). Never mutate an old cache.
3. ``backward(self, dy)`` reads ``self._cache`` (call :meth:`cache` to get it with a
   clear error when forward has not run), calls :meth:`accumulate` for each parameter
   gradient, and returns ``dx``. It may be called several times on one cache.
4. Fixed, non-trained arrays (bases, running statistics) are buffers; a buffer that is
   updated in training mode is replaced by a new array (or updated in place, since the
   layer owns it); arrays passed in by callers are never modified.
5. A forward must be deterministic given its inputs, parameters and buffers.

:func:`as_function` then turns any such layer, routing branch included, into a function
``f(x, *params)`` that follows the vjp convention of the ops, for :func:`dynconv_np.gradcheck`.

``params``, ``grads`` and ``buffers`` are dicts keyed by dotted paths (``"fc1.weight"``),
built at each access; their values are the layer's own arrays, so optimisers update
them in place. Assigning ``layer.params[key] = a`` replaces the layer's array (same shape,
dtype and device required).

Devices: :meth:`Module.to_device` moves every parameter, gradient and buffer (of child
layers too) to the CUDA device, :meth:`Module.to_host` brings them back; both return the
layer. A layer on the device takes and returns numba CUDA device arrays (any array with
``__cuda_array_interface__`` as input) and runs forward and backward there, through the
ops and the backend primitives (``be = array_backend(a)``: never NumPy arithmetic on a
layer's arrays, which would not run on device arrays). 0-d buffers (DynamicConv2d's
temperature) are host scalars and stay on the host. :func:`as_function` (gradcheck),
:meth:`save` / :meth:`state_dict` (host copies) and the inference helpers that rebuild
kernels (``merged_kernel(s)``, ``fold_bn``) work on host layers; ``state_dict`` and
``load_state_dict`` also on device layers.
"""

from __future__ import annotations

import inspect
import keyword
import re
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from .. import _args, backends

__all__ = ["Module", "Sequential", "as_function", "make_rng", "array_backend"]


def array_backend(a) -> ModuleType:
    """The backend module (``backends.cpu`` or ``backends.cuda``) of the array `a`."""
    device = _args.device_of(a)
    if not device:
        raise TypeError(f"expected a numpy.ndarray or a CUDA device array, got {type(a).__name__}")
    return backends.get(device)


def host_only(layer: Module, what: str) -> None:
    """Raise ``TypeError`` when `layer` holds device arrays: `what` runs on host layers only."""
    for v in (*layer.params.values(), *layer.buffers.values()):
        if _args.device_of(v) == "cuda":
            raise TypeError(f"{layer.name()}.{what} works on host layers only; call .to_host() first")


def _movable(a) -> bool:
    # float arrays with at least one axis travel between devices; 0-d buffers are host scalars
    return len(a.shape) > 0 and np.dtype(a.dtype).kind == "f"


def _host_copy(a, copy: Callable) -> np.ndarray:
    """A host copy of `a` (`copy` for host arrays; device arrays are copied back)."""
    return copy(a) if isinstance(a, np.ndarray) else array_backend(a).to_host(a)


def make_rng(seed: int | None = None, rng: np.random.Generator | None = None) -> np.random.Generator:
    """The generator a layer initialises from: `rng` if given, else one seeded with `seed`."""
    if rng is not None and seed is not None:
        raise ValueError(f"give seed or rng, not both (got seed={seed!r} and an rng)")
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return rng
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    return np.random.default_rng(seed)


def uniform_init(r: np.random.Generator, shape: tuple, fan_in: int, dtype) -> np.ndarray:
    """Uniform in ``+-1/sqrt(fan_in)`` (PyTorch's default for conv and linear layers)."""
    bound = 1 / np.sqrt(fan_in)
    return r.uniform(-bound, bound, size=shape).astype(dtype)


def _entries(module: Module, kind: str) -> Iterator[tuple[str, Module, str]]:
    """``(dotted key, owning module, local name)`` for every array of one kind, in order."""
    for prefix, mod in module.named_modules():
        for name in getattr(mod, kind):
            yield (prefix + name, mod, name)


def _locate(module: Module, kind: str, key: str) -> tuple[Module, str]:
    for k, mod, name in _entries(module, kind):
        if k == key:
            return mod, name
    raise KeyError(key)


class ArrayDict(dict):
    """A real ``dict`` of a layer's arrays whose item assignment writes through to the layer.

    Built afresh by each access to ``layer.params`` / ``grads`` / ``buffers``; its values are
    the layer's own arrays (in-place updates reach the layer). ``d[key] = a`` replaces
    the layer's array (same shape, dtype and device required); keys cannot be added or
    removed.
    """

    def __init__(self, module: Module, kind: str):
        super().__init__((k, getattr(mod, kind)[name]) for k, mod, name in _entries(module, kind))
        self._module = module
        self._kind = kind

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        mod, name = _locate(self._module, self._kind, key)
        store = getattr(mod, self._kind)
        old = store[name]
        device = _args.device_of(old)
        if _args.device_of(value) != device:
            kind = "a numpy.ndarray" if device == "cpu" else "a CUDA device array (the layer is on the device)"
            raise TypeError(f"{key} must be {kind}, got {type(value).__name__}")
        if device != "cpu":
            value = array_backend(value).contiguous(value)    # a numba device array
        if tuple(value.shape) != tuple(old.shape):
            raise ValueError(f"{key} must have shape {tuple(old.shape)}, got {tuple(value.shape)}")
        if value.dtype != old.dtype:
            raise TypeError(f"{key} must have dtype {old.dtype}, got {value.dtype}")
        store[name] = value
        super().__setitem__(key, value)

    def update(self, *args, **kwargs) -> None:
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def _fixed_keys(self, *args, **kwargs):
        raise TypeError("the keys of a layer's arrays are fixed: entries cannot be added or removed")

    __delitem__ = pop = popitem = clear = setdefault = _fixed_keys

    def __repr__(self) -> str:
        body = ", ".join(f"{k!r}: {v.dtype}{tuple(v.shape)}" for k, v in self.items())
        return "{" + body + "}"


class Module:
    """Base class of every layer (see the module docstring for the contract).

    Attributes
    ----------
    params : ArrayDict (a dict)
        Trainable arrays, own and of child layers (keys ``"child.name"``).
    grads : ArrayDict
        Accumulated gradients, same keys and shapes as `params`.
    buffers : ArrayDict
        Non-trained state (running statistics, fixed bases, temperatures).
    training : bool
        True after :meth:`train` (the default), False after :meth:`eval`.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_grads", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_children", {})
        object.__setattr__(self, "_cache", None)
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------ registration
    def _check_free(self, name: str) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"name must be a non-empty str without dots, got {name!r}")
        if name in self._params or name in self._buffers or name in self._children:
            raise ValueError(f"{type(self).__name__} already has an entry named {name!r}")

    def add_param(self, name: str, value: np.ndarray) -> np.ndarray:
        """Register a trainable array (float32/float64, host or device) and its zero gradient."""
        self._check_free(name)
        _args.check_arrays({name: value})
        if not isinstance(value, np.ndarray):
            value = array_backend(value).contiguous(value)    # a numba device array
        self._params[name] = value
        self._grads[name] = (np.zeros_like(value) if isinstance(value, np.ndarray)
                             else array_backend(value).zeros(value.shape, value.dtype))
        return value

    def add_buffer(self, name: str, value: np.ndarray) -> np.ndarray:
        """Register a non-trained array (host or device) saved in :meth:`state_dict`."""
        self._check_free(name)
        if not _args.device_of(value):
            raise TypeError(f"{name} must be a numpy.ndarray (or a CUDA device array), got {type(value).__name__}")
        self._buffers[name] = value
        return value

    def add_child(self, name: str, module: Module) -> Module:
        """Register a sub-layer; its params appear as ``name.<key>``."""
        self._check_free(name)
        if not isinstance(module, Module):
            raise TypeError(f"{name} must be a Module, got {type(module).__name__}")
        self._children[name] = module
        return module

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: registered names read as attributes.
        d = self.__dict__
        for store in ("_params", "_buffers", "_children"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if name in d.get("_params", ()):
            self.params[name] = value
        elif name in d.get("_buffers", ()):
            d["_buffers"][name] = value
        elif name in d.get("_children", ()):
            raise AttributeError(f"child layer {name!r} cannot be replaced")
        else:
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ views
    @property
    def params(self) -> ArrayDict:
        return ArrayDict(self, "_params")

    @property
    def grads(self) -> ArrayDict:
        return ArrayDict(self, "_grads")

    @property
    def buffers(self) -> ArrayDict:
        return ArrayDict(self, "_buffers")

    def children(self) -> Iterator[Module]:
        """The direct sub-layers, in registration order."""
        return iter(self._children.values())

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """``(key prefix, module)`` for this layer and every descendant, depth first."""
        yield prefix, self
        for name, child in self._children.items():
            yield from child.named_modules(prefix + name + ".")

    # ------------------------------------------------------------------ protocol
    def __call__(self, x: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.forward(x, *args, **kwargs)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Compute the output and store what :meth:`backward` needs in ``self._cache``."""
        raise TypeError(f"{type(self).__name__} does not define forward")

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Gradient w.r.t. the last forward's input; adds parameter gradients to grads."""
        raise TypeError(f"{type(self).__name__} does not define backward")

    def cache(self) -> Any:
        """The last forward's cache, or a RuntimeError naming the layer if there is none."""
        if self._cache is None:
            raise RuntimeError(f"{self.name()}.backward called before forward")
        return self._cache

    def accumulate(self, name: str, grad: np.ndarray | None) -> None:
        """Add `grad` (on the gradient's device, any shape of its size) to ``self.grads[name]``
        in place (None is ignored)."""
        if grad is not None:
            g = self._grads[name]
            if _args.device_of(grad) != _args.device_of(g):
                raise TypeError(f"the gradient of {name} is a {_args.device_of(grad) or type(grad).__name__} "
                                f"array but {self.name()}'s grads are {_args.device_of(g)} arrays")
            array_backend(g).add_into(g, grad)

    def zero_grad(self) -> None:
        """Reset every gradient (own and of child layers) to zero."""
        for _, mod in self.named_modules():
            for g in mod._grads.values():
                array_backend(g).fill(g, 0)

    # ------------------------------------------------------------------ devices
    def to_device(self) -> Module:
        """Move every parameter, gradient and buffer (children's too) to the CUDA device.

        Copies host arrays to numba device arrays (0-d buffers stay host scalars); the
        last forward's cache is dropped (call forward again before backward). Raises
        ``TypeError`` when the CUDA backend is unavailable.

        Returns
        -------
        self
        """
        be = backends.get("cuda")
        return self._move("cuda", be.to_device)

    def to_host(self) -> Module:
        """Move every parameter, gradient and buffer back to host NumPy arrays; returns self."""
        return self._move("cpu", lambda a: array_backend(a).to_host(a))

    def _move(self, device: str, fn: Callable) -> Module:
        for _, mod in self.named_modules():
            for store in (mod._params, mod._grads, mod._buffers):
                for k, a in store.items():
                    if _movable(a) and _args.device_of(a) != device:
                        store[k] = fn(a)
            # the cache holds arrays (and pullbacks over them) of the old device
            object.__setattr__(mod, "_cache", None)
        return self

    def train(self, mode: bool = True) -> Module:
        """Training mode (batch statistics, routing as in training) for this layer and its children."""
        for _, mod in self.named_modules():
            object.__setattr__(mod, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Inference mode (running statistics) for this layer and its children."""
        return self.train(False)

    def name(self) -> str:
        """A short description used in error messages (subclasses add their sizes)."""
        return type(self).__name__

    def __repr__(self) -> str:
        return self.name()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter and buffer, keyed by dotted path (from either device)."""
        out = {k: _host_copy(v, np.ndarray.copy) for k, v in self.params.items()}
        out.update({k: _host_copy(v, lambda b: np.array(b, copy=True)) for k, v in self.buffers.items()})
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Copy `state` into the layer's own arrays (their dtype, shape and device are kept).

        Raises ``KeyError`` for missing or unexpected keys when `strict`, ``ValueError``
        for a shape mismatch, before anything is written.
        """
        targets = {}
        for view in (self.params, self.buffers):
            for k in view:
                targets[k] = view
        if strict:
            missing = sorted(set(targets) - set(state))
            extra = sorted(set(state) - set(targets))
            if missing or extra:
                raise KeyError(f"state_dict mismatch for {self.name()}: missing {missing}, unexpected {extra}")
        plan = []
        for k, view in targets.items():
            if k not in state:
                continue
            cur = view[k]
            new = state[k]
            new = np.asarray(new if isinstance(new, np.ndarray) or not _args.device_of(new)
                             else array_backend(new).to_host(new))
            if new.shape != cur.shape:
                raise ValueError(f"state_dict[{k!r}] has shape {new.shape}, {self.name()} expects {cur.shape}")
            if new.dtype.kind not in "fiu":
                raise TypeError(f"state_dict[{k!r}] must be numeric, got dtype {new.dtype}")
            plan.append((cur, new))
        for cur, new in plan:
            array_backend(cur).copy_into(cur, new)

    def save(self, path: str) -> None:
        """Write :meth:`state_dict` to an ``.npz`` file."""
        np.savez(path, **self.state_dict())

    def load(self, path: str) -> None:
        """Read an ``.npz`` written by :meth:`save` into this layer."""
        with np.load(path) as data:
            self.load_state_dict({k: data[k] for k in data.files})


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    Children are named ``"0"``, ``"1"``, ...; ``seq[i]`` returns the i-th layer.
    """

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_child(str(i), layer)

    def __getitem__(self, i: int) -> Module:
        return list(self._children.values())[i]

    def __len__(self) -> int:
        return len(self._children)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self._children.values():
            x = layer(x)
        self._cache = True
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self.cache()
        for layer in reversed(list(self._children.values())):
            dy = layer.backward(dy)
        return dy


# ---------------------------------------------------------------------- as_function
def _identifiers(keys: list[str]) -> list[str]:
    """Parameter names usable in a Python signature (``"fc1.weight"`` -> ``"fc1_weight"``)."""
    out, seen = [], {"x"}
    for k in keys:
        s = re.sub(r"\W", "_", k)
        if not s or s[0].isdigit() or keyword.iskeyword(s):
            s = "p_" + s
        base, i = s, 1
        while s in seen:
            s, i = f"{base}_{i}", i + 1
        seen.add(s)
        out.append(s)
    return out


def _snapshot(layer: Module) -> list:
    return [(m, m._params, m._buffers, m._grads, m._cache, m.training) for _, m in layer.named_modules()]


def _restore(snap: list) -> None:
    for m, p, b, g, c, t in snap:
        d = m.__dict__
        d["_params"], d["_buffers"], d["_grads"], d["_cache"], d["training"] = p, b, g, c, t


def as_function(layer: Module, **forward_kwargs: Any) -> Callable:
    """A vjp-convention function ``f(x, *params)`` computing ``layer(x)``.

    Parameters
    ----------
    layer : Module
        Any layer; its current mode (train/eval) is used at each call.
    **forward_kwargs
        Extra keyword arguments passed to every ``layer.forward``.

    Returns
    -------
    f : callable
        ``f(x, p1, p2, ...)`` with the parameters in ``layer.params`` order (omitted or
        None ones are the layer's own), ``f.vjp(...) -> (y, pullback)`` with
        ``pullback(dy) -> (dx, dp1, dp2, ...)``, and ``f.array_params``, so that
        ``dc.gradcheck(as_function(layer), (x, *layer.params.values()))`` checks the whole
        layer. Calls leave the layer exactly as they found it: its arrays, running
        statistics, gradients and cache are swapped out for the call and restored
        (buffers are copied and cast to x's dtype, so a float32 layer can be checked in
        float64). Host layers and NumPy arrays only (gradcheck differentiates on the host):
        call ``layer.to_host()`` first.
    """
    if not isinstance(layer, Module):
        raise TypeError(f"layer must be a dynconv_np.nn.Module, got {type(layer).__name__}")
    keys = list(layer.params.keys())
    idents = _identifiers(keys)
    locations = [_locate(layer, "_params", k) for k in keys]

    def enter(x, params):
        if len(params) > len(keys):
            raise TypeError(f"{layer.name()} has {len(keys)} parameters ({', '.join(keys)}), "
                            f"got {len(params)} parameter arrays")
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
        snap = _snapshot(layer)
        for _, m in layer.named_modules():
            d = m.__dict__
            d["_params"] = dict(m._params)
            d["_grads"] = dict(m._grads)
            d["_buffers"] = {k: (np.array(b, dtype=x.dtype) if b.dtype.kind == "f" and b.ndim
                                 else np.array(b, copy=True)) for k, b in m._buffers.items()}
        for (mod, name), ident, p in zip(locations, idents, params):
            if p is None:
                continue
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{ident} must be a numpy.ndarray, got {type(p).__name__}")
            if p.shape != mod._params[name].shape:
                raise ValueError(f"{ident} must have shape {mod._params[name].shape}, got {p.shape}")
            mod._params[name] = p
        return snap

    def f(x, *params):
        snap = enter(x, params)
        try:
            return layer.forward(x, **forward_kwargs)
        finally:
            _restore(snap)

    def vjp(x, *params):
        snap = enter(x, params)
        try:
            y = layer.forward(x, **forward_kwargs)
            state = _snapshot(layer)
        finally:
            _restore(snap)

        def pullback(dy):
            outer = _snapshot(layer)
            _restore(state)
            try:
                for _, m in layer.named_modules():
                    m.__dict__["_grads"] = {k: np.zeros_like(p) for k, p in m._params.items()}
                dx = layer.backward(dy)
                grads = tuple(mod._grads[name].copy() for mod, name in locations)
            finally:
                _restore(outer)
            return (dx, *grads)

        return y, pullback

    P = inspect.Parameter
    f.__signature__ = inspect.Signature(
        [P("x", P.POSITIONAL_OR_KEYWORD)] + [P(n, P.POSITIONAL_OR_KEYWORD, default=None) for n in idents])
    f.__name__ = f.__qualname__ = f"as_function({layer.name()})"
    f.array_params = ("x", *idents)
    f.param_keys = tuple(keys)
    f.vjp = vjp
    return f
