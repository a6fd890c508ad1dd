"""The written contract every backend implements, in two tiers.

A backend is a module (``backends.cpu``, ``backends.cuda``) exposing, as module-level
functions, every member of :class:`ArrayAPI` and :class:`KernelAPI` with the same
parameter names and defaults (``tests/test_backend_interface.py`` checks both backends
against this file). Arrays are the backend's own: NumPy arrays on the CPU backend,
numba device arrays (or anything with ``__cuda_array_interface__`` as input) on the CUDA
backend. Results live on the inputs' device. No primitive modifies an input unless its
docstring says "in place" (and then only arrays the caller owns).

Tiers
-----
- :class:`ArrayAPI`, the small array API: allocation, elementwise arithmetic, copies and
  host/device moves. Layers (``nn``) reach it through :mod:`dynconv_np.arrays`, which
  picks the backend from the arrays' device; they never import a backend.
- :class:`KernelAPI`, the kernel primitives: the conv template, GEMM, the per-pixel tap
  engine, row/channel reductions, activations, batch norm and optimiser updates. Only
  ``ops`` call them.

Threading policy (BLAS threads, Numba threads, CUDA launch shapes) is the backend's
business: no op or layer sets it. Every primitive is deterministic: the same call on the
same inputs gives bitwise the same result, whatever the thread count.

Shapes use the package legend: ``g`` is a :class:`dynconv_np._args.Geometry` (``g.N,
g.C, g.H, g.W``, the window ``g.window = (kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)``,
``g.P = Ho*Wo``, ``g.taps = kh*kw``); ``F = C//groups * kh * kw``.
"""

from __future__ import annotations

import inspect
from typing import Protocol


class ArrayAPI(Protocol):
    """Allocation, elementwise arithmetic, copies, host/device moves (layers may use these)."""

    def empty(self, shape, dtype):
        """An uninitialised C-contiguous array."""

    def zeros(self, shape, dtype):
        """A C-contiguous array of zeros."""

    def contiguous(self, a):
        """`a` as a C-contiguous array of this backend (a view when it already is one)."""

    def astype(self, a, dtype):
        """`a` in `dtype`: `a` itself when it already has it, else a converted copy."""

    def copy(self, a):
        """A C-contiguous copy of `a`."""

    def fill(self, a, value):
        """Set every entry of `a` to `value`, in place; returns `a`."""

    def copy_into(self, dst, src):
        """``dst[...] = src`` in place (`src` of dst's shape, host or this backend's); returns `dst`."""

    def add_into(self, dst, src):
        """``dst += src`` in place, `src` reshaped to dst's shape; returns `dst`."""

    def to_device(self, a):
        """`a` as a C-contiguous array of this backend (host arrays are copied over)."""

    def to_host(self, a):
        """A host NumPy array with `a`'s contents."""

    def add(self, a, b):
        """``a + b`` (same shapes; a new array)."""

    def sub(self, a, b):
        """``a - b`` (same shapes; a new array)."""

    def mul(self, a, b):
        """``a * b`` (same shapes; a new array)."""

    def scale(self, a, s):
        """``a * s``, the scalar `s` taken in a's dtype (a new array)."""


