"""A job's step statuses, paced.

An update moves through its steps (downloading, its progress, verifying, installing,
activated) in well under a second when the bundle comes by broadcast or from disk. Each
status is a message the broker carries and a row the controller writes, for a state
that is gone by the time anyone reads it. ``StatusPacer`` sends every end (healthy,
failed, rolled back) at once; a step waits until ``interval_s`` after the job's start or
its last status sent, and goes then unless a newer status took its place. So a step
that takes long is seen within ``interval_s``, and a quick job costs one message: its
end. A controller sending a big wave asks for a longer pace in the desired state
(``DesiredState.status_interval_s``): a thousand devices each a second apart would
otherwise be a thousand statuses a second, for progress nobody reads device by device.

A status is made when it is sent (``Lazy``), so a step that a newer one replaces
before its time costs nothing but the closure: no message encoded, no birth read.

The waits are kept by one thread for the whole process (``_Deadlines``), not one timer
thread per waiting status: a host running thousands of agents (a simulated fleet)
would otherwise start a thread for every job at once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Lazy", "StatusPacer"]

P = TypeVar("P")

log = logging.getLogger(__name__)


class _Deadlines:
    """Calls functions at their time, on one daemon thread started on first use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._order), fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="status-pacer",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap
                                    else None)
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # one agent's publish must not end every agent's pacing
                log.exception("a paced status failed")


_DEADLINES = _Deadlines()


class Lazy:
    """Bytes made by ``make`` the first time they are asked for, then kept."""

    __slots__ = ("_make", "_made")

    def __init__(self, make: Callable[[], bytes]) -> None:
        self._make = make
        self._made: bytes | None = None

    def __call__(self) -> bytes:
        if self._made is None:
            self._made = self._make()
        return self._made


class StatusPacer(Generic[P]):
    """Sends job statuses through ``publish(job, payload)``: ends at once, steps at most
    one per ``interval_s`` per job, counting from its first (0: every status at once).

    A job may be paced more slowly than ``interval_s`` (``send``'s ``at_least_s``: what
    the controller asked for a big wave), never faster."""

    def __init__(self, publish: Callable[[str, P], None], interval_s: float) -> None:
        self._publish = publish
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._sent_at: dict[str, float] = {}  # the job's start, then its last status sent
        self._waiting: dict[str, P] = {}
        self._due_at: dict[str, float] = {}  # jobs whose held step has a deadline set

    def send(self, job: str, payload: P, *, final: bool, at_least_s: float = 0.0) -> None:
        """Send ``payload`` now (a ``final`` one, or a step whose time has come), or hold
        it as the job's latest step until then (``interval_s``, or ``at_least_s`` when
        that is longer)."""
        interval = max(self.interval_s, at_least_s)
        with self._lock:
            now = time.monotonic()
            if final or interval <= 0:
                self._waiting.pop(job, None)
                self._sent_at.pop(job, None)
                self._publish(job, payload)
                return
            since = now - self._sent_at.setdefault(job, now)
            if since >= interval:
                self._waiting.pop(job, None)
                self._sent_at[job] = now
                self._publish(job, payload)
                return
            self._waiting[job] = payload
            if job not in self._due_at:
                when = self._due_at[job] = now + interval - since
                _DEADLINES.call_at(when, lambda: self._due(job))

    def _due(self, job: str) -> None:
        with self._lock:
            self._due_at.pop(job, None)
            payload = self._waiting.pop(job, None)
            if payload is None:  # a newer status went out meanwhile
                return
            self._sent_at[job] = time.monotonic()
            self._publish(job, payload)

    def close(self) -> None:
        """Send what waits now (the agent stops); a deadline still set finds nothing."""
        with self._lock:
            waiting, self._waiting = self._waiting, {}
            for job, payload in waiting.items():
                self._publish(job, payload)
