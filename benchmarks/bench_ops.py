"""asv benchmarks: time and peak memory of every op, forward and forward+backward.

One class per op, all built on :class:`OpBenchmark`: a subclass names the op and says how
to build its arguments from a shape preset; the base class gives it ``time_`` and
``peakmem_`` benchmarks of the forward and of forward+backward, with the shape presets
of ``compare.SHAPES`` (float32) and the thread count as parameters. ``setup`` runs the
op once on the exact arguments (so Numba's compilation or cache load is never timed)
and checks what it returns. An op that this version of the package lacks is skipped
by raising ``NotImplementedError`` in ``setup``, asv's documented way to skip.
"""

from __future__ import annotations

import abc

import numpy as np

import dynconv_np as dc

from .compare import SHAPES, make_inputs

THREADS = [1, 2]


def _preload_kernels():
    """Load the convolution kernels' float32 code from Numba's cache, without running them.

    asv forks every benchmark run from a server that imported this module: what is loaded
    here is inherited, which saves each run the imports and the cache loads. Nothing is
    executed (no thread pool is started before the fork, which OpenMP would not survive).
    """
    import numba

    from dynconv_np.backends.cpu import conv

    f4, f3, f2 = (np.zeros((1,) * d, np.float32) for d in (4, 3, 2))
    window = (1,) * 10
    typeof = numba.typeof
    try:
        conv._fwd_items.compile(tuple(typeof(a) for a in (f4, f3, f2, f3, f2, 1, 1, True, window)))
        conv._bwd_samples.compile(tuple(typeof(a) for a in (f4, f3, f3, f4, f3, f2, f2, 1, 1, 1, True, True, True,
                                                            window)))
        i2 = np.zeros((1, 1), np.int64)
        conv._bwd_blocks.compile(tuple(typeof(a) for a in (f4, f3, f3, f4, f3, f2, f2, i2, 1, True, True, True,
                                                           window)))
    except Exception:  # an optimisation only: the first real call loads what it needs
        pass


_preload_kernels()


def _conv_geometry(name):
    N, C, O, H, k, s, p, K = SHAPES[name]
    Ho = (H + 2 * p - k) // s + 1
    return N, C, O, H, k, s, p, K, Ho


class OpBenchmark(abc.ABC):
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
        rng = np.random.default_rng(1)
        self.dy = rng.standard_normal(y.shape, dtype=np.float32)
        grads = pullback(self.dy)
        y2 = self.fn(*self.args, **self.kwargs)
        assert y.dtype == np.float32 and np.isfinite(y).all(), f"{self.op}: bad forward"
        assert np.array_equal(y, y2), f"{self.op}: two calls differ"
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


# ----------------------------------------------------------------------------- convolutions
class Conv2d(OpBenchmark):
    op = "conv2d"

    def arguments(self, shape, rng):
        x, W, pi, bias, dy, s, p = make_inputs(shape)
        return (x, W[0], bias[0]), {"stride": s, "padding": p}


class DynamicConv2d(OpBenchmark):
    op = "dynamic_conv2d"

    def arguments(self, shape, rng):
        x, W, pi, bias, dy, s, p = make_inputs(shape)
        return (x, W, pi, bias), {"stride": s, "padding": p}

    def check(self, y, args, kwargs):
        # Sample 0 against a plain convolution with its mixed kernel.
        x, W, pi, bias = args
        ref = dc.conv2d(x[:1], np.tensordot(pi[0], W, axes=1), pi[0] @ bias, **kwargs)
        scale = max(1.0, float(np.abs(ref).max()))
        assert np.abs(ref - y[:1]).max() <= 1e-4 * scale, "dynamic_conv2d: sample 0 differs from conv2d"


class DcdConv2d(OpBenchmark):
    op = "dcd_conv2d"

    def arguments(self, shape, rng):
        x, W, pi, bias, dy, s, p = make_inputs(shape)
        N, C, O = x.shape[0], x.shape[1], W.shape[1]
        L = max(1, int(np.sqrt(C)))
        lam = rng.uniform(0.5, 1.5, (N, O)).astype(np.float32)
        phi = (0.1 * rng.standard_normal((N, L, L))).astype(np.float32)
        P = (rng.standard_normal((O, L)) / np.sqrt(L)).astype(np.float32)
        Q = (rng.standard_normal((C, L)) / np.sqrt(C)).astype(np.float32)
        return (x, W[0], lam, phi, P, Q), {"stride": s, "padding": p}


class AtomConv2d(OpBenchmark):
    op = "atom_conv2d"
    M = 6

    def arguments(self, shape, rng):
        N, C, O, H, k, s, p, K, Ho = _conv_geometry(shape)
        x = make_inputs(shape)[0]
        atoms = (rng.standard_normal((N, self.M, k, k, Ho, Ho)) / k).astype(np.float32)
        coeff = (rng.standard_normal((O, C, self.M)) / np.sqrt(C * self.M)).astype(np.float32)
        bias = rng.standard_normal(O).astype(np.float32)
        return (x, atoms, coeff, bias), {"stride": s, "padding": p}


# ----------------------------------------------------------------------------- routing
class RoutingBenchmark(OpBenchmark):
    """Routing ops are light, elementwise or reductions: one thread count keeps the suite short."""

    params = [list(SHAPES), THREADS[-1:]]


class GlobalAvgPool(RoutingBenchmark):
    op = "global_avg_pool"

    def arguments(self, shape, rng):
        return (make_inputs(shape)[0],), {}


class Linear(RoutingBenchmark):
    """The routing FC of DY-CNN: pooled features ``(N, C)`` to ``K`` logits."""

    op = "linear"

    def arguments(self, shape, rng):
        N, C, O, H, k, s, p, K, Ho = _conv_geometry(shape)
        a = rng.standard_normal((N, C)).astype(np.float32)
        w = (rng.standard_normal((K, C)) / np.sqrt(C)).astype(np.float32)
        return (a, w, rng.standard_normal(K).astype(np.float32)), {}


class _Elementwise(RoutingBenchmark):
    """An elementwise routing op applied to the preset's input ``x``."""

    kwargs: dict = {}

    def arguments(self, shape, rng):
        return (make_inputs(shape)[0],), dict(self.kwargs)


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


class BatchNorm(RoutingBenchmark):
    op = "batch_norm"

    def arguments(self, shape, rng):
        x = make_inputs(shape)[0]
        C = x.shape[1]
        gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
        beta = rng.standard_normal(C).astype(np.float32)
        return (x, gamma, beta), {}
