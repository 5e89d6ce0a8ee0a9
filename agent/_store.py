"""The telemetry store's SQLite file: schema, migrations, pragmas and size on disk.

Every schema change is a numbered migration; each runs in one transaction together
with the ``schema_migrations`` row that records it, so a store is always at exactly
one version, whatever instant the agent was killed at. A store newer than this
agent is refused (``StoreError``) rather than guessed at.

- v1: ``meta``, ``inferences`` (with an index on ``ts``), ``summaries``.
- v2: the byte cap. ``inferences.kind`` (error kind), ``windows`` (the open windows'
  accumulators, written with the raw rows they count), ``schema_migrations``, a
  random ``stream`` id and the eviction counters in ``meta``; the ``ts`` index is
  dropped (windows are no longer read back from raw rows). Raw rows of windows a v1
  agent had not summarized yet become open-window accumulators, and unsent v1
  summaries get the stream id. Summary payloads become zlib-compressed JSON (a v1
  payload was JSON text; both are read). The file is switched to incremental auto-vacuum
  (one ``VACUUM``) so it can give pages back when the cap is lowered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._windows import WindowStats, window_start

__all__ = ["SCHEMA_VERSION", "StoreError", "decode_payload", "disk_bytes", "encode_payload",
           "get_meta", "open_or_start_over", "open_store", "set_meta"]

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2

_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inferences (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, model TEXT NOT NULL,
    version INTEGER NOT NULL, latency_ms REAL NOT NULL, ok INTEGER NOT NULL, top TEXT);
CREATE INDEX IF NOT EXISTS inferences_ts ON inferences(ts);
CREATE TABLE IF NOT EXISTS summaries (
    seq INTEGER PRIMARY KEY, window_end REAL NOT NULL, payload TEXT NOT NULL,
    sent_at REAL, acked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS summaries_unacked ON summaries(acked, seq)
"""

_V2 = """
ALTER TABLE inferences ADD COLUMN kind TEXT;
CREATE TABLE windows (start REAL PRIMARY KEY, state TEXT NOT NULL)
"""


def encode_payload(summary: dict[str, Any]) -> bytes:
    """A summary as stored: compact JSON, zlib-compressed (about half the bytes)."""
    return zlib.compress(json.dumps(summary, separators=(",", ":")).encode(), 6)


def decode_payload(payload: bytes | str) -> dict[str, Any]:
    """Raises: ValueError for a payload that is neither form."""
    try:
        text = zlib.decompress(payload) if isinstance(payload, bytes) else payload
        data = json.loads(text)
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable summary payload: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("unreadable summary payload: not an object")
    return data


class StoreError(RuntimeError):
    """The telemetry store cannot be used by this agent (e.g. a newer schema)."""


def get_meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row[0] if row else None


def set_meta(db: sqlite3.Connection, key: str, value: object) -> None:
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))


def _script(db: sqlite3.Connection, sql: str) -> None:
    for stmt in filter(str.strip, sql.split(";")):
        db.execute(stmt)


def _v1(db: sqlite3.Connection, window_s: float) -> None:
    _script(db, _V1)
    set_meta(db, "next_seq", 1)


def _v2(db: sqlite3.Connection, window_s: float) -> None:
    opened = get_meta(db, "window_start")
    since = float(opened) if opened else float("-inf")
    rows = db.execute("SELECT ts, model, version, latency_ms, ok, top FROM inferences "
                      "WHERE ts >= ? ORDER BY id", (since,)).fetchall()
    groups: dict[float, list[tuple[float, str, int, float, int, str | None]]] = \
        defaultdict(list)
    for r in rows:
        groups[window_start(r[0], window_s)].append(r)
    _script(db, _V2)
    db.execute("DROP INDEX IF EXISTS inferences_ts")
    for start, rs in groups.items():
        stats = WindowStats()
        stats.add([r[1] for r in rs], [r[2] for r in rs], [r[3] for r in rs],
                  [None if r[4] else "error" for r in rs], [r[5] if r[4] else None for r in rs])
        db.execute("INSERT INTO windows(start, state) VALUES (?, ?)",
                   (start, json.dumps(stats.state())))
    stream = uuid.uuid4().hex
    for key, value in (("stream", stream), ("evicted_raw", 0), ("evicted_summaries", 0),
                       ("dropped", 0)):
        set_meta(db, key, value)
    for seq, payload in db.execute("SELECT seq, payload FROM summaries WHERE acked = 0")\
            .fetchall():
        data = decode_payload(payload)
        data["stream"] = stream
        db.execute("UPDATE summaries SET payload = ? WHERE seq = ?",
                   (encode_payload(data), seq))


