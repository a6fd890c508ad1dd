"""The study's figures (matplotlib, written as PNG without a display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_figures"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_over_seeds(runs: list[dict], get) -> np.ndarray:
    return np.mean([get(r) for r in runs], axis=0)


def _layer_name(key: str) -> str:
    layer, name = key.split(":")
    return f"layer {layer} {name}"


def curves(plt, results: list[dict[str, Any]], path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for v in results:
        runs = v["runs"]
        epochs = np.arange(1, len(runs[0]["history"]) + 1)
        ax1.plot(epochs, _mean_over_seeds(runs, lambda r: [h["loss"] for h in r["history"]]), label=v["label"])
        ax2.plot(epochs, 100 * _mean_over_seeds(runs, lambda r: [h["test_accuracy"] for h in r["history"]]),
                 label=v["label"])
    ax1.set(xlabel="epoch", ylabel="training loss", title="training loss (mean over seeds)")
    ax2.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy (mean over seeds)")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def entropy(plt, results: list[dict[str, Any]], path: Path) -> bool:
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for v in results:
        runs = v["runs"]
        for key in runs[0]["entropy"]:
            h = _mean_over_seeds(runs, lambda r, k=key: r["entropy"][k])
            ax.plot(np.arange(1, len(h) + 1), h, marker="o", ms=3, label=f"{v['label']}, {_layer_name(key)}")
            drawn = True
    if drawn:
        low = min(min(line.get_ydata()) for line in ax.get_lines())
        ax.set(xlabel="epoch", ylabel="entropy / log K", ylim=(max(0.0, low - 0.05), 1.005),
               title="attention entropy on the test set (1 = uniform, 0 = one expert)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def per_class(plt, results: list[dict[str, Any]], path: Path) -> bool:
    panels = [(v["label"], key, np.asarray(v["runs"][0]["per_class"][key]))
              for v in results for key in v["runs"][0]["per_class"]]
    panels = [(label, key, a) for label, key, a in panels if a.ndim == 2]
    if not panels:
        return False
    cols = 2
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8, 2.6 * rows), squeeze=False)
    for ax, (label, key, a) in zip(axes.flat, panels):
        im = ax.imshow(a, aspect="auto", cmap="viridis")
        ax.set(title=f"{label}\n{_layer_name(key)}", xlabel="expert", ylabel="digit",
               xticks=range(a.shape[1]), yticks=range(a.shape[0]))
        ax.title.set_fontsize(8)
        fig.colorbar(im, ax=ax, fraction=0.05)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("mean attention per class (test set, seed 0, last epoch)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_figures(out: Path, results: list[dict[str, Any]]) -> list[str]:
    """Write ``curves.png``, ``entropy.png`` and ``per_class.png`` (the last two when some
    variant has an attention); return the file names written."""
    plt = _pyplot()
    names = ["curves.png"]
    curves(plt, results, out / "curves.png")
    if entropy(plt, results, out / "entropy.png"):
        names.append("entropy.png")
    if per_class(plt, results, out / "per_class.png"):
        names.append("per_class.png")
    return names
