"""Side-by-side timing of dynamic_conv2d (and, with ``--static``, conv2d) forward+backward
against PyTorch, runnable without asv.

Contenders for dynamic_conv2d, alternated within one process so that machine noise hits
them alike:

``ours``
    ``dc.dynamic_conv2d.vjp(x, W, pi, bias)`` then ``pullback(dy)``.
``torch``
    PyTorch CPU (when installed) with the grouped-convolution trick of the public
    implementations: the batch folded into groups, ``x`` viewed as ``(1, N*C, H, W)``,
    the per-sample mixed kernels ``(N*O, C, kh, kw)``, ``groups=N``; autograd backward.
``loop``
    The per-sample Python loop of a widely used DY-CNN implementation, written with NumPy
    and our ``conv2d``: mix one kernel per sample, convolve that sample, and in the
    backward chain the per-sample gradients back to ``W``, ``pi`` and ``bias``.

With ``--static``, conv2d on the same presets (``W[0]``, ``bias[0]``) against
``torch.nn.functional.conv2d`` (oneDNN) with autograd, the same way.

Reported per shape: median seconds, the ratio ``other / ours`` (above 1: ours is
faster), effective GFLOP/s of forward+backward (``3 * 2*N*O*C*kh*kw*Ho*Wo`` flops, the
three convolution GEMMs of the direct method, whatever the strategy ran) and that rate
as a fraction of this machine's own ``np.matmul`` float32 rate (a 2048^3 product with the
same thread count, measured in the same run), and the plan ours ran
(``dynconv_np.explain``: the mixing formulation, then the forward/backward strategies).
The load average (``os.getloadavg``) before and after each table says how quiet the
machine was.

``--threads 1 2`` runs each thread count in a fresh subprocess (thread pools are sized
at start-up) and prints every table.

Memory (``--memory``): for every contender a fresh subprocess builds the inputs, warms
up on a tiny problem that takes the same code paths (JIT, thread pools; for ours the
Winograd kernel transforms both on the calling thread and in a parallel region, which
the tiny problem alone would not reach), records its
resident set size, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), runs
one forward+backward on the real shape and reports ``VmHWM - VmRSS_before``: the growth
of the peak resident memory during the call, inputs excluded. For ours, the peak of
``tracemalloc`` over the same call is reported too (NumPy registers its buffers with
tracemalloc; the Numba kernels allocate nothing).

Usage::

    python benchmarks/compare.py --threads 2 --repeat 7 --memory --plot
    python benchmarks/compare.py --shapes cifar32 cifar16 cifar8 cifar_s2 --static --threads 1 2

``--plot`` alone writes ``results/compare.png`` (git-ignored); ``--plot PATH`` writes PATH
(``docs/performance.png`` is the chart committed with docs/performance.md).
``--contenders torch`` without PyTorch installed is an error (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

#: The checkout this script lives in.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median_ms(f, repeat: int) -> float:
    """Median milliseconds of `repeat` calls of ``f()`` after one untimed call."""
    f()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def use_checkout() -> None:
    """Run as a script, benchmark the checkout the script lives in (ahead of an installed
    dynconv_np); under asv, the benchmarked commit's installed package is used instead."""
    if os.path.isdir(os.path.join(ROOT, "dynconv_np")) and sys.path[0] != ROOT:
        sys.path.insert(0, ROOT)


#: Where ``--plot`` without a path writes (``results/`` is git-ignored).
DEFAULT_PLOT = os.path.join("results", "compare.png")

#: name: (N, C, O, H=W, k, stride, pad, K)
SHAPES = {
    "resnet3x3": (32, 64, 64, 56, 3, 1, 1, 4),
    "mbv2_1x1": (64, 144, 24, 28, 1, 1, 0, 4),
    "stride2": (32, 128, 128, 28, 3, 2, 1, 4),
    "batch1": (1, 256, 256, 14, 3, 1, 1, 8),
    "cifar32": (128, 32, 32, 32, 3, 1, 1, 4),
    "cifar16": (128, 64, 64, 16, 3, 1, 1, 4),
    "cifar8": (128, 128, 128, 8, 3, 1, 1, 4),
    "cifar_s2": (128, 64, 128, 16, 3, 2, 1, 4),
}


