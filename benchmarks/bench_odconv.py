"""asv benchmarks of ODConv and the 1-D forms: time and peak memory, forward and forward+backward.

In the style of ``bench_ops.py``: one class per op on the base :class:`OpBenchmark`, which
gives it ``time_`` and ``peakmem_`` benchmarks of the forward and of forward+backward,
with shape presets (float32) and the thread count as parameters. ``setup`` runs the op
once on the exact arguments (so Numba's compilation or cache load is never timed) and
checks what it returns against a plain convolution. An op that this version of the
package lacks is skipped by raising ``NotImplementedError`` in ``setup``, asv's
documented way to skip. The presets are this file's own (``bench_ops.py`` and
``compare.py`` may change theirs).
"""

from __future__ import annotations

import abc

import numpy as np

import dynconv_np as dc

THREADS = [1, 2]

#: 2-D presets: N, C, O, H (= W), k, stride, padding, K. The layers where ODConv replaces
#: a ResNet 3x3 convolution, a MobileNetV2 depthwise one, and a batch of one.
SHAPES_2D = {
    "resnet3x3": (32, 64, 64, 28, 3, 1, 1, 4),
    "mbv2_dw3x3": (32, 144, 144, 28, 3, 1, 1, 4),
    "batch1": (1, 256, 256, 14, 3, 1, 1, 4),
}

#: 1-D presets: N, C, O, L, k, stride, padding, K (sequence models: wide channels, long sequences).
SHAPES_1D = {
    "seq512_k3": (16, 256, 256, 512, 3, 1, 1, 4),
    "seq256_k7_s2": (16, 128, 256, 256, 7, 2, 3, 4),
}


def _close(got, ref, what):
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(got - ref).max() <= 1e-4 * scale, f"{what}: differs from the plain convolution"


class OpBenchmark(abc.ABC):
    """Base: subclasses set ``op`` (an attribute of ``dynconv_np``), ``shapes`` and ``arguments``.

    Abstract, so that asv collects only the concrete subclasses.
    """

    op: str = ""
    timeout = 600

    @abc.abstractmethod
    def arguments(self, shape: str, rng: np.random.Generator) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of one call of the op on the float32 preset ``shape``."""

    def check(self, y, args, kwargs) -> None:
        """Op-specific check of the forward result (the generic checks always run)."""
        return None

    def setup(self, shape, threads):
        import numba

        self.fn = getattr(dc, self.op, None)
        if self.fn is None:
            raise NotImplementedError(f"dynconv_np.{self.op} does not exist in this version")
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            self._limits = None
        else:
            self._limits = threadpool_limits(limits=threads, user_api="blas")
        self.args, self.kwargs = self.arguments(shape, np.random.default_rng(0))
        y, pullback = self.fn.vjp(*self.args, **self.kwargs)
        self.dy = np.random.default_rng(1).standard_normal(y.shape, dtype=np.float32)
        grads = pullback(self.dy)
        assert y.dtype == np.float32 and np.isfinite(y).all(), f"{self.op}: bad forward"
        assert np.array_equal(y, self.fn(*self.args, **self.kwargs)), f"{self.op}: two calls differ"
        for a, g in zip(self.args, grads):
            if isinstance(a, np.ndarray) and g is not None:
                assert g.shape == a.shape and np.isfinite(g).all(), f"{self.op}: bad gradient"
        self.check(y, self.args, self.kwargs)

    def teardown(self, shape, threads):
        if getattr(self, "_limits", None) is not None:
            self._limits.restore_original_limits()

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


def _experts(rng, K, O, Cg, *kernel):
    return (rng.standard_normal((K, O, Cg) + kernel, dtype=np.float32) / np.sqrt(Cg * np.prod(kernel))
            ).astype(np.float32)


# ----------------------------------------------------------------------------- ODConv
class OdConv2d(OpBenchmark):
    op = "odconv2d"
    params = [list(SHAPES_2D), THREADS]
    param_names = ["shape", "threads"]

    def arguments(self, shape, rng):
        N, C, O, H, k, s, p, K = SHAPES_2D[shape]
        groups = C if shape.startswith("mbv2_dw") else 1
        x = rng.standard_normal((N, C, H, H), dtype=np.float32)
        W = _experts(rng, K, O, C // groups, k, k)
        a_w = rng.dirichlet(np.ones(K), size=N).astype(np.float32)
        a_s, a_c, a_f = (rng.uniform(0, 1, size).astype(np.float32) for size in ((N, k, k), (N, C), (N, O)))
        return (x, W, a_w, a_s, a_c, a_f), {"stride": s, "padding": p, "groups": groups}

    def check(self, y, args, kwargs):
        # Sample 0 against a plain convolution of the scaled input with its explicit kernel.
        x, W, a_w, a_s, a_c, a_f = args
        Wn = np.tensordot(a_w[0], W * a_s[0], axes=1)
        ref = a_f[0][:, None, None] * dc.conv2d(x[:1] * a_c[0][:, None, None], Wn, **kwargs)[0]
        _close(y[0], ref, "odconv2d sample 0")


# ----------------------------------------------------------------------------- 1-D forms
class _OneD(OpBenchmark):
    params = [list(SHAPES_1D), THREADS]
    param_names = ["shape", "threads"]

    def inputs(self, shape, rng):
        N, C, O, L, k, s, p, K = SHAPES_1D[shape]
        x = rng.standard_normal((N, C, L), dtype=np.float32)
        return x, _experts(rng, K, O, C, k), rng.standard_normal((K, O), dtype=np.float32), dict(stride=s, padding=p)


class Conv1d(_OneD):
    op = "conv1d"

    def arguments(self, shape, rng):
        x, W, bias, geo = self.inputs(shape, rng)
        return (x, W[0], bias[0]), geo

    def check(self, y, args, kwargs):
        x, w, b = args
        ref = dc.conv2d(x[:1, :, None], w[:, :, None], b, stride=(1, kwargs["stride"]),
                        padding=(0, kwargs["padding"]))[:, :, 0]
        _close(y[:1], ref, "conv1d sample 0")


class DynamicConv1d(_OneD):
    op = "dynamic_conv1d"

    def arguments(self, shape, rng):
        x, W, bias, geo = self.inputs(shape, rng)
        pi = rng.dirichlet(np.ones(W.shape[0]), size=x.shape[0]).astype(np.float32)
        return (x, W, pi, bias), geo

    def check(self, y, args, kwargs):
        x, W, pi, b = args
        ref = dc.conv1d(x[:1], np.tensordot(pi[0], W, axes=1), pi[0] @ b, **kwargs)
        _close(y[:1], ref, "dynamic_conv1d sample 0")
