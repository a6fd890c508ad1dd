"""Small linear algebra the layers compose: batched products, per-channel scales, mixes and biases.

- :func:`matmul`: ``op(a) @ b[n]`` for a batch of ``b`` (DCD's ``phi_n z_n`` and ``P v_n``,
  AtomConv2d's bases product). The one GEMM entry point of the backends (``be.gemm``,
  ``be.gemm_nt_sum``) does the work.
- :func:`scale_channels`: ``s[n, c] * a[n, c, ...]`` (DCD's channel-wise attention).
- :func:`channel_mix`: ``sum_k a[k, o] W[k, o, ...]`` (MixtureConv2d's per-output-channel mixture).
- :func:`add_bias`: ``x[n, c, ...] + b[c]`` (CondConv2d's static shift).
- :func:`add_eye`: ``I + a[n]`` (DCD's ``I + Phi``).

Each is ``f(...)`` and ``f.vjp(...) -> (y, pullback)``; inputs are never modified.
"""

from __future__ import annotations

import numpy as np

from .. import _args, backends
from .._op import op


def _size(shape) -> int:
    return int(np.prod(shape))


@op("a", "b")
def matmul(a: np.ndarray, b: np.ndarray, ta: bool = False):
    """Batched matrix product ``op(a) @ b[n]``, ``op`` transposing `a` when `ta`.

    Parameters
    ----------
    a : ndarray (M, K) shared by the batch, or (N, M, K) one per sample;
        (K, M) or (N, K, M) when `ta`
    b : ndarray (N, K, J)
    ta : bool

    Returns
    -------
    c : ndarray (N, M, J)
        ``c[n] = op(a) @ b[n]`` (or ``op(a[n]) @ b[n]``). pullback -> ``(da, db)`` with the
        shapes of a and b; a shared `a` gets the sum over the batch.
    """
    _, device = _args.check_arrays({"a": a, "b": b})
    ta = _args.flag("ta", ta)
    if len(a.shape) not in (2, 3):
        raise ValueError(f"a must be 2-D (M, K) or 3-D (N, M, K), got {len(a.shape)}-D array of "
                         f"shape {tuple(a.shape)}")
    _args.check_ndim("b", b, 3, "(N, K, J)")
    shape = tuple(a.shape)                                  # device arrays' shapes take no negative index
    shared = len(shape) == 2
    K = shape[-2] if ta else shape[-1]
    if b.shape[1] != K:
        raise ValueError(f"a{'^T' if ta else ''} has {K} columns (a has shape {shape}), "
                         f"but b has {b.shape[1]} rows (shape {tuple(b.shape)})")
    if not shared and shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have one batch size, got {a.shape[0]} and {b.shape[0]}")
    be = backends.get(device)

    a_, b_ = be.contiguous(a), be.contiguous(b)
    c = be.gemm(a_, b_, ta=ta)                              # (N, M, J)

    def pullback(dc):
        _args.check_cotangent(dc, c)
        dc_ = be.contiguous(dc)
        if shared:                                          # summed over n: one GEMM over N*J
            da = be.gemm_nt_sum(b_, dc_) if ta else be.gemm_nt_sum(dc_, b_)
        else:
            da = be.gemm(b_, dc_, tb=True) if ta else be.gemm(dc_, b_, tb=True)
        db = be.gemm(a_, dc_, ta=not ta)                    # (N, K, J)
        return da, db

    return c, pullback


def _per_sample_channels(name: str, a, s_name: str, s):
    """Check ``a (N, C, ...)`` against ``s (N, C)``; returns ``(N, C, rest)``."""
    if len(a.shape) < 2:
        raise ValueError(f"{name} must be at least 2-D (N, C, ...), got shape {tuple(a.shape)}")
    N, C = tuple(a.shape)[:2]
    _args.check_shape(s_name, s, (N, C), f"(N, C) with {name}'s N={N} and C={C}")
    return N, C, _size(tuple(a.shape)[2:])


