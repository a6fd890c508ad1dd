"""Validate another implementation against a dynconv_np op: :func:`assert_vjp_close`.

A kernel engineer wraps a fast kernel (NumPy, Numba, CUDA, PyTorch...) in a function
with a ``.vjp`` following the convention of the ops, and checks its forward and every
gradient against the reference engine, on the same inputs and the same random cotangent::

    import dynconv_np as dc
    report = dc.testing.assert_vjp_close(my_conv, dc.dynamic_conv2d, (x, W, pi), {"padding": 1})

The rule: the candidate runs on the arguments exactly as given (dtype, device); the
reference runs on float64 copies of them, read back to the host (``reference_dtype=None``
runs it in the arguments' own dtype instead). Both see the same cotangent: drawn from
``seed`` in float64, rounded to the candidate output's dtype, handed to the candidate as
the kind of array its forward returned and to the reference as a host copy.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._args import device_of
from .gradcheck import _Rows, _table

#: Default ``(rtol, atol factor)`` by the least precise float dtype among the candidate's
#: inputs and that output. The absolute tolerance is the factor times the largest
#: ``|reference|`` of the output, so that an entry near zero (a sum that cancels) is
#: judged at the scale of its output, not at its own.
TOLERANCES = {
    np.dtype(np.float16): (1e-2, 1e-3),
    np.dtype(np.float32): (1e-4, 1e-5),
    np.dtype(np.float64): (1e-9, 1e-10),
}


@dataclass
class OutputReport:
    """The comparison of one output (the forward ``y`` or one gradient).

    ``max_rel_err`` is ``max_abs_err`` divided by the largest ``|reference|`` of the
    output. ``worst_index`` is the entry that used most of its tolerance
    ``atol + rtol * |reference|``; ``candidate`` and ``reference`` are the values there.
    ``note`` explains a failure that is not about values (None, shape, dtype).
    """

    name: str
    shape: tuple | None
    dtype: str
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple | None
    candidate: float | None
    reference: float | None
    atol: float | None
    rtol: float | None
    passed: bool
    note: str = ""


@dataclass
class VjpReport(_Rows):
    """Per-output results of :func:`assert_vjp_close`; ``str(report)`` is a table,
    ``report["dW"]`` one row, ``bool(report)`` whether every output passed."""

    _rows = "outputs"
    title: str
    outputs: list[OutputReport] = field(default_factory=list)

    def __str__(self) -> str:
        def num(v, fmt=".3e"):
            return "-" if v is None else format(v, fmt)

        rows = [(o.name, "-" if o.shape is None else str(o.shape), o.dtype, num(o.max_abs_err), num(o.max_rel_err),
                 "-" if o.worst_index is None else str(list(o.worst_index)), num(o.candidate), num(o.reference),
                 num(o.atol, ".1e"), num(o.rtol, ".1e"),
                 ("pass" if o.passed else "FAIL") + (f" ({o.note})" if o.note else "")) for o in self.outputs]
        head = ("output", "shape", "dtype", "max abs err", "max rel err", "worst index", "candidate", "reference",
                "atol", "rtol", "result")
        return self.title + "\n" + _table(head, rows, left=3)


def to_numpy(a, what: str = "array") -> np.ndarray:
    """A host NumPy view or copy of an array from any engine.

    Reads NumPy arrays, numba CUDA device arrays and anything with
    ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors), DLPack or ``__array__``
    (PyTorch CPU tensors, gradient-tracking ones included).

    Raises
    ------
    TypeError
        When `a` is none of these; the message names `what`.
    """
    if isinstance(a, np.ndarray):
        return a
    detach = getattr(a, "detach", None)
    if callable(detach):  # torch: a tensor that requires grad refuses to export
        a = detach()
    if device_of(a) == "cuda":
        copy = getattr(a, "copy_to_host", None)
        if callable(copy):  # numba device arrays, the CUDA simulator's included
            return copy()
        from numba import cuda

        return cuda.as_cuda_array(a).copy_to_host()
    if hasattr(a, "__dlpack__"):
        try:
            return np.from_dlpack(a)
        except (BufferError, TypeError, ValueError, RuntimeError):
            pass  # e.g. a device DLPack NumPy cannot read: try __array__ below
    try:
        out = np.asarray(a)
    except Exception as e:
        raise TypeError(f"{what} cannot be read as an array ({type(a).__name__}: {e})") from None
    if out.dtype == object:
        raise TypeError(f"{what} cannot be read as an array, got {type(a).__name__}")
    return out


def _is_array(a) -> bool:
    return device_of(a) != "" or hasattr(a, "__dlpack__")


def _like(dy: np.ndarray, y):
    """`dy` as the kind of array `y` is: NumPy, a torch tensor on y's device, or a
    numba device array for any other CUDA array."""
    if isinstance(y, np.ndarray):
        return dy
    if type(y).__module__.split(".")[0] == "torch":
        return sys.modules["torch"].as_tensor(dy).to(y.device)
    if device_of(y) == "cuda":
        from numba import cuda

        return cuda.to_device(dy)
    return dy


def _grad_names(f: Callable, n: int) -> list[str]:
    keys = getattr(f, "param_keys", None)
    params = getattr(f, "array_params", None)
    if keys is not None and len(keys) + 1 == n:
        names = ["x", *keys]
    elif params is not None and len(params) == n:
        names = list(params)
    else:
        return [f"grad[{i}]" for i in range(n)]
    return ["d" + s for s in names]


def _arg_names(f: Callable, args: Sequence) -> list[str]:
    try:
        params = [p for p in inspect.signature(f).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i].name if i < len(params) else f"args[{i}]" for i in range(len(args))]


def _precision(dtypes) -> np.dtype:
    """The least precise float dtype among `dtypes` (float64 when there is none)."""
    floats = [np.dtype(d) for d in dtypes if np.dtype(d).kind == "f"]
    return min(floats, key=lambda d: d.itemsize, default=np.dtype(np.float64))


def _compare(name: str, c, r, prec: np.dtype, rtol: float | None, atol: float | None) -> OutputReport:
    """Compare candidate `c` (host array or None) with reference `r` (host array or None)."""

    def row(passed, note, shape=None, dtype="-", at=atol, rt=rtol, **kw):
        return OutputReport(name=name, shape=shape, dtype=dtype, max_abs_err=kw.get("max_abs_err"),
                            max_rel_err=kw.get("max_rel_err"), worst_index=kw.get("worst_index"),
                            candidate=kw.get("candidate"), reference=kw.get("reference"),
                            atol=at, rtol=rt, passed=passed, note=note)

    if c is None or r is None:
        if c is None and r is None:
            return row(True, "None on both sides")
        given, missing = ("reference", "candidate") if c is None else ("candidate", "reference")
        shape = (r if c is None else c).shape
        return row(False, f"{missing} gives None, {given} an array of shape {shape}")
    if c.dtype.kind not in "fiu":
        return row(False, f"candidate gives dtype {c.dtype}", r.shape, str(c.dtype))
    if c.shape != r.shape:
        return row(False, f"candidate shape {c.shape}, reference {r.shape}", r.shape, str(c.dtype))
    rt, factor = TOLERANCES.get(_precision([prec, c.dtype]), TOLERANCES[np.dtype(np.float64)])
    rt = rt if rtol is None else rtol
    r64, c64 = r.astype(np.float64), c.astype(np.float64)
    scale = float(np.abs(r64).max(initial=0.0))
    at = factor * scale if atol is None else atol
    if not r64.size:
        return row(True, "empty", r.shape, str(c.dtype), at, rt)
    err = np.abs(c64 - r64)
    # NaN against NaN is agreement; NaN against a number is the worst error
    err = np.where(np.isnan(c64) & np.isnan(r64), 0.0, np.nan_to_num(err, nan=np.inf))
    allowed = at + rt * np.abs(r64)
    with np.errstate(divide="ignore", invalid="ignore"):
        used = np.where(err == 0, 0.0, err / allowed)
    w = np.unravel_index(int(np.argmax(used)), r.shape)
    max_abs = float(err.max())
    return row(bool(np.all(err <= allowed)), "", r.shape, str(c.dtype), at, rt, max_abs_err=max_abs,
               max_rel_err=max_abs / scale if scale else (0.0 if max_abs == 0 else float("inf")),
               worst_index=tuple(int(i) for i in w), candidate=float(c64[w]), reference=float(r64[w]))


def assert_vjp_close(candidate: Callable, reference: Callable, args: Sequence, kwargs: dict | None = None, *,
                     rtol: float | None = None, atol: float | None = None, seed: int = 0,
                     reference_dtype=np.float64) -> VjpReport:
    """Check a candidate implementation's forward and gradients against a reference op.

    Parameters
    ----------
    candidate : callable with a ``vjp`` attribute
        ``candidate.vjp(*args, **kwargs) -> (y, pullback)``, ``pullback(dy)`` returning
        one gradient per array parameter, in signature order (None for an optional array
        not given), as the ops do. Its arrays may be NumPy arrays, numba device arrays,
        or anything with ``__cuda_array_interface__``, DLPack or ``__array__`` (e.g.
        torch tensors). Its pullback receives the cotangent as the kind of array its
        forward returned.
    reference : callable with a ``vjp`` attribute
        Usually a dynconv_np op (e.g. ``dc.dynamic_conv2d``), or ``nn.as_function(layer)``.
    args : sequence
        The positional arguments of both, e.g. ``(x, W, pi)``: arrays of shape and dtype
        as the candidate expects them.
    kwargs : dict, optional
        Keyword arguments of both (``stride``, ``padding``, ...).
    rtol, atol : float, optional
        An entry passes when ``|candidate - reference| <= atol + rtol * |reference|``.
        Defaults by the least precise float dtype among the candidate's inputs and that
        output: float32 ``rtol=1e-4``, ``atol=1e-5 * max|reference|``; float64 ``1e-9``
        and ``1e-10 * max|reference|`` (tight enough to catch a float64 result that went
        through float32); float16 ``1e-2`` and ``1e-3 * max|reference|``.
        A given `atol` is absolute.
    seed : int
        Seed of the random cotangent (standard normal, never all-ones).
    reference_dtype : dtype or None
        The dtype the reference computes in (float arrays are copied to it); None: the
        arguments' own dtype.

    Returns
    -------
    VjpReport
        One row per output (``y``, then ``d<param>`` per gradient): max abs and rel
        error, worst index and the two values there, the tolerances used.

    Raises
    ------
    AssertionError
        When any output differs beyond its tolerance, a gradient is None on one side
        only, a shape differs, the pullbacks return different numbers of gradients or
        the candidate modified an input; the message holds the table.
    TypeError, ValueError
        For bad arguments (before any work).
    """
    for who, f in (("candidate", candidate), ("reference", reference)):
        if not callable(getattr(f, "vjp", None)):
            raise TypeError(f"{who} must have a .vjp method following the vjp convention "
                            f"(vjp(*args, **kwargs) -> (y, pullback)), got {f!r}")
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple or list of the positional arguments, got {type(args).__name__}"
                        + (" (wrap a single array as (x,))" if _is_array(args) else ""))
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict or None, got {type(kwargs).__name__}")
    for nm, v in (("rtol", rtol), ("atol", atol)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0):
            raise ValueError(f"{nm} must be a non-negative number or None, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if reference_dtype is not None:
        reference_dtype = np.dtype(reference_dtype)
        if reference_dtype.kind != "f":
            raise ValueError(f"reference_dtype must be a float dtype or None, got {reference_dtype}")
    kwargs = dict(kwargs or {})
    names = _arg_names(reference, args) + list(kwargs)
    values = list(args) + list(kwargs.values())
    host, dtypes = [], []
    for v, nm in zip(values, names):
        if _is_array(v):
            h = to_numpy(v, nm)
            dtypes.append(h.dtype)
            cast = h.dtype.kind == "f" and reference_dtype is not None
            v = h.astype(reference_dtype) if cast else np.array(h, copy=True)
        host.append(v)
    rargs, rkw = host[:len(args)], dict(zip(kwargs, host[len(args):]))
    prec = _precision(dtypes)
    snapshots = {nm: v.copy() for nm, v in zip(names, values) if isinstance(v, np.ndarray)}

    y_r, pb_r = reference.vjp(*rargs, **rkw)
    out = candidate.vjp(*args, **kwargs)
    if not (isinstance(out, tuple) and len(out) == 2 and callable(out[1])):
        raise TypeError(f"candidate.vjp must return (y, pullback) with a callable pullback, got {type(out).__name__}")
    y_c, pb_c = out
    ref_name = getattr(reference, "__name__", type(reference).__name__)
    cand_name = getattr(candidate, "__name__", type(candidate).__name__)
    where = "the arguments' dtype" if reference_dtype is None else str(reference_dtype)
    report = VjpReport(f"assert_vjp_close: {cand_name} against {ref_name} (reference in {where}, seed {seed})")

    def fail(msg: str):
        raise AssertionError(f"{msg}\n{report}")

    def check_inputs():
        for nm, before in snapshots.items():
            now = values[names.index(nm)]
            if not np.array_equal(now, before, equal_nan=before.dtype.kind == "f"):
                fail(f"candidate modified its input {nm} in place")

    y_ch = to_numpy(y_c, "candidate's forward output")
    y_rh = to_numpy(y_r, "reference's forward output")
    report.outputs.append(_compare("y", y_ch, y_rh, prec, rtol, atol))
    check_inputs()
    if y_ch.shape != y_rh.shape:
        fail("candidate's forward output has the wrong shape")

    dy = np.random.default_rng(seed).standard_normal(y_rh.shape)
    dy_c = dy.astype(y_ch.dtype if y_ch.dtype.kind == "f" else np.float64)
    dy_r = dy_c.astype(reference_dtype or y_rh.dtype)
    g_r = tuple(pb_r(dy_r))
    g_c = pb_c(_like(dy_c, y_c))
    if not isinstance(g_c, (tuple, list)):
        raise TypeError(f"candidate's pullback must return a tuple of gradients, got {type(g_c).__name__}")
    gnames = _grad_names(reference, len(g_r))
    if len(g_c) != len(g_r):
        fail(f"candidate's pullback returned {len(g_c)} gradients, the reference {len(g_r)} "
             f"({', '.join(gnames)})")
    for nm, c, r in zip(gnames, g_c, g_r):
        c = None if c is None else to_numpy(c, f"candidate's {nm}")
        r = None if r is None else to_numpy(r, f"reference's {nm}")
        report.outputs.append(_compare(nm, c, r, prec, rtol, atol))
    check_inputs()
    if not report.passed:
        fail(f"candidate disagrees with reference ({sum(not o.passed for o in report)} of {len(report)} outputs)")
    return report
