"""Every CPU conv strategy, forced, on a set of shapes: time per pass against the cost
model's estimate, the cost model's choice against the fastest, errors against float64;
``--fit`` refits the cost model's constants to the timings.

Per shape (float32; ``SHAPES`` below: the eight presets of compare.py, the three layers
of train_step.py's network, and late, small-map layers), for conv2d's shared kernel and
for dynamic_conv2d's per-sample kernels, each pass (forward; backward with dx and dW)
of every strategy that can run it (``dynconv_np.strategy.force(forward=...)``), the
median of ``--repeat`` timed calls after a warm-up, alternating strategies; and, for
dynamic_conv2d with per-sample weights, forward+backward in each mixing formulation.
Reported: measured and estimated ms, the strategy the cost model picks (``*``), and the
slowdown of that pick against the fastest measured (1.00: it picked the fastest).

``--errors``: for each shape and strategy, the largest error of y and of every gradient
of one forward+backward (float32), relative to the largest entry of the float64 result
of the same op run by ``tiles`` (itself tested against the naive reference).

``--fit``: least squares, in log time, over every timing, of the constants
``plan.FITTED``; prints them as lines to paste into dynconv_np/backends/cpu/plan.py, and
the table again with the fitted model. The decisions must not depend on the thread
count of the process: fit on the machine's own core count (``--threads``, default 2, the
nominal ``plan.THREADS``).

Usage::

    python benchmarks/calibrate.py                  # table with the current constants
    python benchmarks/calibrate.py --fit            # refit (a few minutes on 2 cores)
    python benchmarks/calibrate.py --errors --repeat 1
    python benchmarks/calibrate.py --fit --cpu-time  # on a loaded machine
    python benchmarks/calibrate.py --save t.json; python benchmarks/calibrate.py --load t.json --fit
    python benchmarks/calibrate.py --load t.json --fit-shifted   # SHIFT_HALF_K alone
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

try:  # the presets of compare.py (as a package under asv, as a script's sibling otherwise)
    from .compare import SHAPES as PRESETS
except ImportError:
    from compare import SHAPES as PRESETS

#: name: (N, C, O, H=W, k, stride, pad, K): compare.py's presets, the layers of
#: train_step.py's network, late layers with few pixels, a small batch.
SHAPES = {
    **PRESETS,
    "digits1": (64, 1, 16, 16, 3, 1, 1, 4),
    "digits2": (64, 16, 32, 16, 3, 2, 1, 4),
    "digits3": (64, 32, 32, 8, 3, 1, 1, 4),
    "late4": (64, 128, 128, 4, 3, 1, 1, 4),
    "late2": (64, 256, 256, 2, 3, 1, 1, 4),
    "small_batch": (2, 64, 64, 16, 3, 1, 1, 4),
    "small_c": (64, 16, 16, 32, 3, 1, 1, 4),
    "k5": (32, 64, 64, 28, 5, 1, 2, 4),
}


def inputs(name: str, dtype=np.float32, seed: int = 0):
    N, C, O, H, k, s, p, K = SHAPES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, H)).astype(dtype)
    W = (rng.standard_normal((K, O, C, k, k)) / np.sqrt(C * k * k)).astype(dtype)
    pi = rng.dirichlet(np.ones(K), size=N).astype(dtype)
    bias = rng.standard_normal((K, O)).astype(dtype)
    Ho = (H + 2 * p - k) // s + 1
    dy = rng.standard_normal((N, O, Ho, Ho)).astype(dtype)
    return x, W, pi, bias, dy, s, p


#: The clock: wall time, or (``--cpu-time``) the process's CPU time over the thread count,
#: which a loaded machine disturbs less (it ignores load imbalance between the threads).
CLOCK = {"wall": time.perf_counter, "threads": 1}


def _median_time(f, repeat: int) -> float:
    clock = CLOCK["wall"]
    ts = []
    for _ in range(repeat):
        t0 = clock()
        f()
        ts.append((clock() - t0) / CLOCK["threads"])
    return float(np.median(ts))


def conv_cases(name: str):
    """``x`` and ``(label, geometry, wt, call)`` of conv2d's shared kernel and of
    dynamic_conv2d's per-sample kernels (kernel mixing) on a preset."""
    import dynconv_np as dc
    from dynconv_np.backends.cpu import conv

    x, W, pi, bias, dy, s, p = inputs(name)
    N, C, O, H, k, _, _, K = SHAPES[name]
    g = dc._args.geometry(x.shape, k, k, s, p, 1)
    F = C * k * k
    rng = np.random.default_rng(1)
    out = [("shared", g, W[0].reshape(O, F), conv._call(g, 1, O, True, 4)),
           ("per-sample", g, (rng.standard_normal((N, O, F)) / np.sqrt(F)).astype(np.float32),
            conv._call(g, 1, O, False, 4))]
    return x, out


