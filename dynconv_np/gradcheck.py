"""Finite-difference gradient checking for anything that follows the vjp convention.

Two modes, both in float64 with central differences:

- ``"full"``: the whole Jacobian, numerically (two evaluations per input element) and
  analytically (one pullback per output element), compared element by element. For
  tiny shapes; it catches off-by-one errors at stride, dilation and padding edges.
- ``"projection"``: for seeded random directions ``u`` (input) and cotangents ``v``
  (output), compares ``<v, (f(a + eps u) - f(a - eps u)) / 2 eps>`` with
  ``<pullback(v), u>``. For realistic shapes.

Cotangents are random, never all-ones (an all-ones ``dy`` hides transposes).

An entry that disagrees is taken again with smaller steps, which tells a wrong gradient
(the estimates stay put) from a kink of ReLU, max or abs inside the step (they move):
the verdict ``"kink?"`` (see :func:`gradcheck`, Notes).
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
    """The check of one argument.

    ``verdict`` is ``"pass"``, ``"FAIL"`` or ``"kink?"``: the finite differences at step
    ``eps`` disagreed with the pullback but moved when the step shrank, the mark of a kink
    (ReLU, max, abs) inside the step rather than of a wrong gradient. ``passed`` is false
    only for ``"FAIL"``. For ``"kink?"``, ``steps``, ``estimates`` and ``analytic`` hold the
    finite-difference estimates of the worst such entry at each step and the pullback's
    value, ``where`` says which entry it is, and ``settled`` whether the two smaller
    steps agreed with each other and with the pullback.
    """

    name: str
    mode: str
    max_abs_err: float
    max_rel_err: float
    evaluations: int
    passed: bool
    verdict: str = ""
    steps: tuple[float, ...] = ()
    estimates: tuple[float, ...] = ()
    analytic: float | None = None
    where: str = ""
    settled: bool = False

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict = "pass" if self.passed else "FAIL"

    def note(self) -> str:
        """One line on a ``"kink?"`` verdict (the estimates per step), else ``""``."""
        if self.verdict != "kink?":
            return ""
        est = ", ".join(f"eps {h:.0e}: {e:.6e}" for h, e in zip(self.steps, self.estimates))
        tail = ("the smaller steps agree with the pullback: a kink inside the step, not a gradient error"
                if self.settled else "the estimates did not settle: re-check with a smaller eps, another seed "
                "or away from the kinks (eval mode, other inputs)")
        return (f"{self.name}: finite differences move with the step ({self.where}; {est}; "
                f"pullback {self.analytic:.6e}): {tail}")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Rows of strings as columns sized to their content; the first `left` columns
    are left-aligned, the others (numbers) right-aligned, except a last "result"-like
    column, which is left-aligned too."""
    cols = list(zip(header, *rows))
    widths = [max(len(c) for c in col) for col in cols]
    last = len(widths) - 1

    def line(cells):
        out = [c.ljust(w) if i < left or i == last else c.rjust(w)
               for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    return "\n".join([line(header)] + [line(r) for r in rows])


class _Rows:
    """What the reports share: rows with ``name`` and ``passed``, in the list named by
    ``_rows``; truth is "every row passed", ``report[name]`` a row by name."""

    _rows = ""

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self)

    def __bool__(self) -> bool:
        return self.passed

    def __getitem__(self, name: str):
        for r in self:
            if r.name == name:
                return r
        raise KeyError(name)

    def __iter__(self):
        return iter(getattr(self, self._rows))

    def __len__(self) -> int:
        return len(getattr(self, self._rows))


@dataclass
class GradcheckReport(_Rows):
    """Per-argument results of :func:`gradcheck`; ``str(report)`` is a table."""

    _rows = "args"
    function: str
    args: list[ArgReport] = field(default_factory=list)

    def __str__(self) -> str:
        rows = [(a.name, a.mode, f"{a.max_abs_err:.3e}", f"{a.max_rel_err:.3e}", str(a.evaluations), a.verdict)
                for a in self.args]
        table = _table(("argument", "mode", "max abs err", "max rel err", "evals", "result"), rows, left=2)
        notes = [a.note() for a in self.args if a.verdict == "kink?"]
        return "\n".join([f"gradcheck of {self.function}", table, *notes])


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


