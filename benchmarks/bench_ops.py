"""asv benchmarks: time and peak memory of every op, forward and forward+backward, and of
a small network's training step, on the CPU and (with a GPU) on CUDA.

This module holds the suite's one base class, :class:`_Benchmark`, whose parameters end
with ``threads`` (CPU thread count: Numba and BLAS) and ``device`` (``"cpu"``,
``"cuda"``), and its op form :class:`_OpBenchmark` with the benchmark mixins
:class:`_Times`, :class:`_Peakmem` and :class:`_PeakmemForward`; ``bench_odconv.py``
(ODConv, the 1-D forms) and ``bench_pixel.py`` (the per-pixel ops) import them from
here. The CUDA cases are skipped, by raising ``NotImplementedError`` in ``setup``
(asv's documented way to skip), where numba-cuda or a CUDA driver is missing, under the
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``: timings would mean nothing) or without a
GPU, and for every thread count but the last (threads are the CPU's business); run them
with ``--launch-method=spawn``. An op that this version of the package lacks is skipped
the same way.

``setup`` builds the arguments (float32 presets), copies them to the device, and warms
up by running the public op once, forward and backward, on the exact benchmark
arguments: Numba's compilation or cache load is never timed, and the results are
checked (dtype, shapes, finite values, and per op against a plain convolution). It then
resets the process's peak-RSS mark (Linux), so that a ``peakmem_`` benchmark measures
its own call (over the resident inputs), not the warm-up. Base classes and mixins are
named with a leading underscore, so asv never lists them (it skips module attributes
whose names start with ``_``); a module that imports them keeps the underscore.

Every (benchmark, parameters) case runs in a process of its own (forked from asv's
forkserver, see asv.conf.json; spawned with ``--launch-method=spawn``), and its set-up
costs up to a second (Numba's cache loads, the warm-up, the checks; a spawned one also
imports NumPy, Numba and dynconv_np, and starts Numba), so the suite keeps its cases
few: conv2d and dynamic_conv2d timed on the eight presets of ``compare.SHAPES`` at 1 and
2 threads; ACDA and DCD on the four original presets at 2 threads; the routing ops
timed on two presets; the training step at 1 and 2 threads; peak memory at 2 threads
only. See README, "Benchmarks", for the smoke run.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import sys

import numpy as np

import dynconv_np as dc

from .compare import SHAPES
from .dilated import SHAPES as DILATED_SHAPES
from .dilated import make_inputs as dilated_inputs
from .train_step import ours_net

THREADS = [1, 2]
DEVICES = ["cpu", "cuda"]
#: The presets every convolution op runs on: the eight of docs/performance.md.
CONV_SHAPES = list(SHAPES)
#: The original four presets: ACDA and DCD.
FEW_SHAPES = ["resnet3x3", "mbv2_1x1", "stride2", "batch1"]
#: The routing ops (elementwise and reductions): a large and a small map.
ROUTING_SHAPES = ["resnet3x3", "cifar8"]


def _require_gpu():
    if importlib.util.find_spec("numba_cuda") is None:
        raise NotImplementedError("numba-cuda is not installed")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        raise NotImplementedError("CUDA simulator: GPU timings need a real GPU")
    # Without a driver, skip before importing numba.cuda (half a second per case).
    if ctypes.util.find_library("cuda") is None and not os.path.exists("/proc/driver/nvidia"):
        raise NotImplementedError("no CUDA driver on this machine")
    from numba import cuda

    if not cuda.is_available():
        raise NotImplementedError("no CUDA GPU is available")
    return cuda


def _conv_geometry(name):
    N, C, O, H, k, s, p, K = SHAPES[name]
    Ho = (H + 2 * p - k) // s + 1
    return N, C, O, H, k, s, p, K, Ho


def _x(name):
    """The input ``x`` of a preset: ``compare.make_inputs(name)[0]``, drawn alone."""
    N, C, O, H, k, s, p, K = SHAPES[name]
    return np.random.default_rng(0).standard_normal((N, C, H, H), dtype=np.float32)


def _inputs(name):
    """``x, W, pi, bias, stride, padding`` of a preset: ``compare.make_inputs(name)``'s
    values, without its ``dy`` (the benchmarks draw their own)."""
    N, C, O, H, k, s, p, K = SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    W = (rng.standard_normal((K, O, C, k, k), dtype=np.float32) / np.sqrt(C * k * k)).astype(np.float32)
    pi = rng.dirichlet(np.ones(K), size=N).astype(np.float32)
    bias = rng.standard_normal((K, O), dtype=np.float32)
    return x, W, pi, bias, s, p


def _start_numba_in_forkserver() -> None:
    """Under asv's forkserver (the launch method of asv.conf.json) every case forks from
    one server process, which imported this module: start Numba's CPU target (its typing
    and target contexts, about 0.3 s) there, once, instead of in every case. No threads
    are started (forking is safe); elsewhere, and if Numba's internals move, a no-op."""
    if sys.argv[1:2] != ["run_server"]:
        return
    try:
        from numba.core.registry import cpu_target

        cpu_target.typing_context.refresh()
        cpu_target.target_context.refresh()
    except Exception:  # only a head start: each case starts Numba itself anyway
        pass


