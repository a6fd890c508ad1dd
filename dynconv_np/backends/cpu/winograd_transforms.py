"""Winograd minimal filtering F(m x m, 3 x 3): the transform matrices and the tile and
kernel transforms of the Winograd conv kernels (:mod:`.winograd`).

One output tile ``Y`` (m x m) of a 3x3 correlation is computed from the input tile ``d``
(alpha x alpha, ``alpha = m + 2``) and the kernel ``g`` (3 x 3) as (Lavin and Gray 2016)::

    Y = A^T [(G g G^T) . (B^T d B)] A

with ``.`` the elementwise product: alpha^2 multiplications per channel pair instead of
``9 m^2``. ``m = 2`` interpolates at 0, 1, -1 and infinity, ``m = 4`` at 0, 1, -1, 2, -2
and infinity (the matrices of Lavin and Gray's paper).

Layouts (flat, row-major): ``V (alpha^2, C, nb)`` the transformed input tiles of a block,
``M (alpha^2, O, nb)`` their products with the transformed kernels ``U (alpha^2, O, Cg)``;
``xi = i*alpha + k``. A block is a few rectangles of tiles ("pieces", of one width: K - 1
tiles a row); its grid has K tiles a row, the last a gap tile whose result is discarded,
numbered row by row: grid tile T of a piece is tile (T // K, T % K).

Why the gap tile: tile rows are short (a few dozen tiles), and loops that short barely
vectorise. A block's input rows are copied whole into rows ``m*K`` wide, one after the
other, so that across the whole block (every row of every piece, several channels) tile
T's input column j sits at ``m*T + j``: one stride-m de-interleave then gives contiguous
runs, and every transform is a linear combination of contiguous runs the length of the
block (:func:`combine`), the loops LLVM vectorises. Column j >= m of tile T is column
j - m of tile T + 1, which for the last real tile of a row is the gap tile. The output
goes the other way. Coefficients are applied in the input dtype, terms in a fixed order.

Short rows (``pieces[p, 5] == 0``, see ``winograd.NO_GAP_TILES``) are staged with the gap
all the same, but each tile's alpha columns are then gathered (:func:`gather_columns`)
into a grid without it: ``V``, ``M`` and ``dM`` have ``nt`` tiles a row, and the GEMMs
and the other transforms do no work on gap tiles.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

_BT2 = [[1, 0, -1, 0],
        [0, 1, 1, 0],
        [0, -1, 1, 0],
        [0, 1, 0, -1]]
_G2 = [[1, 0, 0],
       [1 / 2, 1 / 2, 1 / 2],
       [1 / 2, -1 / 2, 1 / 2],
       [0, 0, 1]]
_AT2 = [[1, 1, 1, 0],
        [0, 1, -1, -1]]

_BT4 = [[4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1]]
_G4 = [[1 / 4, 0, 0],
       [-1 / 6, -1 / 6, -1 / 6],
       [-1 / 6, 1 / 6, -1 / 6],
       [1 / 24, 1 / 12, 1 / 6],
       [1 / 24, -1 / 12, 1 / 6],
       [0, 0, 1]]
_AT4 = [[1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1]]

_MATRICES = {2: (_BT2, _G2, _AT2), 4: (_BT4, _G4, _AT4)}


def sparse(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `mat` (R, K) as their nonzero terms, for :func:`combine`.

    Returns
    -------
    idx : ndarray (R, 1 + T) int64
        ``idx[i, 0]`` the number of nonzero terms of row i (at least 1), ``idx[i, 1:]``
        their columns in ascending order.
    coef : ndarray (R, T)
        Their coefficients.
    """
    T = max(1, max(int(np.count_nonzero(row)) for row in mat))
    idx = np.zeros((mat.shape[0], 1 + T), dtype=np.int64)
    coef = np.zeros((mat.shape[0], T), dtype=mat.dtype)
    for i, row in enumerate(mat):
        nz = np.flatnonzero(row)
        idx[i, 0] = len(nz)
        idx[i, 1:1 + len(nz)] = nz
        coef[i, :len(nz)] = row[nz]
    return idx, coef


