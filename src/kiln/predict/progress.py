"""Progress of a `kiln predict` job: a bar with rows/s and time left on a terminal, a plain line
every few seconds otherwise (a log file or CI gets a readable record, not carriage returns)."""

from __future__ import annotations

import sys
import time
from typing import IO, Any


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """How far a job is through its input (``total`` in ``unit``: bytes or rows) and how fast
    it scores rows. ``bar``: None picks a bar when ``stream`` is a terminal."""

    def __init__(self, total: int, unit: str, bar: bool | None = None, *,
                 stream: IO[str] | None = None, every_s: float = 10.0, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.total, self.unit, self.every_s, self.enabled = total, unit, every_s, enabled
        self.start = self.last_line = time.monotonic()
        self.rows = self.position = 0
        self.first_position = -1  # where scoring began (a resumed job skips finished parts)
        self.bar: Any = None
        if enabled and (bar if bar is not None else self.stream.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, unit_scale=True, file=self.stream,
                            dynamic_ncols=True, desc="kiln predict")

    def update(self, rows: int, position: int, scored: bool = True) -> None:
        """``rows`` more rows scored (``scored``) or skipped as done; the read is at ``position``."""
        if scored and self.first_position < 0:
            self.first_position, self.start = self.position, time.monotonic()
        if scored:
            self.rows += rows
        if self.bar is not None:
            self.bar.update(position - self.position)
            self.bar.set_postfix_str(f"{self.rows:,} rows, {self.rows_per_s:,.0f} rows/s")
        self.position = position
        now = time.monotonic()
        if self.enabled and self.bar is None and now - self.last_line >= self.every_s:
            self.last_line = now
            print(self.line(), file=self.stream, flush=True)

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(time.monotonic() - self.start, 1e-9)

    def line(self) -> str:
        """The plain progress line: rows, share done, rows/s and time left."""
        done = self.position / self.total if self.total else 1.0
        speed = (self.position - max(self.first_position, 0)) / max(time.monotonic() - self.start,
                                                                    1e-9)
        left = f", about {_duration((self.total - self.position) / speed)} left" if speed else ""
        return (f"kiln predict: {self.rows:,} rows scored ({done:.0%} of the input), "
                f"{self.rows_per_s:,.0f} rows/s{left}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