@op("a", "s")
def scale_channels(a: np.ndarray, s: np.ndarray):
    """Per-sample channel scales, ``y[n, c, ...] = s[n, c] * a[n, c, ...]``.

    Parameters
    ----------
    a : ndarray (N, C, ...)
    s : ndarray (N, C)

    Returns
    -------
    y : ndarray (N, C, ...)
        pullback -> ``(da (N, C, ...), ds (N, C))`` with ``ds[n, c] = sum_... dy * a``.
    """
    _, device = _args.check_arrays({"a": a, "s": s})
    N, C, rest = _per_sample_channels("a", a, "s", s)
    be = backends.get(device)

    a3 = be.contiguous(a).reshape(N, C, rest)
    s_ = be.contiguous(s)
    y = be.scale_rows(a3, s_).reshape(a.shape)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dy3 = be.contiguous(dy).reshape(N, C, rest)
        return be.scale_rows(dy3, s_).reshape(a.shape), be.rowdot(dy3, a3)

    return y, pullback


@op("a", "W")
def channel_mix(a: np.ndarray, W: np.ndarray):
    """Per-output-channel mixture, ``y[o, ...] = sum_k a[k, o] * W[k, o, ...]``.

    Parameters
    ----------
    a : ndarray (K, O)
        Mixing weights, one set per output channel.
    W : ndarray (K, O, ...)
        K stacked kernels (or biases).

    Returns
    -------
    y : ndarray (O, ...)
        pullback -> ``(da (K, O), dW (K, O, ...))`` with ``dW[k, o] = a[k, o] * dy[o]``.
    """
    _, device = _args.check_arrays({"a": a, "W": W})
    _args.check_ndim("a", a, 2, "(K, O)")
    if len(W.shape) < 2:
        raise ValueError(f"W must be at least 2-D (K, O, ...), got shape {tuple(W.shape)}")
    _args.check_shape("a", a, tuple(W.shape)[:2], f"(K, O) with W's K={W.shape[0]} and O={W.shape[1]}")
    be = backends.get(device)

    a_, W_ = be.contiguous(a), be.contiguous(W)
    y = be.channel_mix(a_, W_)                              # (O, ...)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dW, da = be.channel_mix_backward(a_, W_, be.contiguous(dy))
        return da, dW

    return y, pullback


@op("x", "b")
def add_bias(x: np.ndarray, b: np.ndarray):
    """A per-channel bias, ``y[n, c, ...] = x[n, c, ...] + b[c]``.

    Parameters
    ----------
    x : ndarray (N, C, ...)
    b : ndarray (C,)

    Returns
    -------
    y : ndarray (N, C, ...)
        pullback -> ``(dx, db (C,))``: dx is `dy` itself, db its sum over all but the channel axis.
    """
    _, device = _args.check_arrays({"x": x, "b": b})
    if len(x.shape) < 2:
        raise ValueError(f"x must be at least 2-D (N, C, ...), got shape {tuple(x.shape)}")
    N, C = tuple(x.shape)[:2]
    _args.check_shape("b", b, (C,), f"(C,) with x's C={C}")
    be = backends.get(device)
    rest = _size(tuple(x.shape)[2:])

    y = be.copy(x)
    be.add_channel_bias(y.reshape(N, C, rest), be.contiguous(b))   # y is ours: in place

    def pullback(dy):
        _args.check_cotangent(dy, y)
        return dy, be.channel_sum(be.contiguous(dy).reshape(N, C, rest))

    return y, pullback


@op("a")
def add_eye(a: np.ndarray):
    """``y[n] = I + a[n]`` for a batch of square matrices.

    Parameters
    ----------
    a : ndarray (N, L, L)

    Returns
    -------
    y : ndarray (N, L, L)
        pullback -> ``(da,)``, which is `dy` itself.
    """
    _, device = _args.check_arrays({"a": a})
    _args.check_ndim("a", a, 3, "(N, L, L)")
    _args.check_shape("a", a, (a.shape[0], a.shape[1], a.shape[1]), "(N, L, L): square matrices")
    y = backends.get(device).add_eye(a)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        return (dy,)

    return y, pullback