@functools.lru_cache(maxsize=8)
def matrices(m: int, dtype) -> tuple:
    """The transforms of F(m x m, 3 x 3) in `dtype`, each as :func:`sparse` gives it.

    Returns
    -------
    BT : tuple
        Input transform ``B^T`` (alpha, alpha).
    G : tuple
        Kernel transform (alpha, 3).
    GT : tuple
        Its transpose (3, alpha) (the transform of a kernel gradient).
    AT : tuple
        Output transform ``A^T`` (m, alpha).
    A : tuple
        Its transpose (alpha, m) (the transform of an output gradient).

    The matrices are kept (`dtype` must be hashable, a ``numpy.dtype``) and never
    written to.
    """
    BT, G, AT = _dense(m, dtype)
    return tuple(sparse(np.ascontiguousarray(a)) for a in (BT, G, G.T, AT, AT.T))


def _dense(m: int, dtype) -> tuple:
    # (B^T, G, A^T) of F(m x m, 3 x 3) in `dtype` (rounded from float64)
    return tuple(np.array(a, dtype=np.float64).astype(dtype) for a in _MATRICES[m])


@functools.lru_cache(maxsize=8)
def reversed_tiles(m: int, dtype) -> tuple:
    """The input and output transforms of a 3x3 convolution (the correlation with the
    kernel rotated by 180 degrees) on the correlation's transformed kernels ``G g G^T``:
    ``B^T J`` and ``J A^T``, with ``J`` the reversal (each as :func:`sparse` gives it).

    A tile of the convolution is the reversed tile of the correlation of the reversed
    input: in 1-D, ``z = J A^T [(G g) . (B^T J e)]`` (for ``z[i] = sum_t e[i + t]
    g[2 - t]``), the same holding along each axis of a 2-D tile. The input gradient
    (a convolution of ``dy`` with the forward's kernels) thus runs on the forward's
    transformed kernels, where the rotated kernels would need transforms of their own.

    Returns
    -------
    BTr : tuple
        ``B^T J`` (alpha, alpha).
    ATr : tuple
        ``J A^T`` (m, alpha).
    """
    BT, _, AT = _dense(m, dtype)
    return sparse(np.ascontiguousarray(BT[:, ::-1])), sparse(np.ascontiguousarray(AT[::-1, :]))


