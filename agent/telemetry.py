"""The agent's telemetry buffer: every inference recorded, per-window summaries kept until acked.

SQLite in WAL mode. The inference path only puts a tuple on a bounded queue
(``record``); a writer thread commits batches. When the queue is full the record is
dropped and counted, never waited for. Summaries get a per-device sequence number and
stay until the controller acknowledges them, so a device offline for hours replays
them in order when it comes back.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.contract import Summary

__all__ = ["TelemetryBuffer", "summarize"]

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inferences (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, model TEXT NOT NULL,
    version INTEGER NOT NULL, latency_ms REAL NOT NULL, ok INTEGER NOT NULL, top TEXT);
CREATE INDEX IF NOT EXISTS inferences_ts ON inferences(ts);
CREATE TABLE IF NOT EXISTS summaries (
    seq INTEGER PRIMARY KEY, window_end REAL NOT NULL, payload TEXT NOT NULL,
    sent_at REAL, acked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS summaries_unacked ON summaries(acked, seq);
"""

Record = tuple[float, str, int, float, int, str | None]


def summarize(rows: list[tuple[str, int, float, int, str | None]], *, seq: int, start: float,
              end: float, system: dict[str, float],
              shadow: dict[str, Any] | None = None) -> Summary:
    """Build one window's summary from its ``(model, version, latency_ms, ok, top)`` rows."""
    latencies = np.array([r[2] for r in rows], dtype=np.float64)
    errors = sum(1 for r in rows if not r[3])
    preds = Counter(r[4] for r in rows if r[3] and r[4] is not None)
    models = Counter((r[0], r[1]) for r in rows)
    (model, version), _ = models.most_common(1)[0] if models else (("", 0), 0)
    pct = {}
    if latencies.size:
        for q in (50, 95, 99):
            pct[f"p{q}"] = round(float(np.percentile(latencies, q)), 4)
        pct["max"] = round(float(latencies.max()), 4)
    return Summary(seq=seq, window_start=start, window_end=end, count=len(rows), errors=errors,
                   model=model, version=version, latency_ms=pct,
                   predictions={str(k): v for k, v in sorted(preds.items())}, system=system,
                   shadow=shadow or {})


