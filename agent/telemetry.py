"""The agent's telemetry buffer: every inference counted, summaries kept until acked, a byte cap.

Inference path: ``record`` appends one tuple to a bounded in-memory queue and
returns; when the queue is full the record is dropped and counted, never waited for.
(The queue is a ``deque`` behind a length check rather than a ``queue.Queue``: no lock
or condition on the inference path. Threads recording at the same instant can pass
the check together, so the bound is exceeded by at most their number.)

Writer (a thread, or ``flush`` from the agent loop): every ``flush_interval_s`` (or
sooner when the queue is half full) it takes a batch and, in one SQLite transaction,
stores the raw rows and the updated accumulators of the windows they fall in
(``windows`` table), so a ``kill -9`` loses at most the batch not yet committed. Drift
counts (``DriftWindow``) are kept in memory per window and lost on a crash.

Windows: ``close_windows`` turns every window that has ended into a summary with a
per-device sequence number, durably (``synchronous=FULL``) before it can be sent.
Summaries stay until the controller acknowledges them, so a device offline for hours
replays them in order when it comes back.

Cap: the store's bytes on disk (database, WAL and WAL index) stay under
``max_bytes``; see ``_retention`` for the budget and the eviction order, and
docs/telemetry.md for what a cap holds.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.contract import Summary

from ._logs import Repeating
from ._retention import Budget, Eviction, StoreState, plan_eviction, raw_row_bytes
from ._store import (
    SCHEMA_VERSION,
    decode_payload,
    disk_bytes,
    encode_payload,
    get_meta,
    open_or_start_over,
    set_meta,
)
from ._windows import DriftSpec, WindowStats, make_summary, summarize, window_start
from .drift import DriftWindow

__all__ = ["SCHEMA_VERSION", "TelemetryBuffer", "summarize"]

# how a closed window is committed: FULL, durable before it can be sent (a simulated
# fleet whose devices share one disk sets NORMAL, as it skips fsync altogether)
CLOSE_SYNC = "FULL"

log = logging.getLogger(__name__)
# (ts, model, version, latency_ms, error kind or None, top label, drift features, drift spec)
Record = tuple[float, str, int, float, str | None, str | None,
               list[np.ndarray | None] | None, DriftSpec | None]
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_CLOSE_GROUP = 4  # summaries per close transaction
_COUNTERS = ("evicted_raw", "evicted_summaries")


class TelemetryBuffer:
    """Bounded, crash-safe store of inference records and summaries.

    Args:
        path: the SQLite file.
        window_s: summary window length.
        queue_max: bound of the in-memory queue between inference and the writer.
        max_bytes: the store's cap on disk (database + WAL + WAL index).
        max_raw_rows: a row-count limit on raw records as well (0: only the byte cap).
        flush_interval_s: how often the writer commits what is queued.
        keep_acked: acknowledged summaries kept for inspection (evicted first).
        system_metrics: called when windows close, returns CPU/RAM/disk figures.
        shadow_stats: called when windows close, returns (and resets) shadow figures.

    A store that cannot be used — damaged, or written by a newer agent — is moved aside
    and a new one started (``_store.open_or_start_over``).

    Raises:
        ValueError: a cap below ``MIN_BUFFER_BYTES`` or a bad interval/bound.
        OSError: the state directory cannot be written.
    """

    def __init__(self, path: Path, *, window_s: float = 60.0, queue_max: int = 10_000,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_raw_rows: int = 0,
                 flush_interval_s: float = 1.0, keep_acked: int = 1000,
                 system_metrics: Callable[[], dict[str, float]] | None = None,
                 shadow_stats: Callable[[], dict[str, Any]] | None = None) -> None:
        if window_s <= 0 or flush_interval_s <= 0 or queue_max < 1 or max_raw_rows < 0:
            raise ValueError("window_s and flush_interval_s must be > 0, queue_max ≥ 1, "
                             "max_raw_rows ≥ 0")
        Budget(max_bytes)  # validate before touching the disk
        self.path = path
        self.window_s = window_s
        self.max_raw_rows = max_raw_rows
        self.flush_interval_s = flush_interval_s
        self.keep_acked = keep_acked
        self._system = system_metrics or (lambda: {})
        self._shadow_stats = shadow_stats or (lambda: {})
        self._queue: collections.deque[Record] = collections.deque()
        self._queue_max = queue_max
        self._high_water = max(1, queue_max // 2)
        self._lock = threading.RLock()
        self._drop_lock = threading.Lock()
        self._failing = Repeating(log, "telemetry write (records counted as dropped)")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._db = db = open_or_start_over(path, window_s=window_s)
        # a state directory that cannot be written: records last until a restart
        self.in_memory = not db.execute("PRAGMA database_list").fetchone()[2]
        self.budget = Budget(max_bytes, db.execute("PRAGMA page_size").fetchone()[0])
        self.stream = get_meta(db, "stream") or ""
        self.counters = {k: int(get_meta(db, k) or 0) for k in _COUNTERS}
        self._dropped_before = int(get_meta(db, "dropped") or 0)
        self._dropped = 0
        self._raw_rows = db.execute("SELECT COUNT(*) FROM inferences").fetchone()[0]
        self._windows = {float(s): WindowStats.from_state(json.loads(state))
                         for s, state in db.execute("SELECT start, state FROM windows")}
        self._drift: dict[tuple[float, str, int], tuple[DriftSpec, DriftWindow]] = {}
        opened = get_meta(db, "window_start")
        self._open_start: float | None = float(opened) if opened else None
        self._summary_bytes = 1024.0  # running estimate of a summary's bytes on disk
        # when the oldest unacked summary was last sent, as ``pending`` last found it
        # (inf: none was unacked; None: not known since a summary came or sends reset),
        # so a tick with nothing due costs no query
        self._sent_floor: float | None = None
        self._warned_full = False
        self._next_warning = 0
        with self._lock:
            self._enforce()

    # -- inference path ---------------------------------------------------------------
    def record(self, ts: float, model: str, version: int, latency_ms: float, ok: bool,
               top: str | None, kind: str | None = None,
               x: list[np.ndarray | None] | None = None,
               drift: DriftSpec | None = None) -> bool:
        """Queue one inference record; ``False`` (and counted) if the queue is full.

        Args:
            kind: why it failed (an ``EdgefleetError.reason``) when ``ok`` is false.
            x: the call's drift features, one matrix per extractor (``DriftSpec.extract``).
            drift: the model's drift spec (``None``: no drift for this model).
        """
        q = self._queue
        n = len(q)
        if n < self._queue_max:
            q.append((ts, model, version, latency_ms, None if ok else (kind or "error"), top,
                      x, drift))
            if n == self._high_water:
                self._wake.set()
            return True
        with self._drop_lock:
            self._dropped += 1
        return False

    @property
    def dropped(self) -> int:
        """Records dropped because the queue was full (since the store was created)."""
        return self._dropped_before + self._dropped

    # -- writer -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._writer, name="telemetry-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the writer, commit what is queued and close the store."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._lock:
            self._write_pending()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    def _writer(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # keep the writer alive; the next flush tries again
                log.exception("telemetry writer error")

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Commit everything queued now (in this thread); ``False`` if the store was busy."""
        if not self._lock.acquire(timeout=timeout_s):
            return False
        try:
            self._write_pending()
        finally:
            self._lock.release()
        return True

    def _write_pending(self) -> None:
        q, limit = self._queue, self.budget.max_batch_rows
        while q:
            batch = [q.popleft() for _ in range(min(len(q), limit))]
            try:
                self._write_batch(batch)
            except (sqlite3.Error, ValueError, OverflowError) as exc:  # rolled back: the
                # store stays usable; the records are counted as dropped, never silently gone
                self._failing.failed(exc)
                self._rollback()
                with self._drop_lock:
                    self._dropped += len(batch)
                continue
            try:
                self._enforce()
            except sqlite3.Error as exc:
                self._failing.failed(exc)
                self._rollback()
            else:
                self._failing.ok()

    def _write_batch(self, batch: list[Record]) -> None:
        ts, models, versions, lats, kinds, tops, xs, specs = zip(*batch, strict=True)
        w, n = self.window_s, len(batch)
        starts = np.floor(np.asarray(ts, dtype=np.float64) / w) * w
        late = np.zeros(n, dtype=bool)
        if self._open_start is not None:
            late = starts < self._open_start
            starts[late] = self._open_start
        updated: dict[float, WindowStats] = {}
        groups = [(float(starts[0]), None)] if starts.min() == starts.max() else [
            (float(s), np.flatnonzero(starts == s)) for s in np.unique(starts)]
        for start, idx in groups:
            stats = self._windows[start].copy() if start in self._windows else WindowStats()
            if idx is None:
                stats.add(models, versions, lats, kinds, tops, late=int(late.sum()))
            else:
                pick = idx.tolist()
                stats.add([models[i] for i in pick], [versions[i] for i in pick],
                          [lats[i] for i in pick], [kinds[i] for i in pick],
                          [tops[i] for i in pick], late=int(late[idx].sum()))
            updated[start] = stats
        states = [(s, json.dumps(st.state(), separators=(",", ":"))) for s, st in updated.items()]
        row_bytes = raw_row_bytes(models[0], tops[0], kinds[0])
        plan = self._plan(int(n * row_bytes) + sum(len(s) for _, s in states), n, row_bytes)
        rows = zip(ts, models, versions, lats, (k is None for k in kinds), tops, kinds,
                   strict=True)
        db = self._db
        with self._transaction():
            self._evict(plan)
            if plan.skip_raw < n:
                db.executemany("INSERT INTO inferences(ts, model, version, latency_ms, ok, "
                               "top, kind) VALUES (?,?,?,?,?,?,?)",
                               rows if not plan.skip_raw else list(rows)[plan.skip_raw:])
            db.executemany("INSERT OR REPLACE INTO windows(start, state) VALUES (?, ?)",
                           states)
            set_meta(db, "dropped", self.dropped)
        self._raw_rows += n - plan.skip_raw
        self._windows.update(updated)
        self._add_drift(starts, models, versions, xs, specs)

    @contextlib.contextmanager
    def _transaction(self, begin: str = "BEGIN") -> Iterator[None]:
        """The one way this store writes: committed whole, or rolled back whatever was
        raised (a store left inside a transaction would refuse every later write)."""
        self._db.execute(begin)
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        """Roll back the open transaction and re-read what eviction may have changed."""
        db = self._db
        if db.in_transaction:
            db.execute("ROLLBACK")
        self.counters = {k: int(get_meta(db, k) or 0) for k in _COUNTERS}
        self._raw_rows = db.execute("SELECT COUNT(*) FROM inferences").fetchone()[0]

    def _add_drift(self, starts: np.ndarray, models: tuple[str, ...],
                   versions: tuple[int, ...], xs: tuple[Any, ...],
                   specs: tuple[DriftSpec | None, ...]) -> None:
        groups: dict[tuple[float, str, int], tuple[DriftSpec, list[Any]]] = {}
        for i, x in enumerate(xs):
            spec = specs[i]
            if x is not None and spec is not None:
                key = (float(starts[i]), models[i], versions[i])
                groups.setdefault(key, (spec, []))[1].append(x)
        for key, (spec, items) in groups.items():
            entry = self._drift.get(key)
            if entry is None or entry[0] is not spec:
                entry = self._drift[key] = (spec, spec.window())
            entry[1].add(spec.merge(items))

    # -- windows and summaries --------------------------------------------------------
    def close_windows(self, now: float) -> list[int]:
        """Summarize every window that ended at or before ``now``; returns new seqs."""
        w = self.window_s
        if self._open_start is not None and now < self._open_start + w:
            return []
        self.flush()
        new: list[int] = []
        with self._lock:
            due = sorted(s for s in self._windows if s + w <= now)
            open_start = window_start(now, w)
            if self._open_start is not None:
                open_start = max(open_start, self._open_start)
            system = self._system() if due else {}
            shadow = self._shadow_stats() if due else {}
            db = self._db
            for i in range(0, max(len(due), 1), _CLOSE_GROUP):
                group = due[i:i + _CLOSE_GROUP]
                if group:
                    db.execute(f"PRAGMA synchronous={CLOSE_SYNC}")  # durable before sent
                try:
                    with self._transaction("BEGIN IMMEDIATE"):
                        for start in group:
                            new.append(self._close_one(start, system,
                                                       shadow if start == due[-1] else None))
                        if i + _CLOSE_GROUP >= len(due):
                            set_meta(db, "window_start", repr(open_start))
                finally:
                    db.execute("PRAGMA synchronous=NORMAL")
                for start in group:
                    del self._windows[start]
                self._enforce()
            self._open_start = open_start
            for key in [k for k in self._drift if k[0] + w <= now]:
                del self._drift[key]
        return new

    def _close_one(self, start: float, system: dict[str, float],
                   shadow: dict[str, Any] | None) -> int:
        db = self._db
        stats = self._windows[start]
        seq = int(get_meta(db, "next_seq") or 1)
        model, version = stats.dominant_model()
        drift = inputs = None
        entry = self._drift.get((start, model, version))
        if entry is not None:
            spec, window = entry
            drift = spec.scores(window, dict(stats.predictions))
            inputs = window.inputs()
        summary = make_summary(stats, seq=seq, start=start, end=start + self.window_s,
                               system=system, shadow=shadow, stream=self.stream, drift=drift,
                               inputs=inputs, buffer=self._buffer_figures())
        payload = encode_payload(summary.to_dict())
        est = len(payload) * 1.15 + 40  # cell overhead and page fill
        self._summary_bytes = 0.8 * self._summary_bytes + 0.2 * est
        self._evict(self._plan(int(est), 0, 0.0))
        db.execute("INSERT INTO summaries(seq, window_end, payload) VALUES (?,?,?)",
                   (seq, start + self.window_s, payload))
        self._sent_floor = None
        db.execute("DELETE FROM windows WHERE start = ?", (start,))
        set_meta(db, "next_seq", seq + 1)
        return seq

    def _buffer_figures(self) -> dict[str, Any]:
        return {"bytes": disk_bytes(self.path), "cap_bytes": self.budget.cap_bytes,
                **self.counters, "dropped": self.dropped}

    # -- the cap ----------------------------------------------------------------------
    def _pages(self) -> tuple[int, int]:
        db = self._db
        return (db.execute("PRAGMA page_count").fetchone()[0],
                db.execute("PRAGMA freelist_count").fetchone()[0])

    def _used_bytes(self) -> int:
        pages, free = self._pages()
        return (pages - free) * self.budget.page_size

    def _plan(self, incoming_bytes: int, incoming_raw: int, row_bytes: float) -> Eviction:
        used = self._used_bytes()
        target = self.budget.main_bytes
        over_rows = self.max_raw_rows and self._raw_rows + incoming_raw > self.max_raw_rows
        headroom = 2 * self._summary_bytes if incoming_raw else 0
        if used + incoming_bytes + headroom <= target and not over_rows:
            return Eviction()
        acked, unacked = self._db.execute(
            "SELECT COALESCE(SUM(acked = 1), 0), COALESCE(SUM(acked = 0), 0) FROM summaries"
        ).fetchone()
        state = StoreState(used_bytes=used, raw_rows=self._raw_rows, acked=acked,
                           unacked=unacked, raw_row_bytes=row_bytes or 48.0,
                           summary_bytes=self._summary_bytes)
        return plan_eviction(state, target_bytes=target, incoming_bytes=incoming_bytes,
                             incoming_raw_rows=incoming_raw,
                             slack_bytes=self.budget.slack_bytes if incoming_raw else 0,
                             raw_headroom_bytes=int(2 * self._summary_bytes),
                             max_raw_rows=self.max_raw_rows)

    def _evict(self, plan: Eviction) -> None:
        """Apply ``plan`` inside the caller's transaction."""
        if not plan:
            return
        db = self._db
        raw = 0
        if plan.raw:
            raw = db.execute("DELETE FROM inferences WHERE id IN (SELECT id FROM inferences "
                             "ORDER BY id LIMIT ?)", (plan.raw,)).rowcount
            self._raw_rows -= raw
        if plan.acked:
            db.execute("DELETE FROM summaries WHERE seq IN (SELECT seq FROM summaries "
                       "WHERE acked = 1 ORDER BY seq LIMIT ?)", (plan.acked,))
        if plan.unacked:
            last = db.execute("SELECT seq FROM summaries WHERE acked = 0 ORDER BY seq "
                              "LIMIT 1 OFFSET ?", (plan.unacked - 1,)).fetchone()
            if last is not None:
                set_meta(db, "evicted_through_seq", last[0])
            lost = db.execute("DELETE FROM summaries WHERE seq IN (SELECT seq FROM summaries "
                              "WHERE acked = 0 ORDER BY seq LIMIT ?)", (plan.unacked,)).rowcount
            self.counters["evicted_summaries"] += lost
            if self.counters["evicted_summaries"] >= self._next_warning:
                log.warning("telemetry buffer full: %d unsent summaries evicted so far",
                            self.counters["evicted_summaries"])
                self._next_warning = self.counters["evicted_summaries"] + 60
        self.counters["evicted_raw"] += raw + plan.skip_raw
        for key in _COUNTERS:
            set_meta(db, key, self.counters[key])

    def _enforce(self) -> None:
        """After a commit: evict until the pages fit, give pages back, bound the WAL."""
        db, budget = self._db, self.budget
        for _ in range(32):
            if self._used_bytes() <= budget.main_bytes:
                break
            plan = self._plan(0, 0, 48.0)
            if not plan:
                if not self._warned_full:
                    log.error("telemetry store cannot get under its cap of %d bytes",
                              budget.cap_bytes)
                    self._warned_full = True
                break
            with self._transaction():
                self._evict(plan)
        pages, free = self._pages()
        shrink = min(free, pages - budget.main_bytes // budget.page_size)
        if shrink > 0:
            db.executescript(f"PRAGMA incremental_vacuum({int(shrink)});")
        wal = self.path.parent / (self.path.name + "-wal")
        if shrink > 0 or (wal.exists() and wal.stat().st_size > budget.wal_bytes):
            busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy:
                log.warning("telemetry WAL checkpoint blocked by another reader")

    # -- delivery ---------------------------------------------------------------------
    def pending(self, now: float, *, resend_after_s: float, limit: int) -> list[Summary]:
        """Unacked summaries, oldest first, not sent within ``resend_after_s``.

        Once summaries have been evicted, each one also says (``buffer`` field
        ``evicted_through_seq``, as of now) below which seq nothing unsent is left,
        so the controller can tell a gap that will never fill from one still coming.
        """
        with self._lock:
            floor = self._sent_floor
            if floor is not None and floor > now - resend_after_s:
                return []  # nothing unsent, nothing sent long enough ago
            rows = self._db.execute(
                "SELECT payload FROM summaries WHERE acked = 0 AND "
                "(sent_at IS NULL OR sent_at <= ?) ORDER BY seq LIMIT ?",
                (now - resend_after_s, limit)).fetchall()
            if not rows:
                (floor,) = self._db.execute(
                    "SELECT MIN(sent_at) FROM summaries WHERE acked = 0").fetchone()
                self._sent_floor = math.inf if floor is None else float(floor)
                return []
            through = int(get_meta(self._db, "evicted_through_seq") or 0)
        out = []
        for (payload,) in rows:
            data = decode_payload(payload)
            if through:
                data["buffer"] = {**data.get("buffer", {}), "evicted_through_seq": through}
            out.append(Summary.from_dict(data))
        return out

    def mark_sent(self, seqs: list[int], now: float) -> None:
        with self._lock:
            self._db.executemany("UPDATE summaries SET sent_at = ? WHERE seq = ?",
                                 [(now, s) for s in seqs])

    def reset_sent(self) -> None:
        """After a reconnect: everything unacked is due again."""
        with self._lock:
            self._db.execute("UPDATE summaries SET sent_at = NULL WHERE acked = 0")
            self._sent_floor = None

    def ack(self, seqs: list[int], *, keep_acked: int | None = None) -> int:
        """Mark summaries as stored by the controller; returns how many were newly acked.

        Only the newest ``keep_acked`` acknowledged summaries are kept (default: the
        buffer's own setting); they are also the first summaries evicted.
        """
        keep = self.keep_acked if keep_acked is None else keep_acked
        with self._lock:
            db = self._db
            with self._transaction():
                newly = db.executemany("UPDATE summaries SET acked = 1 WHERE seq = ? AND "
                                       "acked = 0", [(s,) for s in seqs]).rowcount
                db.execute("DELETE FROM summaries WHERE acked = 1 AND seq <= "
                           "(SELECT MAX(seq) FROM summaries) - ?", (keep,))
            self._enforce()
            return newly

    def delivered(self) -> tuple[int, int]:
        """Summaries made so far, and acked (of ``stats``, two queries: for a poll)."""
        with self._lock:
            (unacked,) = self._db.execute(
                "SELECT COUNT(*) FROM summaries WHERE acked = 0").fetchone()
            return self._delivery(unacked)

    def _delivery(self, unacked: int) -> tuple[int, int]:
        """Made and acked, given how many stored summaries are unacked (under the lock)."""
        total = int(get_meta(self._db, "next_seq") or 1) - 1
        return total, total - unacked - self.counters["evicted_summaries"]

    def stats(self) -> dict[str, Any]:
        """Figures for ``agent status``: size, rows, oldest unsent summary, losses."""
        with self._lock:
            db = self._db
            stored, unacked, oldest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(acked = 0), 0), MIN(CASE WHEN acked = 0 "
                "THEN window_end END) FROM summaries").fetchone()
            total, acked = self._delivery(unacked)
            oldest_raw = db.execute("SELECT ts FROM inferences ORDER BY id LIMIT 1").fetchone()
            used = self._used_bytes()
        lost = self.counters["evicted_summaries"]
        return {"bytes": disk_bytes(self.path), "cap_bytes": self.budget.cap_bytes,
                "used_bytes": used, "raw_rows": self._raw_rows,
                "oldest_raw_ts": oldest_raw[0] if oldest_raw else None,
                "summaries": total, "summaries_stored": stored, "summaries_unacked": unacked,
                "summaries_acked": acked, "oldest_unacked_window_end": oldest,
                "open_windows": len(self._windows), "dropped": self.dropped,
                "evicted_raw": self.counters["evicted_raw"], "evicted_summaries": lost,
                "queued": len(self._queue), "stream": self.stream,
                "in_memory": self.in_memory,
                "schema_version": SCHEMA_VERSION}