@njit(inline="always")
def _term(s0, r, sstep, q, sskip):
    # where term r of a combination starts: s0 + r*sstep, or s0 + (r % q)*sstep +
    # (r // q)*sskip for q > 0
    if q > 0:
        return np.uint64(s0 + (r % q) * sstep + (r // q) * sskip)
    return np.uint64(s0 + r * sstep)


@njit(cache=True)
def combine(mat, src, s0, sstep, dst, d0, dstep, L, q, sskip):
    # dst[d0 + i*dstep + l] = sum_r M[i, r] * src[term r + l] for l < L, each row i of
    # M = (idx, coef) (see sparse), over flat 1-D src and dst; term r starts as _term
    # says. The terms are taken two per pass, in ascending r: each loop reads at most
    # three runs and writes one, so that LLVM's alias checks stay few and the loop
    # vectorises.
    idx, coef = mat
    for i in range(idx.shape[0]):
        d = np.uint64(d0 + i * dstep)
        nz = idx[i, 0]
        a = coef[i, 0]
        sa = _term(s0, idx[i, 1], sstep, q, sskip)
        if nz == 1:
            for l in range(L):
                dst[d + np.uint64(l)] = a * src[sa + np.uint64(l)]
            continue
        b = coef[i, 1]
        sb = _term(s0, idx[i, 2], sstep, q, sskip)
        for l in range(L):
            dst[d + np.uint64(l)] = a * src[sa + np.uint64(l)] + b * src[sb + np.uint64(l)]
        for t in range(2, nz, 2):
            a = coef[i, t]
            sa = _term(s0, idx[i, t + 1], sstep, q, sskip)
            if t + 1 == nz:
                for l in range(L):
                    dst[d + np.uint64(l)] += a * src[sa + np.uint64(l)]
            else:
                b = coef[i, t + 1]
                sb = _term(s0, idx[i, t + 2], sstep, q, sskip)
                for l in range(L):
                    dst[d + np.uint64(l)] += a * src[sa + np.uint64(l)] + b * src[sb + np.uint64(l)]


@njit(cache=True)
def deinterleave(src, s, m, dst, d, dstep, lo, hi):
    # dst[d + j*dstep + t] = src[s + t*m + j] for j < m, lo <= t < hi. The tile sizes are
    # spelled as constants: LLVM then loads a whole interleaved group and shuffles.
    if m == 2:
        for t in range(lo, hi):
            q = np.uint64(s + 2 * t)
            a0 = src[q]
            a1 = src[q + np.uint64(1)]
            dst[np.uint64(d + t)] = a0
            dst[np.uint64(d + dstep + t)] = a1
    elif m == 4:
        for t in range(lo, hi):
            q = np.uint64(s + 4 * t)
            a0 = src[q]
            a1 = src[q + np.uint64(1)]
            a2 = src[q + np.uint64(2)]
            a3 = src[q + np.uint64(3)]
            dst[np.uint64(d + t)] = a0
            dst[np.uint64(d + dstep + t)] = a1
            dst[np.uint64(d + 2 * dstep + t)] = a2
            dst[np.uint64(d + 3 * dstep + t)] = a3
    else:
        for t in range(lo, hi):
            for j in range(m):
                dst[np.uint64(d + j * dstep + t)] = src[np.uint64(s + t * m + j)]


@njit(cache=True)
def gather_columns(src, s, m, K, alpha, dst, d, dstep, rows):
    # dst[d + j*dstep + q*K + t] = src[s + (q*(K + 1) + t)*m + j] for j < alpha, t < K,
    # q < rows: the alpha columns of each tile of rows staged with a gap tile (K + 1
    # tiles a row, m columns a tile, a tile's last alpha - m columns the next one's
    # first), into a grid without the gap
    # F(4x4)'s alpha spelled as a constant, as in deinterleave
    ds = np.uint64(dstep)
    if alpha == 6:
        for q in range(rows):
            for t in range(K):
                a = np.uint64(s + (q * (K + 1) + t) * 4)
                b = np.uint64(d + q * K + t)
                a0, a1, a2, a3 = src[a], src[a + np.uint64(1)], src[a + np.uint64(2)], src[a + np.uint64(3)]
                a4, a5 = src[a + np.uint64(4)], src[a + np.uint64(5)]
                dst[b], dst[b + ds], dst[b + 2 * ds], dst[b + 3 * ds] = a0, a1, a2, a3
                dst[b + 4 * ds], dst[b + 5 * ds] = a4, a5
    else:
        for q in range(rows):
            for t in range(K):
                a = np.uint64(s + (q * (K + 1) + t) * m)
                b = np.uint64(d + q * K + t)
                for j in range(alpha):
                    dst[b + np.uint64(j) * ds] = src[a + np.uint64(j)]


@njit(cache=True)
def interleave(src, s, sstep, m, dst, d, lo, hi, b):
    # dst[d + t*m + j] = src[s + j*sstep + t] + b for j < m, lo <= t < hi (the inverse
    # of deinterleave, plus b)
    if m == 2:
        for t in range(lo, hi):
            q = np.uint64(d + 2 * t)
            a0 = src[np.uint64(s + t)] + b
            a1 = src[np.uint64(s + sstep + t)] + b
            dst[q] = a0
            dst[q + np.uint64(1)] = a1
    elif m == 4:
        for t in range(lo, hi):
            q = np.uint64(d + 4 * t)
            a0 = src[np.uint64(s + t)] + b
            a1 = src[np.uint64(s + sstep + t)] + b
            a2 = src[np.uint64(s + 2 * sstep + t)] + b
            a3 = src[np.uint64(s + 3 * sstep + t)] + b
            dst[q] = a0
            dst[q + np.uint64(1)] = a1
            dst[q + np.uint64(2)] = a2
            dst[q + np.uint64(3)] = a3
    else:
        for t in range(lo, hi):
            for j in range(m):
                dst[np.uint64(d + t * m + j)] = src[np.uint64(s + j * sstep + t)] + b


@njit(cache=True)
def _copy_row(src, s, lo, hi, dst, d, n):
    # dst[d + w] = src[s + w] for w in [lo, hi), zero for the other w in [0, n)
    a = max(0, min(lo, n))
    e = max(a, min(hi, n))
    for w in range(a):
        dst[np.uint64(d + w)] = 0
    for w in range(a, e):
        dst[np.uint64(d + w)] = src[np.uint64(s + w)]
    for w in range(e, n):
        dst[np.uint64(d + w)] = 0


@njit(inline="always")
def _piece(pieces, p):
    # piece p: sample n, tile rows ti0..ti0+R-1, tile columns tj0..tj0+nt-1; its grid
    # has K = nt + pieces[p, 5] tiles a row (the last one a gap, if any), Wp = m*K columns
    n, ti0, ti1, tj0, tj1 = pieces[p, 0], pieces[p, 1], pieces[p, 2], pieces[p, 3], pieces[p, 4]
    return n, ti0, ti1 - ti0, tj0, tj1 - tj0


@njit(inline="always")
def _row_tiles(pieces, p):
    # K: the grid tiles a row of piece p
    return pieces[p, 4] - pieces[p, 3] + pieces[p, 5]


@njit(inline="always")
def grid_tiles(pieces, p0, p1):
    # tiles of the block's grid: sum over its pieces of R rows of K tiles
    nb = 0
    for p in range(p0, p1):
        nb += (pieces[p, 2] - pieces[p, 1]) * _row_tiles(pieces, p)
    return nb


@njit(cache=True)
def stage_rows(img, c, c0, pieces, p0, p1, h0, w0, m, rows, gap_zero, dst, L, nb, K):
    # dst[r, c - c0, T // K, w] = img[n, c, h0 + ti*m + r, w0 + tj0*m + w] for r < rows:
    # the rows of channel c's tiles of pieces p0..p1-1 (the block's grid tile T, K a row;
    # the pieces have one K), Wp = m*K wide, zero outside img and, with `gap_zero`, past
    # the pieces' tiles. img (N, C, H, W); dst 1-D, rows r L*m apart, channels nb*m.
    C, H, W = img.shape[1], img.shape[2], img.shape[3]
    imgf = img.reshape(img.size)
    Wp = m * K
    at = (c - c0) * m * nb
    for p in range(p0, p1):
        n, ti0, R, tj0, nt = _piece(pieces, p)
        wx = w0 + tj0 * m
        hi = min(W - wx, nt * m) if gap_zero else W - wx
        for ii in range(R):
            for r in range(rows):
                h = h0 + (ti0 + ii) * m + r
                d = r * m * L + at + ii * Wp
                if 0 <= h < H:
                    _copy_row(imgf, ((n * C + c) * H + h) * W + wx, -wx, hi, dst, d, Wp)
                else:
                    _copy_row(imgf, 0, 0, 0, dst, d, Wp)
        at += R * Wp


@njit(cache=True)
def input_tiles(x, pieces, p0, p1, h0, w0, BT, m, V, c0, c1, xs, ys, zs):
    # V[:, c, :] <- B^T d B of the tiles of pieces p0..p1-1 of x[n, c], channels
    # c0 <= c < c1 (the pieces of a block have one K). The block's grid tile T (its
    # pieces' tiles row by row, K a row) reads x from row h0 + ti*m, column w0 + tj*m
    # (zero outside x); a gap tile gets finite garbage. Pieces without a gap tile
    # (pieces[p0, 5] == 0) are staged with one all the same, and each tile's alpha
    # columns gathered from the staged rows into V's grid without it.
    # V (alpha^2, C, nb) C-contiguous; xs, ys, zs 1-D scratch of
    # alpha*max(alpha, 2m)*(c1-c0)*nb + 1 floats each.
    C = x.shape[1]
    alpha = m + 2
    nb = V.shape[2]
    L = (c1 - c0) * nb                                             # grid tiles of the chunk
    Vf = V.reshape(V.size)
    K = _row_tiles(pieces, p0)
    gap = pieces[p0, 5]
    Ks = K + 1 - gap                                               # staged tiles a row: with the gap
    Ls = L // K * Ks
    # xs[r, c, T // Ks, w] = x[n, c, h0 + ti*m + r, w0 + tj0*m + w]: the input rows r of
    # each tile row, Wp = m*Ks wide, so that tile T's input at (r, j) is xs[r, ., m*T + j]
    for c in range(c0, c1):
        stage_rows(x, c, c0, pieces, p0, p1, h0, w0, m, alpha, False, xs, Ls, nb // K * Ks, Ks)
    combine(BT, xs, 0, m * Ls, ys, 0, m * Ls, m * Ls, 0, 0)        # ys[i] = sum_r BT[i, r] xs[r]
    if gap == 0:
        for i in range(alpha):                                     # zs[i, j, c, T] = tile T's column j
            gather_columns(ys, i * m * Ls, m, K, alpha, zs, i * alpha * L, L, L // K)
        for i in range(alpha):                                     # V[i*alpha + k] = sum_j BT[k, j] zs[i, j]
            combine(BT, zs, i * alpha * L, L, Vf, (i * alpha * C + c0) * nb, C * nb, L, 0, 0)
        return
    for i in range(alpha):                                         # zs[i, j, c, T] = ys[i, ., m*T + j]
        deinterleave(ys, i * m * L, m, zs, i * m * L, L, 0, L)
    zs[np.uint64(alpha * m * L)] = 0                               # read past the end below
    # V[i*alpha + k, c, T] = sum_j BT[k, j] zs[i, j, c, T], where column j >= m of tile T
    # is column j - m of tile T + 1 (for a gap tile: the next row's, garbage)
    for i in range(alpha):
        combine(BT, zs, i * m * L, L, Vf, (i * alpha * C + c0) * nb, C * nb, L, m, 1)


@njit(cache=True)
def output_tiles(M, y, bt, pieces, p0, p1, AT, o0, o1, zs, ss, end):
    # y[n, o, ti*m + i, tj*m + j] = (A^T M A)[i, j] of the tiles of pieces p0..p1-1
    # (grids as in input_tiles, without the extra rows), plus the bias, for
    # o0 <= o < o1, inside y; with `end` the grid ends at y's last row and column
    # (shifted up and left by (-Ho) % m and (-Wo) % m: the reversed tiles of the input
    # gradient, whose first rows and columns are the least accurate in F(4x4), are cut
    # at the start). M (alpha^2, O, nb); y (N, O, Ho, Wo); bt (N or 1 or 0, O);
    # zs, ss 1-D scratch of m*alpha*(o1-o0)*nb floats each.
    m = AT[0].shape[0]
    alpha = m + 2
    O, nb = M.shape[1], M.shape[2]
    Ho, Wo = y.shape[2], y.shape[3]
    oh = (-Ho) % m if end else 0
    ow = (-Wo) % m if end else 0
    Wp = m * _row_tiles(pieces, p0)
    L = (o1 - o0) * nb
    Mf = M.reshape(M.size)
    yf = y.reshape(y.size)
    for k in range(alpha):                                      # ss[i, k] = sum_r AT[i, r] M[r, k]
        combine(AT, Mf, (k * O + o0) * nb, alpha * O * nb, ss, k * L, alpha * L, L, 0, 0)
    for i in range(m):                                          # zs[i, j] = sum_k AT[j, k] ss[i, k]
        combine(AT, ss, i * alpha * L, L, zs, i * m * L, L, L, 0, 0)
    for i in range(m):                                          # ss[i, o, T*m + j] = zs[i, j, o, T]
        interleave(zs, i * m * L, L, m, ss, i * m * L, 0, L, zs[0] * 0)
    # rows of ss[i, o, piece, ii] into y, plus the bias
    for o in range(o0, o1):
        at = (o - o0) * m * nb
        for p in range(p0, p1):
            n, ti0, R, tj0, nt = _piece(pieces, p)
            b = bt[n if bt.shape[0] > 1 else 0, o] if bt.shape[0] > 0 else zs[0] * 0
            c0 = max(0, ow - tj0 * m)
            c1 = min(nt * m, Wo + ow - tj0 * m)
            for ii in range(R):
                r0 = (ti0 + ii) * m - oh
                for i in range(max(0, -r0), min(m, Ho - r0)):
                    src = np.uint64(i * m * L + at + ii * Wp)
                    dst = ((n * O + o) * Ho + r0 + i) * Wo + tj0 * m - ow
                    for w in range(c0, c1):
                        yf[np.uint64(dst + w)] = ss[src + np.uint64(w)] + b
            at += R * Wp


@njit(cache=True)
def gradient_tiles(dy, pieces, p0, p1, A, dM, o0, o1, ds, ss):
    # dM[:, o, :] <- A dY A^T for the output tiles of pieces p0..p1-1 of dy[n, o] (grids
    # as in output_tiles), o0 <= o < o1, zero outside dy and for gap tiles.
    # dy (N, O, Ho, Wo); A (alpha, m); dM (alpha^2, O, nb); ds, ss 1-D scratch of
    # m*alpha*(o1-o0)*nb floats each.
    alpha = A[0].shape[0]
    m = alpha - 2
    O = dy.shape[1]
    nb = dM.shape[2]
    L = (o1 - o0) * nb
    dMf = dM.reshape(dM.size)
    # ss[i, o, T // K, w] = dy[n, o, ti*m + i, tj0*m + w], zero outside dy and the
    # piece's tiles (a gap tile's dM is zero)
    for o in range(o0, o1):
        stage_rows(dy, o, o0, pieces, p0, p1, 0, 0, m, m, True, ss, L, nb, _row_tiles(pieces, p0))
    for i in range(m):                                          # ds[i, j, o, T] = ss[i, o, m*T + j]
        deinterleave(ss, i * m * L, m, ds, i * m * L, L, 0, L)
    combine(A, ds, 0, m * L, ss, 0, m * L, m * L, 0, 0)         # ss[r, j] = sum_i A[r, i] ds[i, j]
    for r in range(alpha):                                      # dM[r, k] = sum_j A[k, j] ss[r, j]
        combine(A, ss, r * m * L, L, dMf, (r * alpha * O + o0) * nb, O * nb, L, 0, 0)


@njit(cache=True)
def gather_kernels(wf, w0, lstep, flip, n, gs, g0, lv):
    # gs[g0 + tap*lv + l] = g_l[tap] for l < n: the 3x3 kernels g_l = wf[w0 + l*lstep:][:9]
    # (lstep 9: kernels side by side in a row of wt; a row of wt, F: down a column),
    # rotated by 180 degrees with `flip`, a kernel's nine taps read together (nine passes
    # of strided loads, one a tap, took twice as long)
    lv = np.uint64(lv)
    for l in range(n):
        q = np.uint64(w0 + l * lstep)
        a0, a1, a2 = wf[q], wf[q + np.uint64(1)], wf[q + np.uint64(2)]
        a3, a4, a5 = wf[q + np.uint64(3)], wf[q + np.uint64(4)], wf[q + np.uint64(5)]
        a6, a7, a8 = wf[q + np.uint64(6)], wf[q + np.uint64(7)], wf[q + np.uint64(8)]
        if flip:
            a0, a1, a2, a3, a5, a6, a7, a8 = a8, a7, a6, a5, a3, a2, a1, a0
        d = np.uint64(g0 + l)
        gs[d], gs[d + lv], gs[d + 2 * lv] = a0, a1, a2
        gs[d + 3 * lv], gs[d + 4 * lv], gs[d + 5 * lv] = a3, a4, a5
        gs[d + 6 * lv], gs[d + 7 * lv], gs[d + 8 * lv] = a6, a7, a8


@njit(cache=True)
def transform_kernels(G, gs, Lv, Uf, u0, ustep, ts):
    # Uf[u0 + xi*ustep + l] = (G g_l G^T)[xi] for l < Lv, the kernels gathered side by
    # side in gs (9*Lv floats, see gather_kernels); ts 1-D scratch of 3*alpha*Lv floats.
    alpha = G[0].shape[0]
    combine(G, gs, 0, 3 * Lv, ts, 0, 3 * Lv, 3 * Lv, 0, 0)      # ts[i, v] = sum_u G[i, u] gs[u, v]
    for i in range(alpha):                                      # U[i, j] = sum_v G[j, v] ts[i, v]
        combine(G, ts, i * 3 * Lv, Lv, Uf, u0 + i * alpha * ustep, ustep, Lv, 0, 0)


@njit(cache=True)
def kernel_gradient_rows(dUf, u0, ustep, Lv, alpha, GT, gf, g0, ts, gs):
    # gf[g0 + l*9 + tap] = (G^T dU_l G)[tap] for l < Lv: the gradients dU_l[xi] =
    # dUf[u0 + xi*ustep + l] of transformed kernels, side by side; ts, gs 1-D scratch of
    # 3*alpha*Lv and 9*Lv floats.
    for j in range(alpha):                                      # ts[u, j] = sum_i G[i, u] dU[i, j]
        combine(GT, dUf, u0 + j * ustep, alpha * ustep, ts, j * Lv, alpha * Lv, Lv, 0, 0)
    for u in range(3):                                          # gs[u, v] = sum_j G[j, v] ts[u, j]
        combine(GT, ts, u * alpha * Lv, Lv, gs, u * 3 * Lv, Lv, Lv, 0, 0)
    interleave(gs, 0, Lv, 9, gf, g0, 0, Lv, gs[0] * 0)