def measure_strategies(name: str, repeat: int):
    """Rows ``(shape, kernels, pass, strategy, measured s, call)`` for every strategy
    that can run each pass of the preset's convolutions."""
    from dynconv_np.backends.cpu import conv, plan

    x, cases = conv_cases(name)
    rows = []
    for label, g, wt, call in cases:
        dy = np.random.default_rng(2).standard_normal((g.N, wt.shape[-2], g.Ho, g.Wo)).astype(np.float32)
        runs = {"forward": lambda g=g, wt=wt: conv.conv_forward(x, wt, None, g, 1),
                "backward": lambda g=g, wt=wt, dy=dy: conv.conv_backward(x, wt, dy, g, 1)}
        for pass_, f in runs.items():
            names = [s for s in plan.CONV_STRATEGIES if plan.unsupported(s, call) is None]
            times = {s: [] for s in names}
            for s in names:  # warm-up
                with plan.forcing(plan.Forced("kernel_mixing", s, s)):
                    f()
            for r in range(repeat):
                for s in (names if r % 2 == 0 else names[::-1]):
                    with plan.forcing(plan.Forced("kernel_mixing", s, s)):
                        times[s].append(_median_time(f, 1))
            rows += [(name, label, pass_, s, float(np.median(times[s])), call) for s in names]
    return rows


def measure_mixings(name: str, repeat: int):
    """``{formulation: seconds}`` of dynamic_conv2d forward+backward on the preset."""
    import dynconv_np as dc

    x, W, pi, bias, dy, s, p = inputs(name)
    out = {}
    for form in ("kernel_mixing", "output_mixing"):
        def step():
            _, pb = dc.dynamic_conv2d.vjp(x, W, pi, bias, stride=s, padding=p)
            pb(dy)

        with dc.strategy.force(form):
            step()
            out[form] = _median_time(step, repeat)
    return out


def estimate(row) -> float:
    from dynconv_np.backends.cpu import plan

    return dict(plan.estimates(row[2], row[5]))[row[3]]


def report(rows, mixings) -> None:
    from dynconv_np.backends.cpu import plan

    print("| shape | kernels | pass | strategy | measured ms | estimate ms | pick |")
    print("|---|---|---|---|---|---|---|")
    groups = {}
    for r in rows:
        groups.setdefault(r[:3], []).append(r)
    regrets = []
    for key, rs in groups.items():
        with plan.forcing(plan.AUTO):
            pick = plan.choose(key[2], rs[0][5])
        best = min(r[4] for r in rs)
        for r in rs:
            mark = "*" if r[3] == pick else ""
            print(f"| {key[0]} | {key[1]} | {key[2]} | {r[3]} | {r[4] * 1e3:.2f} | {estimate(r) * 1e3:.2f} | {mark} |")
        regrets.append((key, next(r[4] for r in rs if r[3] == pick) / best))
    print("\nslowdown of the cost model's pick against the fastest measured (1.00: it picked the fastest):")
    for key, reg in regrets:
        print(f"  {' '.join(key)}: {reg:.2f}")
    if mixings:
        import dynconv_np as dc
        from dynconv_np.backends.cpu import conv

        print("\n| shape | kernel mixing ms | output mixing ms | estimates (kernel, output) ms | pick |")
        print("|---|---|---|---|---|")
        for name, m in mixings.items():
            N, C, O, H, k, s, p, K = SHAPES[name]
            g = dc._args.geometry((N, C, H, H), k, k, s, p, 1)
            est = plan.mixing_estimates(conv._call(g, 1, O, False, 4), conv._call(g, 1, K * O, True, 4), K)
            pick = plan._cheapest(est)
            print(f"| {name} | {m['kernel_mixing'] * 1e3:.1f} | {m['output_mixing'] * 1e3:.1f} | "
                  f"{est[0][1] * 1e3:.1f}, {est[1][1] * 1e3:.1f} | {pick} |")