MIGRATIONS: tuple[tuple[int, str, Callable[[sqlite3.Connection, float], None]], ...] = (
    (1, "meta, inferences, summaries", _v1),
    (2, "byte cap: open-window state, error kinds, stream id, eviction counters", _v2),
)


def _migrate(db: sqlite3.Connection, path: Path, window_s: float) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone()
        current = int(get_meta(db, "schema_version") or 0) if has_meta else 0
        if current <= SCHEMA_VERSION:
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER "
                       "PRIMARY KEY, description TEXT NOT NULL, applied_at REAL)")
        if current == 1:  # run by a v1 agent, which did not record it
            db.execute("INSERT OR IGNORE INTO schema_migrations VALUES (1, ?, NULL)",
                       (MIGRATIONS[0][1],))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if current > SCHEMA_VERSION:
        raise StoreError(f"{path}: schema {current} is newer than this agent "
                         f"({SCHEMA_VERSION})")
    for version, description, step in MIGRATIONS:
        if version <= current:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            step(db, window_s)
            db.execute("INSERT INTO schema_migrations(version, description, applied_at) "
                       "VALUES (?, ?, ?)", (version, description, time.time()))
            set_meta(db, "schema_version", version)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if current:
            log.info("%s: telemetry store migrated to schema %d", path, version)


def open_store(path: Path, *, window_s: float) -> sqlite3.Connection:
    """Open (create or migrate) the store at ``path``.

    Raises:
        StoreError: the file's schema is newer than this agent.
        sqlite3.DatabaseError: not a SQLite file, or a damaged one.
    """
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only before the first table
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")  # the store checkpoints (TRUNCATE) itself
        db.execute("PRAGMA secure_delete=OFF")  # evicted telemetry is not a secret
        _migrate(db, path, window_s)
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # a file from a v1 agent
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except BaseException:
        db.close()
        raise
    return db


def open_or_start_over(path: Path, *, window_s: float) -> sqlite3.Connection:
    """``open_store``, but a store that cannot be used — damaged, or from a newer agent —
    is moved aside (``<name>.unusable-<time>-<id>``, kept for inspection) and a new one
    started, with an error logged: the agent keeps serving rather than failing to start.
    Where nothing can be written (a read-only or immutable state directory), the store
    is kept in memory instead, and the error says so: records then last until a restart.

    Raises:
        sqlite3.Error: not even a store in memory can be made.
    """
    try:
        return open_store(path, window_s=window_s)
    except (StoreError, sqlite3.DatabaseError, OSError) as first:
        exc: Exception = first
        if isinstance(exc, StoreError) or _writable(path.parent):
            aside = path.with_name(f"{path.name}.unusable-{int(time.time())}-"
                                   f"{uuid.uuid4().hex[:6]}")
            try:
                for suffix in ("", "-wal", "-shm"):
                    part = path.with_name(path.name + suffix)
                    if part.exists():
                        part.replace(aside.with_name(aside.name + suffix))
                log.error("telemetry store %s cannot be used (%s); moved to %s, starting a "
                          "new one", path, exc, aside)
                return open_store(path, window_s=window_s)
            except (OSError, sqlite3.Error) as again:
                exc = again
        log.error("telemetry store %s cannot be written (%s): telemetry is kept in memory "
                  "until a restart finds the state directory writable; the installed model "
                  "is served", path, exc)
        return open_store(Path(":memory:"), window_s=window_s)


def _writable(directory: Path) -> bool:
    """Whether a file can be made in ``directory`` (root ignores permission bits, not a
    read-only mount or an immutable directory, so this tries)."""
    probe = directory / f".write-probe-{uuid.uuid4().hex[:8]}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


def disk_bytes(path: Path) -> int:
    """Bytes on disk of the store: database file, WAL and WAL index together."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            total += (path.parent / (path.name + suffix)).stat().st_size
    return total
