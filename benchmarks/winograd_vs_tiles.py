"""Winograd F(2x2,3x3) and F(4x4,3x3) against the conv template, side by side.

For each shape the contenders run alternately in one process after a warm-up, so that
machine noise hits them alike: ``tiles`` is the im2col tile template
(``backends.cpu.conv.conv_forward`` / ``conv_backward``), ``wino2`` and ``wino4`` are
``backends.cpu.winograd.forward`` / ``backward`` with ``m = 2`` and ``m = 4``. Reported
per shape and pass (forward; forward+backward): the best time in ms, the spread
(``max/min - 1`` over the repeats), the speed-up of each Winograd over the tiles' best,
and the load average (``os.getloadavg``) at the start and the end of the shape.

Usage::

    python benchmarks/winograd_vs_tiles.py --threads 2 --repeat 7
    python benchmarks/winograd_vs_tiles.py --shapes cifar8 digits8 --dtype float64

The thread count is set before Numba is imported (``NUMBA_NUM_THREADS``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

#: name: (N, C, O, H=W, per-sample kernels); 3x3, stride 1, padding 1, groups 1
SHAPES = {
    "resnet3x3_dyn": (32, 64, 64, 56, True),
    "resnet3x3": (32, 64, 64, 56, False),
    "cifar32": (128, 32, 32, 32, False),
    "cifar16": (128, 64, 64, 16, False),
    "cifar8": (128, 128, 128, 8, False),
    "digits16": (64, 16, 32, 16, False),
    "digits8": (64, 32, 32, 8, False),
}
CONTENDERS = ("tiles", "wino2", "wino4")


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--passes", nargs="+", default=["fwd", "fwdbwd"], choices=("fwd", "fwdbwd"))
    return p.parse_args()


def main():
    a = _args()
    os.environ["NUMBA_NUM_THREADS"] = str(a.threads)
    # the checkout this script lives in, even where another copy is installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import numpy as np

    from dynconv_np import _args as args_
    from dynconv_np.backends.cpu import conv, winograd

    def runner(name, x, wt, bt, dy, g, passes):
        if name == "tiles":
            fwd = lambda: conv.conv_forward(x, wt, bt, g, 1)
            bwd = lambda: conv.conv_backward(x, wt, dy, g, 1)
        else:
            m = int(name[-1])
            fwd = lambda: winograd.forward(x, wt, bt, g, 1, m=m)
            bwd = lambda: winograd.backward(x, wt, dy, g, 1, m=m)
        return fwd if passes == "fwd" else (lambda: (fwd(), bwd()))

    print(f"threads {a.threads}, {a.dtype}, best of {a.repeat} (ms), spread = max/min - 1")
    print(f"{'shape':14} {'pass':7} " + " ".join(f"{c:>14}" for c in CONTENDERS)
          + "   x wino2   x wino4   load")
    for name in a.shapes:
        N, C, O, S, per_sample = SHAPES[name]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((N, C, S, S)).astype(a.dtype)
        wshape = (N, O, C * 9) if per_sample else (O, C * 9)
        wt = (rng.standard_normal(wshape) * np.sqrt(2 / (C * 9))).astype(a.dtype)
        bt = rng.standard_normal((N, O) if per_sample else (O,)).astype(a.dtype)
        g = args_.geometry(x.shape, 3, 3, 1, 1, 1)
        dy = rng.standard_normal((N, O, g.Ho, g.Wo)).astype(a.dtype)
        for passes in a.passes:
            fns = {c: runner(c, x, wt, bt, dy, g, passes) for c in CONTENDERS}
            for f in fns.values():      # warm-up: compile, fault in the scratch buffers
                f()
                f()
            load0 = os.getloadavg()[0]
            times = {c: [] for c in CONTENDERS}
            for _ in range(a.repeat):
                for c, f in fns.items():
                    t = time.perf_counter()
                    f()
                    times[c].append(time.perf_counter() - t)
            best = {c: min(v) for c, v in times.items()}
            cells = " ".join(f"{best[c] * 1e3:8.2f} ±{max(v) / min(v) - 1:4.0%}" for c, v in times.items())
            print(f"{name:14} {passes:7} {cells}   {best['tiles'] / best['wino2']:7.2f}"
                  f"   {best['tiles'] / best['wino4']:7.2f}   {load0:.1f}-{os.getloadavg()[0]:.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
