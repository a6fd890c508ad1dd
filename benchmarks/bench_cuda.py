"""asv benchmarks of the CUDA backend: conv2d, dynamic_conv2d, atom_conv2d and batch_norm on a real GPU.

Skipped (``NotImplementedError`` in ``setup``, asv's documented way to skip) when
numba-cuda is missing, when ``NUMBA_ENABLE_CUDASIM`` is set (simulator timings mean
nothing) or when no GPU is visible. Inputs are the float32 shape presets of
``compare.SHAPES``, copied to the device once in ``setup``; ``setup`` also runs the op
once on the exact arguments, so JIT compilation is never timed, and checks the result.
Kernel launches are asynchronous: every timed call ends with ``cuda.synchronize()``.
Run with ``--launch-method=spawn`` (CUDA does not survive a fork).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from .compare import SHAPES, make_inputs


def _require_gpu():
    if importlib.util.find_spec("numba_cuda") is None:
        raise NotImplementedError("numba-cuda is not installed")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        raise NotImplementedError("CUDA simulator: GPU timings need a real GPU")
    from numba import cuda

    if not cuda.is_available():
        raise NotImplementedError("no CUDA GPU is available")
    return cuda


class CudaOpBenchmark:
    """Base: ``time_forward`` and ``time_forward_backward`` of one op on the GPU."""

    params = [list(SHAPES)]
    param_names = ["shape"]
    timeout = 600

    def arguments(self, shape: str):
        """``(fn, host_args, kwargs)`` for the preset `shape` (float32)."""
        raise NotImplementedError

    def setup(self, shape):
        self.cuda = _require_gpu()
        self.fn, host_args, self.kwargs = self.arguments(shape)
        to_dev = self.cuda.to_device
        self.args = [None if a is None else to_dev(np.ascontiguousarray(a)) for a in host_args]
        y, pullback = self.fn.vjp(*self.args, **self.kwargs)
        rng = np.random.default_rng(1)
        self.dy = to_dev(rng.standard_normal(tuple(y.shape), dtype=np.float32))
        grads = pullback(self.dy)
        self.cuda.synchronize()
        y_host = y.copy_to_host()
        assert y_host.dtype == np.float32 and np.isfinite(y_host).all(), "bad forward"
        assert np.array_equal(y_host, self.fn(*self.args, **self.kwargs).copy_to_host()), \
            "two calls differ"
        for a, g in zip(self.args, grads):
            if a is not None and g is not None:
                assert tuple(g.shape) == tuple(a.shape), "bad gradient shape"
                assert np.isfinite(g.copy_to_host()).all(), "bad gradient"

    def time_forward(self, shape):
        self.fn(*self.args, **self.kwargs)
        self.cuda.synchronize()

    def time_forward_backward(self, shape):
        _, pullback = self.fn.vjp(*self.args, **self.kwargs)
        pullback(self.dy)
        self.cuda.synchronize()


class CudaDynamicConv2d(CudaOpBenchmark):
    """dynamic_conv2d with per-sample mixing weights and bias (DY-CNN)."""

    def arguments(self, shape):
        import dynconv_np as dc

        x, W, pi, bias, _, s, p = make_inputs(shape)
        return dc.dynamic_conv2d, [x, W, pi, bias], dict(stride=s, padding=p)


class CudaConv2d(CudaOpBenchmark):
    """Static conv2d on the same presets (the floor dynamic_conv2d is measured against)."""

    def arguments(self, shape):
        import dynconv_np as dc

        x, W, _, bias, _, s, p = make_inputs(shape)
        return dc.conv2d, [x, W[0], bias[0]], dict(stride=s, padding=p)


class CudaAtomConv2d(CudaOpBenchmark):
    """atom_conv2d (ACDA) with M=6 atoms per pixel, as benchmarks/bench_ops.py's AtomConv2d."""

    M = 6

    def arguments(self, shape):
        import dynconv_np as dc

        x, W, _, bias, _, s, p = make_inputs(shape)
        N, C, H = x.shape[0], x.shape[1], x.shape[2]
        O, k = W.shape[1], W.shape[3]
        Ho = (H + 2 * p - k) // s + 1
        rng = np.random.default_rng(2)
        atoms = (rng.standard_normal((N, self.M, k, k, Ho, Ho)) / k).astype(np.float32)
        coeff = (rng.standard_normal((O, C, self.M)) / np.sqrt(C * self.M)).astype(np.float32)
        return dc.atom_conv2d, [x, atoms, coeff, bias[0]], dict(stride=s, padding=p)


class CudaBatchNorm(CudaOpBenchmark):
    """batch_norm in training mode on the presets' inputs (per-channel block reductions)."""

    def arguments(self, shape):
        import dynconv_np as dc

        x = make_inputs(shape)[0]
        C = x.shape[1]
        return dc.batch_norm, [x, np.ones(C, np.float32), np.zeros(C, np.float32)], {}
