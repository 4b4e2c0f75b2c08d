"""Progress for long loops: a live line on a terminal, a log line every ``log_every`` seconds in grid
logs (where a carriage-return line would be thousands of lines).

Hand-written rather than tqdm or rich: off a terminal both either stay silent or write their
carriage-return frames into the file, where a grid log needs a plain line now and then through the
job's own logger (so it also lands in job.log, prefixed like every other line)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger("payload")


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """``update(n)`` as work is done; ``finish()`` logs the total, ``clear()`` only wipes the live line.
    ``detail`` adds text to each line (e.g. the batch number, the job's remaining time)."""

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "events",
        stream: TextIO | None = None,
        log_every: float = 30.0,
        detail: Callable[[Progress], str] | None = None,
    ):
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.log_every = log_every
        self.detail = detail
        self.done = 0
        self.start = time.perf_counter()
        self._last = self.start
        self._base, self._since = 0, self.start

    def restart_clock(self) -> None:
        """Measure the rate from here (after a first step that includes compiling, say)."""
        self._base, self._since = self.done, time.perf_counter()

    def rate(self) -> float:
        return (self.done - self._base) / max(time.perf_counter() - self._since, 1e-9)

    def remaining(self) -> float:
        """Seconds left at the rate so far."""
        return (self.total - self.done) / max(self.rate(), 1e-9)

    def line(self) -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {duration(self.remaining())}" if self.total and 0 < self.done < self.total else ""
        extra = f", {self.detail(self)}" if self.detail else ""
        return (
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit}{pct}, {self.rate():,.0f} {self.unit}/s{eta}{extra}"
        )

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.live and now - self._last > 0.2:
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()
            self._last = now
        elif not self.live and now - self._last > self.log_every:
            log.info(self.line())
            self._last = now

    def clear(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def finish(self) -> None:
        self.clear()
        log.info(
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit}, {self.rate():,.0f} {self.unit}/s "
            f"in {time.perf_counter() - self.start:.1f} s"
        )
