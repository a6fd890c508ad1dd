"""Naive float64 oracles: plain NumPy, no Numba, slow and obviously right.

Every fast path in dynconv_np is tested against a function here. Each reference
converts its inputs to float64, loops over kernel taps (and samples, experts, groups)
explicitly, and returns float64 results. Backward references take the cotangent ``dy``
and return the gradients in the op's pullback order.

Geometry arguments are normalised by the same ``_args.geometry`` as the ops (the
validation is shared; the arithmetic is not).
"""

from __future__ import annotations

import numpy as np

from . import _args


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


# ----------------------------------------------------------------------------- routing ops
def _rows(z, axis):
    """``z`` with `axis` moved last and flattened to rows ``(M, L)``, plus the undo."""
    zm = np.moveaxis(z, axis, -1)
    shape = zm.shape

    def back(r):
        return np.moveaxis(r.reshape(shape), -1, axis)

    return zm.reshape(-1, shape[-1]), back


def global_avg_pool(x):
    """Reference GAP: ``(N, C, H, W) -> (N, C)`` by explicit sums over pixels."""
    (x,) = _f64(x)
    N, C, H, W = x.shape
    y = np.zeros((N, C))
    for i in range(H):
        for j in range(W):
            y += x[:, :, i, j]
    return y / (H * W)


def global_avg_pool_backward(dy, x):
    """Reference ``(dx,)`` of :func:`global_avg_pool`."""
    dy, x = _f64(dy, x)
    N, C, H, W = x.shape
    dx = np.zeros((N, C, H, W))
    for i in range(H):
        for j in range(W):
            dx[:, :, i, j] = dy / (H * W)
    return (dx,)


def linear(a, w, b=None):
    """Reference ``a @ w.T + b`` by loops over output features; a ``(..., in)``."""
    a, w, b = _f64(a, w, b)
    y = np.zeros(a.shape[:-1] + (w.shape[0],))
    for o in range(w.shape[0]):
        for i in range(w.shape[1]):
            y[..., o] += a[..., i] * w[o, i]
        if b is not None:
            y[..., o] += b[o]
    return y


def linear_backward(dy, a, w, b=None):
    """Reference ``(da, dw, db)`` of :func:`linear`."""
    dy, a, w, b = _f64(dy, a, w, b)
    da = np.zeros(a.shape)
    dw = np.zeros(w.shape)
    for o in range(w.shape[0]):
        for i in range(w.shape[1]):
            da[..., i] += dy[..., o] * w[o, i]
            dw[o, i] = np.sum(dy[..., o] * a[..., i])
    db = None if b is None else dy.reshape(-1, w.shape[0]).sum(axis=0)
    return da, dw, db


def _map(fn, z):
    out = np.empty(z.shape)
    for idx in np.ndindex(z.shape):
        out[idx] = fn(float(z[idx]))
    return out


def relu(z):
    """Reference ``max(z, 0)``, element by element."""
    (z,) = _f64(z)
    return _map(lambda v: v if v > 0 else 0.0, z)


def relu_backward(dy, z):
    """Reference ``(dz,)`` of :func:`relu` (slope 0 at 0)."""
    dy, z = _f64(dy, z)
    return (dy * _map(lambda v: 1.0 if v > 0 else 0.0, z),)


def _logistic(v):
    import math

    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def sigmoid(z, tau=1.0):
    """Reference ``1 / (1 + exp(-z / tau))``, element by element."""
    (z,) = _f64(z)
    return _map(lambda v: _logistic(v / tau), z)


def sigmoid_backward(dy, z, tau=1.0):
    """Reference ``(dz,)`` of :func:`sigmoid`."""
    dy, z = _f64(dy, z)
    s = sigmoid(z, tau)
    return (dy * s * (1.0 - s) / tau,)


def softmax(z, tau=1.0, axis=-1):
    """Reference ``softmax(z / tau)`` along `axis`, one row at a time."""
    (z,) = _f64(z)
    rows, back = _rows(z, axis)
    out = np.empty(rows.shape)
    for r in range(rows.shape[0]):
        u = rows[r] / tau
        e = np.exp(u - u.max())
        out[r] = e / e.sum()
    return back(out)


def softmax_backward(dy, z, tau=1.0, axis=-1):
    """Reference ``(dz,)`` of :func:`softmax` through the explicit Jacobian of each row."""
    dy, z = _f64(dy, z)
    p, _ = _rows(softmax(z, tau, axis), axis)
    d, back = _rows(dy, axis)
    out = np.empty(p.shape)
    for r in range(p.shape[0]):
        J = (np.diag(p[r]) - np.outer(p[r], p[r])) / tau        # J[i, j] = d p_i / d z_j
        out[r] = J.T @ d[r]
    return (back(out),)


def hard_sigmoid(z, scale=3.0):
    """Reference ``min(max(z + 3, 0), 6) / scale``, element by element."""
    (z,) = _f64(z)
    return _map(lambda v: min(max(v + 3.0, 0.0), 6.0) / scale, z)