def _set_threads(threads: int) -> None:
    # Before NumPy and Numba load: OpenBLAS, OpenMP and Numba read these at start-up.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)
    # Contenders alternate in one process, each with its own OpenMP pool (Numba's and
    # PyTorch's): idle workers must sleep, not spin on the cores the next contender needs.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # NumPy (imported at the top of this module) has already started OpenBLAS with a
    # thread a core: the variables above come too late for it, and the "one thread"
    # runs had timed np.matmul's sgemm rate on two. Limit the loaded BLAS itself (the
    # limit holds for the process).
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


def make_inputs(name: str, seed: int = 0):
    """Float32 inputs of a shape preset: ``x, W, pi, bias, dy, stride, pad``."""
    N, C, O, H, k, s, p, K = SHAPES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    W = (rng.standard_normal((K, O, C, k, k), dtype=np.float32) / np.sqrt(C * k * k)).astype(np.float32)
    pi = rng.dirichlet(np.ones(K), size=N).astype(np.float32)
    bias = rng.standard_normal((K, O), dtype=np.float32)
    Ho = (H + 2 * p - k) // s + 1
    dy = rng.standard_normal((N, O, Ho, Ho), dtype=np.float32)
    return x, W, pi, bias, dy, s, p


def flops(name: str) -> float:
    """Multiply-add flops of the three convolution GEMMs of forward+backward."""
    N, C, O, H, k, s, p, K = SHAPES[name]
    Ho = (H + 2 * p - k) // s + 1
    return 3 * 2.0 * N * O * C * k * k * Ho * Ho


# ----------------------------------------------------------------------------- contenders
def ours_step(x, W, pi, bias, dy, s, p):
    import dynconv_np as dc

    def step():
        _, pullback = dc.dynamic_conv2d.vjp(x, W, pi, bias, stride=s, padding=p)
        return pullback(dy)

    return step


def loop_step(x, W, pi, bias, dy, s, p):
    """The DY-CNN per-sample loop, in NumPy with our conv2d.

    Its small NumPy products run with BLAS at one thread: multithreaded, OpenBLAS's
    threads keep spinning after them and slowed the next contender's step (ours on
    batch1: 7.8 ms after its own step, 13.8 ms after this one's).
    """
    import dynconv_np as dc
    from dynconv_np.backends.cpu.products import blas_single_thread

    K = W.shape[0]

    def step():
        with blas_single_thread():
            return _step()

    def _step():
        pullbacks = []
        for n in range(x.shape[0]):
            kernel = np.tensordot(pi[n], W, axes=1)                  # (O, C, k, k)
            b_n = pi[n] @ bias                                       # (O,)
            _, pb = dc.conv2d.vjp(x[n:n + 1], kernel, b_n, stride=s, padding=p)
            pullbacks.append(pb)
        dx = np.empty_like(x)
        dW = np.zeros_like(W)
        dpi = np.empty_like(pi)
        dbias = np.zeros_like(bias)
        for n, pb in enumerate(pullbacks):
            dx_n, dk, db = pb(dy[n:n + 1])
            dx[n] = dx_n[0]
            dW += pi[n][:, None, None, None, None] * dk
            dbias += pi[n][:, None] * db
            dpi[n] = W.reshape(K, -1) @ dk.ravel() + bias @ db
        return dx, dW, dpi, dbias

    return step


