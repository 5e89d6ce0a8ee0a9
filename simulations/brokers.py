"""A real Mosquitto broker process for tests and simulated fleets.

Tests run against the broker that production runs against: ``MosquittoProcess``
writes a small config, starts the ``mosquitto`` binary on a loopback port and
can stop it, crash it (SIGKILL) and bring it back on the same port, so agents
and the controller can be watched riding out a broker outage.

Example::

    with MosquittoProcess(workdir=tmp_path) as broker:
        client.connect("127.0.0.1", broker.port)
        broker.kill()
        broker.restart()
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO

from edgefleet.contract import TransportError

__all__ = ["MosquittoProcess", "find_mosquitto", "free_port", "wait_for_port"]

_FALLBACK_PATHS = (
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
)
# Bigger than any message edgefleet sends (chunks are <= 128 KiB) with room for a
# model's metadata; Mosquitto closes a client that sends a packet past it.
_MAX_PACKET_BYTES = 16 * 1024 * 1024
_PORT_ATTEMPTS = 3


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is only free at the time of the call; another process may take it
    before it is used, so callers that bind later should be ready to retry.

    Args:
        host: The address to probe.

    Returns:
        A port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


_BROKER_FILES = 65536


def _more_files() -> None:
    """In the broker's process before it starts: room for one descriptor per client.
    A 10,000-device simulation holds 10,000 agents and, while it measures the raw
    fan-out, as many plain subscribers; at the usual 20,000 descriptors Mosquitto then
    refuses connections ("denied access by tcpd": it cannot open the hosts files). The
    limit is raised as far as the system lets this user."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (_BROKER_FILES, hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return


