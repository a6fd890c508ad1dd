"""The layer protocol: a few conventions, not an autograd framework.

A layer is a :class:`Module`. Nothing records a tape; each layer chains the pullbacks of
the ops (and of its child layers) by hand::

    y = layer(x)             # forward; caches what backward needs in layer._cache
    dx = layer.backward(dy)  # gradient w.r.t. x; parameter gradients are ADDED to layer.grads
    layer.zero_grad()        # grads back to zero
    layer.train(); layer.eval()                       # propagate to child layers
    sd = layer.state_dict(); layer.load_state_dict(sd)  # params + buffers (copies)
    layer.save("ckpt.npz"); layer.load("ckpt.npz")

Writing a layer
---------------
1. In ``__init__`` call ``super().__init__()``, then register arrays and sub-layers::

       self.add_param("weight", w)         # trainable; a zero gradient is created
       self.add_buffer("running_mean", m)  # state that is not trained (saved in state_dict)
       self.add_child("bn1", BatchNorm2d(...))   # a sub-layer; its keys appear as "bn1.weight"

   Registered names read back as attributes (``self.weight``, ``self.bn1``).
2. Subclass :class:`OpLayer` and write one method, ``forward_pullback(self, x, **kwargs)
   -> (y, pullback)``: it calls the ops' ``vjp`` (and the children's
   ``forward_pullback``, or :func:`chain` for a straight line of them) with the
   parameters read by name at every call (never keep private copies:
   ``as_function`` swaps them), and returns ``pullback(dy) -> (dx, grads)`` with
   ``grads`` a dict ``{key: gradient or None}`` keyed as ``layer.params`` (dotted for a
   child's). It leaves every ``_cache`` alone, so a parent or an inference helper may
   call it at any time. :class:`OpLayer` supplies ``forward`` (runs it, caches ``(y,
   pullback)``) and ``backward`` (checks dy against y, runs the pullback, adds the
   gradients); the pullback may run several times.
3. Fixed, non-trained arrays (bases, running statistics) are buffers; a layer updates
   its own running statistics in place, in training mode; arrays passed in by callers
   are never modified.
4. A forward must be deterministic given its inputs, parameters and buffers.

A layer that cannot be one pullback (:class:`Sequential`, ``Flatten``) subclasses
:class:`Module` directly: ``forward`` stores ONE new object in ``self._cache``,
``backward`` reads it (:meth:`Module.cache` raises a clear error before any forward),
calls :meth:`Module.accumulate` for each parameter gradient and returns ``dx``.

``dynconv_np.nn.as_function`` then turns any layer, routing branch included, into a
function ``f(x, *params)`` that follows the vjp convention of the ops, for
:func:`dynconv_np.gradcheck`.

``params``, ``grads`` and ``buffers`` are dicts keyed by dotted paths (``"fc1.weight"``),
built at each access; their values are the layer's own arrays, so optimisers update
them in place. Assigning ``layer.params[key] = a`` replaces the layer's array (same shape,
dtype and device required).

Input checks: ``layer(x)`` (:meth:`Module.__call__`) checks, before any work, that x is
a float32/float64 array of the layer's dtype, and raises a ``TypeError`` naming the layer
otherwise; each layer then checks x's shape itself.

Copies and pickles: ``pickle`` and ``copy.deepcopy`` work at any time. They drop the last
forward's cache (a pullback closure, which cannot be pickled) and its routing record: a
copy needs a new forward before ``backward``.

Printing: ``repr(layer)`` shows the constructor call with every argument that differs
from its default (``seed`` and ``rng`` left out); a container (:class:`Sequential`, or any
module whose class keeps ``_tree_repr = True``) prints its children as an indented tree.
:meth:`Module.num_params` counts the trainable values.

Routing records: a dynamic layer calls :meth:`Module.keep_routing` in its
``forward_pullback`` with its routing arrays (batch axis first, e.g. ``pi=pi`` of shape
``(N, K)``); :meth:`Module.routing` returns them after the forward. That is the whole
protocol :class:`dynconv_np.nn.RoutingRecorder` collects through (a layer may instead
override :meth:`routing`).

Hooks: inside ``with forward_hook(fn):``, ``fn(layer, inputs, y)`` runs after the
forward of every layer (each ``forward_pullback`` of an :class:`OpLayer`, each
``forward`` of another :class:`Module`), children and routing branches included; the
summary and the routing recorder are built on it.

Initialisation: a layer given neither ``seed`` nor ``rng`` draws from the package-wide
generator, which :func:`manual_seed` seeds (fresh entropy until it is called).

Devices: :meth:`Module.to_device` moves every parameter, gradient and buffer (of child
layers too) to the CUDA device, :meth:`Module.to_host` brings them back; both return the
layer. A layer on the device takes and returns numba CUDA device arrays (any array with
``__cuda_array_interface__`` as input) and runs forward and backward there, through the
ops and the array API :mod:`dynconv_np.arrays` (never NumPy arithmetic on a layer's
arrays, which would not run on device arrays). 0-d buffers (DynamicConv2d's
temperature) are host scalars and stay on the host. ``as_function`` (gradcheck),
:meth:`save` / :meth:`state_dict` (host copies) and the inference helpers that rebuild
kernels (``merged_kernel(s)``, ``fold_bn``) work on host layers; ``state_dict`` and
``load_state_dict`` also on device layers.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .. import _args
from .. import arrays as xp
from .hooks import hooked

__all__ = ["Module", "host_only", "npz_path"]


def host_only(layer: Module, what: str) -> None:
    """Raise ``TypeError`` when `layer` holds device arrays: `what` runs on host layers only."""
    for v in (*layer.params.values(), *layer.buffers.values()):
        if xp.on_device(v):
            raise TypeError(f"{layer.name()}.{what} works on host layers only; call .to_host() first")


def _movable(a) -> bool:
    # float arrays with at least one axis travel between devices; 0-d buffers are host scalars
    return len(a.shape) > 0 and np.dtype(a.dtype).kind == "f"


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
        device = xp.device_of(old)
        if not xp.is_array(value) or xp.device_of(value) != device:
            kind = "a numpy.ndarray" if device == "cpu" else "a CUDA device array (the layer is on the device)"
            raise TypeError(f"{key} must be {kind}, got {type(value).__name__}")
        if device != "cpu":
            value = xp.contiguous(value)                      # a numba device array
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


def _short(v) -> str:
    """A constructor argument as it reads in a repr."""
    if isinstance(v, Module):
        return v.name()
    if isinstance(v, (type, np.dtype)):
        try:
            return f"np.{np.dtype(v).name}"
        except TypeError:
            return getattr(v, "__name__", repr(v))
    if isinstance(v, np.ndarray):
        return f"array{tuple(v.shape)}"
    return repr(v)


def _same(v, default) -> bool:
    if isinstance(default, (type, np.dtype)) or isinstance(v, (type, np.dtype)):
        try:
            return np.dtype(v) == np.dtype(default)
        except TypeError:
            return v is default
    if isinstance(v, (tuple, list)) and not isinstance(default, (tuple, list)):
        # (1, 1) for a default of 1: the same setting
        return len(v) > 0 and all(_same(e, default) for e in v)
    if isinstance(v, (bool, np.bool_)) != isinstance(default, (bool, np.bool_)):
        return False
    try:
        return bool(v == default)
    except (TypeError, ValueError):
        return False


#: Constructor arguments that reprs leave out (they set the initial values, not the layer).
_NOT_SHOWN = ("seed", "rng")


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

    #: the forward method that :func:`forward_hook` observes (``"forward_pullback"`` for OpLayers)
    _hooked_method = "forward"
    #: print the children as a tree (containers); single layers print one line
    _tree_repr = True

    def __new__(cls, *args: Any, **kwargs: Any):
        self = super().__new__(cls)
        # the constructor call, for repr (pickle and copy restore it with the rest of __dict__)
        object.__setattr__(self, "_init_args", (args, kwargs))
        return self

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls._hooked_method
        f = cls.__dict__.get(name)
        if callable(f) and not getattr(f, "_hooked", False):
            setattr(cls, name, hooked(f, returns_pair=name == "forward_pullback"))

    def __init__(self) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_grads", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_children", {})
        object.__setattr__(self, "_cache", None)
        object.__setattr__(self, "_routing", {})
        object.__setattr__(self, "training", True)

    def __getstate__(self) -> dict:
        # the cache holds pullback closures (not picklable) and, like the routing record,
        # belongs to one forward: a copy starts without them
        state = dict(self.__dict__)
        state["_cache"] = None
        state["_routing"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

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
            value = xp.contiguous(value)                      # a numba device array
        self._params[name] = value
        self._grads[name] = xp.zeros_like(value)
        return value

    def add_buffer(self, name: str, value: np.ndarray) -> np.ndarray:
        """Register a non-trained array (host or device) saved in :meth:`state_dict`."""
        self._check_free(name)
        if not xp.is_array(value):
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
        self.check_input(x)
        return self.forward(x, *args, **kwargs)

    def dtype(self) -> np.dtype | None:
        """The dtype of the layer's first parameter (or float buffer); None for a layer without."""
        for kind in ("_params", "_buffers"):
            for _, mod, name in _entries(self, kind):
                a = getattr(mod, kind)[name]
                if len(a.shape) and np.dtype(a.dtype).kind == "f":
                    return np.dtype(a.dtype)
        return None

    def check_input(self, x) -> None:
        """``TypeError`` naming the layer unless `x` is a float array of the layer's dtype."""
        if not xp.is_array(x):
            raise TypeError(f"{self.name()} takes x as a numpy.ndarray (or a CUDA device array), "
                            f"got {type(x).__name__}")
        dt = _args._dtype_of(x)
        if dt not in _args.FLOAT_DTYPES:
            raise TypeError(f"{self.name()} got x with dtype {dt}; it takes float32 or float64 arrays")
        own = self.dtype()
        if own is not None and dt != own:
            raise TypeError(f"{self.name()} has {own} parameters but x has dtype {dt}: convert the input "
                            f"(x.astype(np.{own})) or build the layer with dtype=np.{dt}")

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

    def accumulate(self, key: str, grad: np.ndarray | None) -> None:
        """Add `grad` (on the gradient's device, any shape of its size) to ``self.grads[key]``
        in place; `key` may be a child's dotted key (``"bn1.weight"``); None is ignored."""
        if grad is None:
            return
        *path, name = key.split(".")
        mod = self
        for child in path:
            mod = mod._children[child]
        total = mod._grads[name]
        if xp.device_of(grad) != xp.device_of(total):
            raise TypeError(f"the gradient of {key} is a {xp.device_of(grad)} array but "
                            f"{self.name()}'s grads are {xp.device_of(total)} arrays")
        xp.add_into(total, grad)

    def zero_grad(self) -> None:
        """Reset every gradient (own and of child layers) to zero."""
        for _, mod in self.named_modules():
            for grad in mod._grads.values():
                xp.fill(grad, 0)

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
        xp.require("cuda")
        return self._move("cuda")

    def to_host(self) -> Module:
        """Move every parameter, gradient and buffer back to host NumPy arrays; returns self."""
        return self._move("cpu")

    def _move(self, device: str) -> Module:
        for _, mod in self.named_modules():
            for store in (mod._params, mod._grads, mod._buffers):
                for k, a in store.items():
                    if _movable(a) and xp.device_of(a) != device:
                        store[k] = xp.to(a, device)
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
        """The constructor call, with every argument that differs from its default (one line;
        errors name layers with it)."""
        cls = type(self)
        args, kwargs = self.__dict__.get("_init_args", ((), {}))
        try:
            sig = inspect.signature(cls.__init__)
            bound = sig.bind(self, *args, **kwargs)
        except (TypeError, ValueError):
            return cls.__name__
        parts = []
        for pname, p in list(sig.parameters.items())[1:]:
            if pname in _NOT_SHOWN or pname not in bound.arguments:
                continue
            v = bound.arguments[pname]
            if p.kind is p.VAR_POSITIONAL:
                parts += [_short(a) for a in v if not isinstance(a, Module)]   # children print in the tree
            elif p.kind is p.VAR_KEYWORD:
                parts += [f"{k}={_short(a)}" for k, a in v.items()]
            elif p.default is p.empty:
                parts.append(_short(v))
            elif not _same(v, p.default):
                parts.append(f"{pname}={_short(v)}")
        return f"{cls.__name__}({', '.join(parts)})"

    def __repr__(self) -> str:
        head = self.name()
        if not (self._children and self._tree_repr):
            return head
        cls = type(self).__name__
        inner = head[len(cls) + 1:-1]
        lines = [f"{cls}("] + ([f"  {inner}"] if inner else [])
        for name, child in self._children.items():
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        return "\n".join(lines + [")"])

    def num_params(self) -> int:
        """The number of trainable values (every entry of every parameter, children's included)."""
        return sum(int(np.prod(p.shape)) for p in self.params.values())

    # ------------------------------------------------------------------ routing records
    def keep_routing(self, **arrays) -> None:
        """Keep the routing arrays of this forward (batch axis first), for :meth:`routing`.

        Dynamic layers call it in ``forward_pullback``: ``self.keep_routing(pi=pi)``. The
        arrays are referenced, not copied.
        """
        object.__setattr__(self, "_routing", arrays)

    def routing(self) -> dict[str, np.ndarray]:
        """``{name: array}``: the routing arrays of the last forward (batch axis first;
        ``{}`` for a static layer or before any forward). Read by
        :class:`~dynconv_np.nn.RoutingRecorder`."""
        return dict(self.__dict__.get("_routing") or {})

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter and buffer, keyed by dotted path (from either device)."""
        return {k: np.array(xp.to_host(v), copy=True)
                for view in (self.params, self.buffers) for k, v in view.items()}

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
            new = np.asarray(xp.to_host(new) if xp.is_array(new) else new)
            if new.shape != cur.shape:
                raise ValueError(f"state_dict[{k!r}] has shape {new.shape}, {self.name()} expects {cur.shape}")
            if new.dtype.kind not in "fiu":
                raise TypeError(f"state_dict[{k!r}] must be numeric, got dtype {new.dtype}")
            plan.append((cur, new))
        for cur, new in plan:
            xp.copy_into(cur, new)

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` to an ``.npz`` file (``.npz`` is appended to a path
        without it, as ``numpy.savez`` does)."""
        np.savez(path, **self.state_dict())

    def load(self, path: str | os.PathLike) -> None:
        """Read an ``.npz`` written by :meth:`save` into this layer; `path` may omit the
        ``.npz`` that :meth:`save` appended."""
        with np.load(npz_path(path)) as data:
            self.load_state_dict({k: data[k] for k in data.files})


def npz_path(path: str | os.PathLike) -> str:
    """`path`, or `path` + ``".npz"`` when only that exists (what ``numpy.savez`` wrote)."""
    path = os.fspath(path)
    if not os.path.exists(path) and not path.endswith(".npz") and os.path.exists(path + ".npz"):
        return path + ".npz"
    return path



#: Names that moved out of this module when it was split, still importable from here
#: (``nn.module.OpLayer``): name -> the module that now holds it.
_MOVED = {"OpLayer": ".compose", "Sequential": ".compose", "chain": ".compose", "prefixed": ".compose",
          "make_rng": ".init", "manual_seed": ".init", "uniform_init": ".init", "default_generator": ".init",
          "forward_hook": ".hooks"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
