"""What the first run compiles: every Numba kernel of dynconv_np, its signatures and the
time each took to compile, from an empty cache.

Each run goes to a fresh subprocess whose ``NUMBA_CACHE_DIR`` is a new temporary folder
(so nothing is cached), runs a workload, then walks every Numba dispatcher of the
imported ``dynconv_np`` modules and reports, per kernel, its signatures, the seconds
spent compiling each (``compiler_lock`` of Numba's compile metadata: typing, lowering and
LLVM, waits for the compiler lock excluded) and the cache hits. ``--warm`` runs the
workload a second time on the same cache folder: its kernels load instead of compiling.

Workloads:

``ops`` (default)
    One forward and backward of each kernel family (conv2d on a batch of 4 and of 2, the
    two backward schedules; dynamic_conv2d with a thin mixing product; involution2d;
    ddf_conv2d; odconv2d; im2col and col2im), in float64 then float32, each call timed.
``check``
    Every case of ``python -m dynconv_np check``, each case timed.
``pytest``
    ``pytest -q -p no:cacheprovider`` plus the arguments after ``--`` (the whole suite
    by default), in the subprocess.

Usage, from the repository root::

    python benchmarks/compile_profile.py                 # ops, cold
    python benchmarks/compile_profile.py check --warm    # check, cold then warm
    python benchmarks/compile_profile.py pytest -- tests/test_conv.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- in the subprocess
def _ops_workload():
    import numpy as np

    import dynconv_np as dc
    from dynconv_np import backends
    from dynconv_np._args import geometry

    be = backends.get("cpu")
    r = np.random.default_rng(0)
    steps = []

    def timed(label, f):
        t = time.perf_counter()
        f()
        steps.append((label, time.perf_counter() - t))

    def fwd_bwd(op, *args, **kw):
        y, pb = op.vjp(*args, **kw)
        pb(np.ones_like(y))

    for dt in (np.float64, np.float32):
        def a(*shape, dt=dt):
            return r.standard_normal(shape).astype(dt)
        name = np.dtype(dt).name
        timed(f"conv2d N=4 {name}", lambda: fwd_bwd(dc.conv2d, a(4, 4, 8, 8), a(6, 4, 3, 3), a(6), padding=1))
        timed(f"conv2d N=2 {name}", lambda: fwd_bwd(dc.conv2d, a(2, 4, 8, 8), a(6, 4, 3, 3), a(6), padding=1))
        timed(f"dynamic_conv2d thin mix {name}",
              lambda: fwd_bwd(dc.dynamic_conv2d, a(4, 32, 6, 6), a(4, 32, 32, 3, 3), np.abs(a(4, 4)), padding=1))
        timed(f"involution2d {name}", lambda: fwd_bwd(dc.involution2d, a(2, 4, 6, 6), a(2, 2, 9, 6, 6), 2,
                                                      padding=1))
        timed(f"ddf_conv2d {name}", lambda: fwd_bwd(dc.ddf_conv2d, a(2, 4, 6, 6), a(2, 9, 6, 6), a(2, 4, 9),
                                                    padding=1))
        timed(f"odconv2d {name}", lambda: fwd_bwd(dc.odconv2d, a(2, 4, 6, 6), a(3, 6, 4, 3, 3), np.abs(a(2, 3)),
                                                  np.abs(a(2, 3, 3)), np.abs(a(2, 4)), np.abs(a(2, 6)), padding=1))
        g = geometry((2, 3, 6, 6), 3, 3, 1, 1, 1)
        timed(f"im2col, col2im {name}", lambda g=g, dt=dt: be.col2im(be.im2col(a(2, 3, 6, 6), g), g,
                                                            np.empty((2, 3, 6, 6), dt)))
    return steps


def _check_workload():
    from dynconv_np import GradcheckError, gradcheck
    from dynconv_np.checks import all_cases

    steps = []
    for c in all_cases():
        t = time.perf_counter()
        try:
            gradcheck(c.f, c.args, c.kwargs, mode=c.mode, atol=c.atol, rtol=c.rtol)
        except GradcheckError:
            pass
        steps.append((c.label, time.perf_counter() - t))
    return steps


def _pytest_workload(args):
    import pytest

    t = time.perf_counter()
    rc = pytest.main(["-q", "-p", "no:cacheprovider", *args])
    return [(f"pytest {' '.join(args) or '(all)'} -> exit {int(rc)}", time.perf_counter() - t)]


def _dispatchers():
    """``{"module.name": dispatcher}`` of every Numba CPU dispatcher in a dynconv_np module."""
    from numba.core.registry import CPUDispatcher

    found = {}
    for mod_name, mod in sorted(sys.modules.items()):
        if not mod_name.startswith("dynconv_np") or mod is None:
            continue
        for attr, v in sorted(vars(mod).items()):
            if isinstance(v, CPUDispatcher) and v.py_func.__module__ == mod_name:
                found.setdefault(f"{mod_name.removeprefix('dynconv_np.')}.{attr}", v)
    return found


def _child(workload: str, args: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    import dynconv_np  # noqa: F401

    t_import = time.perf_counter() - t0
    steps = {"ops": _ops_workload, "check": _check_workload}.get(workload, lambda: _pytest_workload(args))()
    kernels = []
    for name, d in _dispatchers().items():
        if d.targetoptions.get("inline") == "always" or not d.signatures:
            continue
        sigs = []
        for sig in d.signatures:
            md = d.get_metadata(sig) or {}
            sigs.append((str(sig), md.get("timers", {}).get("compiler_lock", 0.0)))
        kernels.append(dict(name=name, sigs=sigs, hits=sum(d.stats.cache_hits.values()),
                            misses=sum(d.stats.cache_misses.values())))
    json.dump(dict(import_s=t_import, steps=steps, kernels=kernels, total_s=time.perf_counter() - t0), sys.stdout)


# ----------------------------------------------------------------------------- in the parent
def _run(workload: str, args: list[str], cache: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, __file__, "--child", workload, "--", *args], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out[out.index('{"import_s"'):])


def _report(title: str, res: dict, top: int) -> None:
    print(f"\n== {title}: {res['total_s']:.1f} s in all (import {res['import_s']:.2f} s)")
    steps = sorted(res["steps"], key=lambda s: -s[1])
    shown = steps if top <= 0 else steps[:top]
    print(f"-- slowest steps{'' if top <= 0 else f' (top {top} of {len(steps)})'}:")
    for label, s in shown:
        print(f"  {s:8.2f} s  {label}")
    print("-- kernels: signatures, compile seconds each (cache hits / misses)")
    total = 0.0
    for k in sorted(res["kernels"], key=lambda k: -sum(t for _, t in k["sigs"])):
        times = [t for _, t in k["sigs"]]
        total += sum(times)
        print(f"  {k['name']:<40} {len(times)} sig  {' + '.join(f'{t:.1f}' for t in times):<24} "
              f"({k['hits']} / {k['misses']})")
    n = sum(len(k["sigs"]) for k in res["kernels"])
    print(f"  {'total':<40} {n} sig  {total:.1f} s compiling")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workload", nargs="?", default="ops", choices=("ops", "check", "pytest"))
    p.add_argument("--warm", action="store_true", help="run again on the same cache (kernels load from it)")
    p.add_argument("--top", type=int, default=15, help="slowest steps shown (0: all)")
    p.add_argument("--signatures", action="store_true", help="print every signature")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("rest", nargs="*", help="after --: pytest arguments")
    a = p.parse_args(argv)
    if a.child:
        _child(a.child, a.rest)
        return 0
    with tempfile.TemporaryDirectory(prefix="nbcache-") as cache:
        res = _run(a.workload, a.rest, cache)
        _report(f"{a.workload}, empty cache", res, a.top)
        if a.signatures:
            for k in res["kernels"]:
                for sig, t in k["sigs"]:
                    print(f"  {k['name']}: {t:.2f} s  {sig}")
        if a.warm:
            _report(f"{a.workload}, warm cache", _run(a.workload, a.rest, cache), a.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