def torch_step(x, W, pi, bias, dy, s, p):
    import torch

    N, C, H, Wd = x.shape
    K, O = W.shape[:2]
    k = W.shape[-1]
    xt = torch.from_numpy(x).requires_grad_()
    Wt = torch.from_numpy(W).requires_grad_()
    pt = torch.from_numpy(pi).requires_grad_()
    bt = torch.from_numpy(bias).requires_grad_()
    dyt = torch.from_numpy(dy)

    def step():
        for t in (xt, Wt, pt, bt):
            t.grad = None
        kernels = (pt @ Wt.view(K, -1)).view(N * O, C, k, k)
        b = (pt @ bt).view(-1)
        y = torch.nn.functional.conv2d(xt.view(1, N * C, H, Wd), kernels, b, s, p, 1, N)
        y.view(dy.shape).backward(dyt)
        return xt.grad, Wt.grad, pt.grad, bt.grad

    return step


def ours_static_step(x, W, pi, bias, dy, s, p):
    import dynconv_np as dc

    w, b = W[0], bias[0]

    def step():
        _, pullback = dc.conv2d.vjp(x, w, b, stride=s, padding=p)
        return pullback(dy)

    return step


def torch_static_step(x, W, pi, bias, dy, s, p):
    import torch

    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(W[0].copy()).requires_grad_()
    bt = torch.from_numpy(bias[0].copy()).requires_grad_()
    dyt = torch.from_numpy(dy)

    def step():
        for t in (xt, wt, bt):
            t.grad = None
        torch.nn.functional.conv2d(xt, wt, bt, s, p).backward(dyt)
        return xt.grad, wt.grad, bt.grad

    return step


CONTENDERS = {"ours": ours_step, "torch": torch_step, "loop": loop_step}
#: conv2d's contenders (``--static``): ours and torch.nn.functional.conv2d.
STATIC_CONTENDERS = {"ours": ours_static_step, "torch": torch_static_step}
#: The ops compared: name -> (contenders, title)
OPS = {"dynamic": (CONTENDERS, "dynamic_conv2d"), "static": (STATIC_CONTENDERS, "conv2d")}


def plan_of(name: str, op: str = "dynamic") -> dict:
    """The plan ours runs on a preset, from the CPU planner without running it:
    ``{"mixing": ..., "forward": ..., "backward": ...}`` (mixing only for dynamic_conv2d)."""
    import dynconv_np as dc
    from dynconv_np.backends.cpu import conv, plan

    N, C, O, H, k, s, p, K = SHAPES[name]
    g = dc._args.geometry((N, C, H, H), k, k, s, p, 1)
    out = {}
    O_conv, shared = O, True
    with plan.recording():
        if op == "dynamic":
            out["mixing"] = conv.conv_plan(g, 1, O, K, True, np.float32)
            if out["mixing"] == "output_mixing":
                O_conv = K * O
            else:
                shared = False
        call = conv._call(g, 1, O_conv, shared, 4)
        for pass_ in plan.PASSES:
            out[pass_] = plan.choose(pass_, call)
    return out


def _plan_names(pl: dict) -> list:
    # dc.strategy.force arguments that pin this plan
    names = [pl["mixing"]] if "mixing" in pl else []
    return names + ([pl["forward"]] if pl["forward"] == pl["backward"] else [])


