"""Parallel speed-up of each CPU kernel family: one thread against two, side by side.

Every result of the CPU backend is bitwise the same whatever the thread count, so a
parallel loop that Numba runs serially passes every test; only a timing shows it (an
earlier version's shared-kernel backward ran serially for a day: two parallel loops
merged into one over a conditional range). This script times each pass of each kernel
family at 1 and 2 threads, alternating in one process (``dc.set_num_threads``), and
flags every case whose speed-up is below its minimum (``--min``, 1.3 by default; 2 cores
give at most 2; memory-bound elementwise kernels have their own, lower one, or none).
Exit status 1 when a case is flagged, so that it can run as a check; speed stays out of
the test suite.

The thread count alternates through ``numba.set_num_threads`` with BLAS held at one
thread for the whole run: alternating ``dc.set_num_threads`` (which also sets BLAS's
threads) woke OpenBLAS's threads at each switch, and their spinning took the second
core from the next Numba region (a 6 ms Winograd forward then ran no faster on two
threads than on one; steady at two threads it ran in half the time).

Usage::

    python benchmarks/scaling.py                 # every case, median of 7
    python benchmarks/scaling.py --min 1.5 --repeat 11 -k winograd

Cases are big enough for the work to dominate the thread wake-ups (several ms at one
thread). Needs 2 cores: with fewer the check says so and exits 0.

Rerun a flagged case alone (``-k NAME``) before acting on it. On the 2-vCPU KVM guest of
docs/performance.md the speed-up of one kernel moves between processes: the Winograd
forward of conv2d (N32, C=O=64, 28x28) measured 1.1 in some processes and 1.8 to 1.9 in
others within minutes, each stable within its process, while ``tiles`` stayed at 1.7 to
1.9 (the two vCPUs' placement on the host's cores is not ours to see).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def use_checkout() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(root, "dynconv_np")) and sys.path[0] != root:
        sys.path.insert(0, root)


def cases():
    """``(name, make, minimum)``: ``make()`` returns ``(forward, backward)`` callables;
    minimum: the smallest speed-up accepted (None: ``--min``; 0: report only)."""
    import dynconv_np as dc

    rng = np.random.default_rng(0)

    def arr(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    def conv(N, C, O, H, stride, strategy, per_sample=False, K=4):
        x = arr(N, C, H, H)
        W, pi, b = arr(K, O, C, 3, 3) / np.float32(np.sqrt(9 * C)), rng.random((N, K), dtype=np.float32), arr(K, O)

        def make():
            with dc.strategy.force(strategy):
                if per_sample:
                    y, pb = dc.dynamic_conv2d.vjp(x, W, pi, b, stride=stride, padding=1)
                else:
                    y, pb = dc.conv2d.vjp(x, W[0], b[0], stride=stride, padding=1)
            d = arr(*y.shape)

            def fwd():
                with dc.strategy.force(strategy):
                    if per_sample:
                        dc.dynamic_conv2d(x, W, pi, b, stride=stride, padding=1)
                    else:
                        dc.conv2d(x, W[0], b[0], stride=stride, padding=1)

            return fwd, lambda: pb(d)
        return make

    def pointwise(op, *shapes, **kwargs):
        def make():
            args = [arr(*s) for s in shapes]
            y, pb = op.vjp(*args, **kwargs)
            d = arr(*y.shape)
            return (lambda: op(*args, **kwargs)), (lambda: pb(d))
        return make

    def batch_norm():
        x = arr(64, 32, 32, 32)
        g, b = np.ones(32, np.float32), np.zeros(32, np.float32)
        y, pb = dc.batch_norm.vjp(x, g, b)
        d = arr(*y.shape)
        return (lambda: dc.batch_norm(x, g, b)), (lambda: pb(d))

    out = []
    for s in ("tiles", "batched", "winograd2", "winograd4"):
        out.append((f"conv2d {s} N32 C=O=64 28x28", conv(32, 64, 64, 28, 1, s), None))
    out.append(("conv2d tiles N2 C=O=128 28x28 (channel blocks)", conv(2, 128, 128, 28, 1, "tiles"), None))
    out.append(("conv2d tiles N32 C=O=128 28x28 stride 2", conv(32, 128, 128, 28, 2, "tiles"), None))
    out.append(("conv2d winograd2 N1 C=O=256 14x14 (one block)", conv(1, 256, 256, 14, 1, "winograd2"), None))
    out.append(("conv2d winograd4 N64 C=O=32 8x8 (one-block gradient)", conv(64, 32, 32, 8, 1, "winograd4"),
                None))
    for s in ("tiles", "winograd2", "output_mixing"):
        out.append((f"dynamic_conv2d {s} N32 C=O=64 28x28", conv(32, 64, 64, 28, 1, s, per_sample=True), None))
    out.append(("involution2d N8 C=64 56x56 k=3", pointwise(dc.involution2d, (8, 64, 56, 56), (8, 4, 9, 56, 56),
                                                                 groups=4, padding=1), None))
    # memory-bound: two cores share one memory path (measured 1.2 to 1.3 for batch norm)
    out.append(("batch_norm N64 C=32 32x32", batch_norm, 1.1))
    # the forward is NumPy's (one thread); the gradient a parallel copy, memory-bound
    out.append(("relu N64 C=32 32x32", pointwise(dc.relu, (64, 32, 32, 32)), 0))
    return out


def _median(f, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--min", type=float, default=1.3, help="smallest acceptable speed-up (default 1.3)")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    args = ap.parse_args(argv)
    use_checkout()
    import numba
    from threadpoolctl import threadpool_limits

    if (os.cpu_count() or 1) < 2 or numba.config.NUMBA_NUM_THREADS < 2:
        print("scaling: fewer than 2 cores (or NUMBA_NUM_THREADS < 2), nothing to measure")
        return 0
    threadpool_limits(1, user_api="blas")               # for the whole run: see the docstring
    numba.set_num_threads(2)
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; median of {args.repeat}, "
          f"1 and 2 threads alternating")
    print("| case | pass | 1 thread ms | 2 threads ms | speed-up | |")
    print("|---|---|---|---|---|---|")
    flagged = 0
    for name, make, minimum in cases():
        if args.k not in name:
            continue
        minimum = args.min if minimum is None else minimum
        passes = make()
        for label, f in zip(("forward", "backward"), passes):
            f()
            t = {1: [], 2: []}
            for r in range(args.repeat):
                for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                    numba.set_num_threads(n)
                    t[n].append(_median(f, 1))
            numba.set_num_threads(2)
            t1, t2 = float(np.median(t[1])), float(np.median(t[2]))
            ratio = t1 / t2
            flag = "SLOW" if ratio < minimum else ("" if minimum else "(report only)")
            flagged += flag == "SLOW"
            print(f"| {name} | {label} | {t1 * 1e3:.2f} | {t2 * 1e3:.2f} | {ratio:.2f} | {flag} |", flush=True)
    print(f"\n{flagged} case(s) below their minimum speed-up ({args.min} unless marked)")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
