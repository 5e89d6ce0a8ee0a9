"""The audit log's storage: serialized appends, the head row, the anchor file, verification.

Appends are serialized twice over: an in-process lock (taken *before* the transaction
starts, so a thread never waits for it while holding SQLite's write lock) and the head
row, read ``FOR UPDATE`` in the appending transaction. On PostgreSQL that row lock
serializes the appends of several controller replicas; SQLite ignores ``FOR UPDATE``
and serializes writers itself. ``seq`` is the primary key, so two appends can never
both take the same place in the chain.

Each append continues from the highest head anyone recorded (the head row, the chain's
last row, this process's last append), so deleting the last entries cannot make the
chain "heal": the next entry leaves a gap that verification reports for good.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from edgefleet.contract.files import atomic_write

from ._tables import audit_head, audit_log
from .audit import GENESIS, Anchor, Verification, chain_entry, verify_chain

__all__ = ["AuditStore", "AuditTransaction"]

log = logging.getLogger(__name__)
_PAGE = 2000


class AuditTransaction:
    """One store transaction whose audit entries are appended to the chain with it."""

    def __init__(self, owner: AuditStore, conn: sa.Connection) -> None:
        self.conn = conn
        self._owner = owner
        self.head: tuple[int, str] | None = None

    def append(self, actor: str, action: str, target: str, detail: Mapping[str, Any],
               *, ts: float | None = None) -> dict[str, Any]:
        """Add an entry (committed with the transaction); returns it."""
        if self.head is None:
            self.head = self._owner._current_head(self.conn)
        entry = chain_entry(*self.head, ts=time.time() if ts is None else ts,
                            actor=actor[:64], action=action[:128], target=target[:256],
                            detail=detail)
        self.conn.execute(audit_log.insert().values(**entry))
        self.conn.execute(audit_head.update().where(audit_head.c.id == 1).values(
            seq=entry["seq"], hash=entry["hash"], updated_at=entry["ts"]))
        self.head = (entry["seq"], entry["hash"])
        return entry


class AuditStore:
    """The ``audit_log`` table and its anchors.

    Args:
        engine: the store's engine.
        anchor_path: a file (in the controller's data directory) holding the last head
            this controller wrote; None keeps only the head row.
    """

    def __init__(self, engine: sa.Engine, anchor_path: Path | None = None) -> None:
        self.engine = engine
        self.anchor_path = anchor_path
        self.lock = threading.Lock()
        self._written: tuple[int, str] | None = None  # this process's last append
        try:
            with engine.begin() as c:
                if c.execute(sa.select(audit_head.c.id)).first() is None:
                    c.execute(audit_head.insert().values(id=1, seq=0, hash=GENESIS,
                                                         updated_at=time.time()))
        except SAIntegrityError:  # another replica created it first
            pass

    @contextlib.contextmanager
    def transaction(self) -> Iterator[AuditTransaction]:
        """A transaction for audited writes; the anchor file follows its commit."""
        with self.lock:
            with self.engine.begin() as conn:
                tx = AuditTransaction(self, conn)
                yield tx
            if tx.head is not None:
                self._written = tx.head
                self._write_anchor(tx.head)

    def append(self, actor: str, action: str, target: str,
               detail: Mapping[str, Any]) -> dict[str, Any]:
        with self.transaction() as tx:
            return tx.append(actor, action, target, detail)

    def _current_head(self, conn: sa.Connection) -> tuple[int, str]:
        row = conn.execute(sa.select(audit_head.c.seq, audit_head.c.hash)
                           .where(audit_head.c.id == 1).with_for_update()).first()
        tail = conn.execute(sa.select(audit_log.c.seq, audit_log.c.hash)
                            .order_by(audit_log.c.seq.desc()).limit(1)).first()
        heads = [(0, GENESIS)] + [(int(r[0]), str(r[1])) for r in (row, tail) if r is not None]
        recorded = self._written or self._read_anchor()  # (the file only until we write it)
        if recorded is not None:
            heads.append(recorded)
        best = max(heads, key=lambda h: h[0])
        if row is None:  # the head row was deleted: put it back
            conn.execute(audit_head.insert().values(id=1, seq=best[0], hash=best[1],
                                                    updated_at=time.time()))
        return best

    def _read_anchor(self) -> tuple[int, str] | None:
        if self.anchor_path is None or not self.anchor_path.exists():
            return None
        try:
            data = json.loads(self.anchor_path.read_text())
            return int(data["seq"]), str(data["hash"])
        except (OSError, ValueError, KeyError, TypeError):
            log.error("audit anchor %s is unreadable", self.anchor_path)
            return None

    def _write_anchor(self, head: tuple[int, str]) -> None:
        if self.anchor_path is None:
            return
        try:
            atomic_write(self.anchor_path, json.dumps({"seq": head[0], "hash": head[1]})
                         .encode(), mode=0o600)
        except OSError:
            log.exception("cannot write the audit anchor %s", self.anchor_path)

    # -- reading ------------------------------------------------------------------------
    def entries(self, *, after: int = 0, limit: int = 100,
                target: str | None = None) -> list[dict[str, Any]]:
        """Entries with ``seq > after`` in order (at most ``limit``)."""
        q = sa.select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq)
        if target is not None:
            q = q.where(audit_log.c.target == target)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q.limit(limit))]

    def _upto(self, last: int) -> Iterator[dict[str, Any]]:
        after = 0
        while after < last:
            page = [e for e in self.entries(after=after, limit=_PAGE) if e["seq"] <= last]
            yield from page
            if not page:
                return
            after = page[-1]["seq"]

    def verify(self) -> Verification:
        """Walk the whole chain and compare its end with every anchor.

        The anchors and the chain's end are read together under the append lock; the
        walk itself runs without it (appends made meanwhile are beyond that end).
        """
        with self.lock:
            with self.engine.connect() as c:
                row = c.execute(sa.select(audit_head.c.seq, audit_head.c.hash)
                                .where(audit_head.c.id == 1)).first()
                last = c.execute(sa.select(sa.func.max(audit_log.c.seq))).scalar() or 0
            recorded = self._read_anchor()
            written = self._written
        anchors = [Anchor("head record", int(row[0]), str(row[1]), exact=True)
                   if row is not None else Anchor("head record (missing)", 0, GENESIS,
                                                  exact=True)]
        if self.anchor_path is not None:
            if recorded is not None:
                anchors.append(Anchor(f"anchor file {self.anchor_path.name}", *recorded))
            elif last or written is not None:
                return Verification(False, 0, int(last), None,
                                    f"the anchor file {self.anchor_path} is missing or "
                                    "unreadable, so deleted last entries could go unnoticed")
        if written is not None:
            anchors.append(Anchor("controller's last append", *written))
        return verify_chain(self._upto(int(last)), anchors)