def _plan_text(pl: dict) -> str:
    short = {"kernel_mixing": "kernel mix", "output_mixing": "output mix"}
    parts = [short[pl["mixing"]]] if "mixing" in pl else []
    parts.append(pl["forward"] if pl["forward"] == pl["backward"] else f"{pl['forward']}/{pl['backward']}")
    return ", ".join(parts)


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- timing
def sgemm_rate(repeat: int = 5, n: int = 2048) -> float:
    """Median float32 ``np.matmul`` rate of this machine, in GFLOP/s."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2.0 * n**3 / float(np.median(ts)) / 1e9


#: Untimed steps per contender before the timed repeats. The first steps of a process run
#: slower while the C allocator grows its heap (fresh pages fault in); three reach the
#: steady state of a training loop on the machine of docs/performance.md.
WARMUP = 3
#: Untimed steps a contender takes, in every round, before its timed one. Right after
#: another engine ran, caches are cold and thread pools asleep or still spinning: on
#: batch1, ours measured 7.8 ms after one of its own steps, 17.4 ms after a PyTorch step,
#: and PyTorch 9.0 against 14.2 ms after ours. One step back in its own steady state
#: (what a network using one engine sees) removes that cross-talk for both.
REWARM = 1


def run_shape(name: str, contenders, repeat: int, threads: int, op: str = "dynamic"):
    args = make_inputs(name)
    table = OPS[op][0]
    steps = {c: table[c](*args) for c in contenders}
    for _ in range(WARMUP):  # JIT, thread pools, and the allocator's steady state
        for step in steps.values():
            step()
    times = {c: [] for c in contenders}
    for r in range(repeat):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for c in order:
            for _ in range(REWARM):
                steps[c]()
            t0 = time.perf_counter()
            steps[c]()
            times[c].append(time.perf_counter() - t0)
    return {c: float(np.median(v)) for c, v in times.items()}


# ----------------------------------------------------------------------------- memory
_MEM_CHILD = r"""
import importlib, json, resource, sys
sys.path.insert(0, {bench!r})
import compare as cmp
cmp.use_checkout()
name, who, op = {name!r}, {who!r}, {op!r}
table = cmp.OPS[op][0]
N, C, O, H, k, s, p, K = cmp.SHAPES[name]
cmp.SHAPES["_tiny"] = (min(N, 4), 4, 4, 8, k, s, p, K)  # same code paths, tiny sizes
if who == "ours":  # the real shape's plan, forced on the tiny one
    import dynconv_np as dc
    from dynconv_np.backends.cpu import winograd
    pl = cmp.plan_of(name, op)
    with dc.strategy.force(*cmp._plan_names(pl), forward=pl["forward"], backward=pl["backward"]):
        # the tiny problem under each of the size switches that pick a compiled function,
        # so that the real shape's functions are loaded before the call (else loading
        # their code counts as its memory: 2 MiB a function)
        for switches in cmp.WARM_SWITCHES:
            mods = {{k: importlib.import_module("dynconv_np.backends.cpu." + k.split(".")[0]) for k in switches}}
            kept = {{k: getattr(mods[k], k.split(".")[1]) for k in switches}}
            for k, v in switches.items():
                setattr(mods[k], k.split(".")[1], v)
            table[who](*cmp.make_inputs("_tiny"))()
            for k, v in kept.items():
                setattr(mods[k], k.split(".")[1], v)
    loaded = cmp.compiled_signatures()
else:
    table[who](*cmp.make_inputs("_tiny"))()
step = table[who](*cmp.make_inputs(name))


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


