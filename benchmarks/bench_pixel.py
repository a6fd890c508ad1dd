"""asv benchmarks of the per-pixel ops: time and peak memory, forward and forward+backward.

One op per class pair (``involution2d``, ``ddf_conv2d`` in both combinations,
``involution1d``), on the suite's one base, ``bench_ops._OpBenchmark``, with its mixins:
a subclass names the op and builds its arguments from a shape preset; ``Involution2d``
(say) has ``time_forward`` and ``time_forward_backward`` over the presets, 1 and 2
threads and the device (``cpu``, ``cuda``: skipped without a GPU), and
``Involution2dPeakmem`` has ``peakmem_forward`` and ``peakmem_forward_backward`` at 2
threads. ``setup`` (the base's) runs the op once on the exact arguments (Numba's
compilation or cache load is never timed) and checks what it returns; an op this
version of the package lacks is skipped by raising ``NotImplementedError`` in ``setup``.
``benchmarks/compare_pixel.py`` is the side-by-side with unfold formulations.
"""

from __future__ import annotations

import numpy as np

from .bench_ops import _OpBenchmark, _Peakmem, _PeakmemForward, _Times

#: name: (N, C, H=W, k): float32 images, "same" padding, stride 1. ``rednet_k7`` is
#: RedNet's involution stage that users report running out of memory with unfold.
SHAPES = {
    "rednet_k7": (8, 64, 56, 7),
    "k3_56": (8, 64, 56, 3),
    "batch1_k7": (1, 256, 14, 7),
}

#: name: (N, C, L, k, heads): sequences, "same" padding (Wu et al.'s kernel widths).
SEQUENCES = {
    "seq_k7": (8, 256, 256, 7, 16),
    "seq_k31": (4, 512, 128, 31, 16),
}


def _image(shape, rng):
    N, C, H, k = SHAPES[shape]
    return N, C, H, k, rng.standard_normal((N, C, H, H), dtype=np.float32)


class _Involution2d(_OpBenchmark):
    """RedNet's involution: groups = C/16."""

    op = "involution2d"
    shapes = list(SHAPES)

    def arguments(self, shape, rng):
        N, C, H, k, x = _image(shape, rng)
        G = max(1, C // 16)
        kernel = rng.standard_normal((N, G, k * k, H, H), dtype=np.float32) / k
        return (x, kernel, G), {"padding": k // 2}


class Involution2d(_Times, _Involution2d):
    pass


class Involution2dPeakmem(_PeakmemForward, _Peakmem, _Involution2d):
    pass


class _DdfConv2d(_OpBenchmark):
    """DDF, product form (the authors' default)."""

    op = "ddf_conv2d"
    shapes = list(SHAPES)
    combine = "mul"

    def arguments(self, shape, rng):
        N, C, H, k, x = _image(shape, rng)
        spatial = rng.standard_normal((N, k * k, H, H), dtype=np.float32) / k
        channel = rng.standard_normal((N, C, k * k), dtype=np.float32) / k
        return (x, spatial, channel), {"padding": k // 2, "combine": self.combine}


class DdfConv2d(_Times, _DdfConv2d):
    pass


class DdfConv2dPeakmem(_PeakmemForward, _Peakmem, _DdfConv2d):
    pass


class _DdfConv2dAdd(_DdfConv2d):
    """DDF, sum form: one more tap pass for the per-sample depthwise part."""

    combine = "add"


class DdfConv2dAdd(_Times, _DdfConv2dAdd):
    pass


class DdfConv2dAddPeakmem(_PeakmemForward, _Peakmem, _DdfConv2dAdd):
    pass


class _Involution1d(_OpBenchmark):
    """Wu et al.'s dynamic convolution over sequences (kernels softmax-normalised)."""

    op = "involution1d"
    shapes = list(SEQUENCES)

    def arguments(self, shape, rng):
        N, C, L, k, H = SEQUENCES[shape]
        x = rng.standard_normal((N, C, L), dtype=np.float32)
        logits = rng.standard_normal((N, H, k, L))
        kernel = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
        return (x, kernel.astype(np.float32), H), {"padding": k // 2}


class Involution1d(_Times, _Involution1d):
    pass


class Involution1dPeakmem(_PeakmemForward, _Peakmem, _Involution1d):
    pass