_start_numba_in_forkserver()


def _reset_peak_rss() -> None:
    """Reset the process's peak resident set size (``ru_maxrss``, what asv's ``peakmem_``
    reports) to the current one: Linux 4.0 and later; elsewhere a no-op."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class _Benchmark:
    """Base of every benchmark: the ``threads`` and ``device`` parameters (the last two),
    their set-up (:meth:`use_device`), and :meth:`sync` after each timed call."""

    params = [THREADS, DEVICES]
    param_names = ["threads", "device"]
    timeout = 600
    cuda = None
    _limits = None

    def use_device(self, threads: int, device: str) -> None:
        """CPU: run Numba and BLAS on `threads` threads. CUDA: skip unless a GPU is here
        (and `threads` is the last thread count, so that each CUDA case runs once)."""
        if device == "cuda":
            self.cuda = _require_gpu()
            if threads != THREADS[-1]:
                raise NotImplementedError("the thread count applies to the CPU only")
            return
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        self._limits = threadpool_limits(limits=threads, user_api="blas")

    def put(self, a):
        """A host array (or None) on the benchmark's device."""
        if a is None or self.cuda is None:
            return a
        return self.cuda.to_device(np.ascontiguousarray(a))

    def host(self, a):
        return a if self.cuda is None else a.copy_to_host()

    def sync(self) -> None:
        if self.cuda is not None:
            self.cuda.synchronize()

    def teardown(self, *params):
        if self._limits is not None:
            self._limits.restore_original_limits()


