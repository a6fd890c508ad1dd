"""asv benchmarks of the per-pixel ops: time and peak memory, forward and forward+backward.

One class per op (``involution2d``, ``ddf_conv2d`` in both combinations,
``involution1d``), all built on :class:`PixelBenchmark`, in the style of
``bench_ops.py``: a subclass names the op and builds its arguments from a shape preset;
the base class gives it ``time_`` and ``peakmem_`` benchmarks of the forward and of
forward+backward, with the presets and the thread count as parameters. ``setup`` runs
the op once on the exact arguments (Numba's compilation or cache load is never timed)
and checks what it returns; an op this version of the package lacks is skipped by
raising ``NotImplementedError`` in ``setup``. ``benchmarks/compare_pixel.py`` is the
side-by-side with unfold formulations.
"""

from __future__ import annotations

import abc

import numpy as np

import dynconv_np as dc

THREADS = [1, 2]

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


class PixelBenchmark(abc.ABC):
    """Base: subclasses set ``op`` (an attribute of ``dynconv_np``) and ``arguments``.

    Abstract, so that asv collects only the concrete subclasses.
    """

    op: str = ""
    params = [list(SHAPES), THREADS]
    param_names = ["shape", "threads"]
    timeout = 600

    @abc.abstractmethod
    def arguments(self, shape: str, rng: np.random.Generator) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of one call of the op on the float32 preset ``shape``."""

    def setup(self, shape, threads):
        import numba

        self.fn = getattr(dc, self.op, None)
        if self.fn is None:
            raise NotImplementedError(f"dynconv_np.{self.op} does not exist in this version")
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self.args, self.kwargs = self.arguments(shape, np.random.default_rng(0))
        y, pullback = self.fn.vjp(*self.args, **self.kwargs)
        self.dy = np.random.default_rng(1).standard_normal(y.shape, dtype=np.float32)
        grads = pullback(self.dy)
        assert y.dtype == np.float32 and np.isfinite(y).all(), f"{self.op}: bad forward"
        assert np.array_equal(y, self.fn(*self.args, **self.kwargs)), f"{self.op}: two calls differ"
        for a, g in zip(self.args, grads):
            if isinstance(a, np.ndarray):
                assert g.shape == a.shape and np.isfinite(g).all(), f"{self.op}: bad gradient"

    def time_forward(self, shape, threads):
        self.fn(*self.args, **self.kwargs)

    def time_forward_backward(self, shape, threads):
        _, pullback = self.fn.vjp(*self.args, **self.kwargs)
        pullback(self.dy)

    def peakmem_forward(self, shape, threads):
        self.fn(*self.args, **self.kwargs)

    def peakmem_forward_backward(self, shape, threads):
        _, pullback = self.fn.vjp(*self.args, **self.kwargs)
        pullback(self.dy)


def _image(shape, rng):
    N, C, H, k = SHAPES[shape]
    return N, C, H, k, rng.standard_normal((N, C, H, H), dtype=np.float32)


class Involution2d(PixelBenchmark):
    """RedNet's involution: groups = C/16."""

    op = "involution2d"

    def arguments(self, shape, rng):
        N, C, H, k, x = _image(shape, rng)
        G = max(1, C // 16)
        kernel = rng.standard_normal((N, G, k * k, H, H), dtype=np.float32) / k
        return (x, kernel, G), {"padding": k // 2}


class DdfConv2d(PixelBenchmark):
    """DDF, product form (the authors' default)."""

    op = "ddf_conv2d"
    combine = "mul"

    def arguments(self, shape, rng):
        N, C, H, k, x = _image(shape, rng)
        spatial = rng.standard_normal((N, k * k, H, H), dtype=np.float32) / k
        channel = rng.standard_normal((N, C, k * k), dtype=np.float32) / k
        return (x, spatial, channel), {"padding": k // 2, "combine": self.combine}


class DdfConv2dAdd(DdfConv2d):
    """DDF, sum form: one more tap pass for the per-sample depthwise part."""

    combine = "add"


class Involution1d(PixelBenchmark):
    """Wu et al.'s dynamic convolution over sequences (kernels softmax-normalised)."""

    op = "involution1d"
    params = [list(SEQUENCES), THREADS]

    def arguments(self, shape, rng):
        N, C, L, k, H = SEQUENCES[shape]
        x = rng.standard_normal((N, C, L), dtype=np.float32)
        logits = rng.standard_normal((N, H, k, L))
        kernel = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
        return (x, kernel.astype(np.float32), H), {"padding": k // 2}
