"""A small tqdm-style progress bar on stderr (no dependency): drawn on a terminal, silent otherwise.

::

    with Progress(len(batches), "epoch 1/10") as bar:
        for xb, yb in batches:
            ...
            bar.update(loss=f"{loss:.3f}")

draws ``epoch 1/10  45%|#########           | 10/22 [00:02<00:02, 4.6it/s, loss=0.512]``,
redrawn in place at most every `min_interval` seconds. ``enabled=None`` (the default)
draws only when the stream is a terminal, so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "format_seconds"]


def format_seconds(s: float) -> str:
    """``mm:ss`` (``h:mm:ss`` from one hour)."""
    s = int(max(s, 0))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
    """A progress bar over `total` steps.

    Parameters
    ----------
    total : int
    desc : str
        Shown before the bar.
    enabled : bool, optional
        Draw the bar; default: only when `stream` is a terminal.
    stream : text stream, optional
        Default ``sys.stderr``.
    width : int
        Bar width in characters.
    min_interval : float
        Seconds between redraws (the last step is always drawn).
    """

    def __init__(self, total: int, desc: str = "", enabled: bool | None = None, stream: TextIO | None = None,
                 width: int = 20, min_interval: float = 0.1):
        self.total = max(int(total), 0)
        self.desc = desc
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) if enabled is None else bool(enabled)
        self.width = width
        self.min_interval = min_interval
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.start = time.perf_counter()
        self._drawn = -1.0

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance `n` steps; `postfix` entries (``loss=0.5``) are shown after the rate."""
        self.n += n
        self.postfix.update(postfix)
        self._draw(force=self.n >= self.total)

    def line(self) -> str:
        """The bar as text."""
        elapsed = time.perf_counter() - self.start
        frac = self.n / self.total if self.total else 1.0
        done = int(self.width * min(frac, 1.0))
        rate = self.n / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.n) / rate if rate > 0 else 0.0
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        head = f"{self.desc} " if self.desc else ""
        return (f"{head}{100 * frac:3.0f}%|{'#' * done}{' ' * (self.width - done)}| {self.n}/{self.total} "
                f"[{format_seconds(elapsed)}<{format_seconds(left)}, {rate:.1f}it/s{extra}]")

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._drawn < self.min_interval:
            return
        self._drawn = now
        self.stream.write("\r" + self.line())
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
