"""Bundle files sent once per bundle, whatever the number of devices: retained blocks
on content-addressed topics, copied to the devices by the broker.

``Broadcaster.announce(manifest_path)`` is called when desired states for a bundle go
out: the first time it sees a file (by sha256) it queues it, and a worker thread
publishes it block by block, retained, on ``fleet/v1/blob/{sha256}/{offset}`` (the
frame of a pull answer, so a device reads both the same way). Desired states list the
files; a device subscribes to them and gets every block published so far at once
(retained) and the rest as they go out, also when it joins late. Devices pull, with
the request/response they always had, only what did not come.

Retained blocks stay on the broker until ``prune`` clears them (an empty retained
message per block), ``ttl_s`` after the bundle was last announced. A controller that
restarts announces again and publishes again (bytes once more, nothing wrong).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgefleet.contract import MAX_CHUNK_BYTES, ChunkResponse, Clock, blob_topic

if TYPE_CHECKING:
    from .signing import TrustRepository

__all__ = ["Broadcaster"]

log = logging.getLogger(__name__)
Publish = Callable[[str, bytes, bool], None]  # (topic, payload, retain)


class Broadcaster:
    """Publishes each bundle file once, retained, and clears it when no longer wanted.

    Args:
        repo: the TUF repository the files are read from.
        publish: sends one message (topic, payload, retain) at QoS 1.
        clock: for ``ttl_s``.
        block_bytes: bytes per block (≤ the contract's chunk cap).
        ttl_s: how long blocks stay retained after their bundle was last announced.
    """

    def __init__(self, repo: TrustRepository, publish: Publish, clock: Clock, *,
                 block_bytes: int = MAX_CHUNK_BYTES, ttl_s: float = 3600.0) -> None:
        self.repo = repo
        self._publish = publish
        self.clock = clock
        self.block_bytes = block_bytes
        self.ttl_s = ttl_s
        self._lock = threading.Condition()
        self._files: dict[str, tuple[str, int, float]] = {}  # sha -> (file, length, last)
        self._bundles: dict[str, list[tuple[str, str, int]]] = {}  # manifest path -> files
        self._queue: collections.deque[str] = collections.deque()
        self._stopping = False
        self.counters = collections.Counter[str]()
        self._thread = threading.Thread(target=self._run, name="broadcast", daemon=True)
        self._thread.start()

    def announce(self, manifest_path: str) -> list[str]:
        """The sha256 of the bundle's files, each queued for broadcast the first time.

        Raises:
            NotFoundError: no such signed bundle.
        """
        files = self._bundles.get(manifest_path)
        if files is None:  # a signed bundle's files never change: read its manifest once
            files = self._bundles[manifest_path] = self.repo.bundle_files(manifest_path)
        return self.announce_files(files)

    def announce_metadata(self) -> dict[str, str]:
        """The published timestamp, snapshot and targets metadata, queued for broadcast
        the first time (ahead of bundle files: a device needs them first); name -> sha256."""
        files = self.repo.metadata_files()
        self.announce_files(files, first=True)
        return {file: sha for sha, file, _length in files}

    def announce_files(self, files: list[tuple[str, str, int]], *,
                       first: bool = False) -> list[str]:
        """Queue repository files ``(sha256, file, length)`` not broadcast yet; mark
        them all as wanted now. Returns their sha256."""
        now = self.clock.time()
        with self._lock:
            for sha, file, length in files:
                if sha not in self._files:
                    if first:
                        self._queue.appendleft(sha)
                    else:
                        self._queue.append(sha)
                    self._lock.notify_all()
                self._files[sha] = (file, length, now)
        return [sha for sha, _file, _length in files]

    def republish(self) -> int:
        """Queue every file still wanted again (the broker lost what it retained)."""
        with self._lock:
            again = [sha for sha in self._files if sha not in self._queue]
            self._queue.extend(again)
            self._lock.notify_all()
        self.counters["broadcast_republished"] += len(again)
        return len(again)

    def prune(self) -> int:
        """Clear the blocks of files not announced for ``ttl_s``; how many files."""
        cutoff = self.clock.time() - self.ttl_s
        with self._lock:
            stale = [(sha, f) for sha, f in self._files.items() if f[2] < cutoff]
            for sha, _f in stale:
                del self._files[sha]
            if stale:
                self._bundles.clear()
        for sha, (_file, length, _last) in stale:
            for offset in range(0, length, self.block_bytes):
                self._publish(blob_topic(sha, offset), b"", True)
            self.counters["broadcast_files_cleared"] += 1
        return len(stale)

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                sha = self._queue.popleft()
                entry = self._files.get(sha)
            if entry is None:
                continue
            try:
                self._send(sha, entry[0])
            except Exception:  # a file gone or unreadable: devices pull it instead
                self.counters["broadcast_errors"] += 1
                log.exception("broadcast of %s failed; devices will pull it", sha[:12])

    def _send(self, sha: str, file: str) -> None:
        offset, total = 0, None
        while total is None or offset < total:
            data, total = self.repo.read(file, offset, self.block_bytes)
            if not data:
                break
            if offset == 0 and total == len(data) and hashlib.sha256(data).hexdigest() != sha:
                # a file whose name is reused (the timestamp) changed since it was
                # announced: devices pull the current one instead
                self.counters["broadcast_stale"] += 1
                log.info("%s changed before its broadcast; not sent", file)
                return
            frame = ChunkResponse("", sha, offset, total, "ok", data).encode()
            self._publish(blob_topic(sha, offset), frame, True)
            offset += len(data)
            self.counters["broadcast_blocks"] += 1
            self.counters["broadcast_bytes"] += len(data)
            if file.startswith("metadata/"):
                self.counters["broadcast_metadata_bytes"] += len(data)
        self.counters["broadcast_files"] += 1
        log.info("broadcast %s (%d bytes)", file, offset)