def hard_sigmoid_backward(dy, z, scale=3.0):
    """Reference ``(dz,)`` of :func:`hard_sigmoid` (slope 1/scale on the open (-3, 3))."""
    dy, z = _f64(dy, z)
    return (dy * _map(lambda v: 1.0 / scale if -3.0 < v < 3.0 else 0.0, z),)


def tanh(z):
    """Reference hyperbolic tangent from exponentials."""
    (z,) = _f64(z)

    def th(v):
        import math

        e = math.exp(-2.0 * abs(v))
        t = (1.0 - e) / (1.0 + e)
        return t if v >= 0 else -t

    return _map(th, z)


def tanh_backward(dy, z):
    """Reference ``(dz,)`` of :func:`tanh`."""
    dy, z = _f64(dy, z)
    t = tanh(z)
    return (dy * (1.0 - t * t),)


def _channel_values(x, c):
    """All values of channel `c` as a vector (over N, or N, H, W)."""
    return x[:, c].reshape(-1)


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1,
               eps=1e-5):
    """Reference batch normalisation, one channel at a time (biased batch variance)."""
    x, gamma, beta, running_mean, running_var = _f64(x, gamma, beta, running_mean, running_var)
    y = np.empty(x.shape)
    for c in range(x.shape[1]):
        v = _channel_values(x, c)
        if training:
            mean = v.sum() / v.size
            var = ((v - mean) ** 2).sum() / v.size
        else:
            mean, var = running_mean[c], running_var[c]
        y[:, c] = gamma[c] * (x[:, c] - mean) / np.sqrt(var + eps) + beta[c]
    return y


def batch_norm_backward(dy, x, gamma, beta, running_mean=None, running_var=None, training=True,
                        momentum=0.1, eps=1e-5):
    """Reference ``(dx, dgamma, dbeta, drunning_mean, drunning_var)`` of :func:`batch_norm`.

    Training mode builds each channel's Jacobian ``d xhat_i / d x_j =
    inv * (delta_ij - 1/M - xhat_i xhat_j / M)`` explicitly.
    """
    dy, x, gamma, beta, running_mean, running_var = _f64(dy, x, gamma, beta, running_mean, running_var)
    C = x.shape[1]
    dx = np.empty(x.shape)
    dgamma, dbeta = np.zeros(C), np.zeros(C)
    drm = None if running_mean is None else np.zeros(C)
    drv = None if running_var is None else np.zeros(C)
    for c in range(C):
        v = _channel_values(x, c)
        d = _channel_values(dy, c)
        M = v.size
        if training:
            mean = v.sum() / M
            var = ((v - mean) ** 2).sum() / M
        else:
            mean, var = running_mean[c], running_var[c]
        inv = 1.0 / np.sqrt(var + eps)
        xhat = (v - mean) * inv
        dgamma[c] = np.sum(d * xhat)
        dbeta[c] = np.sum(d)
        if training:
            J = inv * (np.eye(M) - 1.0 / M - np.outer(xhat, xhat) / M)
        else:
            J = inv * np.eye(M)
            drm[c] = -gamma[c] * inv * np.sum(d)
            drv[c] = np.sum(d * gamma[c] * (v - mean)) * (-0.5) * inv ** 3
        dx[:, c] = (gamma[c] * (J.T @ d)).reshape(dx[:, c].shape)
    return dx, dgamma, dbeta, drm, drv


# ----------------------------------------------------------------------------- small linear algebra
def _left(a, n, ta):
    """The left factor of sample n: a shared (2-D) or per-sample (3-D) matrix, transposed when `ta`."""
    m = a if a.ndim == 2 else a[n]
    return m.T if ta else m


def matmul(a, b, ta=False):
    """Reference ``c[n] = op(a) @ b[n]`` (op transposes when `ta`; a shared 2-D or per-sample 3-D)."""
    a, b = _f64(a, b)
    return np.stack([_left(a, n, ta) @ b[n] for n in range(b.shape[0])])


def matmul_backward(dc, a, b, ta=False):
    """Reference ``(da, db)`` of :func:`matmul`, sample by sample (a shared `a` sums them)."""
    dc, a, b = _f64(dc, a, b)
    da = [(dc[n] @ b[n].T).T if ta else dc[n] @ b[n].T for n in range(b.shape[0])]
    db = np.stack([_left(a, n, ta).T @ dc[n] for n in range(b.shape[0])])
    return (sum(da) if a.ndim == 2 else np.stack(da)), db


def scale_channels(a, s):
    """Reference ``a[n, c, ...] * s[n, c]``."""
    a, s = _f64(a, s)
    return np.array([[s[n, c] * a[n, c] for c in range(a.shape[1])] for n in range(a.shape[0])])


def scale_channels_backward(dy, a, s):
    """Reference ``(da, ds)`` of :func:`scale_channels`."""
    dy, a, s = _f64(dy, a, s)
    ds = np.array([[np.sum(dy[n, c] * a[n, c]) for c in range(a.shape[1])] for n in range(a.shape[0])])
    return scale_channels(dy, s), ds


