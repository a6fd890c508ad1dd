"""Per-pixel ops forward+backward against unfold formulations: time and peak memory.

Run: ``python benchmarks/compare_pixel.py`` (options: ``--ops``, ``--k``, ``--size``,
``--repeat``, ``--threads``, ``--no-memory``).

The ops: ``involution2d`` (groups = C/16, as RedNet), ``ddf_conv2d`` (product form) and
``atom_conv2d`` (M atoms, O outputs), each at "same" padding, float32, one forward and
the full backward with a fixed random cotangent. Contenders:

* **ours**: ``dc.<op>.vjp(...)`` then ``pullback(dy)``: the tap engine, which reads x at
  the taps and never builds the unfolded input (nor DDF's per-pixel filter).
* **torch** (when PyTorch is installed): the unfold formulation of the authors' naive
  code (RedNet's ``involution_naive``): ``F.unfold`` the input to ``(N, C, k*k, Ho*Wo)``,
  multiply by the (materialised) per-pixel filters, sum over the taps; autograd backward.
* **numpy**: the same unfold formulation in NumPy (``sliding_window_view`` copied
  contiguous, as unfold does; einsum contractions; the input gradient folded back tap
  by tap), with its backward written by hand.

All contenders are checked against each other on a small problem first. Time is the
median of ``--repeat`` steps; contenders alternate within one process, each taking one
untimed step of its own before each timed one (its steady state). Peak memory: each
contender runs in a fresh subprocess that warms up on a tiny problem, resets the
kernel's peak-RSS mark (``/proc/self/clear_refs``) and reports ``VmHWM - VmRSS`` before
one forward+backward: how far resident memory rose above the inputs (results included;
the column "results" is their size, the least any contender can reach).
The machine's load average is printed with the figures: on a shared machine, rerun
before quoting them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

import dynconv_np as dc

HAVE_TORCH = importlib.util.find_spec("torch") is not None
OPS = ("involution2d", "ddf_conv2d", "atom_conv2d")
M_ATOMS = 6


# ----------------------------------------------------------------------------- inputs
def make_inputs(op: str, N: int, C: int, HW: int, k: int, seed: int = 0) -> dict:
    """float32 inputs of one call at "same" padding, and the cotangent ``dy``."""
    r = np.random.default_rng(seed)

    def a(*shape, scale=1.0):
        return r.standard_normal(shape, dtype=np.float32) * np.float32(scale)

    T, P = k * k, (HW, HW)
    d = dict(x=a(N, C, HW, HW), k=k, pad=k // 2)
    if op == "involution2d":
        d.update(kernel=a(N, max(1, C // 16), T, *P), dy=a(N, C, *P))
    elif op == "ddf_conv2d":
        d.update(spatial=a(N, T, *P), channel=a(N, C, T), dy=a(N, C, *P))
    else:
        d.update(atoms=a(N, M_ATOMS, k, k, *P), coeff=a(C, C, M_ATOMS, scale=1 / np.sqrt(C * M_ATOMS)),
                 bias=a(C), dy=a(N, C, *P))
    return d


# ----------------------------------------------------------------------------- ours
def ours(op: str, d: dict):
    if op == "involution2d":
        args = (d["x"], d["kernel"], d["kernel"].shape[1])
    elif op == "ddf_conv2d":
        args = (d["x"], d["spatial"], d["channel"])
    else:
        args = (d["x"], d["atoms"], d["coeff"], d["bias"])
    f = getattr(dc, op)

    def step():
        y, pb = f.vjp(*args, padding=d["pad"])
        return (y, *pb(d["dy"]))

    return step


# ----------------------------------------------------------------------------- NumPy unfold
def _unfold(x, k, pad):
    """(N, C, k*k, Ho*Wo), contiguous: the unfolded input."""
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))        # (N, C, Ho, Wo, k, k)
    Ho, Wo = win.shape[2:4]
    return np.ascontiguousarray(win.transpose(0, 1, 4, 5, 2, 3)).reshape(N, C, k * k, Ho * Wo)


def _fold(dX, x_shape, k, pad):
    """The adjoint of :func:`_unfold`: dX (N, C, k*k, Ho*Wo) summed back onto x's grid."""
    N, C, H, W = x_shape
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    dX = dX.reshape(N, C, k, k, Ho, Wo)
    dxp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dX.dtype)
    for u in range(k):
        for v in range(k):
            dxp[:, :, u:u + Ho, v:v + Wo] += dX[:, :, u, v]
    return dxp[:, :, pad:pad + H, pad:pad + W]


