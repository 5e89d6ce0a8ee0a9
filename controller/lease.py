"""Which controller replica leads, and mutual exclusion between replicas.

Several controller replicas may share one database and one broker. Any of them serves
the API and consumes device messages; one at a time (the leader) drives rollouts,
evaluates alerts, applies retention and re-signs trust metadata.

``Lease`` is that leadership:

- **PostgreSQL**: a session-level advisory lock (``pg_try_advisory_lock``) held on a
  connection of its own. PostgreSQL drops it the moment that connection ends, so a
  killed replica's lease is free as soon as its socket closes (TCP keepalives bound
  the wait when its host vanishes instead). The leader pings its connection every
  time it asks; a lost connection means it no longer leads.
- **SQLite**: an ``flock`` on a file next to the database, which the kernel drops
  when the process dies. Replicas on SQLite must share one host.

``Lease.exclusive(key)`` serializes work on one deployment across replicas (an
operator's action on one replica while the leader steps the same deployment):
``pg_advisory_lock`` on PostgreSQL, an ``flock`` per key on SQLite.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from ._locks import lock_file, locked, try_lock

__all__ = ["Lease", "lock_key"]

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Lease:
    """Leadership among replicas sharing ``engine``'s database.

    Args:
        engine: the controller store's engine.
        name: what is led (one lease per name).
        lock_dir: where SQLite replicas keep their lock files (next to the database).
    """

    def __init__(self, engine: sa.Engine, name: str = "edgefleet-leader", *,
                 lock_dir: Path | None = None) -> None:
        self.engine = engine
        self.name = name
        self._pg = engine.dialect.name == "postgresql"
        self._key = lock_key(name)
        self._lock = threading.Lock()
        self._conn: sa.Connection | None = None  # PostgreSQL: the connection holding it
        self._pid: int | None = None  # and its server process
        self._file: IO[bytes] | None = None  # SQLite: the flocked file
        self._dir = lock_dir or _sqlite_dir(engine)
        self.held = False

    def acquire(self) -> bool:
        """Take the lease if free, confirm it if held; whether this replica leads now."""
        with self._lock:
            if self._pg:
                self.held = self._pg_acquire()
            else:
                self.held = self._file_acquire()
            return self.held

    def release(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"),
                                       {"k": self._key})
                    self._conn.commit()
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
            if self._file is not None:
                self._file.close()  # closing the descriptor drops the flock
                self._file = None
            self.held = False

    def _pg_acquire(self) -> bool:
        if self._conn is not None:
            try:  # still ours while the session that took it lives (same backend pid:
                # SQLAlchemy would quietly reconnect a broken connection, lock-less)
                pid = self._conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
                self._conn.commit()
                if pid == self._pid:
                    return True
                raise ConnectionError(f"session {self._pid} is gone (now {pid})")
            except Exception:
                log.warning("lost the database session holding the lease %s", self.name)
                with contextlib.suppress(Exception):
                    self._conn.invalidate()
                    self._conn.close()
                self._conn = None
        try:
            conn = self.engine.connect()
        except Exception:
            log.warning("cannot reach the database to take the lease %s", self.name)
            return False
        try:
            got, pid = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k), pg_backend_pid()"),
                                    {"k": self._key}).one()
            conn.commit()
        except Exception:
            conn.close()
            return False
        if got:
            self._conn, self._pid = conn, pid
            log.info("this replica now leads (%s)", self.name)
        else:
            conn.close()
        return got

    def _file_acquire(self) -> bool:
        if self._file is not None:
            return True
        f = try_lock(self._dir / f".{self.name}.lock")
        if f is None:
            return False
        self._file = f
        log.info("this replica now leads (%s)", self.name)
        return True

    @contextlib.contextmanager
    def exclusive(self, key: str) -> Iterator[None]:
        """Hold a cross-replica lock on ``key`` (e.g. a deployment id) for the block."""
        if self._pg:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": lock_key(key)})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"),
                                 {"k": lock_key(key)})
                    conn.commit()
            return
        with locked(lock_file(self._dir, key)):
            yield


def _sqlite_dir(engine: sa.Engine) -> Path:
    database: Any = engine.url.database
    if not database or database == ":memory:":
        return Path(tempfile.gettempdir())
    return Path(database).resolve().parent
