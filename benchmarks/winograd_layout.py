"""The Winograd module's two layouts side by side: blocks of tile rows (with slots for the
kernel gradient) against one block of every tile, forward and backward, on small shared
layers (``winograd.WHOLE_BYTES`` / ``WHOLE_GRAD_BYTES`` set to 0 or to a budget that
admits everything; each strategy forced; ``tiles`` for reference).

Usage::

    python benchmarks/winograd_layout.py --threads 1 2 --repeat 9
    python benchmarks/winograd_layout.py --kernels --threads 1 2 --repeat 30

Prints per shape and thread count the median forward and backward ms of each, and each
layout's transformed-tile footprint (the quantity the budgets bound). ``--kernels``: the
shared kernel's transforms alone (``winograd._transformed``, which the forward makes and
the input gradient reuses), on the calling thread against in a parallel region
(``winograd.PARALLEL_KERNELS`` set past or to 0).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys

import numpy as np

try:  # compare.py's timer (as a package under asv, as a script's sibling otherwise)
    from .compare import median_ms
except ImportError:
    from compare import median_ms

#: name: (N, C, O, H=W); 3x3, stride 1, padding 1, shared kernel, float32
SHAPES = {
    "batch1": (1, 256, 256, 14),
    "batch2": (2, 128, 128, 14),
    "digits3": (64, 32, 32, 8),
    "cifar8_32": (32, 128, 128, 8),
    "late4": (64, 256, 256, 4),
}


def _setup(threads: int, repeat: int):
    # (dynconv_np, its Winograd module, a seeded generator) for this checkout at `threads`,
    # and the table's heading line
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import dynconv_np as dc
    from dynconv_np.backends.cpu import winograd

    dc.set_num_threads(threads)
    rng = np.random.default_rng(0)
    print(f"\n{threads} thread(s), median of {repeat}; load average "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    return dc, winograd, rng


def run(threads: int, repeat: int) -> None:
    dc, winograd, rng = _setup(threads, repeat)
    print("| shape | strategy | layout | footprint MiB | forward ms | backward ms |")
    print("|---|---|---|---|---|---|")
    for name, (N, C, O, H) in SHAPES.items():
        x = rng.standard_normal((N, C, H, H), dtype=np.float32)
        w = (rng.standard_normal((O, C, 3, 3), dtype=np.float32) / np.sqrt(9 * C)).astype(np.float32)
        b = rng.standard_normal(O, dtype=np.float32)
        dy = rng.standard_normal((N, O, H, H), dtype=np.float32)
        cases = [("tiles", "-", None)] + [(f"winograd{m}", lay, m) for m in (2, 4) for lay in ("blocks", "whole")]
        for strategy, layout, m in cases:
            budget = 0 if layout == "blocks" else 2**62
            saved = winograd.WHOLE_BYTES, winograd.WHOLE_GRAD_BYTES
            if m is not None:
                winograd.WHOLE_BYTES = winograd.WHOLE_GRAD_BYTES = budget
            try:
                with dc.strategy.force(strategy):
                    tf = median_ms(lambda x=x, w=w, b=b: dc.conv2d(x, w, b, padding=1), repeat)
                    _, pb = dc.conv2d.vjp(x, w, b, padding=1)
                    tb = median_ms(lambda pb=pb, dy=dy: pb(dy), repeat)
            finally:
                winograd.WHOLE_BYTES, winograd.WHOLE_GRAD_BYTES = saved
            mib = "-" if m is None else f"{(m + 2) ** 2 * (C + O) * winograd._grid(N, H, H, m) * 4 / 2**20:.1f}"
            print(f"| {name} | {strategy} | {layout} | {mib} | {tf:.2f} | {tb:.2f} |", flush=True)


def run_kernels(threads: int, repeat: int) -> None:
    _, winograd, rng = _setup(threads, repeat)
    print("| shape | kernels | m | serial ms | parallel ms |")
    print("|---|---|---|---|---|")
    saved = winograd.PARALLEL_KERNELS
    try:
        for name, (_, C, O, _) in SHAPES.items():
            wt = rng.standard_normal((O, C * 9), dtype=np.float32)
            for m in (2, 4):
                ms = []
                for limit in (2**62, 0):
                    winograd.PARALLEL_KERNELS = limit
                    f = functools.partial(winograd._transformed, wt, m, np.float32)
                    ms.append(median_ms(f, repeat))
                print(f"| {name} | {O * C} | {m} | {ms[0]:.3f} | {ms[1]:.3f} |", flush=True)
    finally:
        winograd.PARALLEL_KERNELS = saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--kernels", action="store_true", help="time the kernel transforms alone")
    ap.add_argument("--_child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child is not None:
        (run_kernels if args.kernels else run)(args._child, args.repeat)
        return 0
    for t in args.threads:     # a fresh process per thread count (thread pools size at start-up)
        env = dict(os.environ, NUMBA_NUM_THREADS=str(max(args.threads)))
        subprocess.run([sys.executable, __file__, "--_child", str(t), "--repeat", str(args.repeat)]
                       + ["--kernels"] * args.kernels, env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