def channel_mix(a, W):
    """Reference ``y[o] = sum_k a[k, o] W[k, o]``: the scaled kernels summed over k."""
    return scale_channels(W, a).sum(axis=0)


def channel_mix_backward(dy, a, W):
    """Reference ``(da, dW)`` of :func:`channel_mix`: ``dW[k, o] = a[k, o] dy[o]`` and
    ``da[k, o] = <dy[o], W[k, o]>``, scale_channels' backward with dy repeated over k."""
    dy, W = _f64(dy, W)
    dW, da = scale_channels_backward(np.broadcast_to(dy, W.shape), W, a)
    return da, dW


def add_bias(x, b):
    """Reference ``x[:, c] + b[c]``."""
    x, b = _f64(x, b)
    return np.stack([x[:, c] + b[c] for c in range(x.shape[1])], axis=1)


def add_bias_backward(dy, x, b):
    """Reference ``(dx, db)`` of :func:`add_bias`."""
    (dy,) = _f64(dy)
    return dy.copy(), np.array([dy[:, c].sum() for c in range(dy.shape[1])])


def add_eye(a):
    """Reference ``I + a[n]``."""
    (a,) = _f64(a)
    return np.stack([np.eye(a.shape[1]) + m for m in a])


def add_eye_backward(dy, a):
    """Reference ``(da,)`` of :func:`add_eye`."""
    return tuple(_f64(dy))


# ----------------------------------------------------------------------------- DCD pieces
def _centre(x, kernel_size, stride, padding, dilation):
    """The geometry, the padded input and the index of the centre tap at every output pixel."""
    kh, kw = _args.kernel_pair("kernel_size", kernel_size)
    g = _args.geometry(x.shape, kh, kw, stride, padding, dilation)
    return g, pad_input(x, g), (slice(None), slice(None)) + tap_slice(g, kh // 2, kw // 2)


def centre_projection(x, Q, kernel_size, stride=1, padding=0, dilation=1):
    """Reference ``Q^T x`` at every output pixel's centre tap: (N, L, Ho, Wo)."""
    x, Q = _f64(x, Q)
    g, xpad, centre = _centre(x, kernel_size, stride, padding, dilation)
    xs = xpad[centre]
    return np.stack([sum(Q[c, j] * xs[:, c] for c in range(g.C)) for j in range(Q.shape[1])], axis=1)


def centre_projection_backward(dz, x, Q, kernel_size, stride=1, padding=0, dilation=1):
    """Reference ``(dx, dQ)`` of :func:`centre_projection`."""
    dz, x, Q = _f64(dz, x, Q)
    g, xpad, centre = _centre(x, kernel_size, stride, padding, dilation)
    dQ = np.array([[np.sum(xpad[centre][:, c] * dz[:, j]) for j in range(Q.shape[1])] for c in range(g.C)])
    dxp = np.zeros(xpad.shape)
    for c in range(g.C):
        dxp[centre][:, c] = sum(Q[c, j] * dz[:, j] for j in range(Q.shape[1]))
    return unpad_input(dxp, g), dQ


def dcd_combine(r, lam, P, v):
    """Reference ``lam[n, o] * r[n, o] + sum_j P[o, j] v[n, j]``."""
    r, lam, P, v = _f64(r, lam, P, v)
    return scale_channels(r, lam) + np.stack([sum(P[o, j] * v[:, j] for j in range(P.shape[1]))
                                              for o in range(P.shape[0])], axis=1)


def dcd_combine_backward(dy, r, lam, P, v):
    """Reference ``(dr, dlam, dP, dv)`` of :func:`dcd_combine`."""
    dy, r, lam, P, v = _f64(dy, r, lam, P, v)
    dr, dlam = scale_channels_backward(dy, r, lam)
    dP = np.array([[np.sum(dy[:, o] * v[:, j]) for j in range(P.shape[1])] for o in range(P.shape[0])])
    dv = np.stack([sum(P[o, j] * dy[:, o] for o in range(P.shape[0])) for j in range(P.shape[1])], axis=1)
    return dr, dlam, dP, dv


# ----------------------------------------------------------------------------- loss
def _log_softmax_rows(z):
    return np.stack([row - row.max() - np.log(np.sum(np.exp(row - row.max()))) for row in z])


def softmax_cross_entropy(logits, target):
    """Reference ``-sum(target * log_softmax(logits)) / N``."""
    logits, target = _f64(logits, target)
    return -np.sum(target * _log_softmax_rows(logits)) / logits.shape[0]


def softmax_cross_entropy_backward(dloss, logits, target):
    """Reference ``(dlogits, dtarget)`` of :func:`softmax_cross_entropy`."""
    logits, target = _f64(logits, target)
    logp = _log_softmax_rows(logits)
    N = logits.shape[0]
    return float(dloss) * (np.exp(logp) - target) / N, -float(dloss) * logp / N