class _OpBenchmark(_Benchmark):
    """An op on a preset: subclasses set ``op`` (an attribute of ``dynconv_np``),
    ``shapes`` (the presets) and :meth:`arguments`, and may add :meth:`check`; the
    benchmarks come from the mixins :class:`_Times`, :class:`_Peakmem` and
    :class:`_PeakmemForward`. ``params`` is ``[shapes, thread_counts, DEVICES]``, set for
    each subclass from its ``shapes`` and ``thread_counts`` (the mixins' or its own)."""

    op: str = ""
    shapes: list = CONV_SHAPES
    thread_counts: list = THREADS
    params = [CONV_SHAPES, THREADS, DEVICES]
    param_names = ["shape", "threads", "device"]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.params = [list(cls.shapes), list(cls.thread_counts), DEVICES]

    def arguments(self, shape: str, rng: np.random.Generator) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of one call of the op on the float32 preset ``shape`` (host)."""
        raise NotImplementedError

    def check(self, y, args, kwargs) -> None:
        """Op-specific check of the forward result (host arrays; the generic checks always run)."""
        return None

    def setup(self, shape, threads, device):
        self.use_device(threads, device)                            # skips first: cheap
        self.fn = getattr(dc, self.op, None)
        if self.fn is None:
            raise NotImplementedError(f"dynconv_np.{self.op} does not exist in this version")
        host_args, self.kwargs = self.arguments(shape, np.random.default_rng(0))
        self.args = [self.put(a) if isinstance(a, np.ndarray) else a for a in host_args]
        y, pullback = self.fn.vjp(*self.args, **self.kwargs)       # the warm-up, checked
        dy = np.random.default_rng(1).standard_normal(tuple(y.shape), dtype=np.float32)
        self.dy = self.put(dy)
        grads = pullback(self.dy)
        self.sync()
        y_host = self.host(y)
        assert y_host.dtype == np.float32 and np.isfinite(y_host).all(), f"{self.op}: bad forward"
        for a, g in zip(host_args, grads):
            if isinstance(a, np.ndarray) and g is not None:
                assert tuple(g.shape) == a.shape and np.isfinite(self.host(g)).all(), f"{self.op}: bad gradient"
        self.check(y_host, host_args, self.kwargs)
        del y, pullback, grads, y_host, dy
        _reset_peak_rss()

    def forward(self):
        self.fn(*self.args, **self.kwargs)
        self.sync()

    def forward_backward(self):
        _, pullback = self.fn.vjp(*self.args, **self.kwargs)
        pullback(self.dy)
        self.sync()


class _Times:
    """``time_forward`` and ``time_forward_backward`` of an :class:`_OpBenchmark`."""

    def time_forward(self, *params):
        self.forward()

    def time_forward_backward(self, *params):
        self.forward_backward()


class _Peakmem:
    """``peakmem_forward_backward`` of an :class:`_OpBenchmark`, at the last thread count."""

    thread_counts = THREADS[-1:]

    def peakmem_forward_backward(self, *params):
        self.forward_backward()


class _PeakmemForward:
    """``peakmem_forward`` of an :class:`_OpBenchmark`, at the last thread count."""

    thread_counts = THREADS[-1:]

    def peakmem_forward(self, *params):
        self.forward()


# ----------------------------------------------------------------------------- convolutions
class _Conv2d(_OpBenchmark):
    """Static conv2d (``W[0]``, ``bias[0]`` of the preset): what torch.nn.functional.conv2d does."""

    op = "conv2d"

    def arguments(self, shape, rng):
        x, W, pi, bias, s, p = _inputs(shape)
        return (x, W[0], bias[0]), {"stride": s, "padding": p}


class _DynamicConv2d(_OpBenchmark):
    """dynamic_conv2d with per-sample mixing weights pi (N, K) and expert biases (DY-CNN)."""

    op = "dynamic_conv2d"

    def arguments(self, shape, rng):
        x, W, pi, bias, s, p = _inputs(shape)
        return (x, W, pi, bias), {"stride": s, "padding": p}

    def check(self, y, args, kwargs):
        # Sample 0 against a plain convolution with its mixed kernel.
        x, W, pi, bias = args
        ref = dc.conv2d(x[:1], np.tensordot(pi[0], W, axes=1), pi[0] @ bias, **kwargs)
        scale = max(1.0, float(np.abs(ref).max()))
        assert np.abs(ref - y[:1]).max() <= 1e-4 * scale, "dynamic_conv2d: sample 0 differs from conv2d"


class _DcdConv2d(_OpBenchmark):
    op = "dcd_conv2d"

    def arguments(self, shape, rng):
        x, W, pi, bias, s, p = _inputs(shape)
        N, C, O = x.shape[0], x.shape[1], W.shape[1]
        L = max(1, int(np.sqrt(C)))
        lam = rng.uniform(0.5, 1.5, (N, O)).astype(np.float32)
        phi = (0.1 * rng.standard_normal((N, L, L))).astype(np.float32)
        P = (rng.standard_normal((O, L)) / np.sqrt(L)).astype(np.float32)
        Q = (rng.standard_normal((C, L)) / np.sqrt(C)).astype(np.float32)
        return (x, W[0], lam, phi, P, Q), {"stride": s, "padding": p}


class _AtomConv2d(_OpBenchmark):
    op = "atom_conv2d"
    M = 6

    def arguments(self, shape, rng):
        N, C, O, H, k, s, p, K, Ho = _conv_geometry(shape)
        x = _x(shape)
        atoms = (rng.standard_normal((N, self.M, k, k, Ho, Ho)) / k).astype(np.float32)
        coeff = (rng.standard_normal((O, C, self.M)) / np.sqrt(C * self.M)).astype(np.float32)
        bias = rng.standard_normal(O).astype(np.float32)
        return (x, atoms, coeff, bias), {"stride": s, "padding": p}


# Times on the eight presets at 1 and 2 threads for the convolutions of docs/performance.md;
# the others, and peak memory, on fewer cases (each case is a process of its own).
class Conv2d(_Times, _Conv2d):
    pass


class Conv2dPeakmem(_Peakmem, _Conv2d):
    pass


class DynamicConv2d(_Times, _DynamicConv2d):
    pass


class DynamicConv2dPeakmem(_Peakmem, _DynamicConv2d):
    pass


class DilatedConv2d(_Times, _OpBenchmark):
    """conv2d on the dilated 3x3 presets of ``benchmarks/dilated.py`` (padding = dilation):
    Winograd by phases where the cost model picks it."""

    op = "conv2d"
    shapes = list(DILATED_SHAPES)

    def arguments(self, shape, rng):
        x, W, pi, bias, dy, d = dilated_inputs(shape)
        return (x, W[0], bias[0]), {"padding": d, "dilation": d}


class DcdConv2d(_Times, _Peakmem, _DcdConv2d):
    shapes = FEW_SHAPES
    thread_counts = THREADS[-1:]


class AtomConv2d(_Times, _Peakmem, _AtomConv2d):
    shapes = FEW_SHAPES
    thread_counts = THREADS[-1:]


# ----------------------------------------------------------------------------- routing
class _RoutingBenchmark(_Times, _OpBenchmark):
    """Routing ops are light, elementwise or reductions: one thread count, two shapes."""

    shapes = ROUTING_SHAPES
    thread_counts = THREADS[-1:]


class GlobalAvgPool(_RoutingBenchmark):
    op = "global_avg_pool"

    def arguments(self, shape, rng):
        return (_x(shape),), {}


class Linear(_RoutingBenchmark):
    """The routing FC of DY-CNN: pooled features ``(N, C)`` to ``K`` logits."""

    op = "linear"

    def arguments(self, shape, rng):
        N, C, O, H, k, s, p, K, Ho = _conv_geometry(shape)
        a = rng.standard_normal((N, C)).astype(np.float32)
        w = (rng.standard_normal((K, C)) / np.sqrt(C)).astype(np.float32)
        return (a, w, rng.standard_normal(K).astype(np.float32)), {}


class _Elementwise(_RoutingBenchmark):
    """An elementwise routing op applied to the preset's input ``x``."""

    kwargs: dict = {}

    def arguments(self, shape, rng):
        return (_x(shape),), dict(self.kwargs)


