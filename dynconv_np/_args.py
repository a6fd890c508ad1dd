"""Argument normalisation and validation: the one place for error messages.

Every op calls these helpers first, so bad input raises a clear ``TypeError`` or
``ValueError`` naming the argument, what was expected and what was given, before any
work is done (and never a Numba typing error, a segfault or a silently wrong result).

Geometry legend used across the package (Chainer's short physical names):
``kh, kw`` kernel size, ``sh, sw`` stride, ``ph, pw`` padding at the top/left,
``dh, dw`` dilation, ``Ho, Wo`` output size.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------- arrays
def device_of(a) -> str:
    """``"cpu"`` for a NumPy array, ``"cuda"`` for a CUDA array, else ``""``."""
    if isinstance(a, np.ndarray):
        return "cpu"
    # numba device arrays carry __cuda_ndarray__: the CUDA simulator's have no
    # __cuda_array_interface__ (their memory lives on the host).
    if hasattr(a, "__cuda_array_interface__") or getattr(a, "__cuda_ndarray__", False):
        return "cuda"
    return ""


def _dtype_of(a) -> np.dtype:
    # In native byte order: a big-endian float32 array is a float32 array (see host_array)
    dt = getattr(a, "dtype", None)
    if dt is not None:
        try:
            return np.dtype(dt).newbyteorder("=")
        except TypeError:
            pass
    return np.dtype(a.__cuda_array_interface__["typestr"]).newbyteorder("=")


def host_array(a):
    """`a` as the CPU kernels take it, when it is a float32/float64 NumPy array: C-contiguous,
    writeable, aligned and in native byte order; `a` itself when it already is, else a copy
    (`a` is never modified). Anything else is returned as it is, for the checks to judge.

    Every op passes its array arguments and its cotangent through here (:mod:`._op`), so
    what reaches a kernel has one layout whatever the caller had: a read-only array (from
    ``np.load(..., mmap_mode="r")``, a broadcast view), a strided view or a big-endian
    array (from a file written on another machine) neither fails nor compiles the kernels
    again, and results do not depend on how the input was laid out in memory.
    """
    if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
        return a
    f = a.flags
    if f.c_contiguous and f.writeable and f.aligned and a.dtype.isnative:
        return a
    return np.array(a, dtype=a.dtype.newbyteorder("="), order="C")


def check_arrays(arrays: dict, optional: tuple = ()) -> tuple[np.dtype, str]:
    """Check that every array is a float32/float64 array of one dtype on one device.

    Parameters
    ----------
    arrays : dict
        ``{name: array}`` in signature order; values named in `optional` may be None.
    optional : tuple of str
        Names that may be None.

    Returns
    -------
    dtype, device : numpy.dtype, str
        The common dtype and ``"cpu"`` or ``"cuda"``.
    """
    dtype = device = None
    first = None
    for name, a in arrays.items():
        if a is None:
            if name in optional:
                continue
            raise TypeError(f"{name} must be an array, got None")
        dev = device_of(a)
        if not dev:
            raise TypeError(
                f"{name} must be a numpy.ndarray (or a CUDA device array), "
                f"got {type(a).__name__}"
            )
        dt = _dtype_of(a)
        if dt not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64, got {dt}")
        if dtype is None:
            dtype, device, first = dt, dev, name
            continue
        if dev != device:
            raise TypeError(
                f"{name} is a {dev} array but {first} is a {device} array: "
                f"all arrays of one call must live on the same device"
            )
        if dt != dtype:
            raise TypeError(
                f"{name} has dtype {dt} but {first} has dtype {dtype}: "
                f"all arrays of one call must share one dtype"
            )
    return dtype, device


def check_ndim(name: str, a, ndim: int, layout: str = "") -> None:
    """Raise ``ValueError`` unless ``a.ndim == ndim``."""
    if len(a.shape) != ndim:
        what = f" {layout}" if layout else ""
        raise ValueError(
            f"{name} must be {ndim}-D{what}, got {len(a.shape)}-D array of shape {tuple(a.shape)}"
        )


def check_shape(name: str, a, expected: tuple, layout: str = "") -> None:
    """Raise ``ValueError`` unless ``a.shape == expected``."""
    if tuple(a.shape) != tuple(expected):
        what = f" {layout}" if layout else ""
        raise ValueError(f"{name} must have shape {tuple(expected)}{what}, got {tuple(a.shape)}")


def check_nonempty(name: str, a, axes: tuple[int, ...], what: str) -> None:
    """Raise ``ValueError`` if any of ``a.shape[axes]`` is zero."""
    for ax in axes:
        if a.shape[ax] < 1:
            raise ValueError(f"{name} must have at least one {what}, got shape {tuple(a.shape)}")


def check_cotangent(dy, y) -> None:
    """Check a pullback's cotangent against the forward output `y`."""
    check_arrays({"dy": dy})
    if device_of(dy) != device_of(y):
        raise TypeError(f"dy is a {device_of(dy)} array but the output is a {device_of(y)} array")
    if _dtype_of(dy) != _dtype_of(y):
        raise TypeError(f"dy must have the output's dtype {_dtype_of(y)}, got {_dtype_of(dy)}")
    if tuple(dy.shape) != tuple(y.shape):
        raise ValueError(f"dy must have the output's shape {tuple(y.shape)}, got {tuple(dy.shape)}")