def fit(rows) -> dict:
    """Least squares in log time of :data:`plan.FITTED` over the timings."""
    from scipy.optimize import least_squares

    from dynconv_np.backends.cpu import plan

    # GEMM_CALL, ITEM and the GEMM's half-rate width N stay as set (too small to be told
    # apart from the rest here: a free N half-width trades against the copies and ranks
    # batched blocks above whole-sample tiles that measure as fast); the others move
    # within a factor e^2 of their present values.
    hn = plan.GEMM_HALF[2]

    def unpack(v):
        e = np.exp(v)
        return dict(GEMM_PEAK=e[0], GEMM_HALF=(e[1], e[2], hn), COPY=e[3], RUN=e[4], GATHER=e[5],
                    MEM_FACTOR=1 + e[6], WINO_TRANSFORM={2: e[7], 4: e[8]})

    def residuals(v):
        plan.calibrate(**unpack(v))
        return [math.log(estimate(r)) - math.log(r[4]) for r in rows]

    v0 = np.log([plan.GEMM_PEAK, *plan.GEMM_HALF[:2], plan.COPY, plan.RUN, plan.GATHER, plan.MEM_FACTOR - 1,
                 plan.WINO_TRANSFORM[2], plan.WINO_TRANSFORM[4]])
    res = least_squares(residuals, v0, bounds=(v0 - 2, v0 + 2))
    best = unpack(res.x)
    plan.calibrate(**best)
    print(f"fit: rms log error {np.sqrt(np.mean(res.fun ** 2)):.3f} over {len(rows)} timings")
    return best


def fit_shifted(rows) -> float:
    """SHIFT_HALF_K alone, least squares in log time over the ``shifted`` timings (the
    other constants as they are)."""
    from scipy.optimize import least_squares

    from dynconv_np.backends.cpu import plan

    mine = [r for r in rows if r[3] == "shifted"]

    def residuals(v):
        plan.calibrate(SHIFT_HALF_K=float(np.exp(v[0])))
        return [math.log(estimate(r)) - math.log(r[4]) for r in mine]

    res = least_squares(residuals, [math.log(plan.SHIFT_HALF_K)], bounds=([-3.0], [6.0]))
    plan.calibrate(SHIFT_HALF_K=float(np.exp(res.x[0])))
    print(f"fit of SHIFT_HALF_K: rms log error {np.sqrt(np.mean(res.fun ** 2)):.3f} over {len(mine)} timings")
    return plan.SHIFT_HALF_K


def fit_stream(mixings) -> float:
    """STREAM from the mixing formulations' totals (the conv passes' estimates fixed)."""
    import dynconv_np as dc
    from dynconv_np.backends.cpu import conv, plan

    ratios = []
    for name, m in mixings.items():
        N, C, O, H, k, s, p, K = SHAPES[name]
        g = dc._args.geometry((N, C, H, H), k, k, s, p, 1)
        c = conv._call(g, 1, O, False, 4)
        convs = sum(dict(plan.estimates(ps, c))["tiles"] for ps in plan.PASSES)
        streamed = N * K * O * c.F * (2 / plan.THREADS + 1)
        if m["kernel_mixing"] > convs:
            ratios.append((m["kernel_mixing"] - convs) / streamed)
    return float(np.median(ratios)) if ratios else plan.STREAM


