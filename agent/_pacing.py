"""A job's step statuses, paced.

An update moves through its steps (downloading, its progress, verifying, installing,
activated) in well under a second when the bundle comes by broadcast or from disk. Each
status is a message the broker carries and a row the controller writes, for a state
that is gone by the time anyone reads it. ``StatusPacer`` sends a job's first status
and every end (healthy, failed, rolled back) at once; a step that comes less than
``interval_s`` after the last status sent waits, and is sent when that time is up
unless a newer status took its place. So a step that takes long is seen within
``interval_s``, and a quick one costs nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["StatusPacer"]


class StatusPacer:
    """Sends job statuses through ``publish(job, payload)``, steps at most one per
    ``interval_s`` per job (0: every status at once)."""

    def __init__(self, publish: Callable[[str, bytes], None], interval_s: float) -> None:
        self._publish = publish
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._sent_at: dict[str, float] = {}
        self._waiting: dict[str, bytes] = {}
        self._timers: dict[str, threading.Timer] = {}

    def send(self, job: str, payload: bytes, *, final: bool) -> None:
        """Send ``payload`` now (a job's first status, a ``final`` one, or one due), or
        hold it as the job's latest step until its time comes."""
        with self._lock:
            now = time.monotonic()
            since = now - self._sent_at.get(job, -1e9)
            if final or self.interval_s <= 0 or since >= self.interval_s:
                self._waiting.pop(job, None)
                if final:
                    self._sent_at.pop(job, None)
                else:
                    self._sent_at[job] = now
                self._publish(job, payload)
                return
            self._waiting[job] = payload
            if job not in self._timers:
                timer = threading.Timer(self.interval_s - since, self._due, args=(job,))
                timer.daemon = True
                self._timers[job] = timer
                timer.start()

    def _due(self, job: str) -> None:
        with self._lock:
            self._timers.pop(job, None)
            payload = self._waiting.pop(job, None)
            if payload is None:  # a newer status went out meanwhile
                return
            self._sent_at[job] = time.monotonic()
            self._publish(job, payload)

    def close(self) -> None:
        """Send what waits now (the agent stops)."""
        with self._lock:
            timers, self._timers = self._timers, {}
            waiting, self._waiting = self._waiting, {}
            for timer in timers.values():
                timer.cancel()
            for job, payload in waiting.items():
                self._publish(job, payload)
