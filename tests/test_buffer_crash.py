"""The telemetry store survives kill -9 mid-write and upgrades a v1 agent's file in place."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgefleet.agent._store import StoreError, open_store
from edgefleet.agent.telemetry import SCHEMA_VERSION, TelemetryBuffer

T0 = 1_700_000_040.0
BATCH = 250  # records the child queues between two flushes: the most a kill may lose

CHILD = textwrap.dedent(f"""
    import sys
    from pathlib import Path
    from edgefleet.agent.telemetry import TelemetryBuffer

    buf = TelemetryBuffer(Path(sys.argv[1]), window_s=60, flush_interval_s=0.01,
                          queue_max=100_000)
    buf.start()  # the writer thread commits on its own too, racing the kill
    total, ts = 0, {T0}
    while True:
        for i in range({BATCH}):
            ok = i % 50 != 0
            buf.record(ts, "digits", 1, 0.03, ok, str(i % 10) if ok else None,
                       None if ok else "model_error")
            ts += 0.05
        buf.flush()
        total += {BATCH}
        if total % 2000 == 0:
            buf.close_windows(ts)
        print(total, flush=True)  # everything up to here is committed
""")


def _committed_counts(path: Path) -> tuple[int, int, int]:
    """Raw rows, and the inferences counted by summaries plus open windows (read-only)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        raw = db.execute("SELECT COUNT(*) FROM inferences").fetchone()[0]
        windows = sum(json.loads(s)["n"] for (s,) in db.execute("SELECT state FROM windows"))
        summaries = db.execute("SELECT COUNT(*) FROM summaries").fetchone()[0]
    finally:
        db.close()
    return raw, windows, summaries


@pytest.mark.parametrize("kill_after", [1500, 4000, 9000])
def test_kill_9_while_writing_loses_at_most_the_unflushed_batch_and_reopens_cleanly(
        tmp_path, kill_after):
    path = tmp_path / "telemetry.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             text=True)
    reported = 0
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        while reported < kill_after and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            reported = int(line)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        for line in child.stdout:  # what it printed before it died was committed too
            reported = int(line)
    finally:
        if child.poll() is None:
            child.kill()
    assert reported >= kill_after, "the writer did not get going"
    assert child.returncode == -signal.SIGKILL

    buf = TelemetryBuffer(path, window_s=60)  # opens cleanly: WAL recovered
    try:
        assert buf._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stats = buf.stats()
        on_disk = stats["raw_rows"]
        # nothing that was reported committed is lost; at most the batch in flight
        assert reported <= on_disk <= reported + BATCH
        assert stats["evicted_raw"] == 0 and stats["schema_version"] == SCHEMA_VERSION
        summarized = sum(s.count for s in buf.pending(T0 + 10**6, resend_after_s=0,
                                                      limit=10**4))
        open_counts = sum(w.count for w in buf._windows.values())
        # raw rows and the window accumulators were committed together
        assert summarized + open_counts == on_disk
        # and the store goes on: the next window closes with the next seq
        before = stats["summaries"]
        new = buf.close_windows(T0 + 10**5)
        assert new[0] == before + 1
    finally:
        buf.stop()
    assert _committed_counts(path)[0] == on_disk


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE inferences (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, model TEXT NOT NULL,
    version INTEGER NOT NULL, latency_ms REAL NOT NULL, ok INTEGER NOT NULL, top TEXT);
CREATE INDEX inferences_ts ON inferences(ts);
CREATE TABLE summaries (
    seq INTEGER PRIMARY KEY, window_end REAL NOT NULL, payload TEXT NOT NULL,
    sent_at REAL, acked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX summaries_unacked ON summaries(acked, seq);
"""


def _v1_store(path: Path) -> None:
    """A telemetry.db exactly as a v1 agent left it: 3 summaries, a window half done."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V1_SCHEMA)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("schema_version", "1"), ("next_seq", "4"), ("window_start", repr(T0 + 180))])
    rows = [(T0 + i, "digits", 1, 2.0, int(i % 10 != 0), str(i % 3)) for i in range(0, 240)]
    db.executemany("INSERT INTO inferences(ts, model, version, latency_ms, ok, top) "
                   "VALUES (?,?,?,?,?,?)", rows)
    for seq in (1, 2, 3):
        payload = {"seq": seq, "window_start": T0 + 60 * (seq - 1), "window_end": T0 + 60 * seq,
                   "count": 60, "errors": 6, "model": "digits", "version": 1,
                   "latency_ms": {"p50": 2.0}, "predictions": {"0": 18, "1": 18, "2": 18},
                   "system": {}, "historical": False, "shadow": {}}
        db.execute("INSERT INTO summaries VALUES (?, ?, ?, NULL, ?)",
                   (seq, T0 + 60 * seq, json.dumps(payload), int(seq == 1)))
    db.commit()
    db.close()


def test_a_v1_store_upgrades_keeping_unsent_summaries_and_the_open_window(tmp_path):
    path = tmp_path / "telemetry.db"
    _v1_store(path)
    buf = TelemetryBuffer(path, window_s=60)
    try:
        db = buf._db
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [r[0] for r in db.execute("SELECT version FROM schema_migrations "
                                         "ORDER BY version")] == [1, 2]
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] \
            == "2"
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        assert "kind" in {r[1] for r in db.execute("PRAGMA table_info(inferences)")}
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name='inferences_ts'")\
            .fetchone()
        stats = buf.stats()
        assert stats["raw_rows"] == 240 and stats["summaries_unacked"] == 2
        assert len(buf.stream) == 32
        pending = buf.pending(T0 + 10**4, resend_after_s=0, limit=10)
        assert [(s.seq, s.count, s.stream) for s in pending] == [(2, 60, buf.stream),
                                                                 (3, 60, buf.stream)]
        # the window the v1 agent had open (ts ≥ window_start) becomes seq 4, complete
        assert buf.close_windows(T0 + 240) == [4]
        fourth = buf.pending(T0 + 10**4, resend_after_s=0, limit=10)[-1]
        assert (fourth.seq, fourth.count, fourth.errors) == (4, 60, 6)
        assert fourth.errors_by_kind == {"error": 6} and fourth.stream == buf.stream
        assert fourth.latency_sketch["n"] == 60
    finally:
        buf.stop()
    again = TelemetryBuffer(path, window_s=60)  # a second start migrates nothing
    try:
        assert again.stream == buf.stream and again.stats()["summaries_unacked"] == 3
    finally:
        again.stop()


def test_a_store_from_a_newer_agent_or_a_damaged_one_is_set_aside_not_guessed_at(tmp_path):
    path = tmp_path / "telemetry.db"
    first = TelemetryBuffer(path)
    first.stop()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        open_store(path, window_s=60)
    fresh = TelemetryBuffer(path)  # the agent still starts, with a new stream
    try:
        assert fresh.stream != first.stream and fresh.stats()["schema_version"] == 2
    finally:
        fresh.stop()
    (kept,) = [p for p in tmp_path.glob("telemetry.db.unusable-*") if "-wal" not in p.name
               and "-shm" not in p.name]
    assert sqlite3.connect(kept).execute(
        "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "99"

    path.write_bytes(b"this is not a database" * 100)
    again = TelemetryBuffer(path)
    try:
        assert again.stats()["raw_rows"] == 0
        assert len(list(tmp_path.glob("telemetry.db.unusable-*"))) >= 2  # both kept
        assert again._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        again.stop()
