"""Window ops: conv2d, dynamic_conv2d, dcd_conv2d, atom_conv2d and the padding helpers."""

from __future__ import annotations

import numpy as np

from .. import _args


def _f64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def pad_input(x, g):
    """Zero-pad ``x (N, C, H, W)`` to cover every tap of every output pixel."""
    Hp = max(g.H + g.ph, (g.Ho - 1) * g.sh + (g.kh - 1) * g.dh + 1)
    Wp = max(g.W + g.pw, (g.Wo - 1) * g.sw + (g.kw - 1) * g.dw + 1)
    xp = np.zeros((x.shape[0], x.shape[1], Hp, Wp))
    xp[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W] = x
    return xp


def unpad_input(dxp, g):
    """Crop a gradient with respect to the padded input back to ``(N, C, H, W)``."""
    return dxp[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W].copy()


def tap_slice(g, u, v):
    """Index of the padded input seen by tap ``(u, v)`` at every output pixel."""
    return (slice(u * g.dh, u * g.dh + (g.Ho - 1) * g.sh + 1, g.sh),
            slice(v * g.dw, v * g.dw + (g.Wo - 1) * g.sw + 1, g.sw))


def _geom(x, w, stride, padding, dilation):
    return _args.geometry(x.shape, w.shape[-2], w.shape[-1], stride, padding, dilation)


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference convolution. x (N, C, H, W), w (O, C//groups, kh, kw) -> (N, O, Ho, Wo)."""
    x, w, bias = _f64(x, w, bias)
    g = _geom(x, w, stride, padding, dilation)
    xp = pad_input(x, g)
    O, Cg = w.shape[:2]
    Og = O // groups
    y = np.zeros((x.shape[0], O, g.Ho, g.Wo))
    for gr in range(groups):
        xs = xp[:, gr * Cg:(gr + 1) * Cg]
        ws = w[gr * Og:(gr + 1) * Og]
        for u in range(g.kh):
            for v in range(g.kw):
                si, sj = tap_slice(g, u, v)
                y[:, gr * Og:(gr + 1) * Og] += np.einsum("oc,ncij->noij", ws[:, :, u, v], xs[:, :, si, sj])
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def conv2d_backward(dy, x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference gradients ``(dx, dw, dbias)`` of :func:`conv2d`."""
    dy, x, w, bias = _f64(dy, x, w, bias)
    g = _geom(x, w, stride, padding, dilation)
    xp = pad_input(x, g)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    O, Cg = w.shape[:2]
    Og = O // groups
    for gr in range(groups):
        cs, os_ = slice(gr * Cg, (gr + 1) * Cg), slice(gr * Og, (gr + 1) * Og)
        for u in range(g.kh):
            for v in range(g.kw):
                si, sj = tap_slice(g, u, v)
                dw[os_, :, u, v] = np.einsum("noij,ncij->oc", dy[:, os_], xp[:, cs, si, sj])
                dxp[:, cs, si, sj] += np.einsum("oc,noij->ncij", w[os_, :, u, v], dy[:, os_])
    dbias = None if bias is None else dy.sum(axis=(0, 2, 3))
    return unpad_input(dxp, g), dw, dbias


def _mixed(W, pi, bias):
    """Per-sample kernels and biases by explicit loops over samples and experts."""
    per_sample = pi.ndim == 2
    P = pi if per_sample else pi[None]
    Wt = np.zeros((P.shape[0],) + W.shape[1:])
    bt = None if bias is None else np.zeros((P.shape[0], bias.shape[1]))
    for n in range(P.shape[0]):
        for k in range(W.shape[0]):
            Wt[n] += P[n, k] * W[k]
            if bias is not None:
                bt[n] += P[n, k] * bias[k]
    return Wt, bt


def dynamic_conv2d(x, W, pi, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference kernel-mixing convolution: one explicit conv per sample with its mixed kernel."""
    x, W, pi, bias = _f64(x, W, pi, bias)
    Wt, bt = _mixed(W, pi, bias)
    ys = []
    for n in range(x.shape[0]):
        m = n if pi.ndim == 2 else 0
        ys.append(conv2d(x[n:n + 1], Wt[m], None if bt is None else bt[m],
                         stride, padding, dilation, groups))
    return np.concatenate(ys, axis=0)


def dynamic_conv2d_backward(dy, x, W, pi, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reference gradients ``(dx, dW, dpi, dbias)`` of :func:`dynamic_conv2d`."""
    dy, x, W, pi, bias = _f64(dy, x, W, pi, bias)
    Wt, bt = _mixed(W, pi, bias)
    K = W.shape[0]
    dx = np.zeros_like(x)
    dW = np.zeros_like(W)
    dpi = np.zeros_like(pi)
    dbias = None if bias is None else np.zeros_like(bias)
    for n in range(x.shape[0]):
        m = n if pi.ndim == 2 else 0
        dxn, Gn, dbn = conv2d_backward(dy[n:n + 1], x[n:n + 1], Wt[m], np.zeros(W.shape[1]),
                                       stride, padding, dilation, groups)
        dx[n] = dxn[0]
        for k in range(K):
            dW[k] += pi[m, k] * Gn if pi.ndim == 2 else pi[k] * Gn
            gk = np.sum(Gn * W[k]) + (0.0 if bias is None else np.sum(dbn * bias[k]))
            if pi.ndim == 2:
                dpi[n, k] += gk
            else:
                dpi[k] += gk
            if bias is not None:
                dbias[k] += (pi[m, k] if pi.ndim == 2 else pi[k]) * dbn
    return dx, dW, dpi, dbias


# ----------------------------------------------------------------------------- DCD
def dcd_kernels(W0, lam, phi, P, Q):
    """Explicit per-sample DCD kernels ``(N, O, C, kh, kw)``, sample by sample.

    ``W_n = lam[n][:, None, None, None] * W0`` plus ``P @ phi[n] @ Q.T`` at the centre tap.
    """
    W0, lam, phi, P, Q = _f64(W0, lam, phi, P, Q)
    N = lam.shape[0]
    kh, kw = W0.shape[2:]
    Wn = np.zeros((N,) + W0.shape)
    for n in range(N):
        Wn[n] = lam[n][:, None, None, None] * W0
        Wn[n, :, :, kh // 2, kw // 2] += P @ phi[n] @ Q.T
    return Wn


def dcd_conv2d(x, W0, lam, phi, P, Q, stride=1, padding=0, dilation=1):
    """Reference DCD: one explicit convolution per sample with its built kernel."""
    x = _f64(x)[0]
    Wn = dcd_kernels(W0, lam, phi, P, Q)
    return np.concatenate([conv2d(x[n:n + 1], Wn[n], None, stride, padding, dilation)
                           for n in range(x.shape[0])], axis=0)


def dcd_conv2d_backward(dy, x, W0, lam, phi, P, Q, stride=1, padding=0, dilation=1):
    """Reference gradients ``(dx, dW0, dlam, dphi, dP, dQ)`` of :func:`dcd_conv2d`.

    Goes through the per-sample kernel gradient ``G_n = dY_n X_n^T`` of each explicit
    convolution, then the chain rule of the kernel construction.
    """
    dy, x, W0, lam, phi, P, Q = _f64(dy, x, W0, lam, phi, P, Q)
    Wn = dcd_kernels(W0, lam, phi, P, Q)
    kh, kw = W0.shape[2:]
    dx = np.zeros_like(x)
    dW0 = np.zeros_like(W0)
    dlam = np.zeros_like(lam)
    dphi = np.zeros_like(phi)
    dP = np.zeros_like(P)
    dQ = np.zeros_like(Q)
    for n in range(x.shape[0]):
        dxn, Gn, _ = conv2d_backward(dy[n:n + 1], x[n:n + 1], Wn[n], None, stride, padding, dilation)
        dx[n] = dxn[0]
        for o in range(W0.shape[0]):
            dW0[o] += lam[n, o] * Gn[o]
            dlam[n, o] = np.sum(Gn[o] * W0[o])
        Gc = Gn[:, :, kh // 2, kw // 2]                 # (O, C): gradient of P phi_n Q^T
        dphi[n] = P.T @ Gc @ Q
        dP += Gc @ Q @ phi[n].T
        dQ += Gc.T @ P @ phi[n]
    return dx, dW0, dlam, dphi, dP, dQ


# ----------------------------------------------------------------------------- ACDA atoms
def atom_filters(atoms, coeff):
    """Explicit per-pixel filters ``(N, O, C, kh, kw, Ho, Wo)``: ``sum_m coeff[o,c,m] atoms[n,m]``."""
    atoms, coeff = _f64(atoms, coeff)
    N, M, kh, kw, Ho, Wo = atoms.shape
    O, C, _ = coeff.shape
    F = np.zeros((N, O, C, kh, kw, Ho, Wo))
    for m in range(M):
        F += coeff[None, :, :, m, None, None, None, None] * atoms[:, None, None, m]
    return F


def _atom_geom(x, atoms, stride, padding, dilation):
    return _args.geometry(x.shape, atoms.shape[2], atoms.shape[3], stride, padding, dilation)


def atom_conv2d(x, atoms, coeff, bias=None, stride=1, padding=0, dilation=1):
    """Reference ACDA convolution with the materialised per-pixel filters, tap by tap."""
    x, atoms, coeff, bias = _f64(x, atoms, coeff, bias)
    g = _atom_geom(x, atoms, stride, padding, dilation)
    F = atom_filters(atoms, coeff)
    xp = pad_input(x, g)
    y = np.zeros((x.shape[0], coeff.shape[0], g.Ho, g.Wo))
    for u in range(g.kh):
        for v in range(g.kw):
            si, sj = tap_slice(g, u, v)
            y += np.einsum("nocij,ncij->noij", F[:, :, :, u, v], xp[:, :, si, sj])
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def atom_conv2d_backward(dy, x, atoms, coeff, bias=None, stride=1, padding=0, dilation=1):
    """Reference gradients ``(dx, datoms, dcoeff, dbias)`` of :func:`atom_conv2d`.

    Goes through the gradient of the materialised per-pixel filters
    ``dF[n,o,c,u,v,i,j] = dy[n,o,i,j] * xpad[n,c,tap (u,v) of (i,j)]``.
    """
    dy, x, atoms, coeff, bias = _f64(dy, x, atoms, coeff, bias)
    g = _atom_geom(x, atoms, stride, padding, dilation)
    F = atom_filters(atoms, coeff)
    xp = pad_input(x, g)
    dxp = np.zeros_like(xp)
    dF = np.zeros_like(F)
    for u in range(g.kh):
        for v in range(g.kw):
            si, sj = tap_slice(g, u, v)
            dF[:, :, :, u, v] = dy[:, :, None] * xp[:, None, :, si, sj]
            dxp[:, :, si, sj] += np.einsum("nocij,noij->ncij", F[:, :, :, u, v], dy)
    datoms = np.einsum("ocm,nocuvij->nmuvij", coeff, dF)
    dcoeff = np.einsum("nmuvij,nocuvij->ocm", atoms, dF)
    dbias = None if bias is None else dy.sum(axis=(0, 2, 3))
    return unpad_input(dxp, g), datoms, dcoeff, dbias
