"""Bundle files the controller broadcasts, gathered block by block before TUF asks.

When a wave starts the controller publishes each file of the bundle once, retained, as
blocks on ``fleet/v1/blob/{sha256}/{offset}``; the desired state names the files
(``broadcast``). The device subscribes, and ``BlobCache.put`` writes each block where it
belongs in ``<dir>/<sha256>.part``. ``ChunkFetcher`` reads a file's blocks from here
first and asks the controller (request/response) only for blocks that do not come.

Nothing here is trusted: a file is served from the cache only once all of it is here,
and python-tuf checks it against the signed length and hash before anything uses it.
A bundle file (a target) is checked once, by python-tuf where it lies, and then moved
out (``claim``), neither hashed twice nor copied; trust metadata read from here is
first hashed against the name it came under. A file that does not verify is dropped
and pulled instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from edgefleet.contract import ChunkResponse, valid_sha256

__all__ = ["BlobCache"]

log = logging.getLogger(__name__)


class _Blob:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.total: int | None = None
        self.blocks: dict[int, int] = {}  # offset -> length
        self.have = 0
        self.last_at = time.monotonic()  # when it was expected or its last block came
        self.verified = False
        self.bad = False

    @property
    def whole(self) -> bool:
        """Every byte is here (not yet hashed) and nothing marked it bad."""
        return not self.bad and self.total is not None and self.have == self.total


class BlobCache:
    """Broadcast files being gathered for the current job.

    Args:
        directory: where partial and complete files are kept (emptied by ``forget``).
        max_bytes: the largest file taken from a broadcast (larger ones are pulled).
    """

    def __init__(self, directory: Path, *, max_bytes: int = 4 << 30) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._blobs: dict[str, _Blob] = {}
        self._cond = threading.Condition()
        self.blocks_received = 0
        self.bytes_received = 0
        self.rejected = 0  # files whose blocks did not hash to their name

    # -- what the job wants -------------------------------------------------------------
    def expect(self, shas: list[str]) -> list[str]:
        """Start gathering these files; returns the ones that are new (to subscribe to)."""
        new = []
        with self._cond:
            for sha in shas:
                if valid_sha256(sha) and sha not in self._blobs:
                    self._blobs[sha] = _Blob(self.directory / f"{sha}.part")
                    new.append(sha)
        return new

    def expected(self) -> list[str]:
        with self._cond:
            return [sha for sha, b in self._blobs.items() if not b.verified and not b.bad]

    def forget(self, shas: list[str] | None = None) -> None:
        """Stop gathering (all files, or these) and delete what was kept."""
        with self._cond:
            for sha in list(self._blobs) if shas is None else shas:
                blob = self._blobs.pop(sha, None)
                if blob is not None:
                    blob.path.unlink(missing_ok=True)
            self._cond.notify_all()

    # -- blocks in (paho's thread) ------------------------------------------------------
    def put(self, sha: str, offset: int, frame: bytes) -> bool:
        """Keep one broadcast block; ``False`` when it is not wanted or does not fit."""
        chunk = ChunkResponse.decode(frame)  # MessageError for a malformed frame
        with self._cond:
            blob = self._blobs.get(sha)
            if blob is None or blob.bad or (blob.total is not None and blob.have >= blob.total):
                return False  # not wanted, or all of it is here (checked by the reader)
            if chunk.file != sha or chunk.offset != offset or chunk.status != "ok" or \
                    not 0 < chunk.total <= self.max_bytes or \
                    offset + len(chunk.data) > chunk.total or \
                    (blob.total is not None and chunk.total != blob.total):
                log.warning("dropped a broadcast block of %s at %d that does not fit",
                            sha[:12], offset)
                return False
            if offset in blob.blocks or not chunk.data:
                return False
            if blob.total is None:
                blob.total = chunk.total
                self.directory.mkdir(parents=True, exist_ok=True)
                with open(blob.path, "wb") as fh:
                    fh.truncate(chunk.total)
            fd = os.open(blob.path, os.O_WRONLY)
            try:
                os.pwrite(fd, chunk.data, offset)
            finally:
                os.close(fd)
            blob.blocks[offset] = len(chunk.data)
            blob.have += len(chunk.data)
            blob.last_at = time.monotonic()
            self.blocks_received += 1
            self.bytes_received += len(chunk.data)
            if blob.have >= chunk.total:  # a reader waits for all of it, not each block
                self._cond.notify_all()
            return True

    # -- blocks out (the fetcher) -------------------------------------------------------
    def wants(self, sha: str) -> bool:
        with self._cond:
            blob = self._blobs.get(sha)
            return blob is not None and not blob.bad

    def wait_complete(self, sha: str, *, wait_s: float,
                      stop: threading.Event | None = None, hashed: bool = True) -> int | None:
        """The file's length once it is all here (and, if ``hashed``, hashes to its
        name), waiting while blocks keep coming (up to ``wait_s`` without a new block of
        it); ``None`` when it will not be complete here (the caller takes what came and
        pulls the rest). Without ``hashed`` the caller checks the file against its signed
        hash itself before using it, and ``drop``s it if it does not match."""
        waiting_since = time.monotonic()
        with self._cond:
            while True:
                blob = self._blobs.get(sha)
                if blob is None or blob.bad:
                    return None
                if blob.verified:
                    return blob.total
                if blob.total is not None and blob.have >= blob.total:
                    if not hashed:
                        return blob.total if blob.have == blob.total else None
                    break  # all here: hashed below, on this thread, not paho's
                # woken when a file is complete (or forgotten); a block of this one
                # that came meanwhile gives it wait_s more from then
                left = max(blob.last_at, waiting_since) + wait_s - time.monotonic()
                if left <= 0:
                    return None  # no block of it came for wait_s
                self._cond.wait(left)
                if stop is not None and stop.is_set():
                    return None
        digest = hashlib.sha256()
        with open(blob.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        with self._cond:
            if self._blobs.get(sha) is not blob:
                return None  # forgotten meanwhile
            if digest.hexdigest() == sha and blob.have == blob.total:
                blob.verified = True
                return blob.total
            # overlapping or forged blocks: none of it is used
            blob.bad = True
            self.rejected += 1
            blob.path.unlink(missing_ok=True)
        log.warning("broadcast file %s did not hash to its name; pulling it instead", sha[:12])
        return None

    def path(self, sha: str) -> Path | None:
        """Where a complete, verified file is kept (``None``: it is not)."""
        with self._cond:
            blob = self._blobs.get(sha)
            return blob.path if blob is not None and blob.verified else None

    def whole(self, sha: str) -> Path | None:
        """Where a file all of whose blocks are here lies, verified or not (``None``: it
        is not all here)."""
        with self._cond:
            blob = self._blobs.get(sha)
            return blob.path if blob is not None and blob.whole else None

    def claim(self, sha: str, dest: Path) -> bool:
        """Move a complete file out of the cache to ``dest`` (the caller verified it);
        ``False`` when it is not complete here (forgotten or dropped meanwhile)."""
        with self._cond:
            blob = self._blobs.get(sha)
            if blob is None or not blob.whole:
                return False
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(blob.path, dest)  # a rename; a copy only across file systems
            del self._blobs[sha]
            return True

    def block(self, sha: str, offset: int) -> tuple[bytes, int] | None:
        """The block at ``offset`` if it arrived (unverified: the caller's download is
        checked by TUF as a whole), for a partial file being repaired."""
        with self._cond:
            blob = self._blobs.get(sha)
            if blob is None or blob.bad or blob.total is None or offset not in blob.blocks:
                return None
            length = blob.blocks[offset]
            with open(blob.path, "rb") as fh:
                fh.seek(offset)
                return fh.read(length), blob.total

    def next_block(self, sha: str, offset: int) -> int | None:
        """Where the next block held after ``offset`` starts (``None``: none is)."""
        with self._cond:
            blob = self._blobs.get(sha)
            if blob is None or blob.bad:
                return None
            return min((o for o in blob.blocks if o > offset), default=None)

    def drop(self, sha: str) -> None:
        """A file assembled partly from broadcast blocks failed verification: stop using
        its blocks (the caller pulls it again)."""
        with self._cond:
            blob = self._blobs.get(sha)
            if blob is not None and not blob.bad:
                blob.bad = True
                self.rejected += 1
                blob.path.unlink(missing_ok=True)
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"blocks": self.blocks_received, "bytes": self.bytes_received,
                    "rejected": self.rejected, "gathering": len(self._blobs)}
