"""Command line: ``python -m dynconv_np check`` runs every built-in gradient check."""

from __future__ import annotations

import argparse
import sys
import time


def _bar(i: int, n: int, label: str, width: int = 30) -> None:
    done = int(width * i / max(n, 1))
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{n} {label[:40]:<40}")
    sys.stderr.flush()


def check(argv: list[str] | None = None) -> int:
    """Run the gradient checks; print a table; return the exit status."""
    p = argparse.ArgumentParser(prog="python -m dynconv_np check",
                                description="Finite-difference gradient checks (float64) of every op and layer.")
    p.add_argument("-k", "--filter", default="", help="run only cases whose label contains this text")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)

    from . import GradcheckError, gradcheck
    from .checks import all_cases

    cases = [c for c in all_cases() if a.filter in c.label]
    rows, failed = [], 0
    t0 = time.perf_counter()
    for i, c in enumerate(cases):
        if not a.no_progress:
            _bar(i, len(cases), c.label)
        try:
            rep = gradcheck(c.f, c.args, c.kwargs, mode=c.mode, atol=c.atol, rtol=c.rtol)
        except GradcheckError as e:
            rep = e.report
        except Exception as e:  # a crash is a failure of that case, not of the run
            rows.append((c.label, "-", float("nan"), float("nan"), f"ERROR {type(e).__name__}: {e}"))
            failed += 1
            continue
        for r in rep.args:
            rows.append((c.label, r.name, r.max_abs_err, r.max_rel_err, "pass" if r.passed else "FAIL"))
            failed += not r.passed
    if not a.no_progress:
        _bar(len(cases), len(cases), "done")
        sys.stderr.write("\n")
    w = max([len(r[0]) for r in rows] + [2])
    print(f"{'op':<{w}}  {'argument':<10} {'max abs err':>12} {'max rel err':>12}  result")
    for label, arg, ea, er, res in rows:
        print(f"{label:<{w}}  {arg:<10} {ea:12.3e} {er:12.3e}  {res}")
    print(f"{len(rows) - failed} passed, {failed} failed  ({len(cases)} cases, "
          f"{time.perf_counter() - t0:.1f} s)")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m dynconv_np check [-k TEXT] [--no-progress]")
        return 0 if argv else 2
    if argv[0] == "check":
        return check(argv[1:])
    print(f"unknown command {argv[0]!r}; try: python -m dynconv_np check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
