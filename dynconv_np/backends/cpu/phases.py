"""CPU phases of image planes: a dilated window as an undilated one.

A window dilated by ``(dh, dw)`` reads, for output row ``i = dh*i' + a``, input rows
``dh*(i' + t) + a - ph``: with the top padding a multiple of the dilation, only rows of
phase ``a`` (``h % dh == a``), at stride one within that phase. So output phase ``(a, b)``
(rows ``a + dh*i'``, columns ``b + dw*j'``) is the undilated correlation of input phase
``(a, b)`` with the same kernels, padded by ``ph // dh`` and ``pw // dw`` (the Winograd
module runs dilated 3x3 layers so, :func:`~dynconv_np.backends.cpu.winograd.phase_geometry`).

Two layouts of the phases:

* :func:`split` / :func:`merge`: phase-major, ``(dh*dw, N, C, ceil(H/dh), ceil(W/dw))``,
  phase ``a*dw + b`` holding every sample's phase ``(a, b)``: with a kernel shared by the
  batch the phases are just more samples, each a small image whose padding the conv
  reads as zeros without computing over it. A phase shorter than the longest is
  zero-filled at its end, where the dilated window reads padding anyway; merging drops
  those entries.
* :func:`to_mosaic` / :func:`from_mosaic`: each sample's phases as blocks of one image,
  phase ``(a, b)`` from row ``a*sh`` and column ``b*sw``, zeros between the blocks (the
  padding the windows read there): one undilated convolution of the mosaic gives every
  output phase at the same place in its output, and the outputs over the gaps are
  dropped (their gradient zero). Per-sample kernels run so, a sample's phases in one
  image and so in the same GEMMs (a phase at a time, a 32x32 layer's per-sample
  products over 16x16 phases were the slower for it).

Both are copies: work items own their planes, results do not depend on the threads.
Dilation 2 has its loops spelled out (two columns read or written together, which LLVM
turns into loads and shuffles); other dilations run short strided runs, about twice as
slow an element.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .index import ceil_div


@njit(parallel=True, cache=True)
def _split(src, dh, dw, dst):
    # dst[a*dw + b, n, c, i, j] = src[n, c, a + dh*i, b + dw*j], zero past src's end.
    # src (N, C, H, W); dst (dh*dw, N, C, Hq, Wq).
    N, C, H, W = src.shape
    Hq, Wq = dst.shape[3], dst.shape[4]
    for t in prange(N * C):
        n, c = t // C, t % C
        for a in range(dh):
            for i in range(Hq):
                h = a + dh * i
                if h >= H:
                    for b in range(dw):
                        out = dst[a * dw + b, n, c, i]
                        for j in range(Wq):
                            out[j] = 0
                    continue
                row = src[n, c, h]
                both = W // 2 if dw == 2 else 0
                if dw == 2:
                    o0, o1 = dst[a * 2, n, c, i], dst[a * 2 + 1, n, c, i]
                    for j in range(both):
                        v0, v1 = row[2 * j], row[2 * j + 1]
                        o0[j] = v0
                        o1[j] = v1
                for b in range(dw):
                    out = dst[a * dw + b, n, c, i]
                    jn = ceil_div(W - b, dw) if b < W else 0       # columns of phase b inside src
                    for j in range(both, jn):
                        out[j] = row[b + dw * j]
                    for j in range(max(jn, both), Wq):
                        out[j] = 0


@njit(parallel=True, cache=True)
def _merge(src, dh, dw, dst):
    # dst[n, c, a + dh*i, b + dw*j] = src[a*dw + b, n, c, i, j] inside dst (the inverse
    # of _split). src (dh*dw, N, C, Hq, Wq); dst (N, C, H, W).
    N, C, H, W = dst.shape
    for t in prange(N * C):
        n, c = t // C, t % C
        for h in range(H):
            a, i = h % dh, h // dh
            row = dst[n, c, h]
            both = W // 2 if dw == 2 else 0
            if dw == 2:
                s0, s1 = src[a * 2, n, c, i], src[a * 2 + 1, n, c, i]
                for j in range(both):
                    v0, v1 = s0[j], s1[j]
                    row[2 * j] = v0
                    row[2 * j + 1] = v1
            for b in range(min(dw, W)):
                part = src[a * dw + b, n, c, i]
                for j in range(both, ceil_div(W - b, dw)):
                    row[b + dw * j] = part[j]


def split(a: np.ndarray, dh: int, dw: int, Hq: int, Wq: int, out: np.ndarray | None = None) -> np.ndarray:
    """The phases of `a` (N, C, H, W), as ``(dh*dw, N, C, Hq, Wq)`` (see the module
    docstring; ``Hq >= ceil(H/dh)``, ``Wq >= ceil(W/dw)``, zero-filled past `a`), into
    `out` (C-contiguous, that shape) if given."""
    N, C = a.shape[:2]
    out = np.empty((dh * dw, N, C, Hq, Wq), dtype=a.dtype) if out is None else out
    _split(np.ascontiguousarray(a), dh, dw, out)
    return out


def merge(phases: np.ndarray, dh: int, dw: int, H: int, W: int) -> np.ndarray:
    """The image ``(N, C, H, W)`` whose phases are `phases` (dh*dw, N, C, Hq, Wq) (entries
    past ``H`` and ``W`` dropped): the inverse of :func:`split`."""
    _, N, C = phases.shape[:3]
    out = np.empty((N, C, H, W), dtype=phases.dtype)
    _merge(np.ascontiguousarray(phases), dh, dw, out)
    return out


@njit(parallel=True, cache=True)
def _to_mosaic(src, dh, dw, sh, sw, dst):
    # dst[n, c, a*sh + i, b*sw + j] = src[n, c, a + dh*i, b + dw*j] for i < sh, j < sw
    # inside both, zero elsewhere. src (N, C, H, W); dst (N, C, Hm, Wm).
    N, C, H, W = src.shape
    Hm, Wm = dst.shape[2], dst.shape[3]
    for t in prange(N * C):
        n, c = t // C, t % C
        for r in range(Hm):
            a, i = r // sh, r % sh
            h = a + dh * i
            row = dst[n, c, r]
            if a >= dh or h >= H:                               # a gap, or past a short phase
                for w in range(Wm):
                    row[w] = 0
                continue
            srow = src[n, c, h]
            both = min(W // 2, sw, Wm - sw) if dw == 2 else 0
            for j in range(both):
                # dilation 2 spelled out, as in _split
                v0, v1 = srow[2 * j], srow[2 * j + 1]
                row[j] = v0
                row[sw + j] = v1
            for b in range(dw):
                base = b * sw
                end = min(sw, Wm - base)                        # the block's columns inside dst
                jn = min(end, ceil_div(W - b, dw)) if b < W else 0
                for j in range(both, jn):
                    row[base + j] = srow[b + dw * j]
                for j in range(max(jn, both), end):
                    row[base + j] = 0
            for w in range(dw * sw, Wm):
                row[w] = 0


@njit(parallel=True, cache=True)
def _from_mosaic(src, dh, dw, sh, sw, dst):
    # dst[n, c, h, w] = src[n, c, (h % dh)*sh + h // dh, (w % dw)*sw + w // dw]: the
    # inverse of _to_mosaic. src (N, C, Hm, Wm); dst (N, C, H, W).
    N, C, H, W = dst.shape
    for t in prange(N * C):
        n, c = t // C, t % C
        for h in range(H):
            srow = src[n, c, (h % dh) * sh + h // dh]
            row = dst[n, c, h]
            both = W // 2 if dw == 2 else 0
            for j in range(both):
                v0, v1 = srow[j], srow[sw + j]
                row[2 * j] = v0
                row[2 * j + 1] = v1
            for b in range(min(dw, W)):
                base = b * sw
                for j in range(both, ceil_div(W - b, dw)):
                    row[b + dw * j] = srow[base + j]


def to_mosaic(a: np.ndarray, dh: int, dw: int, sh: int, sw: int, Hm: int, Wm: int,
              out: np.ndarray | None = None) -> np.ndarray:
    """The phase mosaic ``(N, C, Hm, Wm)`` of `a` (N, C, H, W): phase ``(p, q)`` (rows
    ``p + dh*i``, columns ``q + dw*j``) from row ``p*sh`` and column ``q*sw``, zero
    elsewhere (``sh >= ceil(H/dh)``, ``sw >= ceil(W/dw)``), into `out` if given."""
    N, C = a.shape[:2]
    out = np.empty((N, C, Hm, Wm), dtype=a.dtype) if out is None else out
    _to_mosaic(np.ascontiguousarray(a), dh, dw, sh, sw, out)
    return out


def from_mosaic(m: np.ndarray, dh: int, dw: int, sh: int, sw: int, H: int, W: int) -> np.ndarray:
    """The image ``(N, C, H, W)`` whose phases are laid out in the mosaic `m` (N, C, Hm,
    Wm) as :func:`to_mosaic` lays them (the rest of `m` dropped)."""
    N, C = m.shape[:2]
    out = np.empty((N, C, H, W), dtype=m.dtype)
    _from_mosaic(np.ascontiguousarray(m), dh, dw, sh, sw, out)
    return out