class KernelAPI(ArrayAPI, Protocol):
    """The kernel primitives (only ``ops`` call these)."""

    # ------------------------------------------------------------------ workspace
    def set_workspace_bytes(self, nbytes):
        """Set the bound, in bytes, on the workspace one batch chunk of an op may use
        (column buffers, ACDA's features); returns the previous value. Ops whose
        workspace grows with the batch run it in chunks of :meth:`chunk_size` samples;
        each backend has its own default."""

    def chunk_size(self, N, bytes_per_sample):
        """Samples per chunk so that a chunk's workspace stays within the bound (at least 1;
        a function of the arguments and the bound only)."""

    # ------------------------------------------------------------------ conv template
    def conv_forward(self, x, wt, bt, g, groups, saved=None):
        """``Y_n = Wt_n @ X_n + bt_n``: x (N, C, H, W); wt (O, F) shared or (N, O, F) per
        sample; bt (O,), (N, O) or None. Returns y (N, O, Ho, Wo). `saved`: a dict the
        backend may fill with what :meth:`conv_backward` of the same x and wt can reuse
        (the op passes it the same dict); the results never depend on it."""

    def conv_backward(self, x, wt, dy, g, groups, need_dx=True, need_dw=True, saved=None):
        """Backward of :meth:`conv_forward`. Returns ``(dx (N, C, H, W) or None,
        gw (O, F) shared / (N, O, F) per sample or None, dbt (O,) shared / (N, O))``.
        `saved`: the forward's; the backend takes out of it what it reuses."""

    def conv_plan(self, g, groups, O, K, per_sample, dtype):
        """The formulation of a kernel-mixing op's convolution, ``"kernel_mixing"`` (mix
        the K kernels per sample, then :meth:`conv_forward` with per-sample kernels
        (N, O, F)) or ``"output_mixing"`` (:meth:`conv_forward` with the K kernels
        stacked as K*O outputs (K*O, F), shared by the batch, then mix the K outputs per
        sample). g: x's geometry; O outputs per kernel; K kernels; `per_sample`: the
        mixing weights are (N, K) (else (K,): always ``"kernel_mixing"``); dtype of x.
        The backend decides (a cost model, or a fixed answer) and may honour what
        :mod:`dynconv_np.strategy` forces; the op has both formulations of the math."""

    def im2col(self, x, g, out=None):
        """Unfold x (n, C, H, W) into cols (n, C*kh*kw, Ho*Wo)."""

    def col2im(self, cols, g, out):
        """Fold cols (n, C*kh*kw, Ho*Wo) into `out` (n, C, H, W), summing overlaps; returns `out`."""

    # ------------------------------------------------------------------ products
    def gemm(self, a, b, ta=False, tb=False, out=None, accumulate=False):
        """``op(a) @ op(b)`` with NumPy's matmul rules (1-D operands, leading batch axes of
        any rank, broadcast batch of one), ``op`` transposing the last two axes when
        `ta` / `tb` (a 1-D operand cannot be transposed: ``ValueError``). With `out` (the
        product's shape, C-contiguous), the product is written (or, with `accumulate`,
        added) into it and `out` is returned. The ops' one GEMM entry point: how it is
        run (BLAS threads, tiles, batch chunks) is the backend's business."""

    def gemm_nt_sum(self, a, b):
        """``sum_n a[n] @ b[n]^T``: a (N, M, K), b (N, J, K) -> (M, J)."""

    # ------------------------------------------------------------------ tap engine
    def taps_forward(self, x, filt, g, M, cdiv, out=None, channel_major=False, scale=None):
        """Per-pixel filters applied tap by tap, without an unfolded input.

        Per-pixel dynamic convolutions (ACDA atoms, DDF, Involution) apply at every output
        pixel a small filter that changes from pixel to pixel; an im2col formulation would
        build the unfolded input, ``kh*kw`` times x. The tap engine reads x at the tap
        positions instead and keeps no workspace beyond its inputs and outputs::

            out[n, c*M + m, i, j] = sum_t filt[n, f(c, m), t, i, j] * xpad[n, c, i*sh + u*dh, j*sw + v*dw]

        with taps ``t = u*kw + v`` and ``xpad`` the zero-padded input. ``M`` is the number
        of outputs per input channel (output channel ``c*M + m`` belongs to input channel
        ``c``); ``cdiv`` (a divisor of C) the number of input channels per filter group:
        channel ``c`` and slot ``m`` use filter ``f(c, m) = (c // cdiv)*M + m``, so there
        are ``F = (C // cdiv) * M`` filters. ACDA's atoms are ``filt (N, M, T, Ho, Wo)``
        with ``cdiv = C``; Involution ``filt (N, G, T, Ho, Wo)``, ``M = 1``, ``cdiv = C // G``;
        DDF's spatial filter ``filt (N, 1, T, Ho, Wo)``, ``M = 1``, ``cdiv = C``, with its
        channel filter as `scale`.

        `scale` (N, C, kh*kw), optional: a per-sample, per-channel tap scale that
        multiplies every filter a channel uses, so that a filter decoupled as ``filt x
        scale`` (DDF) is never built::

            out[n, c*M + m, i, j] = sum_t filt[n, f(c, m), t, i, j] * scale[n, c, t] * xpad[...]

        Without `scale` the arithmetic is bitwise that of the plain engine (ACDA's calls
        are unchanged). The same `scale` enters :meth:`taps_backward_input` and
        :meth:`taps_backward_filter`; its own gradient is :meth:`taps_backward_scale`.

        x (N, C, H, W) and filt (N, F, kh*kw, Ho, Wo), C-contiguous, of one dtype (the
        sums are in that dtype). Returns out (N, C*M, Ho, Wo), or (C*M, N, Ho, Wo) when
        `channel_major` (a following 1x1 GEMM over the channels is then one GEMM for the
        whole batch); `out`, when given, is overwritten. Samples are independent: a
        caller bounds its workspace by passing batch slices (with
        ``dataclasses.replace(g, N=nb)``) and ``out=`` views of its result. The window
        ``g`` may have a negative padding (a window that starts inside x)."""

    def taps_backward_input(self, filt, dout, g, M, cdiv, out=None, channel_major=False, scale=None):
        """Gradient of :meth:`taps_forward` w.r.t. x: dx (N, C, H, W) (a gather)."""

    def taps_backward_filter(self, x, dout, g, M, cdiv, out=None, channel_major=False, scale=None):
        """Gradient of :meth:`taps_forward` w.r.t. filt: (N, F, kh*kw, Ho, Wo)."""

    def taps_backward_scale(self, x, filt, dout, g, M, cdiv, out=None, channel_major=False):
        """Gradient of :meth:`taps_forward` w.r.t. its `scale`: dscale (N, C, kh*kw),
        ``dscale[n, c, t] = sum_{m, i, j} dout[n, c*M + m, i, j] * filt[n, f(c, m), t, i, j]
        * xpad[n, c, tap t of (i, j)]``; each ``(n, c)`` row is one owner's reduction in a
        fixed order. `out` (N, C, kh*kw), when given, is overwritten."""

    # ------------------------------------------------------------------ filter normalisation (DDF)
    def filter_norm(self, z, gain, eps):
        """DDF's filter normalisation: each filter standardised over its taps, then scaled.

        z (A, T, B) holds ``A*B`` filters of ``T`` taps (axis 1); gain (G, T), G dividing
        A, scales filter row ``a`` by ``gain[a % G]``::

            y[a, :, b] = gain[a % G] * (z[a, :, b] - mean) / (std + eps)

        with the mean and the unbiased standard deviation (divisor ``T - 1``, T >= 2) of
        ``z[a, :, b]``. Returns y (A, T, B)."""

    def filter_norm_backward(self, z, gain, dy, eps):
        """Gradients of :meth:`filter_norm` for the cotangent dy (A, T, B): ``(dz (A, T, B),
        dgain (G, T))``; the statistics are recomputed from z."""

    # ------------------------------------------------------------------ centre taps (DCD)
    def centre_taps(self, x, g):
        """xs (N, C, Ho, Wo): x at every output pixel's centre tap, zero in the padding."""

    def add_centre_taps(self, dx, dxs, g):
        """``dx (N, C, H, W) += dxs (N, C, Ho, Wo)`` at the centre-tap positions, in place; returns `dx`."""

    # ------------------------------------------------------------------ kernel scaling (ODConv)
    def scale_kernels(self, w, a_f, a_c, a_s, groups):
        """Per-sample kernels scaled along three axes (ODConv's filter, channel and spatial
        attentions folded into the kernel)::

            out[n, o, c, t] = w[n, o, c, t] * ((a_f[n, o] * a_c[n, g(o)*Cg + c]) * a_s[n, t])

        w (N, O, Cg, T), a_f (N, O), a_c (N, C) with ``C = groups*Cg``, a_s (N, T);
        ``g(o) = o // (O // groups)`` is output channel o's group, so ``a_c`` scales the
        input channel that kernel column ``c`` reads. Returns out (N, O, Cg, T), a new array."""

    def scale_kernels_backward(self, G, w, a_f, a_c, a_s, groups):
        """Gradients of :meth:`scale_kernels` for the cotangent G (N, O, Cg, T):
        ``(dw (N, O, Cg, T), da_f (N, O), da_c (N, C), da_s (N, T))``; ``da_c[n, c]`` sums
        over the output channels of c's group and the taps, ``da_s[n, t]`` over the output
        channels and the kernel columns."""

    # ------------------------------------------------------------------ rows and channels
    def scale_rows(self, a, s):
        """``a (N, O, P) * s (N, O)[:, :, None]`` (a new array)."""

    def rowdot(self, a, b):
        """``sum_p a[n, o, p] * b[n, o, p]``: (N, O)."""

    def channel_sum(self, a):
        """a (A, C, B) summed over A and B: (C,)."""

    def add_channel_bias(self, a, b):
        """``a (A, C, B) += b (C,)`` per channel, in place; returns `a`."""

    def swap01(self, a, out=None):
        """a (A, B, P) -> (B, A, P), C-contiguous (into `out` when given)."""

    def channel_mix(self, a, W):
        """``out[o, ...] = sum_k a[k, o] * W[k, o, ...]``: a (K, O), W (K, O, ...) -> (O, ...)."""

    def channel_mix_backward(self, a, W, G):
        """Gradients of :meth:`channel_mix` for the cotangent G (O, ...): ``(dW (K, O, ...), da (K, O))``."""

    def add_eye(self, a):
        """``a (N, L, L) + I`` (a new array)."""

    # ------------------------------------------------------------------ elementwise and rows
    def exp(self, a):
        """``exp(a)`` (a new array)."""

    def total(self, a):
        """The sum of every entry, as a host scalar of a's dtype."""

    def relu(self, z):
        """``max(z, 0)``."""

    def relu_backward(self, z, dy):
        """``dy`` where ``z > 0``, else 0."""

    def sigmoid(self, z, tau):
        """``1 / (1 + exp(-z / tau))`` without overflow at any finite z."""

    def sigmoid_backward(self, y, dy, tau):
        """``dy * y * (1 - y) / tau`` from the forward's output `y`."""

    def hard_sigmoid(self, z, scale):
        """``relu6(z + 3) / scale``."""

    def hard_sigmoid_backward(self, z, dy, scale):
        """``dy / scale`` on the open interval ``-3 < z < 3``, else 0."""

    def tanh(self, z):
        """``tanh(z)``."""

    def tanh_backward(self, y, dy):
        """``dy * (1 - y**2)`` from the forward's output `y`."""

    def softmax(self, z, tau, axis):
        """``softmax(z / tau)`` along `axis` (non-negative), the maximum subtracted first."""

    def softmax_backward(self, y, dy, tau, axis):
        """``y * (dy - sum(dy * y, axis)) / tau`` from the forward's output `y`."""

    def log_softmax(self, z):
        """``log(softmax(z))`` along the last axis of a 2-D array."""

    # ------------------------------------------------------------------ pooling and batch norm
    def mean_pool(self, x):
        """(N, C, H, W) -> (N, C): the mean of each plane."""

    def mean_pool_backward(self, dy, H, W):
        """(N, C) -> (N, C, H, W): ``dy / (H*W)`` spread over each plane."""

    def batch_stats(self, x, ddof=0):
        """Per-channel mean and variance (divisor ``count - ddof``) of x (N, C) or (N, C, H, W);
        with a tuple `ddof`, ``(mean, (var for each ddof))``."""

    def batch_norm_forward(self, x, mean, var, gamma, beta, eps):
        """``(y, xhat, inv)``: ``inv = 1/sqrt(var + eps)`` (C,), ``xhat = (x - mean) * inv``,
        ``y = xhat * gamma + beta`` (x's shape)."""

    def batch_norm_backward(self, dy, xhat, gamma, inv, training):
        """``(dx, dgamma, dbeta, drm, drv)``; drm and drv (running statistics, eval mode)
        are None when `training`."""

    def running_update(self, r, batch, momentum):
        """``(1 - momentum) * r + momentum * batch`` (a new array)."""

    # ------------------------------------------------------------------ optimiser updates
    def sgd_step(self, p, g, buf, lr, momentum, weight_decay, nesterov):
        """One SGD update of `p` in place (PyTorch's rule); returns the momentum buffer."""

    def adam_step(self, p, g, m, v, lr_c1, b1, b2, c2, eps, weight_decay):
        """One Adam update of `p` in place; returns the new moments ``(m, v)``."""


def _members(proto) -> dict[str, inspect.Signature]:
    out = {}
    for name, f in vars(proto).items():
        if name.startswith("_") or not callable(f):
            continue
        sig = inspect.signature(f)
        params = list(sig.parameters.values())[1:]             # drop self
        out[name] = sig.replace(parameters=params)
    return out


def array_api() -> dict[str, inspect.Signature]:
    """Name -> signature of every :class:`ArrayAPI` member."""
    return _members(ArrayAPI)


def kernel_api() -> dict[str, inspect.Signature]:
    """Name -> signature of every :class:`KernelAPI` member (the array API excluded)."""
    return _members(KernelAPI)


def full_api() -> dict[str, inspect.Signature]:
    """Both tiers: what every backend module implements."""
    return {**array_api(), **kernel_api()}