class Relu(_Elementwise):
    op = "relu"


class Sigmoid(_Elementwise):
    op = "sigmoid"
    kwargs = {"tau": 30.0}


class Softmax(_Elementwise):
    op = "softmax"
    kwargs = {"tau": 30.0, "axis": 1}


class HardSigmoid(_Elementwise):
    op = "hard_sigmoid"


class Tanh(_Elementwise):
    op = "tanh"


class BatchNorm(_RoutingBenchmark):
    op = "batch_norm"

    def arguments(self, shape, rng):
        x = _x(shape)
        C = x.shape[1]
        gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
        beta = rng.standard_normal(C).astype(np.float32)
        return (x, gamma, beta), {}


# ----------------------------------------------------------------------------- training
class TrainStep(_Benchmark):
    """One SGD training step of benchmarks/train_step.py's small CNN (batch 64, 16x16),
    static convolutions or DynamicConv2d."""

    params = [["static", "dynamic"], THREADS, DEVICES]
    param_names = ["net", "threads", "device"]

    def setup(self, net, threads, device):
        self.use_device(threads, device)
        self.step = ours_net(net, device)
        loss = self.step()                      # the warm-up, checked
        assert np.isfinite(loss), "training step: loss is not finite"

    def time_step(self, *params):
        self.step()
        self.sync()
