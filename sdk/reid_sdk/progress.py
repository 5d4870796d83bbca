"""A one-line progress bar for long embed calls (no dependency; tqdm is not needed).

Shown on stderr only when stderr is a terminal (or when asked for explicitly), redrawn at most
every ``min_interval`` seconds; the final state stays on its own line. Logs and pipes never see
it unless it is forced on.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def _format_seconds(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class ProgressBar:
    """``with ProgressBar(total, desc="embed", unit="clips") as bar: bar.update(n)``.

    enabled: True / False force it on / off; None shows it when ``stream`` is a terminal and
    ``total >= min_total``. Thread-safe ``update``.
    """

    def __init__(self, total: int, *, desc: str = "", unit: str = "it", enabled: bool | None = None,
                 stream: TextIO | None = None, min_total: int = 1, min_interval: float = 0.1,
                 width: int = 28):
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty()) and self.total >= min_total
        self.enabled = bool(enabled) and self.total > 0
        self.min_interval = min_interval
        self.width = width
        self.done = 0
        self._start = time.perf_counter()
        self._last_draw = -float("inf")
        self._drawn = -1  # `done` when the line was last drawn
        self._lock = threading.Lock()

    def render(self) -> str:
        """The bar's current line (without carriage return)."""
        elapsed = time.perf_counter() - self._start
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(round(fraction * self.width))
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        prefix = f"{self.desc}: " if self.desc else ""
        return (f"{prefix}{fraction:4.0%} |{'#' * filled}{'.' * (self.width - filled)}| "
                f"{self.done}/{self.total} {self.unit} [{_format_seconds(elapsed)}<"
                f"{_format_seconds(eta)}, {rate:.1f} {self.unit}/s]")

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if not self.enabled:
                return
            now = time.perf_counter()
            if now - self._last_draw >= self.min_interval or self.done >= self.total:
                self._last_draw, self._drawn = now, self.done
                self.stream.write("\r" + self.render())
                self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self.enabled and self._last_draw > -float("inf"):
                # The final state ends the line; redraw only if it was not shown yet.
                line = "" if self._drawn == self.done else "\r" + self.render()
                self.stream.write(line + "\n")
                self.stream.flush()
            self.enabled = False

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
