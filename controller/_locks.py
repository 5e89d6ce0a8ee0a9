"""File locks between controller replicas that share a folder: an ``flock`` on a file.

``locked(path)`` holds a lock for a block; ``try_lock(path)`` takes one only if it is
free and keeps it until its file is closed (the leader's lease). The kernel drops an
``flock`` when the last descriptor of its open file closes, so a killed process holds
nothing. Two threads of one process exclude each other too: each opens the file itself.

Lock files are kept: one per lock (``lock_file`` names it after a hash of the lock's
name), never removed. Removing one while another process waits on it would let two
in at once: the waiter gets the removed file's lock, a newcomer creates and locks a
new file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["lock_file", "locked", "try_lock"]


def lock_file(directory: Path, name: str) -> Path:
    """The file in ``directory`` that holds the lock called ``name``."""
    return directory / f".lock-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _open(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")  # noqa: SIM115 - the caller closes it


@contextlib.contextmanager
def locked(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if missing) for the block, waiting for it.

    Args:
        path: the lock file.
        shared: a shared lock (any number at once, none while an exclusive one is held)
            instead of an exclusive one.
    """
    with _open(path) as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def try_lock(path: Path) -> IO[bytes] | None:
    """Take an exclusive ``flock`` on ``path`` (created if missing) if no one holds it.

    Returns:
        The open file, which holds the lock until it is closed; None if the lock is
        taken (or the filesystem refuses to lock).
    """
    f = _open(path)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    except BaseException:
        f.close()
        raise
    return f
