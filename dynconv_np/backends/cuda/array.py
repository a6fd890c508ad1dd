"""CUDA device arrays: allocation, host/device moves, copies and layout changes.

Every primitive of this backend takes numba device arrays or any object with
``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors) and returns numba device
arrays on the same device; :func:`contiguous` is the entry point that views a foreign
array as a numba one (no copy) and copies a strided one to C order on the device.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from .index import split, unravel3
from .launch import SIMULATOR, launch, per_element, size_of


class _HostInterface:
    """Expose a ``__cuda_array_interface__`` as NumPy's ``__array_interface__``.

    Only for the simulator, whose "device" memory is host memory: a foreign object's
    device pointer is then a host address. Holding `owner` keeps that memory alive for
    as long as the NumPy view that NumPy builds from this object.
    """

    def __init__(self, owner):
        cai = owner.__cuda_array_interface__
        self._owner = owner
        self.__array_interface__ = {
            "shape": tuple(cai["shape"]),
            "typestr": cai["typestr"],
            "data": tuple(cai["data"]),
            "strides": cai.get("strides"),
            "version": 3,
        }


def is_device_array(a) -> bool:
    """True for a numba device array (real or simulated), the type this backend returns."""
    return bool(getattr(a, "__cuda_ndarray__", False))


def _is_cuda(a) -> bool:
    return is_device_array(a) or hasattr(a, "__cuda_array_interface__")


def as_device_array(a):
    """A numba device array viewing `a`'s memory (no copy).

    Parameters
    ----------
    a : numba device array or object with ``__cuda_array_interface__``

    Returns
    -------
    numba device array with `a`'s shape, strides and dtype
    """
    if is_device_array(a):
        return a
    if not hasattr(a, "__cuda_array_interface__"):
        raise TypeError(f"expected a CUDA device array, got {type(a).__name__}")
    if SIMULATOR:
        return cuda.devicearray.FakeCUDAArray(np.asarray(_HostInterface(a)))
    return cuda.as_cuda_array(a)


def empty(shape, dtype):
    """An uninitialised C-contiguous device array."""
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))


def to_device(a):
    """A C-contiguous device array with `a`'s contents: host arrays are copied over,
    device arrays (any ``__cuda_array_interface__``) stay where they are."""
    if _is_cuda(a):
        return contiguous(a)
    return cuda.to_device(np.asarray(a, order="C"))                 # 0-d stays 0-d


def to_host(a) -> np.ndarray:
    """A host (NumPy) array with `a`'s contents: device arrays are copied back."""
    if isinstance(a, np.ndarray):
        return a
    return contiguous(a).copy_to_host()


# ----------------------------------------------------------------------------- copies
@functools.cache
def _unravel(rank: int):
    """A device function ``(t, shape) -> index``: the rank-`rank` index of flat index `t`
    in a C-ordered array of `shape` (numba indexes an array with a fixed-length tuple)."""
    if rank == 1:
        return cuda.jit(device=True)(lambda t, shape: (t,))
    outer = _unravel(rank - 1)
    last = rank - 1

    def unravel(t, shape):
        q, i = split(t, shape[last])
        return outer(q, shape) + (i,)

    return cuda.jit(device=True)(unravel)


@functools.cache
def _gather(rank: int):
    """The kernel ``dst[t] = src[index of t]``: a strided rank-`rank` src into a flat C-ordered dst."""
    index = _unravel(rank)

    @per_element
    def gather(t, src, dst):
        dst[t] = src[index(t, src.shape)]

    return gather


def _copy_to(src, dst) -> None:
    # dst (a C-contiguous device array of src's size) <- src's entries in C order, cast to dst's dtype
    size = size_of(dst)
    if src.is_c_contiguous():
        launch(_gather(1), size, src.reshape(size), dst.reshape(size))
    else:
        launch(_gather(src.ndim), size, src, dst.reshape(size))


def contiguous(a):
    """C-contiguous device array with `a`'s contents: `a` itself, or a copy made on device.

    Parameters
    ----------
    a : numba device array or object with ``__cuda_array_interface__``, any strides

    Returns
    -------
    numba device array, C-contiguous (`a` is never modified)
    """
    d = as_device_array(a)
    if d.is_c_contiguous():
        return d
    out = empty(d.shape, d.dtype)
    _copy_to(d, out)
    return out


def copy(a):
    """A C-contiguous device copy of `a`."""
    a = as_device_array(a)
    out = empty(a.shape, a.dtype)
    _copy_to(a, out)
    return out


def astype(a, dtype):
    """`a` in `dtype`: `a` itself when it already has it, else a converted device copy."""
    a = as_device_array(a)
    if a.dtype == np.dtype(dtype):
        return a
    out = empty(a.shape, dtype)
    _copy_to(a, out)
    return out


def copy_into(dst, src):
    """``dst[...] = src`` in place: `src` a host array (copied over) or a device array of
    dst's shape, cast to dst's dtype; returns `dst`."""
    if not _is_cuda(src):
        host = np.ascontiguousarray(np.broadcast_to(np.asarray(src), tuple(dst.shape)), dtype=dst.dtype)
        dst.copy_to_device(host)
        return dst
    src = as_device_array(src)
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"copy_into: src has shape {tuple(src.shape)}, dst {tuple(dst.shape)}")
    _copy_to(src, dst)
    return dst


# ----------------------------------------------------------------------------- layout
@per_element
def _swap01(t, a, out):
    # out[j, i, p] = a[i, j, p]; neighbouring threads on neighbouring p (coalesced both ways)
    j, i, p = unravel3(t, a.shape[0], a.shape[2])
    out[j, i, p] = a[i, j, p]


def swap01(a, out=None):
    """``a (A, B, P) -> (B, A, P)``, C-contiguous (into `out`, a C-contiguous device array, when given)."""
    a = contiguous(a)
    A, B, P = a.shape
    if out is None:
        out = empty((B, A, P), a.dtype)
    launch(_swap01, A * B * P, a, out)
    return out