# ----------------------------------------------------------------------------- scalars
#: Largest stride, padding, dilation or kernel size (and output size) accepted: larger
#: ones describe no real image and would overflow the kernels' index arithmetic.
MAX_EXTENT = 2**31 - 1


def _int(name: str, v) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(v)


def pair(name: str, v, minimum: int) -> tuple[int, int]:
    """Normalise an int or an ``(h, w)`` pair, each entry at least `minimum`."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {v!r}")
        out = (_int(name, v[0]), _int(name, v[1]))
    else:
        out = (_int(name, v),) * 2
    if min(out) < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be {kind}, got {v!r}")
    if max(out) > MAX_EXTENT:
        raise ValueError(f"{name} must be at most 2**31 - 1 = {MAX_EXTENT}, got {v!r}")
    return out


def positive_int(name: str, v) -> int:
    """A positive int (``groups``, counts)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def positive_float(name: str, v) -> float:
    """A finite positive float (temperatures, scales)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {v!r}")
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return float(v)


# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Everything the conv-like kernels need about the sliding window.

    ``ph, pw`` are the top/left paddings; the bottom/right padding is implied by
    ``Ho, Wo`` (``padding="same"`` with an even total pads one more at the bottom and
    right, as PyTorch does).
    """

    N: int
    C: int
    H: int
    W: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    Ho: int
    Wo: int

    @property
    def P(self) -> int:
        """Output pixels per sample, ``Ho * Wo``."""
        return self.Ho * self.Wo

    @property
    def taps(self) -> int:
        """Kernel taps, ``kh * kw``."""
        return self.kh * self.kw

    @property
    def window(self) -> tuple[int, ...]:
        """``(kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)``: the window as the backend kernels take it."""
        return (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw,
                self.dh, self.dw, self.Ho, self.Wo)

    @property
    def pointwise(self) -> bool:
        """A 1x1, stride-1, unpadded window: the unfolded input is ``x`` itself."""
        return (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (1, 1, 1, 1, 0, 0)


def geometry(x_shape, kh: int, kw: int, stride, padding, dilation,
             x_name: str = "x", kernel_name: str = "w") -> Geometry:
    """Validate stride/padding/dilation and compute the output size.

    ``Ho = (H + 2*ph - dh*(kh-1) - 1)//sh + 1`` (same for W); ``padding`` may be an int, a
    pair, ``"valid"`` or ``"same"`` (stride 1 only, as in PyTorch).
    """
    N, C, H, W = (int(s) for s in x_shape)
    sh, sw = pair("stride", stride, 1)
    dh, dw = pair("dilation", dilation, 1)
    if kh < 1 or kw < 1:
        raise ValueError(f"{kernel_name} must have a kernel of at least 1x1, got {kh}x{kw}")
    if isinstance(padding, str):
        if padding == "valid":
            pt = pb = pl = pr = 0
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError(f'padding="same" needs stride 1, got stride={stride!r}')
            th, tw = dh * (kh - 1), dw * (kw - 1)
            pt, pl = th // 2, tw // 2
            pb, pr = th - pt, tw - pl
        else:
            raise ValueError(f'padding must be an int, a pair, "valid" or "same", got {padding!r}')
    else:
        pt, pl = pair("padding", padding, 0)
        pb, pr = pt, pl
    Ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if Ho < 1 or Wo < 1 or max(Ho, Wo) > MAX_EXTENT:
        bound = "below 1" if min(Ho, Wo) < 1 else "above 2**31 - 1"
        raise ValueError(
            f"output size would be {Ho}x{Wo} ({bound}): {x_name} is {H}x{W}, kernel "
            f"{kh}x{kw}, stride {(sh, sw)}, padding {(pt, pl)}, dilation {(dh, dw)}"
        )
    return Geometry(N, C, H, W, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo)


def check_groups(groups, C: int, O: int, C_per_group: int, w_name: str = "w") -> int:
    """Validate ``groups`` against x's channels ``C`` and the kernel's ``(O, C//groups)``."""
    g = positive_int("groups", groups)
    if C % g:
        raise ValueError(f"groups={g} does not divide x's {C} channels")
    if O % g:
        raise ValueError(f"groups={g} does not divide {w_name}'s {O} output channels")
    if C_per_group * g != C:
        raise ValueError(
            f"{w_name} has {C_per_group} input channels per group, but x has {C} channels "
            f"and groups={g}"
        )
    return g


def conv_args(x, w, bias, groups, stride, padding, dilation, *, w_name: str, w_layout: str,
              channels: str, bias_layout: str) -> tuple[int, Geometry]:
    """The checks every convolution op shares, in this order: x (N, C, H, W); the kernel
    `w` ``(..., O, C//groups, kh, kw)`` with nonempty leading axes; `groups`; the bias,
    of shape ``w.shape[:-3]``; the window.

    Parameters
    ----------
    w_name, w_layout : str
        The kernel's parameter name and layout, e.g. ``"w"``, ``"(O, C//groups, kh, kw)"``
        (the layout's axes give the expected number of dimensions).
    channels : str
        What the kernel's leading axes count, e.g. ``"output and input channel"``.
    bias_layout : str
        The bias's layout, e.g. ``"(O,)"``.

    Returns
    -------
    groups : int
    g : Geometry
    """
    check_ndim("x", x, 4, "(N, C, H, W)")
    check_ndim(w_name, w, w_layout.count(",") + 1, w_layout)
    check_nonempty(w_name, w, tuple(range(len(w.shape) - 2)), channels)
    O, Cg, kh, kw = w.shape[-4:]
    groups = check_groups(groups, x.shape[1], O, Cg, w_name)
    if bias is not None:
        check_shape("bias", bias, tuple(w.shape[:-3]), bias_layout)
    return groups, geometry(x.shape, kh, kw, stride, padding, dilation, kernel_name=w_name)


# ----------------------------------------------------------------------------- routing and layers
def axis(name: str, v, ndim: int) -> int:
    """An axis index valid for an ``ndim``-D array, normalised to be non-negative."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if not -ndim <= v < ndim:
        raise ValueError(f"{name}={v} is out of range for a {ndim}-D array")
    return int(v) % ndim


def unit_interval(name: str, v) -> float:
    """A number in ``[0, 1]`` (BatchNorm momentum, dropout rates)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {v!r}")
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    return float(v)


def flag(name: str, v) -> bool:
    """A bool (``training``, ``bias``, ``per_channel``)."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def float_dtype(name: str, v) -> np.dtype:
    """``float32`` or ``float64`` given as a dtype, type or name (a layer's ``dtype=``)."""
    try:
        dt = np.dtype(v)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {v!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def kernel_pair(name: str, v) -> tuple[int, int]:
    """A positive kernel size, int or ``(kh, kw)``."""
    return pair(name, v, 1)


# ----------------------------------------------------------------------------- dcd / atoms
def check_odd_kernel(name: str, kh: int, kw: int) -> None:
    """Raise ``ValueError`` unless both kernel sizes are odd (a centre tap exists)."""
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"{name} must have an odd kernel size (it needs a centre tap), got {kh}x{kw}")


def tap_filters(g: Geometry, M: int, cdiv: int, filt=None) -> int:
    """Number of filters ``F = (C // cdiv) * M`` of the per-pixel tap engine, checking the
    channel-to-filter mapping (and `filt`'s shape ``(N, F, kh*kw, Ho, Wo)`` when given).

    The ops validate user input before they reach the engine; this guards the op authors.
    """
    if M < 1 or cdiv < 1 or g.C % cdiv:
        raise ValueError(f"tap engine: need M >= 1 and cdiv dividing C, got M={M}, cdiv={cdiv}, C={g.C}")
    F = (g.C // cdiv) * M
    if filt is not None and tuple(filt.shape) != (g.N, F, g.taps, g.Ho, g.Wo):
        raise ValueError(f"tap engine: filt must be {(g.N, F, g.taps, g.Ho, g.Wo)}, got {tuple(filt.shape)}")
    return F


# ----------------------------------------------------------------------------- losses and optimisers
def real_scalar(name: str, v) -> float:
    """A finite real number: a Python or NumPy scalar, or a 0-d host array (a loss's cotangent)."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v[()]
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return float(v)


def non_negative_float(name: str, v) -> float:
    """A finite number >= 0 (weight decay)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a non-negative number, got {v!r}")
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be non-negative, got {v!r}")
    return float(v)


def below_one(name: str, v) -> float:
    """A number in ``[0, 1)`` (SGD's momentum, Adam's betas)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1), got {v!r}")
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {v!r}")
    return float(v)


# ----------------------------------------------------------------------------- odconv
def odconv_attentions(a_w, a_s, a_c, a_f, N: int, K: int, C: int, O: int, kh: int, kw: int) -> None:
    """Check ODConv's four attentions against x ``(N, C, ...)`` and W ``(K, O, ., kh, kw)``."""
    check_shape("a_w", a_w, (N, K), f"(N, K) to match x's batch N={N} and W's K={K}")
    check_shape("a_s", a_s, (N, kh, kw), f"(N, kh, kw) to match x's batch N={N} and W's {kh}x{kw} kernel")
    check_shape("a_c", a_c, (N, C), f"(N, C) to match x's batch N={N} and its C={C} channels")
    check_shape("a_f", a_f, (N, O), f"(N, O) to match x's batch N={N} and W's O={O}")


# ----------------------------------------------------------------------------- 1-D forms
def single(name: str, v, minimum: int) -> int:
    """A 1-D stride, padding or dilation: an int or a 1-tuple, at least `minimum`."""
    if isinstance(v, (tuple, list)) and len(v) != 1:
        raise ValueError(f"{name} must be an int or a 1-tuple, got {v!r}")
    u = v[0] if isinstance(v, (tuple, list)) else v
    if isinstance(u, (bool, np.bool_)) or not isinstance(u, numbers.Integral):
        raise TypeError(f"{name} must be an int or a 1-tuple of an int, got {v!r}")
    if u < minimum:
        raise ValueError(f"{name} must be {'positive' if minimum == 1 else 'non-negative'}, got {v!r}")
    return int(u)


def window1d(stride, padding, dilation) -> tuple[int, int | str, int]:
    """A 1-D window's ``(stride, padding, dilation)`` as ints (padding may stay "valid" or "same")."""
    s = single("stride", stride, 1)
    d = single("dilation", dilation, 1)
    if not isinstance(padding, str):
        return s, single("padding", padding, 0), d
    if padding not in ("valid", "same"):
        raise ValueError(f'padding must be an int, a 1-tuple, "valid" or "same", got {padding!r}')
    if padding == "same" and s != 1:
        raise ValueError(f'padding="same" needs stride 1, got stride={stride!r}')
    return s, padding, d


def lift1d(s: int, p: int | str, d: int) -> dict:
    """The ``stride, padding, dilation`` of a 1-D window on the 2-D engine (``H = 1``, ``(1, k)`` kernels)."""
    return dict(stride=(1, s), padding=p if isinstance(p, str) else (0, p), dilation=(1, d))


def conv1d_args(x, w, bias, groups, stride, padding, dilation, *, w_name: str, w_layout: str,
                channels: str, bias_layout: str) -> tuple[int, dict]:
    """The checks of a 1-D convolution on x ``(N, C, L)`` with the kernel `w`
    ``(..., O, C//groups, k)``, in the order and words of :func:`conv_args`, with the shapes
    a 1-D user sees.

    Returns
    -------
    groups : int
    geo : dict
        ``stride``, ``padding``, ``dilation`` of the same convolution on ``(N, C, 1, L)``
        with a ``(1, k)`` kernel (:func:`lift1d`): the 2-D engine runs it.
    """
    check_ndim("x", x, 3, "(N, C, L)")
    check_ndim(w_name, w, w_layout.count(",") + 1, w_layout)
    lead = len(w.shape) - 1
    check_nonempty(w_name, w, tuple(range(lead)), channels)
    O, Cg, k = w.shape[lead - 2:]
    groups = check_groups(groups, x.shape[1], O, Cg, w_name)
    if bias is not None:
        check_shape("bias", bias, tuple(w.shape[:lead - 1]), bias_layout)
    s, p, d = window1d(stride, padding, dilation)
    if k < 1:
        raise ValueError(f"{w_name} must have a kernel of at least 1 tap, got {k}")
    span = d * (k - 1)
    total = {"valid": 0, "same": span}[p] if isinstance(p, str) else 2 * p
    L = x.shape[2]
    Lo = (L + total - span - 1) // s + 1
    if Lo < 1:
        raise ValueError(f"output length would be {Lo} (below 1): x has length {L}, kernel {k}, "
                         f"stride {s}, padding {padding!r}, dilation {d}")
    return groups, lift1d(s, p, d)
# ----------------------------------------------------------------------------- per-pixel filters (DDF, Involution)
def tap_scale(g: Geometry, scale) -> None:
    """Check the tap engine's optional tap scale against ``(N, C, kh*kw)`` (guards the op authors)."""
    if tuple(scale.shape) != (g.N, g.C, g.taps):
        raise ValueError(f"tap engine: scale must be {(g.N, g.C, g.taps)}, got {tuple(scale.shape)}")


def per_pixel_window(name: str, taps: int, kernel_size) -> tuple[int, int]:
    """The window ``(kh, kw)`` of per-pixel filters with `taps` entries along their
    ``kh*kw`` axis: `kernel_size` when given (its ``kh*kw`` must be `taps`), else the
    square window ``k*k = taps``."""
    if kernel_size is not None:
        kh, kw = kernel_pair("kernel_size", kernel_size)
        if kh * kw != taps:
            raise ValueError(f"kernel_size={kernel_size!r} has {kh * kw} taps, but {name} has {taps} "
                             f"along its kh*kw axis")
        return kh, kw
    k = math.isqrt(taps)
    if taps < 1 or k * k != taps:
        raise ValueError(f"{name} has {taps} entries along its kh*kw axis, which is not a square k*k "
                         f"(give kernel_size=(kh, kw) for a rectangular window)")
    return k, k


def channel_groups(groups, C: int) -> int:
    """A positive ``groups`` dividing x's ``C`` channels (per-pixel ops: no kernel to match)."""
    g = positive_int("groups", groups)
    if C % g:
        raise ValueError(f"groups={g} does not divide x's {C} channels")
    return g


def combine_mode(v) -> str:
    """DDF's filter combination, ``"mul"`` or ``"add"``."""
    if not isinstance(v, str) or v not in ("mul", "add"):
        raise ValueError(f'combine must be "mul" or "add", got {v!r}')
    return v


def sequence_geometry(x_shape, k: int, stride, padding, dilation, kernel_name: str = "kernel") -> Geometry:
    """The geometry of a 1-D op on x ``(N, C, L)`` as a 2-D window ``(1, k)`` on ``(N, C, 1, L)``.

    `stride` and `dilation` are positive ints, `padding` a non-negative int, ``"valid"``
    or ``"same"`` (stride 1).
    """
    s = positive_int("stride", stride)
    d = positive_int("dilation", dilation)
    if isinstance(padding, str):
        if padding == "same" and s != 1:
            raise ValueError(f'padding="same" needs stride 1, got stride={stride!r}')
        pad = padding
    else:
        if isinstance(padding, (bool, np.bool_)) or not isinstance(padding, numbers.Integral):
            raise TypeError(f'padding must be a non-negative int, "valid" or "same", got {padding!r}')
        if padding < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
        pad = (0, int(padding))
    N, C, L = (int(v) for v in x_shape)
    return geometry((N, C, 1, L), 1, k, (1, s), pad, (1, d), kernel_name=kernel_name)
