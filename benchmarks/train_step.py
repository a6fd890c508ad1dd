"""Time per training step of a small CNN on 16x16 single-channel images (digits scale):
dynconv_np's layers against PyTorch, static and dynamic convolutions.

The network (both engines, same initial weights for the static one)::

    conv3x3(1->16) - BN - ReLU - conv3x3(16->32, stride 2) - BN - ReLU
    - conv3x3(32->32) - BN - ReLU - global average pool - Linear(32->10)

(every conv padding 1, with bias). The dynamic net replaces each conv by DY-CNN's
``DynamicConv2d`` (K=4 experts, attention ``softmax(FC2(ReLU(FC1(GAP(x)))) / tau)`` with
``FC1: C -> max(1, C//4)``, tau = 1): ``dc.nn.DynamicConv2d`` for ours, and for PyTorch
the same layer written with the grouped-convolution trick of the public implementations.
One step: ``zero_grad``, forward, softmax cross-entropy, backward, SGD (lr 0.05, momentum
0.9), batch 64 of random images and labels (float32). The engines alternate step by step
after warm-up (one untimed step of its own before each timed one, as in compare.py);
reported: the median step in ms, and ``torch/ours`` (above 1: ours is faster).

Usage::

    python benchmarks/train_step.py --threads 1 2 --repeat 20
    python benchmarks/train_step.py --threads 1 --repeat 50 --layers

``--layers``: ours alone, the median time of each layer's forward and backward in a
step (the layers' methods timed in place), and the rest of the step (loss, optimizer,
the calls between layers): where a step's time goes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

#: Batch, image side, classes.
BATCH, SIDE, CLASSES = 64, 16, 10
#: (in, out, stride) of the three convolutions.
LAYERS = ((1, 16, 1), (16, 32, 2), (32, 32, 1))
KIND = ("static", "dynamic")


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, 1, SIDE, SIDE), dtype=np.float32)
    labels = rng.integers(0, CLASSES, BATCH)
    return x, labels


def ours_net(kind: str, device: str = "cpu"):
    """dynconv_np's network (on `device`) and one training step ``step() -> loss``."""
    from dynconv_np import arrays, nn

    layers = []
    for i, (c, o, s) in enumerate(LAYERS):
        if kind == "static":
            conv = nn.Conv2d(c, o, 3, stride=s, padding=1, seed=i)
        else:
            conv = nn.DynamicConv2d(c, o, 3, stride=s, padding=1, num_experts=4, temperature=1.0, seed=i)
        layers += [conv, nn.BatchNorm2d(o), nn.ReLU()]
    model = nn.Sequential(*layers, nn.GlobalAvgPool2d(), nn.Linear(LAYERS[-1][1], CLASSES, seed=9))
    x, labels = data()
    if device == "cuda":
        model.to_device()
        x = arrays.to_device(x)
    crit = nn.SoftmaxCrossEntropy()
    opt = nn.SGD(model, lr=0.05, momentum=0.9)

    def step():
        opt.zero_grad()
        loss = crit(model(x), labels)
        model.backward(crit.backward())
        opt.step()
        return loss

    step.model = model
    return step


