"""The database file store: files as chunked rows in the controller's database.

A file is one ``stored_files`` row (path, length, sha256, chunk size) and its
``stored_file_chunks``. Writing a file is one transaction that removes the old row and
its chunks and inserts the new ones under a new id, so readers see the old content or
the new one, never a mix. ``read`` is one statement joining the file's row with only
the chunks its range covers (one snapshot, on SQLite and PostgreSQL alike); whole-file
reads go chunk batch by chunk batch and check length and hash at the end, starting
over if the file was replaced meanwhile.

Errors from the database are SQLAlchemy's; a missing file is ``NotFoundError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy as sa

from edgefleet.contract import NotFoundError
from edgefleet.contract.files import fsync_path

from ._files import check_key
from ._tables import stored_file_chunks as chunks
from ._tables import stored_files as files
from .lease import Lease

__all__ = ["CHUNK_BYTES", "DatabaseFiles"]

CHUNK_BYTES = 256 * 1024  # a device pulls ≤128 KiB blocks: one or two chunks a request
_BATCH = 16  # chunks a query, when a whole file is read (4 MiB)
_ATTEMPTS = 3  # a file replaced while being read, or written by two replicas at once


class DatabaseFiles:
    """Files in ``engine``'s database (the ``stored_files`` tables, schema 6).

    Args:
        engine: the controller store's engine.
        cache_dir: where ``local_path`` keeps copies for libraries that open paths
            (by content hash, so a replaced file never serves stale bytes).
        prefix: keys of this view are under it (see ``sub``).
        chunk_bytes: chunk size of files written through this store.
    """

    local = False

    def __init__(self, engine: sa.Engine, *, cache_dir: Path, prefix: str = "",
                 chunk_bytes: int = CHUNK_BYTES, lease: Lease | None = None) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes: expected a positive size, got {chunk_bytes}")
        self.engine = engine
        self.cache_dir = cache_dir
        self.prefix = prefix
        self.chunk_bytes = chunk_bytes
        self._lease = lease or Lease(engine, "edgefleet-files")

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def sub(self, prefix: str) -> DatabaseFiles:
        return DatabaseFiles(self.engine, cache_dir=self.cache_dir,
                             prefix=self._key(prefix) + "/", chunk_bytes=self.chunk_bytes,
                             lease=self._lease)

    # -- writing --------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        n = self.chunk_bytes
        self._write(self._key(key), lambda: (data[i:i + n] for i in range(0, len(data), n)))

    def put_file(self, key: str, source: Path) -> None:
        def blocks() -> Iterator[bytes]:
            with open(source, "rb") as fh:
                while block := fh.read(self.chunk_bytes):
                    yield block
        self._write(self._key(key), blocks)

    def _write(self, path: str, blocks: Callable[[], Iterable[bytes]]) -> None:
        for attempt in range(_ATTEMPTS):
            try:
                self._write_once(path, blocks())
                return
            except sa.exc.IntegrityError:  # another process wrote the same path first
                if attempt == _ATTEMPTS - 1:
                    raise

    def _write_once(self, path: str, blocks: Iterable[bytes]) -> None:
        with self.engine.begin() as c:
            old = c.execute(sa.select(files.c.id).where(files.c.path == path)).scalar()
            if old is not None:
                c.execute(chunks.delete().where(chunks.c.file_id == old))
                c.execute(files.delete().where(files.c.id == old))
            key = c.execute(files.insert().values(
                path=path, size=0, sha256="", chunk_bytes=self.chunk_bytes,
                updated_at=time.time())).inserted_primary_key
            assert key is not None
            new = key[0]
            digest, size, pending = hashlib.sha256(), 0, []
            for index, block in enumerate(blocks):
                digest.update(block)
                size += len(block)
                pending.append({"file_id": new, "chunk": index, "data": block})
                if len(pending) >= _BATCH:
                    c.execute(chunks.insert(), pending)
                    pending = []
            if pending:
                c.execute(chunks.insert(), pending)
            c.execute(files.update().where(files.c.id == new).values(
                size=size, sha256=digest.hexdigest()))

    def delete(self, key: str) -> bool:
        with self.engine.begin() as c:
            old = c.execute(sa.select(files.c.id).where(files.c.path == self._key(key))).scalar()
            if old is None:
                return False
            c.execute(chunks.delete().where(chunks.c.file_id == old))
            c.execute(files.delete().where(files.c.id == old))
            return True

    # -- reading --------------------------------------------------------------------
    def _head(self, key: str) -> Any:  # a Row: id, size, sha256, chunk_bytes
        with self.engine.connect() as c:
            row = c.execute(sa.select(files.c.id, files.c.size, files.c.sha256,
                                      files.c.chunk_bytes)
                            .where(files.c.path == self._key(key))).first()
        if row is None:
            raise NotFoundError(f"no file {key}")
        return row

    def size(self, key: str) -> int:
        return int(self._head(key).size)

    def exists(self, key: str) -> bool:
        with self.engine.connect() as c:
            return c.execute(sa.select(files.c.id)
                             .where(files.c.path == self._key(key))).first() is not None

    def read(self, key: str, offset: int, count: int) -> tuple[bytes, int]:
        if offset < 0 or count < 0:
            raise ValueError(f"offset and count: expected ≥ 0, got {offset} and {count}")
        path = self._key(key)
        # which chunks: computed with the file's own chunk size, inside the statement
        first = sa.literal(offset, sa.BigInteger) // files.c.chunk_bytes
        last = sa.literal(offset + max(count, 1) - 1, sa.BigInteger) // files.c.chunk_bytes
        q = (sa.select(files.c.size, files.c.chunk_bytes, chunks.c.chunk, chunks.c.data)
             .select_from(files.outerjoin(chunks, sa.and_(
                 chunks.c.file_id == files.c.id, chunks.c.chunk >= first,
                 chunks.c.chunk <= last)))
             .where(files.c.path == path).order_by(chunks.c.chunk))
        with self.engine.connect() as c:
            rows = c.execute(q).all()
        if not rows:
            raise NotFoundError(f"no file {key}")
        total, width = int(rows[0].size), int(rows[0].chunk_bytes)
        if count == 0 or offset >= total:
            return b"", total
        parts = [(int(r.chunk), bytes(r.data)) for r in rows if r.chunk is not None]
        if not parts:
            raise NotFoundError(f"file {key} has no content at {offset}")
        start = parts[0][0] * width
        joined = b"".join(p for _, p in parts)
        return joined[offset - start:offset - start + count], total

    def _blocks(self, key: str) -> Iterator[tuple[sa.Row[Any], Iterator[bytes]]]:
        """Yields once: the file's row and its content block by block (by id, so a
        replacement meanwhile shows up as missing chunks, not as mixed content)."""
        head = self._head(key)

        def content() -> Iterator[bytes]:
            n = (int(head.size) + head.chunk_bytes - 1) // head.chunk_bytes
            for lo in range(0, n, _BATCH):
                with self.engine.connect() as c:
                    got = c.execute(sa.select(chunks.c.chunk, chunks.c.data).where(
                        chunks.c.file_id == head.id, chunks.c.chunk >= lo,
                        chunks.c.chunk < lo + _BATCH).order_by(chunks.c.chunk)).all()
                if [int(r.chunk) for r in got] != list(range(lo, min(lo + _BATCH, n))):
                    raise _Replaced(key)
                for r in got:
                    yield bytes(r.data)
        yield head, content()

    def get(self, key: str) -> bytes:
        for attempt in range(_ATTEMPTS):
            try:
                for head, content in self._blocks(key):
                    data = b"".join(content)
                    if len(data) == head.size and hashlib.sha256(data).hexdigest() == head.sha256:
                        return data
                raise _Replaced(key)
            except _Replaced:
                if attempt == _ATTEMPTS - 1:
                    raise NotFoundError(f"file {key} keeps changing while it is read") from None
        raise AssertionError("unreachable")

    def list(self, prefix: str = "") -> list[str]:
        base = self.prefix + (check_key(prefix) + "/" if prefix else "")
        with self.engine.connect() as c:
            paths = c.execute(sa.select(files.c.path).where(
                files.c.path.startswith(base, autoescape=True)).order_by(files.c.path)).scalars()
            return [p[len(self.prefix):] for p in paths]

    def local_path(self, key: str) -> Path:
        """A verified copy under ``cache_dir/{sha256}/`` (made on first use)."""
        name = PurePosixPath(key).name
        for attempt in range(_ATTEMPTS):
            try:
                for head, content in self._blocks(key):
                    dest = self.cache_dir / head.sha256 / name
                    if dest.is_file() and dest.stat().st_size == head.size:
                        return dest
                    self._materialize(dest, content, head)
                    return dest
            except _Replaced:
                if attempt == _ATTEMPTS - 1:
                    raise NotFoundError(f"file {key} keeps changing while it is read") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _materialize(dest: Path, content: Iterator[bytes], head: sa.Row[Any]) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for block in content:
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != head.sha256:
                raise _Replaced(dest.name)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_path(dest.parent)

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """PostgreSQL: an advisory lock; SQLite: an ``flock`` next to the database."""
        return self._lease.exclusive(f"files:{self.prefix}{name}")


class _Replaced(Exception):
    """The file changed under a multi-statement read."""
