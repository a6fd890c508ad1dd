"""Finite-difference gradient checking for anything that follows the vjp convention.

Two modes, both in float64 with central differences:

- ``"full"``: the whole Jacobian, numerically (two evaluations per input element) and
  analytically (one pullback per output element), compared element by element. For
  tiny shapes; it catches off-by-one errors at stride, dilation and padding edges.
- ``"projection"``: for seeded random directions ``u`` (input) and cotangents ``v``
  (output), compares ``<v, (f(a + eps u) - f(a - eps u)) / 2 eps>`` with
  ``<pullback(v), u>``. For realistic shapes.

Cotangents are random, never all-ones (an all-ones ``dy`` hides transposes).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: ``mode="auto"`` uses the full Jacobian while inputs and output stay this small.
FULL_MAX_INPUT = 600
FULL_MAX_OUTPUT = 2000


@dataclass
class ArgReport:
    """The check of one argument."""

    name: str
    mode: str
    max_abs_err: float
    max_rel_err: float
    evaluations: int
    passed: bool


@dataclass
class GradcheckReport:
    """Per-argument results of :func:`gradcheck`; ``str(report)`` is a table."""

    function: str
    args: list[ArgReport] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.args)

    def __bool__(self) -> bool:
        return self.passed

    def __getitem__(self, name: str) -> ArgReport:
        for a in self.args:
            if a.name == name:
                return a
        raise KeyError(name)

    def __iter__(self):
        return iter(self.args)

    def __len__(self) -> int:
        return len(self.args)

    def __str__(self) -> str:
        lines = [f"gradcheck of {self.function}",
                 f"{'argument':<12} {'mode':<11} {'max abs err':>12} {'max rel err':>12} {'evals':>6}  result"]
        for a in self.args:
            lines.append(f"{a.name:<12} {a.mode:<11} {a.max_abs_err:12.3e} {a.max_rel_err:12.3e} "
                         f"{a.evaluations:6d}  {'pass' if a.passed else 'FAIL'}")
        return "\n".join(lines)


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` when an analytic gradient disagrees; carries ``.report``."""

    def __init__(self, report: GradcheckReport):
        super().__init__("gradient check failed\n" + str(report))
        self.report = report


def _float64(a):
    if isinstance(a, np.ndarray) and a.dtype.kind == "f":
        return a.astype(np.float64)
    return a


def _grad_index(f: Callable, args: tuple, kwargs: dict) -> Callable[[object], int]:
    """Map an argument key (position or keyword) to its entry in the pullback's tuple.

    Ops declare ``f.array_params`` (the array parameters in signature order). Otherwise,
    and for positions the signature does not name (``*args``), the pullback's entries
    follow the positional arguments, then keyword arguments.
    """
    names = getattr(f, "array_params", None)
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def index(key) -> int:
        if isinstance(key, int):
            name = positional[key] if key < len(positional) else None
        else:
            name = key
        if names is not None and name in names:
            return names.index(name)
        if isinstance(key, int):
            return key
        if name in positional:
            return positional.index(name)
        return len(args) + list(kwargs).index(key)

    return index


def _arg_name(key, params: list[str], array_params) -> str:
    """The signature name of a positional argument where there is one, else the key."""
    if isinstance(key, int):
        if key < len(params):
            return params[key]
        if array_params is not None and key < len(array_params):
            return array_params[key]
        return f"arg{key}"
    return str(key)


