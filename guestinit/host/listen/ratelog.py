"""The listener's log: what was dropped, from where and why, rate-limited."""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable


class RateLimitedLog:
    """The last ``keep`` lines in memory; at most ``per_second`` of them reach the sink, the rest
    are counted and summarised in one line when the next second begins."""

    def __init__(self, per_second: int, sink: Callable[[str], None] | None, keep: int = 1000) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.per_second = per_second
        self.sink = sink
        self._window = 0.0
        self._used = 0
        self.suppressed = 0

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            if self.suppressed:
                self._out(f"{self.suppressed} more log lines suppressed in the last second")
                self.suppressed = 0
            self._window, self._used = now, 0
        if self._used >= self.per_second:
            self.suppressed += 1
            return
        self._used += 1
        self._out(line)

    def _out(self, line: str) -> None:
        self.lines.append(line)
        if self.sink is not None:
            with contextlib.suppress(Exception):
                self.sink(line)
