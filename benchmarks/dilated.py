"""Dilated 3x3 layers: conv2d and dynamic_conv2d forward+backward against PyTorch, and
against our own direct method, runnable without asv.

Dilated 3x3 layers (dilated ResNets, DeepLab backbones and their ASPP heads) run by
Winograd on the mosaic of their phases (``backends/cpu/phases.py``) where the cost model
picks it. Contenders, alternated within one process after a warm-up:

``ours``
    The cost model's plan (printed with each row).
``direct``
    Ours with the direct method forced (``strategy.force("tiles")``): the plan these
    layers had before the phase mosaic.
``torch``
    PyTorch CPU (when installed): ``F.conv2d`` with ``dilation``, and for the dynamic
    op the grouped-convolution trick (the batch folded into groups), autograd backward.

Each thread count runs in a fresh process. ``--memory``: the growth of the peak resident
memory over one forward+backward (``VmHWM`` after the call against ``VmRSS`` before, the
mark reset through ``/proc/self/clear_refs``), each contender in a fresh process warmed
up on a one-sample 8x8 crop of the same layer. Usage::

    python benchmarks/dilated.py --threads 1 2 --repeat 7
    python benchmarks/dilated.py --memory --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name: (N, C, O, H=W, dilation, K); padding = dilation ("same"), float32
SHAPES = {
    "dil2_32": (32, 64, 64, 32, 2, 4),      # a dilated ResNet's late stage, CIFAR scale
    "dil2_28": (8, 128, 128, 28, 2, 4),
    "dil4_16": (16, 128, 128, 16, 4, 4),
    "aspp6": (4, 256, 256, 33, 6, 4),       # DeepLab's ASPP branch at rate 6, output stride 16
}


def make_inputs(name: str, seed: int = 0):
    """Float32 inputs of a preset: ``x, W, pi, bias, dy, dilation``."""
    N, C, O, H, d, K = SHAPES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    W = (rng.standard_normal((K, O, C, 3, 3), dtype=np.float32) / np.sqrt(C * 9)).astype(np.float32)
    pi = rng.dirichlet(np.ones(K), size=N).astype(np.float32)
    bias = rng.standard_normal((K, O), dtype=np.float32)
    dy = rng.standard_normal((N, O, H, H), dtype=np.float32)
    return x, W, pi, bias, dy, d


def _ours(op, x, W, pi, bias, dy, d, force=None):
    import dynconv_np as dc

    def step():
        with dc.strategy.force(force) if force else contextlib.nullcontext():
            if op == "conv2d":
                _, pb = dc.conv2d.vjp(x, W[0], bias[0], padding=d, dilation=d)
            else:
                _, pb = dc.dynamic_conv2d.vjp(x, W, pi, bias, padding=d, dilation=d)
            return pb(dy)

    return step


def _torch(op, x, W, pi, bias, dy, d):
    import torch

    N, C, H, Wd = x.shape
    K, O = W.shape[:2]
    xt = torch.from_numpy(x).requires_grad_()
    dyt = torch.from_numpy(dy)
    if op == "conv2d":
        wt = torch.from_numpy(W[0].copy()).requires_grad_()
        bt = torch.from_numpy(bias[0].copy()).requires_grad_()

        def step():
            for t in (xt, wt, bt):
                t.grad = None
            torch.nn.functional.conv2d(xt, wt, bt, 1, d, d).backward(dyt)
            return xt.grad, wt.grad, bt.grad

        return step
    Wt = torch.from_numpy(W).requires_grad_()
    pt = torch.from_numpy(pi).requires_grad_()
    bt = torch.from_numpy(bias).requires_grad_()

    def step():
        for t in (xt, Wt, pt, bt):
            t.grad = None
        kernels = (pt @ Wt.view(K, -1)).view(N * O, C, 3, 3)
        b = (pt @ bt).view(-1)
        y = torch.nn.functional.conv2d(xt.view(1, N * C, H, Wd), kernels, b, 1, d, d, N)
        y.view(dy.shape).backward(dyt)
        return xt.grad, Wt.grad, pt.grad, bt.grad

    return step


def _plan(op, x, W, pi, bias, d) -> str:
    import dynconv_np as dc

    args = (x, W[0], bias[0]) if op == "conv2d" else (x, W, pi, bias)
    f = dc.conv2d if op == "conv2d" else dc.dynamic_conv2d
    ex = dc.strategy.explain(f, *args, padding=d, dilation=d)
    return ", ".join(line.split()[1] for line in str(ex).splitlines()[1:])


def run(threads: int, repeat: int, shapes, ops) -> None:
    import time

    import numba

    numba.set_num_threads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
        have_torch = True
    except ImportError:
        have_torch = False
    print(f"threads {threads}, repeat {repeat}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| op | shape | ours ms | direct ms | torch ms | direct/ours | torch/ours | plan |")
    print("|---|---|---|---|---|---|---|---|")
    for op in ops:
        for name in shapes:
            x, W, pi, bias, dy, d = make_inputs(name)
            steps = {"ours": _ours(op, x, W, pi, bias, dy, d), "direct": _ours(op, x, W, pi, bias, dy, d, "tiles")}
            if have_torch:
                steps["torch"] = _torch(op, x, W, pi, bias, dy, d)
            times = {k: [] for k in steps}
            for f in steps.values():
                f()
                f()
            for r in range(repeat):
                for k in (list(steps) if r % 2 else list(steps)[::-1]):
                    t0 = time.perf_counter()
                    steps[k]()
                    times[k].append(time.perf_counter() - t0)
            ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
            tor = f"{ms['torch']:.1f}" if "torch" in ms else "-"
            ratio = f"{ms['torch'] / ms['ours']:.2f}" if "torch" in ms else "-"
            print(f"| {op} | {name} | {ms['ours']:.1f} | {ms['direct']:.1f} | {tor} | "
                  f"{ms['direct'] / ms['ours']:.2f} | {ratio} | {_plan(op, x, W, pi, bias, d)} |", flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def _peak_growth(name: str, who: str, op: str) -> float:
    # MiB: run in a fresh process (see --memory)
    x, W, pi, bias, dy, d = make_inputs(name)
    crop = (x[:1, :, :8, :8].copy(), W, pi[:1].copy(), bias, dy[:1, :, :8, :8].copy(), d)
    if who == "torch":
        import torch

        torch.set_num_threads(int(os.environ["NUMBA_NUM_THREADS"]))
        step, warm = _torch(op, x, W, pi, bias, dy, d), _torch(op, *crop)
    else:
        force = "tiles" if who == "direct" else None
        step, warm = _ours(op, x, W, pi, bias, dy, d, force), _ours(op, *crop, force)
    warm()
    warm()

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    step()
    return (status("VmHWM") - before) / 1024


def memory(threads: int, shapes, ops) -> None:
    try:
        import torch  # noqa: F401

        who = ("ours", "direct", "torch")
    except ImportError:
        who = ("ours", "direct")
    print(f"peak memory growth of one forward+backward, MiB, threads {threads} (fresh process each)")
    print("| op | shape | " + " | ".join(who) + " |")
    print("|---|---|" + "---|" * len(who))
    for op in ops:
        for name in shapes:
            cells = []
            for w in who:
                code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                        f"import dilated; print(dilated._peak_growth({name!r}, {w!r}, {op!r}))")
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                cells.append(f"{float(out.stdout.split()[-1]):.0f}")
            print(f"| {op} | {name} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--ops", nargs="+", default=["conv2d", "dynamic_conv2d"], choices=["conv2d", "dynamic_conv2d"])
    ap.add_argument("--memory", action="store_true", help="peak memory growth instead of times")
    args = ap.parse_args(argv)
    if len(args.threads) > 1:
        for t in args.threads:
            cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(t), "--repeat", str(args.repeat),
                   "--shapes", *args.shapes, "--ops", *args.ops] + ["--memory"] * args.memory
            if subprocess.run(cmd).returncode:
                return 1
        return 0
    t = args.threads[0]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(t)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if os.path.isdir(os.path.join(ROOT, "dynconv_np")) and sys.path[0] != ROOT:
        sys.path.insert(0, ROOT)
    if args.memory:
        memory(t, args.shapes, args.ops)
    else:
        run(t, args.repeat, args.shapes, args.ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
