"""``python -m dynconv_np study``: the digits study as a command."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

__all__ = ["main"]

PROG = "python -m dynconv_np study"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train the same small CNN on scikit-learn's handwritten digits (16x16, nothing is "
                    "downloaded) with a static convolution, its equal-parameter static mixture and each "
                    "dynamic layer, over several seeds; write a Markdown table, training curves and "
                    "routing plots to --out. Needs scikit-learn and matplotlib (pip install "
                    "'dynconv_np[study]').")
    p.add_argument("--out", default="study", metavar="DIR", help="output folder (default: ./study)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 seed, 3 epochs, 512 training images (under a minute)")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N-1 (default 3; --quick: 1)")
    p.add_argument("--epochs", type=int, metavar="E", help="epochs (default 6; --quick: 3)")
    p.add_argument("--limit", type=int, metavar="N", help="use the first N training images (default: all 1437)")
    p.add_argument("--batch-size", type=int, metavar="B", help="batch size (default 64)")
    p.add_argument("--lr", type=float, help="Adam's peak learning rate (default 0.005)")
    p.add_argument("--variants", metavar="A,B,...", help="only these variants (default: all available; see --list)")
    p.add_argument("--threads", type=int, metavar="N", help="engine threads (dynconv_np.set_num_threads)")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none when stderr is not a terminal)")
    return p


def main(argv: list[str]) -> int:
    """Run the study; return the exit status (2 for a usage error or a missing dependency)."""
    a = _parser().parse_args(argv)
    from .models import VARIANTS, available_variants

    if a.list:
        for v in VARIANTS:
            state = "" if v.available else f"  (not in this installation: needs nn.{v.requires})"
            print(f"{v.name:<14} {v.label}{state}")
        return 0
    variants = available_variants()
    if a.variants:
        names = [n.strip() for n in a.variants.split(",") if n.strip()]
        known = {v.name: v for v in variants}
        bad = [n for n in names if n not in known]
        if bad:
            print(f"unknown or unavailable variant(s) {', '.join(bad)}; available: {', '.join(known)}",
                  file=sys.stderr)
            return 2
        variants = [known[n] for n in names]
    from .data import missing_dependencies

    missing = missing_dependencies()
    if missing:
        print(f"the study needs {' and '.join(missing)}: pip install 'dynconv_np[study]' "
              f"(scikit-learn's digits ship with scikit-learn; nothing is downloaded)", file=sys.stderr)
        return 2

    from .. import set_num_threads
    from .data import load_digits16
    from .plots import write_figures
    from .report import table, write_report
    from .run import Settings, run_study

    base = Settings.quick() if a.quick else Settings()
    changes = {k: v for k, v in (("seeds", a.seeds), ("epochs", a.epochs), ("limit", a.limit),
                                 ("batch_size", a.batch_size), ("lr", a.lr)) if v is not None}
    settings = dataclasses.replace(base, **changes)
    for name in ("seeds", "epochs", "batch_size"):
        if getattr(settings, name) < 1:
            print(f"--{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    try:
        if a.threads is not None:
            set_num_threads(a.threads)
    except (TypeError, ValueError) as e:
        print(f"--threads: {e}", file=sys.stderr)
        return 2

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_digits16(limit=settings.limit)
    print(f"digits: {len(data.y_train)} training and {len(data.y_test)} test images at 16x16; "
          f"{len(variants)} variants x {settings.seeds} seeds x {settings.epochs} epochs", file=sys.stderr)
    results = run_study(settings, variants, data, progress=False if a.no_progress else None)
    figures = write_figures(out, results)
    md = write_report(out, results, settings, figures, time.perf_counter() - t0)
    print(table(results))
    print(f"\nwrote {md}, {out / 'results.json'} and {', '.join(str(out / f) for f in figures)}")
    return 0
