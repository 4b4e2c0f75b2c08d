"""Progress for long loops: a live line on a terminal, sparse log lines in grid logs."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("payload")


class Progress:
    def __init__(self, total: int, label: str, unit: str = "events", stream: TextIO | None = None,
                 log_every: float = 30.0):
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.log_every = log_every
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def _line(self) -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.label}: {self.done}/{self.total} {self.unit}{pct}, {self.rate():,.0f} {self.unit}/s"

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.live and now - self._last > 0.2:
            self.stream.write("\r" + self._line() + "\x1b[K")
            self.stream.flush()
            self._last = now
        elif not self.live and now - self._last > self.log_every:
            if self._last:
                log.info(self._line())
            self._last = now

    def finish(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        log.info(self._line() + f" in {time.perf_counter() - self.start:.1f} s")