def torch_net(kind: str):
    """The same network in PyTorch, and one training step ``step() -> loss``."""
    import torch
    from torch import nn

    class DynamicConv2d(nn.Module):
        # DY-CNN with the grouped-convolution trick: x viewed (1, N*C, H, W), the mixed
        # kernels (N*O, C, 3, 3), groups=N.
        def __init__(self, c, o, s, K=4):
            super().__init__()
            self.c, self.o, self.s, self.K = c, o, s, K
            self.weight = nn.Parameter(torch.empty(K, o, c, 3, 3))
            for k in range(K):
                nn.init.kaiming_uniform_(self.weight[k], a=5 ** 0.5)
            self.bias = nn.Parameter(torch.zeros(K, o))
            hidden = max(1, c // 4)
            self.fc1, self.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, K)

        def forward(self, x):
            N, C, H, W = x.shape
            pi = torch.softmax(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))), dim=1)
            w = (pi @ self.weight.view(self.K, -1)).view(N * self.o, C, 3, 3)
            b = (pi @ self.bias).view(-1)
            y = nn.functional.conv2d(x.reshape(1, N * C, H, W), w, b, self.s, 1, 1, N)
            return y.view(N, self.o, y.shape[2], y.shape[3])

    torch.manual_seed(0)
    layers = []
    for c, o, s in LAYERS:
        conv = nn.Conv2d(c, o, 3, s, 1) if kind == "static" else DynamicConv2d(c, o, s)
        layers += [conv, nn.BatchNorm2d(o), nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(LAYERS[-1][1], CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    x, labels = data()
    xt, lt = torch.from_numpy(x), torch.from_numpy(labels)

    def step():
        opt.zero_grad()
        loss = crit(model(xt), lt)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


ENGINES = {"ours": ours_net, "torch": torch_net}


def measure(kind: str, engines, repeat: int, warmup: int = 3) -> dict:
    """Median seconds per training step of each engine (alternating, see the module docstring)."""
    steps = {e: ENGINES[e](kind) for e in engines}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {e: [] for e in engines}
    for r in range(repeat):
        for e in (engines if r % 2 == 0 else engines[::-1]):
            steps[e]()
            t0 = time.perf_counter()
            steps[e]()
            times[e].append(time.perf_counter() - t0)
    return {e: float(np.median(v)) for e, v in times.items()}


def layer_times(kind: str, repeat: int, warmup: int = 3) -> tuple[list, float]:
    """``([(layer, forward s, backward s)], step s)``: medians over `repeat` steps of ours."""
    step = ours_net(kind)
    layers = list(step.model)
    spent = {}

    def timed(layer, name):
        method = getattr(layer, name)

        def run(*args, **kwargs):
            t0 = time.perf_counter()
            out = method(*args, **kwargs)
            spent[(id(layer), name)] = spent.get((id(layer), name), 0.0) + time.perf_counter() - t0
            return out
        return run

    for layer in layers:
        for name in ("forward", "backward"):
            object.__setattr__(layer, name, timed(layer, name))
    for _ in range(warmup):
        step()
    per, total = [], []
    for _ in range(repeat):
        spent.clear()
        t0 = time.perf_counter()
        step()
        total.append(time.perf_counter() - t0)
        per.append(dict(spent))
    rows = [(layer, *(float(np.median([p.get((id(layer), n), 0.0) for p in per])) for n in ("forward", "backward")))
            for layer in layers]
    return rows, float(np.median(total))


def print_layer_times(kind: str, repeat: int) -> None:
    rows, total = layer_times(kind, repeat)
    print(f"\n{kind} net, ours, median of {repeat} steps (ms); load average "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print("| layer | forward | backward |\n|---|---|---|")
    for i, (layer, f, b) in enumerate(rows):
        print(f"| {i} {type(layer).__name__} | {f * 1e3:.3f} | {b * 1e3:.3f} |")
    rest = total - sum(f + b for _, f, b in rows)
    print(f"| rest (loss, optimizer, between layers) | {rest * 1e3:.3f} | |\n| step | {total * 1e3:.3f} | |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[2],
                    help="thread counts; several run one after the other, each in a fresh process")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--kinds", nargs="+", choices=KIND, default=list(KIND))
    ap.add_argument("--layers", action="store_true", help="ours alone: the time of each layer in a step")
    args = ap.parse_args(argv)
    if len(args.threads) > 1:
        for t in args.threads:
            child = ["--threads", str(t), "--repeat", str(args.repeat), "--kinds", *args.kinds]
            child += ["--layers"] * args.layers
            rc = subprocess.run([sys.executable, os.path.abspath(__file__), *child]).returncode
            if rc:
                return rc
        return 0
    threads = args.threads[0]
    from compare import _set_threads, have_torch, use_checkout

    use_checkout()
    _set_threads(threads)
    import numba

    numba.set_num_threads(threads)
    if args.layers:
        for kind in args.kinds:
            print_layer_times(kind, args.repeat)
        return 0
    engines = ["ours"]
    if have_torch():
        import torch

        torch.set_num_threads(threads)
        engines.append("torch")
    else:
        print("PyTorch is not installed: timing ours alone", file=sys.stderr)
    load0 = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rows = {kind: measure(kind, engines, args.repeat) for kind in args.kinds}
    load1 = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"training step, batch {BATCH}, {SIDE}x{SIDE}, {threads} thread(s), median of {args.repeat}; "
          f"load average {load0} before, {load1} after")
    print("| net | ours ms | torch ms | torch/ours |\n|---|---|---|---|")
    for kind, t in rows.items():
        tt = t.get("torch")
        rest = f"{tt * 1e3:.2f} | {tt / t['ours']:.2f} |" if tt else "- | - |"
        print(f"| {kind} | {t['ours'] * 1e3:.2f} | {rest}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
