"""Network faults between one agent and its broker, on loopback.

``LinkProxy`` is a TCP relay: point an agent at ``proxy.url`` instead of the
broker and the test holds that agent's network cable.

- ``cut()`` resets every relayed connection (both ends see a TCP RST, as when a
  router drops the session) and resets new ones until ``restore()``.
- ``blackhole()`` silently swallows traffic on current and new connections,
  as when a cable is unplugged: neither end hears anything, so only keep-alive
  timeouts notice. ``restore()`` then resets those stale connections.

Example::

    with LinkProxy("127.0.0.1", broker.port) as link:
        agent = Agent(broker_url=link.url, ...)
        link.cut()       # the agent is offline
        link.restore()   # it reconnects
"""

from __future__ import annotations

import contextlib
import enum
import logging
import select
import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["LinkProxy", "LinkState"]

logger = logging.getLogger(__name__)

_POLL_S = 0.1  # how often blocked threads look at their stop flags
_SEND_TIMEOUT_S = 5.0  # a peer that reads nothing for this long loses its link
_CONNECT_TIMEOUT_S = 3.0
_JOIN_TIMEOUT_S = 1.0
_CHUNK_BYTES = 65536


class LinkState(enum.Enum):
    """What the proxy does with traffic."""

    UP = "up"
    CUT = "cut"
    BLACKHOLE = "blackhole"


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` so the peer gets a RST instead of an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One client connection and, unless black-holed from the start, its upstream."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []
        self._open_directions = 2 if upstream is not None else 1
        self._lock = threading.Lock()

    def abort(self) -> None:
        """Reset both ends."""
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)

    def finish_direction(self) -> bool:
        """Record that one direction ended with a FIN; close once both have.

        Returns:
            True when this call closed the link.
        """
        with self._lock:
            self._open_directions -= 1
            if self._open_directions > 0 or self.closed.is_set():
                return False
            self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        return True

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0.0))


class LinkProxy:
    """A TCP relay on 127.0.0.1 whose link a test can cut and restore.

    Args:
        upstream_host: The broker's address.
        upstream_port: The broker's port.
        listen_port: The port clients connect to; 0 picks a free one.

    Raises:
        ValueError: A port is out of range.
    """

    def __init__(self, upstream_host: str, upstream_port: int, listen_port: int = 0) -> None:
        for name, value in (("upstream_port", upstream_port), ("listen_port", listen_port)):
            if not 0 <= value <= 65535:
                raise ValueError(f"{name} must be in 0..65535, got {value}")
        self._upstream = (upstream_host, upstream_port)
        self._listen_port = listen_port
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._state = LinkState.UP
        self._bytes_up = 0
        self._bytes_down = 0

    @property
    def port(self) -> int:
        """The port clients connect to (0 before ``start`` on an automatic port)."""
        return self._listen_port

    @property
    def url(self) -> str:
        """Where clients connect, as ``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://127.0.0.1:{self._listen_port}"

    @property
    def state(self) -> LinkState:
        """Whether traffic flows, is cut or is black-holed."""
        return self._state

    @property
    def connected(self) -> int:
        """How many client connections the proxy currently holds open."""
        with self._lock:
            return sum(1 for link in self._links if not link.closed.is_set())

    @property
    def bytes_up(self) -> int:
        """Bytes relayed from clients to the upstream since ``start``."""
        return self._bytes_up

    @property
    def bytes_down(self) -> int:
        """Bytes relayed from the upstream to clients since ``start``."""
        return self._bytes_down

    def start(self) -> None:
        """Listen for clients and relay them to the upstream.

        Raises:
            RuntimeError: The proxy is already running.
            OSError: The listening port cannot be bound.
        """
        if self._accept_thread is not None:
            raise RuntimeError("link proxy is already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self._listen_port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.settimeout(_POLL_S)
        self._listen_port = listener.getsockname()[1]
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"linkproxy-{self._listen_port}", daemon=True
        )
        self._accept_thread.start()

    def stop(self) -> None:
        """Reset every connection and stop listening; returns within about a second."""
        self._stopping.set()
        thread, self._accept_thread = self._accept_thread, None
        if thread is not None:
            thread.join(_JOIN_TIMEOUT_S)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        self._abort_all()

    def cut(self) -> None:
        """Take the network away: reset open connections and refuse new ones.

        Returns once the resets are sent.
        """
        self._state = LinkState.CUT
        self._abort_all()

    def blackhole(self) -> None:
        """Make the network silently lose everything, like an unplugged cable.

        Open connections stay open but nothing crosses them; new connections
        are accepted and never answered.
        """
        self._state = LinkState.BLACKHOLE

    def restore(self) -> None:
        """Give the network back: new connections are relayed again.

        Connections left from a black-hole are reset (their streams lost bytes
        and cannot be resumed); clients are expected to reconnect.
        """
        previous, self._state = self._state, LinkState.UP
        if previous is LinkState.BLACKHOLE:
            self._abort_all()

    def __enter__(self) -> LinkProxy:
        """Start the proxy for a ``with`` block.

        Raises:
            OSError: The listening port cannot be bound.
        """
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the proxy at the end of a ``with`` block."""
        self.stop()

    def _abort_all(self) -> None:
        with self._lock:
            links = list(self._links)
        for link in links:
            link.abort()
        with self._lock:
            self._links.difference_update(links)
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        for link in links:
            link.join(max(deadline - time.monotonic(), 0.0))

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._stopping.is_set():
                    logger.warning("link proxy on port %d stopped accepting", self._listen_port)
                return
            client.settimeout(None)
            if self._state is LinkState.CUT:
                _reset(client)
                continue
            upstream = None
            if self._state is LinkState.UP:
                try:
                    upstream = socket.create_connection(self._upstream, timeout=_CONNECT_TIMEOUT_S)
                except OSError:
                    _reset(client)  # the broker is down: the client sees its connection die
                    continue
            self._add_link(_Link(client, upstream))

    def _add_link(self, link: _Link) -> None:
        for sock in (link.client, link.upstream):
            if sock is not None:
                sock.settimeout(_SEND_TIMEOUT_S)  # bounds sendall; reads use select
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.threads.append(
            threading.Thread(target=self._pump, args=(link, True), daemon=True, name="linkproxy-up")
        )
        if link.upstream is not None:
            link.threads.append(
                threading.Thread(
                    target=self._pump, args=(link, False), daemon=True, name="linkproxy-down"
                )
            )
        with self._lock:
            self._links.add(link)
        for thread in link.threads:
            thread.start()

    def _pump(self, link: _Link, upward: bool) -> None:
        src = link.client if upward else link.upstream
        dst = link.upstream if upward else link.client
        assert src is not None
        orderly = False
        try:
            while not link.closed.is_set() and not self._stopping.is_set():
                readable, _, _ = select.select([src], [], [], _POLL_S)
                if not readable:
                    continue
                data = src.recv(_CHUNK_BYTES)
                if not data:
                    orderly = True
                    break
                if self._state is LinkState.BLACKHOLE or dst is None:
                    continue
                dst.sendall(data)
                with self._lock:
                    if upward:
                        self._bytes_up += len(data)
                    else:
                        self._bytes_down += len(data)
        except (OSError, ValueError):
            pass  # reset by the peer, closed by abort(), or a send timed out
        if (
            self._state is LinkState.BLACKHOLE
            and not link.closed.is_set()
            and not self._stopping.is_set()
        ):
            return  # an unplugged cable carries no FIN or RST; restore() resets the link
        if orderly and dst is not None and not link.closed.is_set():
            # Pass an orderly close on as one, so data sent just before it
            # (an MQTT DISCONNECT) is not destroyed by a reset.
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            if not link.finish_direction():
                return
        else:
            link.abort()
        with self._lock:
            self._links.discard(link)