def numpy_unfold(op: str, d: dict):
    x, k, pad = d["x"], d["k"], d["pad"]
    N, C, H, W = x.shape
    dy = d["dy"].reshape(N, C, -1)

    def involution():
        K = d["kernel"]
        G = K.shape[1]
        X = _unfold(x, k, pad).reshape(N, G, C // G, k * k, -1)
        Kf = K.reshape(N, G, 1, k * k, -1)
        y = (X * Kf).sum(axis=3)
        dyg = dy.reshape(N, G, C // G, 1, -1)
        dK = (X * dyg).sum(axis=2).reshape(K.shape)
        dx = _fold((Kf * dyg).reshape(N, C, k * k, -1), x.shape, k, pad)
        return y.reshape(N, C, H, W), dx, dK

    def ddf():
        S, Ch = d["spatial"], d["channel"]
        Fp = S.reshape(N, 1, k * k, -1) * Ch[:, :, :, None]                    # the per-pixel filter
        X = _unfold(x, k, pad)
        y = (Fp * X).sum(axis=2)
        dF = X * dy[:, :, None]
        dS = (dF * Ch[:, :, :, None]).sum(axis=1).reshape(S.shape)
        dCh = np.einsum("nctp,ntp->nct", dF, S.reshape(N, k * k, -1), optimize=True)
        dx = _fold(Fp * dy[:, :, None], x.shape, k, pad)
        return y.reshape(N, C, H, W), dx, dS, dCh

    def atoms():
        D, coeff, b = d["atoms"], d["coeff"], d["bias"]
        O, M = coeff.shape[0], D.shape[1]
        X = _unfold(x, k, pad)
        Dr = D.reshape(N, M, k * k, -1)
        Z = np.einsum("nmtp,nctp->ncmp", Dr, X, optimize=True).reshape(N, C * M, -1)
        A = coeff.reshape(O, C * M)
        y = np.einsum("ok,nkp->nop", A, Z, optimize=True) + b[None, :, None]
        dyr = d["dy"].reshape(N, O, -1)
        dZ = np.einsum("ok,nop->nkp", A, dyr, optimize=True).reshape(N, C, M, -1)
        dcoeff = np.einsum("nop,nkp->ok", dyr, Z, optimize=True).reshape(coeff.shape)
        dD = np.einsum("ncmp,nctp->nmtp", dZ, X, optimize=True).reshape(D.shape)
        dx = _fold(np.einsum("ncmp,nmtp->nctp", dZ, Dr, optimize=True), x.shape, k, pad)
        return y.reshape(N, O, H, W), dx, dD, dcoeff, dyr.sum(axis=(0, 2))

    return {"involution2d": involution, "ddf_conv2d": ddf, "atom_conv2d": atoms}[op]


# ----------------------------------------------------------------------------- PyTorch unfold
def torch_unfold(op: str, d: dict):
    import torch
    import torch.nn.functional as F

    k, pad = d["k"], d["pad"]
    t = {name: torch.from_numpy(v) for name, v in d.items() if isinstance(v, np.ndarray)}
    N, C, H, W = d["x"].shape

    def grads(*names):
        return [t[n].clone().requires_grad_() for n in names]

    def unfold(x):
        return F.unfold(x, k, padding=pad).view(N, C, k * k, -1)

    def involution():
        x, K = grads("x", "kernel")
        G = K.shape[1]
        y = (unfold(x).view(N, G, C // G, k * k, -1) * K.view(N, G, 1, k * k, -1)).sum(dim=3).view(N, C, H, W)
        y.backward(t["dy"])
        return y.detach(), x.grad, K.grad

    def ddf():
        x, S, Ch = grads("x", "spatial", "channel")
        Fp = S.view(N, 1, k * k, -1) * Ch.unsqueeze(-1)
        y = (Fp * unfold(x)).sum(dim=2).view(N, C, H, W)
        y.backward(t["dy"])
        return y.detach(), x.grad, S.grad, Ch.grad

    def atoms():
        # per pixel, (C, k*k) @ (k*k, M) as one batched matmul over (n, p): torch.einsum
        # ("nmtp,nctp->ncmp") takes about 60 times longer for the same product (PyTorch 2.13, CPU)
        x, D, coeff, b = grads("x", "atoms", "coeff", "bias")
        O, M = coeff.shape[0], D.shape[1]
        Z = torch.matmul(unfold(x).permute(0, 3, 1, 2), D.reshape(N, M, k * k, -1).permute(0, 3, 2, 1))
        Z = Z.permute(0, 2, 3, 1).reshape(N, C * M, -1)                        # (N, C*M, P)
        y = (torch.matmul(coeff.reshape(O, C * M), Z) + b[None, :, None]).view(N, O, H, W)
        y.backward(t["dy"])
        return y.detach(), x.grad, D.grad, coeff.grad, b.grad

    return {"involution2d": involution, "ddf_conv2d": ddf, "atom_conv2d": atoms}[op]


CONTENDERS = {"ours": ours, "torch": torch_unfold, "numpy": numpy_unfold}


def _as_numpy(a):
    return a.numpy() if hasattr(a, "numpy") else np.asarray(a)


def check_agreement(op: str, k: int, contenders) -> float:
    """The largest relative difference between the contenders' results on a small problem."""
    d = make_inputs(op, 2, 16, 10, k, seed=1)
    outs = {c: [_as_numpy(a) for a in CONTENDERS[c](op, d)()] for c in contenders}
    ref = outs[contenders[0]]
    return max(float(np.abs(a.astype(np.float64) - r).max() / max(1.0, np.abs(r).max()))
               for c in contenders[1:] for a, r in zip(outs[c], ref))


def run_times(op: str, size, k: int, contenders, repeat: int) -> dict:
    d = make_inputs(op, *size, k)
    steps = {c: CONTENDERS[c](op, d) for c in contenders}
    for step in steps.values():             # JIT cache loads, thread pools, allocator
        step()
    times = {c: [] for c in contenders}
    for r in range(repeat):
        for c in (contenders if r % 2 == 0 else contenders[::-1]):
            steps[c]()
            t0 = time.perf_counter()
            steps[c]()
            times[c].append(time.perf_counter() - t0)
    return {c: float(np.median(v)) for c, v in times.items()}


# ----------------------------------------------------------------------------- memory
def _status(key: str):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def child(op: str, size, k: int, who: str) -> None:
    """In a fresh process: warm up tiny, then the peak-RSS growth of one forward+backward."""
    import ctypes

    CONTENDERS[who](op, make_inputs(op, 2, 16, 10, k))()
    step = CONTENDERS[who](op, make_inputs(op, *size, k))
    # hand freed heap pages back to the OS, so that what the step allocates raises the RSS
    # instead of reusing memory freed while the inputs were built (glibc)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss0 = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:        # reset VmHWM to the current RSS (Linux)
        f.write("5")
    step()
    print(json.dumps({"rss_peak_growth": _status("VmHWM") - rss0}))


def results_bytes(op: str, size, k: int) -> int:
    """The bytes of what every contender returns: y and one gradient per input array."""
    d = make_inputs(op, *size, k)
    return sum(v.nbytes for v in d.values() if isinstance(v, np.ndarray))      # dy stands for y


def peak_memory(op: str, size, k: int, who: str, threads: int) -> int:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", op, who, "--k", str(k),
           "--size", *map(str, size), "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["rss_peak_growth"]


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    ap.add_argument("--k", type=int, nargs="+", default=[3, 7])
    ap.add_argument("--size", type=int, nargs=3, default=[8, 64, 56], metavar=("N", "C", "HW"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch threads and NUMBA_NUM_THREADS of the "
                    "memory subprocesses (set NUMBA_NUM_THREADS yourself for this process)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("OP", "WHO"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if HAVE_TORCH:
        import torch

        torch.set_num_threads(a.threads)
    if a.child:
        child(a.child[0], a.size, a.k[0], a.child[1])
        return
    contenders = ["ours"] + (["torch"] if HAVE_TORCH else []) + ["numpy"]
    N, C, HW = a.size
    print(f"per-pixel ops, forward+backward, float32, N={N} C={C} {HW}x{HW}, padding k//2; involution groups "
          f"C/16, atoms M={M_ATOMS} O=C; threads {a.threads}, NUMBA_NUM_THREADS="
          f"{os.environ.get('NUMBA_NUM_THREADS', 'default')}, cpus {os.cpu_count()}, numpy {np.__version__}"
          + (f", torch {torch.__version__}" if HAVE_TORCH else ", torch not installed"))
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    cols = ["op", "k", *(f"{c} s" for c in contenders),
            *([] if a.no_memory else [*(f"{c} MiB" for c in contenders), "results MiB"]), "load"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for op in a.ops:
        for k in a.k:
            err = check_agreement(op, k, contenders)
            if err > 1e-3:
                raise SystemExit(f"{op} k={k}: the contenders disagree (max relative difference {err:.1e})")
            t = run_times(op, a.size, k, contenders, a.repeat)
            row = f"| {op} | {k} | " + " | ".join(f"{t[c]:.3f}" for c in contenders) + " | "
            if not a.no_memory:
                mem = {c: peak_memory(op, a.size, k, c, a.threads) for c in contenders}
                mem["results"] = results_bytes(op, a.size, k)
                row += " | ".join(f"{mem[c] / 2**20:.0f}" for c in [*contenders, "results"]) + " | "
            print(row + f"{os.getloadavg()[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
