"""Where the controller keeps its files: model files, the TUF repository's metadata and targets.

``FileStore`` is the interface; keys are ``/``-separated relative paths
(``repo/metadata/timestamp.json``, ``models/digits/3/model.onnx``). Two stores:

- ``DirectoryFiles``: a folder (the data directory); one controller, or replicas
  sharing it on a filesystem with working ``flock``.
- ``DatabaseFiles``: chunked rows in the controller's database (``stored_files`` and
  ``stored_file_chunks``, SQLite or PostgreSQL), so replicas share nothing but the
  database and the broker. Writes are one transaction (readers see the old file or the
  new one, never half of one); reads by offset fetch only the chunks they cover.

Both give ``lock(name)``: a lock held across replicas (an ``flock`` in the folder; an
advisory lock on PostgreSQL through ``Lease.exclusive``), and ``local_path(key)``: a
file on this machine with the content, for the libraries that open paths (onnxruntime,
onnx). An object store would be a third implementation of the same methods.

Errors: ``NotFoundError`` (a key with no file); ``ValueError`` (a key that is not a
relative path inside the store).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

from edgefleet.contract import NotFoundError
from edgefleet.contract.files import atomic_write

from ._locks import lock_file, locked

__all__ = ["FILE_STORES", "DirectoryFiles", "FileStore", "check_key", "open_files"]

FILE_STORES = ("directory", "database")


def check_key(key: str) -> str:
    """A store key: a relative ``/``-separated path without ``.``/``..`` parts.

    Raises:
        ValueError: anything else.
    """
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"file key {key!r}: expected a relative path like 'a/b.json'")
    return key


class FileStore(Protocol):
    """Files by key; see the module docstring."""

    #: files are plain files on this machine (``local_path`` is where they live)
    local: bool

    def sub(self, prefix: str) -> FileStore:
        """The same store with every key under ``prefix/``."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Create or replace a file atomically."""
        ...

    def put_file(self, key: str, source: Path) -> None:
        """Create or replace a file atomically from a local file (streamed)."""
        ...

    def get(self, key: str) -> bytes:
        """The whole file. Raises: NotFoundError."""
        ...

    def read(self, key: str, offset: int, count: int) -> tuple[bytes, int]:
        """``(up to count bytes at offset, file length)``. Raises: NotFoundError."""
        ...

    def size(self, key: str) -> int:
        """Raises: NotFoundError."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix/`` (all keys without one), sorted."""
        ...

    def delete(self, key: str) -> bool:
        """Remove a file; whether there was one."""
        ...

    def local_path(self, key: str) -> Path:
        """A file on this machine with the content (a cached copy for remote stores).

        Raises:
            NotFoundError: no such file.
        """
        ...

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A lock on ``name`` held across every process using this store."""
        ...


class DirectoryFiles:
    """Files in a folder, written with temp file + fsync + rename.

    Args:
        root: the folder (made if missing).
    """

    local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def sub(self, prefix: str) -> DirectoryFiles:
        return DirectoryFiles(self._path(prefix))

    def put(self, key: str, data: bytes) -> None:
        atomic_write(self._path(key), data)

    def put_file(self, key: str, source: Path) -> None:
        dest = self._path(key)
        if source.resolve() == dest.resolve():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while block := src.read(1 << 20):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFoundError(f"no file {key}") from exc

    def read(self, key: str, offset: int, count: int) -> tuple[bytes, int]:
        try:
            with open(self._path(key), "rb") as fh:
                total = os.fstat(fh.fileno()).st_size
                fh.seek(offset)
                return fh.read(count), total
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFoundError(f"no file {key}") from exc

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise NotFoundError(f"no file {key}")
        return path.stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
            return True
        except FileNotFoundError:
            return False

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise NotFoundError(f"no file {key}")
        return path

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        return locked(lock_file(self.root, name))


def open_files(kind: str, data_dir: Path, engine: object = None) -> FileStore:
    """The store a controller's settings choose: ``directory`` (``data_dir``) or
    ``database`` (``engine``'s database; ``data_dir/cache`` keeps local copies).

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "directory":
        return DirectoryFiles(data_dir)
    if kind == "database":
        import sqlalchemy as sa

        from ._db_files import DatabaseFiles

        if not isinstance(engine, sa.Engine):
            raise TypeError("the database file store needs the store's engine")
        return DatabaseFiles(engine, cache_dir=data_dir / "cache")
    raise ValueError(f"file_store {kind!r}: expected one of {', '.join(FILE_STORES)}")
