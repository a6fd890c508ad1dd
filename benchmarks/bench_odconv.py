"""asv benchmarks of ODConv and the 1-D forms: time and peak memory, forward and forward+backward.

On the suite's one base, ``bench_ops._OpBenchmark``, with its mixins: per op, a class
with ``time_forward`` and ``time_forward_backward`` over the presets, 1 and 2 threads and
the device (``cpu``, ``cuda``: skipped without a GPU), and a ``…Peakmem`` class with
``peakmem_forward`` and ``peakmem_forward_backward`` at 2 threads. ``setup`` (the base's)
runs the op once on the exact arguments (so Numba's compilation or cache load is never
timed) and checks what it returns, here against a plain convolution. An op that this
version of the package lacks is skipped by raising ``NotImplementedError`` in ``setup``,
asv's documented way to skip. The presets are this file's own (``bench_ops.py`` and
``compare.py`` may change theirs).
"""

from __future__ import annotations

import numpy as np

import dynconv_np as dc

from .bench_ops import _OpBenchmark, _Peakmem, _PeakmemForward, _Times

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


def _experts(rng, K, O, Cg, *kernel):
    return (rng.standard_normal((K, O, Cg) + kernel, dtype=np.float32) / np.sqrt(Cg * np.prod(kernel))
            ).astype(np.float32)


# ----------------------------------------------------------------------------- ODConv
class _OdConv2d(_OpBenchmark):
    op = "odconv2d"
    shapes = list(SHAPES_2D)

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


class OdConv2d(_Times, _OdConv2d):
    pass


class OdConv2dPeakmem(_PeakmemForward, _Peakmem, _OdConv2d):
    pass


# ----------------------------------------------------------------------------- 1-D forms
class _OneD(_OpBenchmark):
    shapes = list(SHAPES_1D)

    def inputs(self, shape, rng):
        N, C, O, L, k, s, p, K = SHAPES_1D[shape]
        x = rng.standard_normal((N, C, L), dtype=np.float32)
        return x, _experts(rng, K, O, C, k), rng.standard_normal((K, O), dtype=np.float32), dict(stride=s, padding=p)


class _Conv1d(_OneD):
    op = "conv1d"

    def arguments(self, shape, rng):
        x, W, bias, geo = self.inputs(shape, rng)
        return (x, W[0], bias[0]), geo

    def check(self, y, args, kwargs):
        x, w, b = args
        ref = dc.conv2d(x[:1, :, None], w[:, :, None], b, stride=(1, kwargs["stride"]),
                        padding=(0, kwargs["padding"]))[:, :, 0]
        _close(y[:1], ref, "conv1d sample 0")


class Conv1d(_Times, _Conv1d):
    pass


class Conv1dPeakmem(_PeakmemForward, _Peakmem, _Conv1d):
    pass


class _DynamicConv1d(_OneD):
    op = "dynamic_conv1d"

    def arguments(self, shape, rng):
        x, W, bias, geo = self.inputs(shape, rng)
        pi = rng.dirichlet(np.ones(W.shape[0]), size=x.shape[0]).astype(np.float32)
        return (x, W, pi, bias), geo

    def check(self, y, args, kwargs):
        x, W, pi, b = args
        ref = dc.conv1d(x[:1], np.tensordot(pi[0], W, axes=1), pi[0] @ b, **kwargs)
        _close(y[:1], ref, "dynamic_conv1d sample 0")


class DynamicConv1d(_Times, _DynamicConv1d):
    pass


class DynamicConv1dPeakmem(_PeakmemForward, _Peakmem, _DynamicConv1d):
    pass
