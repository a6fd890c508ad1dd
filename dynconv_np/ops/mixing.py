"""Kernel-mixing dynamic convolution: CondConv, DY-CNN and the static mixture (docs/math.md).

Every variant is the per-sample-kernel template of docs/math.md::

    Wt_n = sum_k pi[n, k] W_k          bt_n = sum_k pi[n, k] b_k
    Y_n  = Wt_n @ X_n + bt_n

and its backward, with ``G_n = dY_n @ X_n^T`` and ``dbt_n = dY_n.sum(pixels)``::

    dW_k     = sum_n pi[n, k] G_n       dbias_k = sum_n pi[n, k] dbt_n
    dpi[n,k] = <G_n, W_k> + <dbt_n, b_k>
    dX_n     = Wt_n^T @ dY_n  (then col2im)

A shared ``pi (K,)`` (the static mixture of seed 000) mixes once and costs one
convolution; its gradients use ``G = sum_n G_n``.

Per-sample weights have a second formulation of the same math (output mixing): the K
convolutions as one, the experts stacked as ``K*O`` outputs shared by the batch, then
the outputs mixed per sample::

    Y_n,k = W_k @ X_n + b_k             y_n = sum_k pi[n, k] Y_n,k
    dY_n,k = pi[n, k] dy_n              dpi[n, k] = <dy_n, Y_n,k>

and one shared-kernel backward on ``dY`` gives ``dx``, every ``dW_k`` and ``dbias_k``.
It does K times the convolution work but in large shared-kernel GEMMs, without the
``K*|W|`` mixing per sample; the backend picks the formulation (``conv_plan``).
"""

from __future__ import annotations

import numpy as np

from .. import _args, backends
from .._op import op
from ._kernel_mix import mix_kernels


@op("x", "W", "pi", "bias")
def dynamic_conv2d(x: np.ndarray, W: np.ndarray, pi: np.ndarray, bias: np.ndarray | None = None,
                   stride=1, padding=0, dilation=1, groups: int = 1):
    """Dynamic convolution with per-sample (or shared) mixtures of K kernels.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    W : ndarray (K, O, C//groups, kh, kw)
        The K expert kernels.
    pi : ndarray (N, K) or (K,)
        Mixing weights per sample, or one set shared by the batch. Taken as given:
        softmax, sigmoid or any other routing is the caller's.
    bias : ndarray (K, O), optional
        Expert biases, mixed with the same weights.
    stride, padding, dilation, groups
        As in :func:`~dynconv_np.conv2d`.

    Returns
    -------
    y : ndarray (N, O, Ho, Wo)
        ``y[n] = conv2d(x[n], sum_k pi[n,k] W[k]) + sum_k pi[n,k] bias[k]``.

    ``dynamic_conv2d.vjp(...)`` returns ``(y, pullback)``; ``pullback(dy)`` gives
    ``(dx, dW, dpi, dbias)`` with the shapes of ``x, W, pi, bias`` (dbias None if no bias).
    """
    _, device = _args.check_arrays({"x": x, "W": W, "pi": pi, "bias": bias}, optional=("bias",))
    groups, g = _args.conv_args(x, W, bias, groups, stride, padding, dilation, w_name="W",
                                w_layout="(K, O, C//groups, kh, kw)",
                                channels="expert, output and input channel", bias_layout="(K, O)")
    K, O = W.shape[:2]
    N = g.N
    if pi.ndim not in (1, 2):
        raise ValueError(f"pi must be (N, K) or (K,), got {pi.ndim}-D array of shape {tuple(pi.shape)}")
    per_sample = pi.ndim == 2
    _args.check_shape("pi", pi, (N, K) if per_sample else (K,),
                      f"to match x's batch N={N} and W's K={K}" if per_sample else f"to match W's K={K}")
    be = backends.get(device)

    x_ = be.contiguous(x)
    form = be.conv_plan(g, groups, O, K, per_sample, x_.dtype)
    if form == "output_mixing":
        return _output_mixing(be, x_, W, pi, bias, g, groups)
    return _kernel_mixing(be, x_, W, pi, bias, g, groups)


def _kernel_mixing(be, x_, W, pi, bias, g, groups):
    # Mix the kernels (per sample, or once for a shared pi), then one convolution.
    K, O = W.shape[:2]
    N, F = g.N, g.C // groups * g.taps
    wt, bt, pb_mix = mix_kernels(be, W, pi, bias)           # (N, O*F) or (O*F,); (N, O) or (O,)
    wt = wt.reshape((N, O, F) if len(pi.shape) == 2 else (O, F))
    saved = {}                                              # what the backward reuses
    y = be.conv_forward(x_, wt, bt, g, groups, saved)       # (N, O, Ho, Wo)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dx, gw, dbt = be.conv_backward(x_, wt, be.contiguous(dy), g, groups, saved=saved)
        dW, dpi, dbias = pb_mix(gw, dbt)                    # W's, pi's and bias's shapes
        return dx, dW, dpi, dbias

    return y, pullback


def _output_mixing(be, x_, W, pi, bias, g, groups):
    # K convolutions as one shared convolution over the batch, then the outputs mixed.
    # The stacked outputs are group-major, (G, K, Og), so that each group's experts are
    # that group's outputs of the shared convolution.
    K, O = W.shape[:2]
    N, F, G, P = g.N, g.C // groups * g.taps, groups, g.P
    w_shape, pi_shape = W.shape, pi.shape
    pi_ = be.contiguous(pi)
    Wf = be.contiguous(W).reshape(K, O * F)                             # (K, O*F)
    b_ = None if bias is None else be.contiguous(bias)                  # (K, O)
    Og = O // G
    Ws = be.swap01(Wf.reshape(K, G, Og * F)).reshape(K * O, F)            # (G*K*Og, F)
    bs = None if b_ is None else be.swap01(b_.reshape(K, G, Og)).reshape(K * O)  # (G*K*Og,)
    saved = {}                                                          # what the backward reuses
    Y = be.conv_forward(x_, Ws, bs, g, G, saved).reshape(N, G, K, Og * P)   # Y[n, gi, k] = W_k X_n + b_k
    y = be.gemm(pi_.reshape(N, 1, 1, K), Y)                             # (N, G, 1, Og*P)
    y = y.reshape(N, O, g.Ho, g.Wo)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dy4 = be.contiguous(dy).reshape(N, G, 1, Og * P)
        dY = be.gemm(pi_.reshape(N, 1, K, 1), dy4)                      # (N, G, K, Og*P): pi[n,k] dy_n
        dpi = be.gemm(Y, dy4, tb=True).reshape(N, G, K)                 # <Y[n,gi,k], dy[n,gi]>
        dpi = be.gemm(be.fill(be.empty((1, G), dpi.dtype), 1), dpi)     # (N, 1, K): summed over groups
        dx, gWs, dbs = be.conv_backward(x_, Ws, dY.reshape(N, K * O, g.Ho, g.Wo), g, G, saved=saved)
        dW = be.swap01(gWs.reshape(G, K, Og * F)).reshape(w_shape)      # (K, O, Cg, kh, kw)
        dbias = None if b_ is None else be.swap01(dbs.reshape(G, K, Og)).reshape(K, O)
        return dx, dW, dpi.reshape(pi_shape), dbias

    return y, pullback
