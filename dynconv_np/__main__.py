"""Command line: ``python -m dynconv_np COMMAND``.

A command is a function ``f(argv: list[str]) -> int`` (the exit status) registered with
``@command(name, one_line_help)``; the top-level ``--help`` lists every registered one.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

PROG = "python -m dynconv_np"

#: name -> (one-line help, function); filled by :func:`command`, listed by ``--help``.
COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {}


def command(name: str, help: str) -> Callable:
    """Register ``f(argv) -> exit status`` as ``python -m dynconv_np NAME``."""

    def register(f: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        COMMANDS[name] = (help, f)
        return f

    return register


def _bar(i: int, n: int, label: str, width: int = 30) -> None:
    done = int(width * i / max(n, 1))
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{n} {label[:40]:<40}")
    sys.stderr.flush()


@command("check", "finite-difference gradient checks (float64) of every op and layer, built-in shapes")
def check(argv: list[str]) -> int:
    """Run the built-in gradient checks; print a table; return the exit status."""
    p = argparse.ArgumentParser(
        prog=f"{PROG} check",
        description="Finite-difference gradient checks (float64) of every op and layer on built-in shapes "
                    "(dynconv_np/checks/). Exit status 0 when every case passes, 1 when one fails, "
                    "2 when no case matches -k.")
    p.add_argument("-k", "--filter", default="", metavar="TEXT",
                   help="run only the cases whose label contains TEXT (case-insensitive)")
    p.add_argument("--list", action="store_true", help="list the case labels (after -k) and exit")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none when stderr is not a terminal)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="Numba threads for the kernels (default 1: the cases are tiny, and waking a thread pool "
                        "for each of their thousands of calls costs more than it gains; results are the same "
                        "for every N)")
    a = p.parse_args(argv)
    progress = not a.no_progress and sys.stderr.isatty()

    from .checks import all_cases

    every = all_cases()
    cases = [c for c in every if a.filter.lower() in c.label.lower()]
    if not cases:
        print(f"no case label contains {a.filter!r} (of {len(every)}; `{PROG} check --list` lists them)",
              file=sys.stderr)
        return 2
    if a.list:
        print("\n".join(c.label for c in cases))
        return 0

    from .backends import _cache
    from .threads import get_num_threads, set_num_threads

    outer = get_num_threads()
    try:
        set_num_threads(a.threads)
    except ValueError as e:
        p.error(f"--threads: {e}")
    if _cache.cache_is_cold():
        print(f"compiling kernels (first run only; cached in {_cache.kernel_cache_dir()})", file=sys.stderr,
              flush=True)
    try:
        return _run_cases(cases, progress)
    finally:
        set_num_threads(outer)


def _run_cases(cases: list, progress: bool) -> int:
    from . import GradcheckError, gradcheck
    from .gradcheck import _table

    rows, case_failed, arg_counts, kinks = [], 0, [0, 0], 0
    t0 = time.perf_counter()
    for i, c in enumerate(cases):
        if progress:
            _bar(i, len(cases), c.label)
        tol = (f"{c.atol:.0e}", f"{c.rtol:.0e}")
        try:
            rep = gradcheck(c.f, c.args, c.kwargs, mode=c.mode, atol=c.atol, rtol=c.rtol)
        except GradcheckError as e:
            rep = e.report
        except Exception as e:  # a crash is a failure of that case, not of the run
            rows.append((c.label, "-", c.mode, "-", "-", *tol, f"ERROR {type(e).__name__}: {e}"))
            case_failed += 1
            continue
        for r in rep.args:
            rows.append((c.label, r.name, r.mode, f"{r.max_abs_err:.3e}", f"{r.max_rel_err:.3e}", *tol, r.verdict))
            arg_counts[not r.passed] += 1
            kinks += r.verdict == "kink?"
        case_failed += not rep.passed
    if progress:
        _bar(len(cases), len(cases), "done")
        sys.stderr.write("\n")
    print(_table(("case", "argument", "mode", "max abs err", "max rel err", "atol", "rtol", "result"), rows, left=3))
    kink = f" ({kinks} of them kink?)" if kinks else ""
    passed = len(cases) - case_failed
    print(f"{passed} case{'s' * (passed != 1)} passed, {case_failed} failed "
          f"({arg_counts[0] + arg_counts[1]} arguments: {arg_counts[0]} passed{kink}, {arg_counts[1]} failed; "
          f"{time.perf_counter() - t0:.1f} s)")
    return 1 if case_failed else 0


@command("study", "train one small CNN on the digits with every layer; table and plots (needs [study])")
def study(argv: list[str]) -> int:
    """The digits study (:mod:`dynconv_np.study`); return the exit status."""
    from .study.cli import main as study_main

    return study_main(argv)


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    width = max(len(n) for n in COMMANDS)
    listing = "\n".join(f"  {n:<{width}}  {h}" for n, (h, _) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="dynconv_np: a framework-free reference engine for dynamic convolutions.",
        epilog=f"commands:\n{listing}\n\n`{PROG} COMMAND --help` describes a command.")
    p.add_argument("--version", action="version", version=f"dynconv_np {__version__}")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="a command from the list below")
    return p


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to its command; return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][1](argv[1:])
    p = _parser()
    if not argv:
        p.print_help(sys.stderr)
        return 2
    try:
        p.parse_args(argv)  # --help, --version, or an error naming the commands
    except SystemExit as e:
        return int(e.code or 0)
    return 2


if __name__ == "__main__":
    sys.exit(main())
