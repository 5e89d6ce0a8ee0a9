"""systemd readiness and watchdog notifications (``sd_notify``), standard library only.

Under a ``Type=notify`` unit, systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or
an abstract-namespace name written with a leading ``@``) and, with ``WatchdogSec=``,
``WATCHDOG_USEC`` and ``WATCHDOG_PID``. Outside systemd none of them is set and every
call here is a no-op, so the agent runs the same from a shell.

``notify("READY=1")`` tells systemd the service is up; a :class:`Watchdog` sends
``WATCHDOG=1`` at half the interval for as long as a liveness check holds. When the
check fails the pings stop, systemd's watchdog fires and ``Restart=`` starts a fresh
process — the way a daemon whose worker thread died gets restarted instead of hanging
on half-alive.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

__all__ = ["Watchdog", "notify", "watchdog_interval_s"]

log = logging.getLogger(__name__)


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock and other socket kinds are not used on devices


def notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send one notification (``"READY=1"``, ``"STOPPING=1"``, ``"STATUS=…"``…) to systemd.

    Args:
        message: newline-separated ``KEY=VALUE`` assignments.
        environ: where to read ``NOTIFY_SOCKET`` (default: ``os.environ``).

    Returns:
        True when the datagram was sent; False when not running under systemd
        (no or unusable ``NOTIFY_SOCKET``) or the socket refused it. Never raises for
        socket trouble: a notification is advisory, the service keeps running.
    """
    env = os.environ if environ is None else environ
    address = _address(env.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify %r failed: %s", message.split("\n", 1)[0], exc)
        return False
    return True


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd set for this process, in seconds; None when off.

    ``WATCHDOG_PID``, when present, must name this process (the variable is inherited by
    children, which must not ping on their parent's behalf).
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Watchdog:
    """Ping systemd's watchdog while ``alive()`` holds, from a daemon thread.

    Args:
        alive: liveness check, called before every ping (e.g. ``Agent.alive``).
        interval_s: the watchdog timeout; default: from ``WATCHDOG_USEC``. Pings go out
            every ``interval_s / 2``.
        send: how a ping is sent (default: :func:`notify`).
    """

    def __init__(self, alive: Callable[[], bool], *, interval_s: float | None = None,
                 send: Callable[[str], bool] = notify) -> None:
        if interval_s is not None and interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._alive = alive
        self._interval_s = interval_s if interval_s is not None else watchdog_interval_s()
        self._send = send
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0

    @property
    def enabled(self) -> bool:
        """Whether a watchdog interval is known (systemd asked for pings)."""
        return self._interval_s is not None

    def start(self) -> bool:
        """Start pinging; returns False (and does nothing) when no watchdog is configured."""
        if self._interval_s is None or self._thread is not None:
            return self._thread is not None
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop pinging and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        assert self._interval_s is not None
        period = self._interval_s / 2
        while not self._stop.is_set():
            try:
                ok = self._alive()
            except Exception:  # a broken check is a dead service, not a dead watchdog
                log.exception("watchdog liveness check raised")
                ok = False
            if not ok:
                log.error("liveness check failed: withholding watchdog pings so systemd "
                          "restarts the service")
                return
            if self._send("WATCHDOG=1"):
                self.pings += 1
            self._stop.wait(period)
