"""systemd notifications against a real AF_UNIX datagram socket, as systemd would bind it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.sdnotify import Watchdog, notify, watchdog_interval_s


class NotifySocket:
    """What systemd listens on: a datagram socket collecting what the service sends."""

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address = address  # the NOTIFY_SOCKET value
        self.sock = sock

    def receive(self, timeout_s: float) -> list[tuple[float, str]]:
        """Every datagram arriving within ``timeout_s``, with its arrival time."""
        got: list[tuple[float, str]] = []
        end = time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                break
        return got

    def wait_for(self, message: str, timeout_s: float) -> list[str]:
        """Datagrams up to and including the first one holding ``message``."""
        seen: list[str] = []
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for _, text in self.receive(min(0.2, end - time.monotonic())):
                seen.append(text)
                if message in text.split("\n"):
                    return seen
        raise AssertionError(f"no {message!r} within {timeout_s} s; got {seen}")


@pytest.fixture
def systemd_socket() -> Iterator[NotifySocket]:
    with tempfile.TemporaryDirectory(prefix="sd") as tmp:  # short: sun_path is 108 bytes
        path = str(Path(tmp) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            yield NotifySocket(path, sock)


def test_ready_reaches_the_socket_systemd_named(systemd_socket):
    assert notify("READY=1\nSTATUS=serving", environ={"NOTIFY_SOCKET": systemd_socket.address})
    assert [text for _, text in systemd_socket.receive(0.5)] == ["READY=1\nSTATUS=serving"]


def test_abstract_namespace_socket_is_reached_through_its_at_name():
    name = f"edgefleet-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name})
        sock.settimeout(1)
        assert sock.recv(100) == b"READY=1"


def test_outside_systemd_notify_and_watchdog_do_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notify("READY=1") is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": "relative/path"}) is False
    gone = str(tmp_path / "nobody-listens")
    assert notify("READY=1", environ={"NOTIFY_SOCKET": gone}) is False  # no exception
    watchdog = Watchdog(lambda: True)
    assert not watchdog.enabled and watchdog.start() is False


def test_watchdog_interval_comes_from_watchdog_usec_for_this_process_only():
    me = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({}) is None


def test_watchdog_pings_at_half_the_interval_while_alive(systemd_socket, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", systemd_socket.address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # 1 s: a ping every 0.5 s
    watchdog = Watchdog(lambda: True)
    assert watchdog.start()
    try:
        pings = systemd_socket.receive(3.0)
    finally:
        watchdog.stop()
    assert {text for _, text in pings} == {"WATCHDOG=1"}
    # about six; fewer when a loaded machine runs the thread late, never a flood
    assert 3 <= len(pings) <= 7, len(pings)
    gaps = [b[0] - a[0] for a, b in zip(pings, pings[1:], strict=False)]
    assert max(gaps) < 1.0, gaps  # never as late as the timeout itself
    assert systemd_socket.receive(0.3) == []  # stop() ends the pings


def test_watchdog_withholds_pings_once_the_agent_is_not_alive(systemd_socket, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", systemd_socket.address)
    alive = threading.Event()
    alive.set()
    watchdog = Watchdog(alive.is_set, interval_s=0.1)
    watchdog.start()
    try:
        systemd_socket.wait_for("WATCHDOG=1", timeout_s=10)  # pinging while alive
        pings_before = watchdog.pings
        alive.clear()  # a worker thread died
        # the watchdog's thread ends at its next check, having sent at most the one ping
        # that was already past its check
        assert watchdog._thread is not None
        watchdog._thread.join(10)
        assert not watchdog._thread.is_alive()
        assert watchdog.pings - pings_before <= 1
    finally:
        watchdog.stop()


def test_a_raising_liveness_check_counts_as_dead():
    def broken() -> bool:
        raise RuntimeError("boom")

    sent: list[str] = []

    def send(message: str) -> bool:
        sent.append(message)
        return True

    watchdog = Watchdog(broken, interval_s=0.05, send=send)
    watchdog.start()
    assert watchdog._thread is not None
    watchdog._thread.join(10)  # it gives up at its first check
    assert not watchdog._thread.is_alive()
    assert sent == []


def test_agent_run_tells_systemd_ready_pings_and_stopping(tmp_path, trust_root, systemd_socket):
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "sd-1"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'trust_root = "{trust_root}"\nbroker_url = "mqtt://127.0.0.1:9"\n'
                      "api_port = 0\n")
    env = {**os.environ, "NOTIFY_SOCKET": systemd_socket.address, "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "agent", "run",
                             "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        seen = systemd_socket.wait_for("READY=1", timeout_s=60)
        assert not [s for s in seen if s != "WATCHDOG=1" and "READY=1" not in s]
        pings = systemd_socket.receive(2.0)  # every 0.2 s: about ten
        assert 3 <= sum(text == "WATCHDOG=1" for _, text in pings) <= 12
        proc.send_signal(signal.SIGTERM)
        systemd_socket.wait_for("STOPPING=1", timeout_s=10)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate(timeout=10)[0].decode()
    assert "sd-1" in output
