"""Logging a failure that repeats without filling the disk that is already full."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["Repeating"]


class Repeating:
    """One failing activity (the agent loop, the telemetry writer): its first failure is
    logged with its traceback, later ones as one line per ``every_s`` saying how many
    there were, and the recovery once. A disk that is full, or a store that is read-only,
    fails every few hundred milliseconds; a traceback each time was ~2 KB/s of log.
    """

    def __init__(self, logger: logging.Logger, what: str, *, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log, self._what, self._every = logger, what, every_s
        self._clock = clock
        self._count = 0
        self._since_line = 0
        self._line_at = 0.0

    def failed(self, exc: BaseException) -> None:
        self._count += 1
        self._since_line += 1
        now = self._clock()
        if self._count == 1:
            self._log.error("%s failed: %s", self._what, exc, exc_info=exc)
            self._line_at, self._since_line = now, 0
        elif now - self._line_at >= self._every:
            self._log.error("%s still failing: %d more times since the last line: %s",
                            self._what, self._since_line, exc)
            self._line_at, self._since_line = now, 0

    def ok(self) -> None:
        if self._count:
            self._log.warning("%s works again after %d failures", self._what, self._count)
            self._count = self._since_line = 0
