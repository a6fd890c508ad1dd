"""Omni-dimensional dynamic convolution, ODConv (docs/math.md, "ODConv"; Li et al., ICLR 2022).

Four attentions per sample: ``a_w (N, K)`` over the experts, ``a_s (N, kh, kw)`` over
the kernel taps, ``a_c (N, C)`` over the input channels, ``a_f (N, O)`` over the output
channels::

    y[n] = a_f[n] * conv2d(a_c[n] * x[n], sum_k a_w[n, k] (a_s[n] * W[k]))

The authors' code scales ``x`` by ``a_c`` and the output by ``a_f``. A per-channel scale
of the input (zero padding stays zero) and a per-row scale of the output are scales of
the kernel's columns and rows, so all three attentions fold into the per-sample kernel
and ``x`` is never copied (``T = kh*kw`` taps, ``Cg = C//groups``, ``g(o)`` the group of
output channel ``o``)::

    Wmix_n = sum_k a_w[n, k] W_k                                (N, O, Cg, T)  kernel mixing
    Wt[n, o, c, t] = Wmix[n, o, c, t] * a_f[n, o] * a_c[n, g(o)*Cg + c] * a_s[n, t]
    Y_n = Wt_n @ X_n                                            the conv template

Backward, with ``G_n = dY_n X_n^T`` the template's per-sample kernel gradient::

    dWmix    = G * a_f a_c a_s               da_f[n, o] = sum_{c,t} G Wmix a_c a_s
    da_c[n, g(o)*Cg + c] = sum_{o in the group, t} G Wmix a_f a_s
    da_s[n, t] = sum_{o, c} G Wmix a_f a_c
    dW_k = sum_n a_w[n, k] dWmix_n           da_w[n, k] = <dWmix_n, W_k>
    dX_n = Wt_n^T dY_n  (then col2im)
"""

from __future__ import annotations

import numpy as np

from .. import _args, backends
from .._op import op
from ._kernel_mix import mix_kernels


@op("x", "W", "a_w", "a_s", "a_c", "a_f")
def odconv2d(x: np.ndarray, W: np.ndarray, a_w: np.ndarray, a_s: np.ndarray, a_c: np.ndarray,
             a_f: np.ndarray, stride=1, padding=0, dilation=1, groups: int = 1):
    """Omni-dimensional dynamic convolution: K experts mixed per sample, the kernel scaled
    per sample along its taps, input channels and output channels.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    W : ndarray (K, O, C//groups, kh, kw)
        The K expert kernels.
    a_w : ndarray (N, K)
        Expert (kernel-wise) attention.
    a_s : ndarray (N, kh, kw)
        Spatial attention over the kernel taps.
    a_c : ndarray (N, C)
        Input-channel attention.
    a_f : ndarray (N, O)
        Output-channel (filter) attention.
    stride, padding, dilation, groups
        As in :func:`~dynconv_np.conv2d`.

    Returns
    -------
    y : ndarray (N, O, Ho, Wo)
        ``y[n] = a_f[n][:, None, None] * conv2d(a_c[n][:, None, None] * x[n],
        sum_k a_w[n, k] * (a_s[n] * W[k]))``.

    ``odconv2d.vjp(...)`` returns ``(y, pullback)``; ``pullback(dy)`` gives
    ``(dx, dW, da_w, da_s, da_c, da_f)`` with the shapes of the inputs. The attentions are
    taken as given (the sigmoids and the softmax are the caller's routing).
    """
    _, device = _args.check_arrays({"x": x, "W": W, "a_w": a_w, "a_s": a_s, "a_c": a_c, "a_f": a_f})
    groups, g = _args.conv_args(x, W, None, groups, stride, padding, dilation, w_name="W",
                                w_layout="(K, O, C//groups, kh, kw)",
                                channels="expert, output and input channel", bias_layout="")
    K, O, Cg = W.shape[:3]
    N, T = g.N, g.taps
    _args.odconv_attentions(a_w, a_s, a_c, a_f, N, K, g.C, O, g.kh, g.kw)
    be = backends.get(device)

    x_ = be.contiguous(x)
    a_f_, a_c_ = be.contiguous(a_f), be.contiguous(a_c)                  # (N, O), (N, C)
    a_s_ = be.contiguous(a_s).reshape(N, T)                              # (N, T)
    wmix, _, pb_mix = mix_kernels(be, W, a_w)                            # (N, O*Cg*T)
    wmix = wmix.reshape(N, O, Cg, T)
    wt = be.scale_kernels(wmix, a_f_, a_c_, a_s_, groups)               # (N, O, Cg, T)
    wt = wt.reshape(N, O, Cg * T)
    saved = {}                                                           # what the backward reuses
    y = be.conv_forward(x_, wt, None, g, groups, saved)                  # (N, O, Ho, Wo)

    def pullback(dy):
        _args.check_cotangent(dy, y)
        dx, gw, _ = be.conv_backward(x_, wt, be.contiguous(dy), g, groups, saved=saved)   # gw (N, O, Cg*T)
        dwmix, da_f, da_c, da_s = be.scale_kernels_backward(gw.reshape(N, O, Cg, T), wmix, a_f_, a_c_,
                                                            a_s_, groups)
        dW, da_w, _ = pb_mix(dwmix)                                      # (K, O, Cg, kh, kw), (N, K)
        return dx, dW, da_w, da_s.reshape(a_s.shape), da_c, da_f

    return y, pullback
