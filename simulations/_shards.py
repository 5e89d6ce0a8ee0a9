"""The controlling side of a shard: start its process, send commands, read answers.

Each ``ShardProcess`` is a ``python -m edgefleet.simulations._shard`` child speaking
JSON lines over its stdin/stdout (see ``_shard``). Commands are answered in order; a
reader thread matches answers to requests so a slow shard never blocks the others.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

__all__ = ["ShardError", "ShardProcess"]


class ShardError(RuntimeError):
    """A shard exited, answered with an error or did not answer in time."""


class ShardProcess:
    """One shard child process.

    Args:
        spec: the shard's spec (its first stdin line).
        log_dir: where its stderr goes (``shard-N.stderr``).
    """

    def __init__(self, spec: dict[str, Any], log_dir: Path) -> None:
        self.index = int(spec["shard"])
        self._stderr: IO[bytes] = (log_dir / f"shard-{self.index}.stderr").open("ab")
        self._proc = subprocess.Popen(  # noqa: S603 - our own module, fixed argv
            [sys.executable, "-m", "edgefleet.simulations._shard"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            bufsize=1)
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._closed = False
        self._reader = threading.Thread(target=self._read, name=f"shard-{self.index}-reader",
                                        daemon=True)
        self._reader.start()
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(spec) + "\n")
        self._proc.stdin.flush()

    def ready(self, timeout_s: float = 60.0) -> None:
        """Wait until the shard has read its spec and started (its devices start after).

        Raises:
            ShardError: it exited or did not answer in time.
        """
        self._wait(0, timeout_s)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                reply = json.loads(line)
            except json.JSONDecodeError:
                continue  # not ours (a library printing to stdout)
            with self._cond:
                self._replies[int(reply.get("id", -1))] = reply
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _wait(self, req: int, timeout_s: float) -> dict[str, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: req in self._replies or self._closed, timeout_s):
                raise ShardError(f"shard {self.index} did not answer within {timeout_s:.0f}s")
            reply = self._replies.pop(req, None)
        if reply is None:
            raise ShardError(f"shard {self.index} exited (code {self._proc.poll()})")
        if "error" in reply:
            raise ShardError(f"shard {self.index}: {reply['error']}")
        return reply

    def request(self, cmd: str, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its answer.

        Raises:
            ShardError: the shard failed the command, exited or timed out.
        """
        return self._wait(self.send(cmd, **args), timeout_s)

    def send(self, cmd: str, **args: Any) -> int:
        """Send one command; ``collect`` its answer later (to ask every shard at once)."""
        req = next(self._ids)
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"id": req, "cmd": cmd, **args}) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise ShardError(f"shard {self.index} is gone: {exc}") from exc
        return req

    def collect(self, req: int, timeout_s: float = 30.0) -> dict[str, Any]:
        return self._wait(req, timeout_s)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Ask the shard to stop its devices and exit; kill it if it does not."""
        with contextlib.suppress(ShardError):
            self.request("stop", timeout_s=timeout_s)
        try:
            self._proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10.0)
        with contextlib.suppress(OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        self._stderr.close()

    def kill(self) -> None:
        """Kill the process if it still runs (a no-op after ``stop``)."""
        if self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10.0)
        self._stderr.close()