rss0 = status("VmRSS")
try:  # reset the peak-RSS mark (VmHWM) to the current RSS (Linux)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
out = {{}}
if who == "ours":
    import tracemalloc
    tracemalloc.start()
    step()
    out["tracemalloc"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
else:
    step()
peak = status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out["rss_peak_growth"] = peak - rss0
if who == "ours":  # compiled functions loaded during the call (their code counted): none
    out["loaded_in_call"] = sorted(cmp.compiled_signatures() - loaded)
out["hwm_reset"] = reset
print(json.dumps(out))
"""


#: The warm-up's settings of the CPU backend's switches that choose among compiled
#: functions by size (``module.NAME``: the tiny problem alone takes the one-block and the
#: calling-thread Winograd paths, and no thin product): the tiny problem runs once under
#: each.
WARM_SWITCHES = (
    {},
    {"winograd.PARALLEL_KERNELS": 0, "products.THIN_MIN_LONG": 1},   # parallel transforms, thin products
    {"winograd.WHOLE_BYTES": 0, "winograd.WHOLE_GRAD_BYTES": 0, "winograd.PARALLEL_KERNELS": 0},  # blocks
    {"winograd.FUSED_MIN_SAMPLES": 2**62, "winograd.PARALLEL_KERNELS": 0},   # per-sample, not fused
    {"winograd.FUSED_MIN_SAMPLES": 2**62, "winograd.WHOLE_BYTES": 0, "winograd.WHOLE_GRAD_BYTES": 0},
)


def compiled_signatures() -> set:
    """``(module, function, signature)`` of every compiled specialisation of the package's
    Numba functions loaded so far."""
    from numba.core.registry import CPUDispatcher

    out = set()
    for modname, mod in list(sys.modules.items()):
        if modname.startswith("dynconv_np"):
            for k, v in list(vars(mod).items()):
                if isinstance(v, CPUDispatcher):
                    out.update((modname, k, str(sig)) for sig in v.signatures)
    return out


def peak_memory(name: str, who: str, threads: int, op: str = "dynamic") -> dict:
    """Peak memory of one forward+backward in a fresh process (see module docstring)."""
    code = _MEM_CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), name=name, who=who, op=op)
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report
def machine() -> dict:
    import numba

    info = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = sorted({f"{i['internal_api']} {i['version']} ({i.get('architecture')})"
                               for i in threadpool_info() if i["user_api"] == "blas"})
    except ImportError:
        pass
    if have_torch():
        import torch

        info["torch"] = torch.__version__
    return info


def _fmt_table(rows, contenders, rate) -> str:
    head = ["shape", "GFLOP"] + [f"{c} ms" for c in contenders]
    head += [f"{c}/ours" for c in contenders if c != "ours"]
    head += ["ours GFLOP/s", "of sgemm", "plan"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["shape"], f"{r['gflop']:.2f}"] + [f"{r['time'][c] * 1e3:.1f}" for c in contenders]
        cells += [f"{r['time'][c] / r['time']['ours']:.2f}" for c in contenders if c != "ours"]
        g = r["gflop"] / r["time"]["ours"]
        cells += [f"{g:.0f}", f"{g / rate:.0%}", _plan_text(r["plan"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def geomean(rows, who: str = "torch") -> float:
    """Geometric mean of ``who / ours`` over the rows."""
    return float(np.exp(np.mean([np.log(r["time"][who] / r["time"]["ours"]) for r in rows])))


def plot(rows, contenders, path: str, title: str = "dynamic_conv2d") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(7, 1.15 * len(rows)), 3.6))
    width = 0.8 / len(contenders)
    xs = np.arange(len(rows))
    for i, c in enumerate(contenders):
        ax.bar(xs + i * width, [r["time"][c] * 1e3 for r in rows], width, label=c)
    ax.set_xticks(xs + width * (len(contenders) - 1) / 2)
    ax.set_xticklabels([r["shape"] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("forward+backward, ms (log)")
    ax.set_title(f"{title}, float32, median")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _per_thread_count(args) -> int:
    # Each thread count in a fresh process (thread pools are sized at start-up); the
    # children print their tables, the parent merges their JSON.
    results = []
    for t in args.threads:
        fd, path = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        child = ["--shapes", *args.shapes, "--threads", str(t), "--repeat", str(args.repeat), "--json", path]
        child += ["--static"] * args.static + ["--no-dynamic"] * args.no_dynamic + ["--memory"] * args.memory
        child += ["--contenders", *args.contenders] if args.contenders else []
        child += ["--plot", _suffixed(args.plot, t)] if args.plot else []
        rc = subprocess.run([sys.executable, os.path.abspath(__file__), *child]).returncode
        if rc:
            return rc
        with open(path) as f:
            results.append(json.load(f))
        os.remove(path)
    print("\nsummary (geometric mean of torch/ours over the shapes):")
    for res in results:
        for op, r in res["ops"].items():
            if "torch" in r["contenders"]:
                print(f"  {OPS[op][1]}, {res['threads']} thread(s): {geomean(r['rows']):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def _suffixed(path: str, t: int) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}_t{t}{ext or '.png'}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--threads", type=int, nargs="+", default=[2],
                    help="thread counts; several run one after the other, each in a fresh process")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--static", action="store_true", help="also conv2d against torch.nn.functional.conv2d")
    ap.add_argument("--no-dynamic", action="store_true", help="with --static: conv2d only")
    ap.add_argument("--contenders", nargs="+", choices=list(CONTENDERS),
                    help="default: all of them (torch only when PyTorch is installed; conv2d: ours, torch)")
    ap.add_argument("--memory", action="store_true", help="peak memory in subprocesses")
    ap.add_argument("--plot", metavar="PNG", nargs="?", const=DEFAULT_PLOT,
                    help=f"write a bar chart to PNG (default {DEFAULT_PLOT}, which git ignores; "
                         "docs/performance.png is the committed one)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    args = ap.parse_args(argv)

    if len(args.threads) > 1:
        return _per_thread_count(args)
    use_checkout()
    threads = args.threads[0]
    if args.contenders is None:
        contenders = [c for c in CONTENDERS if c != "torch" or have_torch()]
        if "torch" not in contenders:
            print("PyTorch is not installed: benchmarking without the torch contender", file=sys.stderr)
    else:
        if "torch" in args.contenders and not have_torch():
            print("--contenders torch: PyTorch is not installed (pip install torch)", file=sys.stderr)
            return 2
        contenders = list(dict.fromkeys(args.contenders))
    if "ours" not in contenders:
        contenders.insert(0, "ours")
    _set_threads(threads)
    import numba

    numba.set_num_threads(threads)
    if have_torch():
        import torch

        torch.set_num_threads(threads)

    ops = ([] if args.no_dynamic and args.static else ["dynamic"]) + (["static"] if args.static else [])
    rate = sgemm_rate()
    results = {}
    for op in ops:
        who = [c for c in contenders if c in OPS[op][0]]
        load0 = _load()
        rows = []
        for name in args.shapes:
            t = run_shape(name, who, args.repeat, threads, op)
            rows.append({"shape": name, "gflop": flops(name) / 1e9, "time": t, "plan": plan_of(name, op)})
            print(f"{OPS[op][1]} {name}: " + ", ".join(f"{c} {v * 1e3:.1f} ms" for c, v in t.items()), flush=True)
        results[op] = {"rows": rows, "contenders": who, "load": [load0, _load()]}
    rate = float(np.median([rate, sgemm_rate()]))
    for op, r in results.items():
        print()
        print(f"{OPS[op][1]}: threads {threads}, repeat {args.repeat}, np.matmul sgemm {rate:.0f} GFLOP/s, "
              f"load average {r['load'][0]} before, {r['load'][1]} after")
        print(_fmt_table(r["rows"], r["contenders"], rate))
        if "torch" in r["contenders"]:
            print(f"\ngeometric mean torch/ours ({OPS[op][1]}): {geomean(r['rows']):.2f}")
    mem = {}
    if args.memory:
        for op, r in results.items():
            print(f"\npeak memory of one {OPS[op][1]} forward+backward, MiB (fresh process each):")
            mem[op] = {}
            for name in args.shapes:
                m = mem[op][name] = {c: peak_memory(name, c, threads, op) for c in r["contenders"] if c != "loop"}
                parts = [f"{c} rss {v['rss_peak_growth'] / 2**20:.0f}" for c, v in m.items()]
                if "ours" in m:
                    parts.append(f"ours tracemalloc {m['ours']['tracemalloc'] / 2**20:.0f}")
                    if m["ours"]["loaded_in_call"]:
                        parts.append(f"({len(m['ours']['loaded_in_call'])} compiled functions loaded in the call: "
                                     "their code is counted)")
                print(f"  {name}: " + ", ".join(parts))
    print("\nmachine:", json.dumps(machine()))
    if args.plot:
        for op, r in results.items():
            path = args.plot if op == ops[0] else _suffixed(args.plot, 0).replace("_t0", f"_{op}")
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            plot(r["rows"], r["contenders"], path, OPS[op][1])
            print(f"chart written to {path}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": threads, "repeat": args.repeat, "sgemm_gflops": rate, "ops": results,
                       "memory": mem, "machine": machine()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