def _kill_orphan(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option mosquitto sets: a port held only by TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """Wait until ``host:port`` accepts TCP connections.

    Args:
        host: Address to connect to.
        port: Port to connect to.
        timeout_s: How long to keep trying.

    Returns:
        True once a connection succeeded, False if ``timeout_s`` passed first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def find_mosquitto() -> Path:
    """Locate the ``mosquitto`` binary.

    Returns:
        The binary's path: from ``PATH`` first, then the usual sbin folders.

    Raises:
        FileNotFoundError: Mosquitto is not installed.
    """
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for candidate in _FALLBACK_PATHS:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    raise FileNotFoundError(
        "the mosquitto broker binary was not found on PATH or in /usr/sbin; "
        "install it (Debian/Ubuntu: apt-get install mosquitto, macOS: brew install mosquitto)"
    )


class MosquittoProcess:
    """One ``mosquitto`` process listening on 127.0.0.1.

    Args:
        port: TCP port; 0 picks a free one at the first ``start``. ``restart``
            always reuses the port of the first start.
        workdir: Folder for the config and the broker log (``mosquitto.log``).
            None uses a temporary folder that ``stop`` removes.
        extra_config: Lines appended to the generated ``mosquitto.conf`` (ACLs,
            a password file, other listeners...).
        anonymous: whether clients without credentials are let in.

    Raises:
        ValueError: ``port`` is out of range.
    """

    def __init__(self, port: int = 0, workdir: Path | None = None, extra_config: str = "",
                 *, anonymous: bool = True) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self._requested_port = port
        self._port = port
        self._own_workdir = workdir is None
        self._workdir = workdir
        self._extra_config = extra_config
        self._anonymous = anonymous
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._reaper: weakref.finalize[[subprocess.Popen[bytes]], MosquittoProcess] | None = None

    @property
    def port(self) -> int:
        """The broker's TCP port (0 before the first start on an automatic port)."""
        return self._port

    @property
    def url(self) -> str:
        """The broker's address as ``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The broker's log file (stderr), once started."""
        return None if self._workdir is None else self._workdir / "mosquitto.log"

    def config_text(self) -> str:
        """Render the ``mosquitto.conf`` this process runs with.

        Returns:
            The config file's contents.
        """
        lines = [
            f"listener {self._port} 127.0.0.1",
            f"allow_anonymous {'true' if self._anonymous else 'false'}",
            "persistence false",
            "max_queued_messages 10000",
            f"max_packet_size {_MAX_PACKET_BYTES}",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_timestamp true",
            "connection_messages true",
        ]
        if self._extra_config:
            lines.append(self._extra_config.rstrip("\n"))
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the broker and wait until its port accepts connections.

        Args:
            timeout_s: How long to wait for the broker to come up.

        Raises:
            FileNotFoundError: Mosquitto is not installed.
            RuntimeError: The broker is already running.
            TransportError: The broker exited or did not listen within ``timeout_s``.
        """
        if self.running:
            raise RuntimeError(f"mosquitto is already running on port {self._port}")
        binary = find_mosquitto()
        automatic = self._port == 0
        attempts = _PORT_ATTEMPTS if automatic else 1
        for attempt in range(1, attempts + 1):
            if automatic:
                self._port = free_port()
            try:
                self._spawn(binary, timeout_s)
                return
            except TransportError:
                if attempt == attempts:
                    if automatic:
                        self._port = 0
                    raise
                # another process may have taken the port we picked: try a new one

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL if it has not exited in time.

        Stopping a broker that is not running only cleans up.

        Args:
            timeout_s: How long to wait after SIGTERM before SIGKILL.
        """
        self._terminate(timeout_s)
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its password and ACL files (revocation)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """Crash the broker with SIGKILL: no clean shutdown, every client is cut off.

        Sessions and retained messages are lost (persistence is off), as after a
        real crash of a broker without a persistence file.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5.0)
        self._proc = None
        self._close_log()

    def restart(self, timeout_s: float = 10.0) -> None:
        """Stop the broker if it runs, then start it again on the same port.

        Args:
            timeout_s: How long to wait for the broker to come back.

        Raises:
            FileNotFoundError: Mosquitto is not installed.
            TransportError: The broker did not come back within ``timeout_s``.
        """
        self._terminate(5.0)
        if self._port == 0:
            self.start(timeout_s)
            return
        deadline = time.monotonic() + timeout_s
        while True:  # the old socket may linger for a moment after a crash
            try:
                self._spawn(find_mosquitto(), max(deadline - time.monotonic(), 0.5))
                return
            except TransportError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def log_tail(self, max_bytes: int = 4000) -> str:
        """Return the end of the broker's log, for error messages.

        Args:
            max_bytes: How much of the log's end to return.

        Returns:
            The last ``max_bytes`` of the log, or "" if there is none.
        """
        path = self.log_path
        if path is None or not path.exists():
            return ""
        with path.open("rb") as handle:
            handle.seek(max(path.stat().st_size - max_bytes, 0))
            return handle.read().decode("utf-8", errors="replace")

    def __enter__(self) -> MosquittoProcess:
        """Start the broker for a ``with`` block.

        Raises:
            FileNotFoundError: Mosquitto is not installed.
            TransportError: The broker did not come up.
        """
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker at the end of a ``with`` block."""
        self.stop()

    def _spawn(self, binary: Path, timeout_s: float) -> None:
        if not _port_is_free(self._port):
            # Checked up front: mosquitto would exit, but only after our probe
            # may already have reached the other listener.
            raise TransportError(f"port {self._port} on 127.0.0.1 is already in use")
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="edgefleet-mosquitto-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        config = self._workdir / "mosquitto.conf"
        config.write_text(self.config_text(), encoding="utf-8")
        log_path = self._workdir / "mosquitto.log"
        self._log = log_path.open("ab")
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [str(binary), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,  # a Ctrl-C in the test runner is not the broker's
            preexec_fn=_more_files,
        )
        # Its own session outlives us: kill it if this object is dropped unstopped
        # or the interpreter exits first.
        self._reaper = weakref.finalize(self, _kill_orphan, self._proc)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            # Alive after the port answered: the listener is ours, not another
            # process's that made mosquitto fail to bind.
            if wait_for_port("127.0.0.1", self._port, timeout_s=0.1) and self._proc.poll() is None:
                return
        code = self._proc.poll()
        if code is None:
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5.0)
        self._proc = None
        self._close_log()
        what = f"exited with code {code}" if code is not None else f"not up in {timeout_s:g}s"
        raise TransportError(f"mosquitto on port {self._port} {what}; log tail:\n{self.log_tail()}")

    def _terminate(self, timeout_s: float) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)
        self._proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._reaper is not None:
            self._reaper.detach()
            self._reaper = None
        if self._log is not None:
            self._log.close()
            self._log = None