def errors(names) -> None:
    """Largest relative errors of each strategy against float64 (see the module docstring)."""
    import dynconv_np as dc
    from dynconv_np.backends.cpu import plan

    print("| shape | op | strategy | y | dx | dW | dpi | dbias |\n|---|---|---|---|---|---|---|---|")
    for name in names:
        x, W, pi, bias, dy, s, p = inputs(name, np.float64)
        ops = {"conv2d": (dc.conv2d, (x, W[0], bias[0])), "dynamic_conv2d": (dc.dynamic_conv2d, (x, W, pi, bias))}
        for op, (f, args) in ops.items():
            with dc.strategy.force("tiles"):
                y64, pb = f.vjp(*args, stride=s, padding=p)
                ref = (y64, *pb(dy))
            forms = [()] if op == "conv2d" else [("kernel_mixing",), ("output_mixing",)]
            for form in forms:
                for strat in plan.CONV_STRATEGIES:
                    args32 = [a.astype(np.float32) for a in args]
                    try:
                        with dc.strategy.force(*form, strat):
                            y, pb = f.vjp(*args32, stride=s, padding=p)
                            got = (y, *pb(dy.astype(np.float32)))
                    except ValueError:
                        continue
                    errs = [f"{float(np.abs(a - r).max() / max(np.abs(r).max(), 1e-30)):.1e}" for a, r in zip(got, ref)]
                    if op == "conv2d":  # no dpi
                        errs.insert(3, "-")
                    cells = " | ".join(errs) + " |"
                    label = "+".join((*form, strat))
                    print(f"| {name} | {op} | {label} | {cells}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--fit", action="store_true", help="refit the cost constants to the timings")
    ap.add_argument("--fit-shifted", action="store_true",
                    help="refit SHIFT_HALF_K alone to the shifted strategy's timings")
    ap.add_argument("--errors", action="store_true", help="errors of every strategy against float64")
    ap.add_argument("--save", metavar="JSON", help="keep the timings")
    ap.add_argument("--load", metavar="JSON", help="report (and --fit) saved timings instead of measuring")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process's CPU time over the thread count (on a loaded machine)")
    args = ap.parse_args(argv)
    if args.cpu_time:
        CLOCK.update(wall=time.process_time, threads=args.threads)
    from compare import _set_threads, use_checkout

    use_checkout()
    _set_threads(args.threads)
    import numba

    numba.set_num_threads(args.threads)
    load0 = " ".join(f"{v:.2f}" for v in os.getloadavg())
    if args.errors:
        errors(args.shapes)
        return 0
    if args.load:
        with open(args.load) as f:
            saved = json.load(f)
        calls = {}
        for name in {r[0] for r in saved["rows"]}:
            calls.update({(name, label): call for label, _, _, call in conv_cases(name)[1]})
        rows = [(*r, calls[r[0], r[1]]) for r in saved["rows"]]
        mixings = saved["mixings"]
        print(saved["header"] + f" (loaded from {args.load})\n")
    else:
        rows, mixings = [], {}
        for name in args.shapes:
            rows += measure_strategies(name, args.repeat)
            mixings[name] = measure_mixings(name, args.repeat)
            print(f"{name} timed", file=sys.stderr, flush=True)
        load1 = " ".join(f"{v:.2f}" for v in os.getloadavg())
        clock = "CPU time / threads" if args.cpu_time else "wall time"
        header = (f"{args.threads} threads, median of {args.repeat} ({clock}); "
                  f"load average {load0} before, {load1} after")
        print(header + "\n")
        if args.save:
            with open(args.save, "w") as f:
                json.dump({"header": header, "rows": [r[:5] for r in rows], "mixings": mixings}, f, indent=1)
    report(rows, mixings)
    if args.fit_shifted:
        from dynconv_np.backends.cpu import plan

        print(f"\nSHIFT_HALF_K = {float(f'{fit_shifted(rows):.3g}')}\n")
        report(rows, mixings)
    if args.fit:
        from dynconv_np.backends.cpu import plan

        best = fit(rows)
        plan.calibrate(STREAM=fit_stream(mixings))
        best["STREAM"] = plan.STREAM
        print("\nfitted constants (dynconv_np/backends/cpu/plan.py):")
        def short(v):
            if isinstance(v, dict):
                return "{" + ", ".join(f"{k}: {float(f'{x:.3g}')}" for k, x in v.items()) + "}"
            return tuple(float(f"{x:.3g}") for x in v) if isinstance(v, tuple) else float(f"{v:.3g}")

        for k, v in best.items():
            print(f"{k} = {short(v)}")
        print()
        report(rows, mixings)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
