"""Webhook delivery: POST JSON alerts from a background thread, with retries and a bound.

``WebhookSender.send`` never blocks the caller: payloads go on a bounded queue (the
newest is dropped, counted and logged when it is full). A worker posts them one at a
time; a failed post (connection error, timeout, HTTP 429 or 5xx) is retried with
exponential backoff and jitter up to ``max_attempts``; other 4xx answers are not
retried. Counters: ``sent``, ``failed``, ``retried``, ``dropped``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from typing import Any

from edgefleet.contract.backoff import Backoff

__all__ = ["WebhookSender"]

log = logging.getLogger(__name__)


class WebhookSender:
    """Delivers JSON payloads to one URL.

    Args:
        url: where to POST (e.g. a Slack incoming webhook).
        queue_max: payloads waiting at most; beyond it new ones are dropped.
        max_attempts: tries per payload.
        backoff_s: first retry delay, doubled each time up to ``max_backoff_s``; each
            wait is within ±20% of it.
        timeout_s: per request.

    Raises:
        ValueError: not an http(s) URL, or a negative backoff.
    """

    def __init__(self, url: str, *, queue_max: int = 1000, max_attempts: int = 5,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 timeout_s: float = 5.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http(s)://, got {url!r}")
        self.url = url
        self.max_attempts = max(1, max_attempts)
        self._backoff = Backoff(backoff_s, max_backoff_s, jitter=(0.8, 1.2))
        self.timeout_s = timeout_s
        self.counters = {"sent": 0, "failed": 0, "retried": 0, "dropped": 0}
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_max)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the payload in hand (queued ones are not sent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def send(self, payload: dict[str, Any]) -> bool:
        """Queue a payload; False (counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(payload)
            return True
        except queue.Full:
            self.counters["dropped"] += 1
            log.warning("alert webhook queue full: dropped %s",
                        (payload.get("edgefleet") or {}).get("key"))
            return False

    def idle(self) -> bool:
        return self._queue.unfinished_tasks == 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                payload = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._deliver(payload)
            finally:
                self._queue.task_done()

    def _deliver(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, default=str).encode()
        self._backoff.reset()
        for attempt in range(1, self.max_attempts + 1):
            retry, why = self._post(body)
            if why is None:
                self.counters["sent"] += 1
                return
            if not retry or attempt == self.max_attempts or self._stop.is_set():
                break
            self.counters["retried"] += 1
            if self._stop.wait(next(self._backoff)):
                break
        self.counters["failed"] += 1
        log.warning("alert webhook gave up on %s: %s",
                    (payload.get("edgefleet") or {}).get("key"), why)

    def _post(self, body: bytes) -> tuple[bool, str | None]:
        """``(worth retrying, error or None)``."""
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
            return False, None
        except urllib.error.HTTPError as exc:
            return exc.code == 429 or exc.code >= 500, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return True, str(exc)