def gradcheck(f: Callable, args: Sequence, kwargs: dict | None = None, *, wrt=None,
              eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-4, mode: str = "auto",
              seed: int = 0, n_projections: int = 3) -> GradcheckReport:
    """Check ``f.vjp``'s pullback against central finite differences of ``f``.

    Parameters
    ----------
    f : callable with a ``vjp`` attribute
        ``f(*args, **kwargs) -> y`` and ``f.vjp(*args, **kwargs) -> (y, pullback)``.
    args : sequence
        Positional arguments. Float arrays are promoted to float64 for the check.
    kwargs : dict, optional
        Keyword arguments (arrays among them can be checked too, by name).
    wrt : sequence of int or str, optional
        Which arguments to check (positions in `args` or keyword names). Default: every
        floating-point array argument.
    eps : float
        Finite-difference step.
    atol, rtol : float
        An element passes when ``|numeric - analytic| <= atol + rtol * |numeric|``.
    mode : {"auto", "full", "projection"}
        ``"auto"`` takes ``"full"`` when the inputs and output are small.
    seed : int
        Seed of the random cotangents and directions.
    n_projections : int
        Directions per argument in projection mode.

    Returns
    -------
    GradcheckReport
        Per argument: max abs and rel error, mode, number of evaluations.

    Raises
    ------
    GradcheckError
        When any argument fails; ``err.report`` holds the same report.
    """
    if not hasattr(f, "vjp"):
        raise TypeError(f"f must have a .vjp method following the vjp convention, got {f!r}")
    if mode not in ("auto", "full", "projection"):
        raise ValueError(f'mode must be "auto", "full" or "projection", got {mode!r}')
    kwargs = dict(kwargs or {})
    args = [_float64(a) for a in args]
    kwargs = {k: _float64(v) for k, v in kwargs.items()}

    def is_arr(a):
        return isinstance(a, np.ndarray) and a.dtype.kind == "f"

    try:
        params = [n for n, p in inspect.signature(f).parameters.items()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if wrt is None:
        wrt = [i for i, a in enumerate(args) if is_arr(a)] + [k for k, v in kwargs.items() if is_arr(v)]
    elif isinstance(wrt, (int, str)):
        wrt = [wrt]
    # a name refers to a keyword argument, else to the positional parameter of that name
    wrt = [params.index(k) if isinstance(k, str) and k not in kwargs and k in params else k for k in wrt]
    for k in wrt:
        if (isinstance(k, int) and not -len(args) <= k < len(args)) or (isinstance(k, str) and k not in kwargs):
            raise ValueError(f"wrt names {k!r}, which is not an argument of this call")
    wrt = [k % len(args) if isinstance(k, int) else k for k in wrt]
    index = _grad_index(f, tuple(args), kwargs)

    def get(key):
        return args[key] if isinstance(key, int) else kwargs[key]

    def put(key, value):
        if isinstance(key, int):
            args[key] = value
        else:
            kwargs[key] = value

    def evaluate():
        return np.asarray(f(*args, **kwargs), dtype=np.float64)

    y, pullback = f.vjp(*args, **kwargs)
    y = np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    report = GradcheckReport(getattr(f, "__name__", type(f).__name__))

    for key in wrt:
        a0 = get(key)
        if not is_arr(a0):
            raise TypeError(f"wrt names argument {key!r}, which is not a floating-point array")
        name = _arg_name(key, params, getattr(f, "array_params", None))
        gi = index(key)
        m = mode
        if m == "auto":
            m = "full" if a0.size <= FULL_MAX_INPUT and y.size <= FULL_MAX_OUTPUT else "projection"

        def directional(u, key=key, a0=a0):
            put(key, a0 + eps * u)
            fp = evaluate()
            put(key, a0 - eps * u)
            fm = evaluate()
            put(key, a0)
            return (fp - fm) / (2 * eps)

        def analytic(v, gi=gi, a0=a0):
            g = pullback(v)[gi] if gi is not None else None
            if g is None:
                return np.zeros_like(a0)
            return np.asarray(g, dtype=np.float64).reshape(a0.shape)

        if m == "full":
            num = np.empty((a0.size, y.size))
            for i in range(a0.size):
                u = np.zeros(a0.size)
                u[i] = 1.0
                num[i] = directional(u.reshape(a0.shape)).ravel()
            ana = np.empty_like(num)
            for j in range(y.size):
                v = np.zeros(y.size)
                v[j] = 1.0
                ana[:, j] = analytic(v.reshape(y.shape)).ravel()
            evals = 2 * a0.size
        else:
            num = np.empty(n_projections)
            ana = np.empty(n_projections)
            for p in range(n_projections):
                u = rng.standard_normal(a0.shape)
                v = rng.standard_normal(y.shape)
                num[p] = np.vdot(v, directional(u))
                ana[p] = np.vdot(analytic(v), u)
            evals = 2 * n_projections
        err = np.abs(num - ana)
        bad = err > atol + rtol * np.abs(num)
        rel = err / np.maximum(np.maximum(np.abs(num), np.abs(ana)), 1e-300)
        rel = np.where(err == 0, 0.0, rel)
        report.args.append(ArgReport(
            name=name, mode=m,
            max_abs_err=float(err.max()) if err.size else 0.0,
            max_rel_err=float(rel.max()) if rel.size else 0.0,
            evaluations=evals, passed=not bool(np.any(bad)) and bool(np.all(np.isfinite(ana)))))
    if not report.passed:
        raise GradcheckError(report)
    return report