def _arg_name(f: Callable, key, params: list[str]) -> str:
    """The name to report for an argument.

    A layer's parameters (``nn.as_function``, which sets ``f.param_keys``: the dotted
    keys after ``x``) are named as in ``layer.params``; otherwise a positional argument
    takes its signature name where there is one, and a keyword argument its key.
    """
    array_params = getattr(f, "array_params", None)
    keys = getattr(f, "param_keys", None)
    if isinstance(key, int):
        if keys is not None and 1 <= key <= len(keys):
            return keys[key - 1]
        if key < len(params):
            return params[key]
        if array_params is not None and key < len(array_params):
            return array_params[key]
        return f"arg{key}"
    if keys is not None and array_params is not None and key in array_params[1:len(keys) + 1]:
        return keys[array_params.index(key) - 1]
    return str(key)


#: When an estimate disagrees with the pullback, it is taken again with these fractions
#: of ``eps`` (see :func:`gradcheck`, "Kinks").
SMALLER_STEPS = (0.1, 0.01)


def _judge(est: np.ndarray, ana: np.ndarray, atol: float, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """Classify entries whose estimate at ``eps`` disagreed with the pullback.

    est : (3, m) estimates at eps, eps/10, eps/100; ana : (m,) the pullback's values.
    Returns ``(kink, settled)``, boolean (m,): ``kink`` where the entry is not a failure,
    ``settled`` where the two smaller steps agree with each other and with the pullback.
    A smooth function gives the same estimate at every step, so the smaller steps agree
    with each other and the entry fails unless they also agree with the pullback. A kink
    inside the step moves the estimate with the step; once the step no longer reaches it,
    the estimates settle on the true derivative.
    """
    mid, small = est[1], est[2]
    tol = atol + rtol * np.abs(small)
    steady = np.abs(mid - small) <= np.maximum(tol, 0.1 * np.abs(small - ana))
    agrees = np.abs(small - ana) <= tol
    settled = steady & agrees
    return settled | ~steady, settled


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
        Which arguments to check (positions in `args`, keyword or parameter names, or for
        ``nn.as_function(layer)`` the layer's parameter keys such as ``"fc1.weight"``).
        Default: every floating-point array argument.
    eps : float
        Finite-difference step.
    atol, rtol : float
        An entry passes when ``|numeric - analytic| <= atol + rtol * |numeric|``.
    mode : {"auto", "full", "projection"}
        ``"auto"`` takes ``"full"`` when the inputs and output are small.
    seed : int
        Seed of the random cotangents and directions.
    n_projections : int
        Directions per argument in projection mode.

    Returns
    -------
    GradcheckReport
        Per argument: max abs and rel error, mode, number of evaluations, verdict.

    Raises
    ------
    GradcheckError
        When any argument fails; ``err.report`` holds the same report.

    Notes
    -----
    Kinks. A central difference is the mean slope over ``[a - eps u, a + eps u]``. Where
    that interval holds a kink (a ReLU, max or abs input within reach of zero), the mean
    slope is not the derivative at ``a``; a whole network with ReLUs crosses some at
    realistic sizes. So an entry that disagrees is estimated again with steps ``eps/10``
    and ``eps/100``. If those two agree (the function is smooth there), they decide:
    pass or FAIL. If they do not (the estimates move with the step), the verdict is
    ``"kink?"``, which does not fail the check; the report shows the estimates. A wrong
    gradient of a smooth function still fails: its estimates do not move.
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
    keys = list(getattr(f, "param_keys", None) or ())
    if wrt is None:
        wrt = [i for i, a in enumerate(args) if is_arr(a)] + [k for k, v in kwargs.items() if is_arr(v)]
    elif isinstance(wrt, (int, str)):
        wrt = [wrt]
    # a name refers to a keyword argument, else to the positional parameter of that name
    # (or of that layer parameter key)
    wrt = [k if not isinstance(k, str) or k in kwargs else params.index(k) if k in params
           else 1 + keys.index(k) if k in keys else k for k in wrt]
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
    steps = (eps, *(eps * s for s in SMALLER_STEPS))

    for key in wrt:
        a0 = get(key)
        if not is_arr(a0):
            raise TypeError(f"wrt names argument {key!r}, which is not a floating-point array")
        name = _arg_name(f, key, params)
        gi = index(key)
        m = mode
        if m == "auto":
            m = "full" if a0.size <= FULL_MAX_INPUT and y.size <= FULL_MAX_OUTPUT else "projection"

        def directional(u, h=eps, key=key, a0=a0):
            put(key, a0 + h * u)
            fp = evaluate()
            put(key, a0 - h * u)
            fm = evaluate()
            put(key, a0)
            return (fp - fm) / (2 * h)

        def analytic(v, gi=gi, a0=a0):
            g = pullback(v)[gi] if gi is not None else None
            if g is None:
                return np.zeros_like(a0)
            return np.asarray(g, dtype=np.float64).reshape(a0.shape)

        # estimate(r, h) re-takes entry row r of `num` with step h
        if m == "full":
            def unit(i, a0=a0):
                u = np.zeros(a0.size)
                u[i] = 1.0
                return u.reshape(a0.shape)

            num = np.empty((a0.size, y.size))
            for i in range(a0.size):
                num[i] = directional(unit(i)).ravel()
            ana = np.empty_like(num)
            for j in range(y.size):
                v = np.zeros(y.size)
                v[j] = 1.0
                ana[:, j] = analytic(v.reshape(y.shape)).ravel()
            evals = 2 * a0.size

            def estimate(r, h, unit=unit, directional=directional):
                return directional(unit(r), h).ravel()

            def where(r, c, a0=a0, name=name):
                at_y, at_a = (list(map(int, np.unravel_index(k, s))) for k, s in ((c, y.shape), (r, a0.shape)))
                return f"d y{at_y} / d {name}{at_a}"
        else:
            us, vs = [], []
            num = np.empty((n_projections, 1))
            ana = np.empty((n_projections, 1))
            for p in range(n_projections):
                us.append(rng.standard_normal(a0.shape))
                vs.append(rng.standard_normal(y.shape))
                num[p, 0] = np.vdot(vs[p], directional(us[p]))
                ana[p, 0] = np.vdot(analytic(vs[p]), us[p])
            evals = 2 * n_projections

            def estimate(r, h, us=us, vs=vs, directional=directional):
                return np.array([np.vdot(vs[r], directional(us[r], h))])

            def where(r, c):
                return f"projection {r}"

        err = np.abs(num - ana)
        bad = err > atol + rtol * np.abs(num)
        verdict, kink = "pass", None
        if not np.all(np.isfinite(ana)):
            verdict = "FAIL"
        elif bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            evals += 2 * len(SMALLER_STEPS) * len(rows)
            redo = {r: [estimate(r, h) for h in steps[1:]] for r in rows}
            rr, cc = np.nonzero(bad)
            est = np.stack([num[rr, cc]] + [np.array([redo[r][s][c] for r, c in zip(rr, cc)])
                                             for s in range(len(SMALLER_STEPS))])
            is_kink, settled = _judge(est, ana[rr, cc], atol, rtol)
            if not is_kink.all():
                verdict = "FAIL"
            else:
                verdict = "kink?"
                w = int(np.argmax(err[rr, cc]))
                kink = dict(steps=steps, estimates=tuple(float(e) for e in est[:, w]),
                            analytic=float(ana[rr[w], cc[w]]), where=where(rr[w], cc[w]),
                            settled=bool(settled[w]))
        rel = err / np.maximum(np.maximum(np.abs(num), np.abs(ana)), 1e-300)
        rel = np.where(err == 0, 0.0, rel)
        report.args.append(ArgReport(
            name=name, mode=m,
            max_abs_err=float(err.max()) if err.size else 0.0,
            max_rel_err=float(rel.max()) if rel.size else 0.0,
            evaluations=evals, passed=verdict != "FAIL", verdict=verdict, **(kink or {})))
    if not report.passed:
        raise GradcheckError(report)
    return report
