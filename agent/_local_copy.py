"""No download twice: bundle files this device holds already, for every transport.

Consistent snapshots name each target file ``targets/…/<sha256>.<name>``, so a fetcher
knows a file's content from its name alone. When an installed model or data file has
that sha256 (``ModelStore.file_with``), ``LocalCopies`` reads it from disk instead of
the network; python-tuf then checks the copy against the signed length and hash exactly
as it checks a download, and a copy that changed on disk is marked bad and downloaded.

``LocalFetcher`` is the base of the agent's fetchers (MQTT chunks, HTTP): it remembers
the length TUF signed for the file being downloaded and offers the local copy first.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from tuf.api import exceptions as tuf_exc
from tuf.ngclient import FetcherInterface

from edgefleet.contract import valid_sha256

__all__ = ["LocalCopies", "LocalFetcher", "target_sha256"]

_ROOT = re.compile(r"metadata/([1-9][0-9]{0,9})\.root\.json")


def target_sha256(file: str) -> str | None:
    """The sha256 a target file is stored under (its broadcast name too); ``None`` for
    metadata or a name that does not start with one."""
    if not file.startswith("targets/"):
        return None
    head = file.rsplit("/", 1)[-1].split(".", 1)[0]
    return head if valid_sha256(head) else None


class LocalCopies:
    """Installed files a download can be copied from.

    Args:
        find: the installed file with a sha256, or ``None`` (``ModelStore.file_with``);
            ``None`` turns copying off.
    """

    def __init__(self, find: Callable[[str], Path | None] | None) -> None:
        self._find = find
        self.bytes = 0  # target bytes copied from files already on the device
        self.used: set[str] = set()  # sha256s copied during the current downloads
        self.bad: set[str] = set()  # local copies that failed verification

    def read(self, file: str, limit: int) -> Iterator[bytes] | None:
        """The blocks of a held copy of repository ``file``, never more than ``limit``
        bytes (the signed length + 1, so python-tuf sees a copy longer than signed);
        ``None`` when this device holds no copy to try."""
        sha = target_sha256(file)
        if sha is None or self._find is None or sha in self.bad:
            return None
        held = self._find(sha)
        if held is None:
            return None
        self.used.add(sha)
        return self._blocks(held, limit)

    def _blocks(self, path: Path, limit: int) -> Iterator[bytes]:
        offset = 0
        with open(path, "rb") as fh:
            while offset < limit:
                data = fh.read(min(1 << 20, limit - offset))
                if not data:
                    return
                offset += len(data)
                self.bytes += len(data)
                yield data

    def distrust(self, sha256: str) -> bool:
        """Mark a copy that did not verify, so the next attempt downloads the file.

        Returns whether this download had used a local copy of it."""
        if sha256 not in self.used:
            return False
        self.used.discard(sha256)
        self.bad.add(sha256)
        return True


class LocalFetcher(FetcherInterface):
    """A fetcher that knows the signed length of the file it downloads and offers the
    device's own copy of it first (``local_copy``)."""

    def __init__(self, local: Callable[[str], Path | None] | None = None) -> None:
        self.local = LocalCopies(local)
        self._limit: int | None = None
        # versioned metadata files the current job's desired state names by sha256 (the
        # broadcast ones; a transport that takes no broadcast leaves it empty)
        self.named: dict[str, str] = {}
        # the newest root version the current job's desired state says there is (0: not
        # said): a newer one is not asked for (python-tuf probes on every refresh)
        self.roots_upto = 0
        # wraps the waits on the link (a host running many agents gives the job's turn
        # to another meanwhile)
        self.waiting: Callable[[], contextlib.AbstractContextManager[None]] = \
            contextlib.nullcontext
        # where a download is put together (None: the system's temporary folder); the
        # agent's own state folder keeps it on the device's storage, next to its end
        self.temp_dir: Path | None = None

    @property
    def bytes_local(self) -> int:
        return self.local.bytes

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        # Remember the signed length so _fetch never takes more than length + 1
        # (the extra byte lets ngclient see a file longer than signed).
        self._limit = max_length
        try:
            whole = self.whole_file(url)
            if whole is not None:  # read where it lies; python-tuf verifies it as ever
                with open(whole, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size > max_length:
                        raise tuf_exc.DownloadLengthMismatchError(
                            f"{url}: {size} bytes, more than the {max_length} allowed")
                    yield fh
                return
            if self.temp_dir is not None:
                self.temp_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.temp_dir) as fh:  # python-tuf's way
                got = 0
                for chunk in self.fetch(url):
                    got += len(chunk)
                    if got > max_length:
                        raise tuf_exc.DownloadLengthMismatchError(
                            f"{url}: more than the {max_length} bytes allowed")
                    fh.write(chunk)
                fh.seek(0)
                yield fh
        finally:
            self._limit = None

    def whole_file(self, url: str) -> Path | None:
        """A file on this device holding all of ``url``'s candidate content, read in
        place instead of copied into a temporary file (``None``: download it)."""
        return None

    @property
    def limit(self) -> int:
        """The most bytes to take of the current file: its signed length + 1."""
        return (self._limit if self._limit is not None else 1 << 31) + 1

    def known_absent(self, file: str) -> bool:
        """Whether ``file`` is a root newer than the desired state says exists."""
        m = _ROOT.fullmatch(file)
        return bool(self.roots_upto and m and int(m.group(1)) > self.roots_upto)

    def local_copy(self, file: str) -> Iterator[bytes] | None:
        """The device's own copy of repository ``file``, if it holds one."""
        return self.local.read(file, self.limit)