class TelemetryBuffer:
    """Bounded, crash-safe store of inference records and summaries.

    Args:
        path: the SQLite file.
        window_s: summary window length.
        queue_max: bound of the in-memory queue between inference and the writer.
        max_raw_rows: raw records kept; the oldest are evicted (and counted) beyond it.
        system_metrics: called when a window closes, returns CPU/RAM figures.
        shadow_stats: called when a window closes, returns (and resets) shadow figures.
    """

    def __init__(self, path: Path, *, window_s: float = 60.0, queue_max: int = 10_000,
                 max_raw_rows: int = 200_000,
                 system_metrics: Callable[[], dict[str, float]] | None = None,
                 shadow_stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.path = path
        self.window_s = window_s
        self.max_raw_rows = max_raw_rows
        self._system = system_metrics or (lambda: {})
        self._shadow_stats = shadow_stats or (lambda: {})
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=queue_max)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.evicted = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        self._raw_rows = self._db.execute("SELECT COUNT(*) FROM inferences").fetchone()[0]
        start = self._get("window_start")
        self._window_start: float | None = float(start) if start else None

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(stmt)
                current = self._get("schema_version")
                if current is None:
                    self._set("schema_version", str(SCHEMA_VERSION))
                    self._set("next_seq", "1")
                elif int(current) > SCHEMA_VERSION:
                    raise RuntimeError(f"{self.path}: schema {current} is newer than this agent")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- inference path ---------------------------------------------------------------
    def record(self, ts: float, model: str, version: int, latency_ms: float, ok: bool,
               top: str | None) -> bool:
        """Queue one inference record; ``False`` (and counted) if the queue is full."""
        try:
            self._queue.put_nowait((ts, model, version, latency_ms, int(ok), top))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    # -- writer -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._writer, name="telemetry-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._write_batch(self._drain(10**9))
        with self._lock:
            self._db.close()

    def _drain(self, limit: int) -> list[Record]:
        batch: list[Record] = []
        while len(batch) < limit:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _writer(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._write_batch([first, *self._drain(5000)])
            except sqlite3.Error:
                log.exception("telemetry write failed; batch dropped")

    def _write_batch(self, batch: list[Record]) -> None:
        if not batch:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO inferences(ts, model, version, latency_ms, ok, top) "
                "VALUES (?,?,?,?,?,?)", batch)
            self._raw_rows += len(batch)
            excess = self._raw_rows - self.max_raw_rows
            if excess > 0:
                self._db.execute("DELETE FROM inferences WHERE id IN "
                                 "(SELECT id FROM inferences ORDER BY id LIMIT ?)", (excess,))
                self._raw_rows -= excess
                self.evicted += excess
            self._db.execute("COMMIT")
            for _ in batch:
                self._queue.task_done()

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Wait (bounded) until queued records are committed; ``False`` on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            if self._thread is None or not self._thread.is_alive():
                self._write_batch(self._drain(10**9))
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    # -- windows and summaries --------------------------------------------------------
    def close_windows(self, now: float) -> list[int]:
        """Summarize every window that ended at or before ``now``; returns new seqs."""
        w = self.window_s
        if self._window_start is not None and now < self._window_start + w:
            return []
        self.flush()
        new: list[int] = []
        with self._lock:
            start = self._window_start if self._window_start is not None else (
                math.floor(now / w) * w)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                while start + w <= now:
                    rows = self._db.execute(
                        "SELECT model, version, latency_ms, ok, top FROM inferences "
                        "WHERE ts >= ? AND ts < ? ORDER BY id", (start, start + w)).fetchall()
                    if rows:
                        seq = int(self._get("next_seq") or 1)
                        last = start + 2 * w > now  # the newest window gets the shadow figures
                        summary = summarize(rows, seq=seq, start=start, end=start + w,
                                            system=self._system(),
                                            shadow=self._shadow_stats() if last else None)
                        self._db.execute(
                            "INSERT INTO summaries(seq, window_end, payload) VALUES (?,?,?)",
                            (seq, start + w, json.dumps(summary.to_dict())))
                        self._set("next_seq", str(seq + 1))
                        new.append(seq)
                        start += w
                    else:
                        nxt = self._db.execute("SELECT MIN(ts) FROM inferences WHERE ts >= ?",
                                               (start + w,)).fetchone()[0]
                        target = nxt if nxt is not None and nxt < now else now
                        start = max(start + w, math.floor(target / w) * w)
                self._set("window_start", repr(start))
                self._db.execute("COMMIT")
                self._window_start = start
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return new

    def pending(self, now: float, *, resend_after_s: float, limit: int) -> list[Summary]:
        """Unacked summaries, oldest first, not sent within ``resend_after_s``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT payload FROM summaries WHERE acked = 0 AND "
                "(sent_at IS NULL OR sent_at <= ?) ORDER BY seq LIMIT ?",
                (now - resend_after_s, limit)).fetchall()
        return [Summary(**json.loads(r[0])) for r in rows]

    def mark_sent(self, seqs: list[int], now: float) -> None:
        with self._lock:
            self._db.executemany("UPDATE summaries SET sent_at = ? WHERE seq = ?",
                                 [(now, s) for s in seqs])

    def reset_sent(self) -> None:
        """After a reconnect: everything unacked is due again."""
        with self._lock:
            self._db.execute("UPDATE summaries SET sent_at = NULL WHERE acked = 0")

    def ack(self, seqs: list[int], *, keep_acked: int = 1000) -> int:
        """Mark summaries as stored by the controller; returns how many were newly acked.

        Only the newest ``keep_acked`` acknowledged summaries are kept (for ``status``).
        """
        with self._lock:
            cur = self._db.executemany("UPDATE summaries SET acked = 1 WHERE seq = ? AND acked = 0",
                                       [(s,) for s in seqs])
            newly = cur.rowcount
            self._db.execute("DELETE FROM summaries WHERE acked = 1 AND seq <= "
                             "(SELECT MAX(seq) FROM summaries) - ?", (keep_acked,))
            return newly

    def stats(self) -> dict[str, Any]:
        with self._lock:
            unacked, last_seq = self._db.execute(
                "SELECT COALESCE(SUM(acked = 0), 0), COALESCE(MAX(seq), 0) FROM summaries"
            ).fetchone()
            total = max(last_seq, int(self._get("next_seq") or 1) - 1)
            oldest = self._db.execute(
                "SELECT MIN(window_end) FROM summaries WHERE acked = 0").fetchone()[0]
        return {"raw_rows": self._raw_rows, "summaries": total, "summaries_unacked": unacked,
                "summaries_acked": total - unacked, "oldest_unacked_window_end": oldest,
                "dropped": self.dropped, "evicted": self.evicted,
                "queued": self._queue.qsize()}
