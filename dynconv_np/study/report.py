"""The study's Markdown table and JSON record."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from .run import Settings

__all__ = ["table", "write_report"]


def _mean_sd(values: list[float]) -> str:
    a = 100 * np.asarray(values, dtype=np.float64)
    sd = f" ± {a.std(ddof=1):.1f}" if a.size > 1 else ""
    return f"{a.mean():.1f}{sd}"


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown table: one row per variant."""
    rows = ["| layer | parameters | multiply-adds / image | test accuracy (%) | seconds / epoch "
            "| CPU seconds / epoch |", "|---|---:|---:|---:|---:|---:|"]
    for v in results:
        runs = v["runs"]
        acc = _mean_sd([r["test_accuracy"] for r in runs])
        sec = float(np.median([r["seconds_per_epoch"] for r in runs]))
        cpu = float(np.median([r["cpu_seconds_per_epoch"] for r in runs]))
        macs = "?" if runs[0]["mult_adds"] is None else f"{runs[0]['mult_adds']:,}"
        rows.append(f"| {v['label']} | {runs[0]['params']:,} | {macs} | {acc} | {sec:.2f} "
                    f"| {cpu:.2f} |")
    return "\n".join(rows)


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    return o


def write_report(out: Path, results: list[dict[str, Any]], settings: Settings, figures: list[str],
                 seconds: float) -> Path:
    """Write ``results.md`` (the table, the settings, the figures) and ``results.json``; return the .md path."""
    n = settings.seeds
    lines = [
        "# Digits study",
        "",
        f"scikit-learn's digits at 16x16, {settings.epochs} epochs, {n} seed{'s' * (n != 1)} "
        f"(mean ± sd over seeds), batch {settings.batch_size}, Adam lr {settings.lr:g} (warm-up, cosine)"
        + (f", first {settings.limit} training images" if settings.limit else "") + ".",
        "",
        table(results),
        "",
        "Multiply-adds as `dynconv_np.nn.summary` counts them (? for a layer that does not "
        "report its count). Seconds per epoch: the median "
        "wall time of an epoch's training on this machine; CPU seconds: the process's CPU time "
        "for it (all its threads), which other load on a shared machine disturbs less.",
        "",
        *[f"![{Path(f).stem}]({f})" for f in figures],
        "",
        f"Total time: {seconds:.0f} s.",
        "",
    ]
    md = out / "results.md"
    md.write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(
        {"settings": dataclasses.asdict(settings), "variants": _jsonable(results)}, indent=1))
    return md
