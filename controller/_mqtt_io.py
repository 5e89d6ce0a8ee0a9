"""The controller's MQTT socket, read in large pieces and written in batches.

paho reads a packet's fixed header a byte at a time and sends every packet it queues
with its own ``send``: a status costs the controller three ``recv`` calls, a ``select``
and, for its PUBACK, a ``send`` that on loopback also runs the broker's side of TCP. In
a rollout of a thousand devices those calls were half of the MQTT thread's time.

``BatchingClient`` gives paho a socket (``_Batched``) that reads up to 64 KiB at once
and serves paho's small reads from there, and that keeps what paho sends until the
bytes already received are handled; then it goes out in one ``send``. A socket with
received bytes not yet read says so (``pending``, as paho asks of TLS sockets), so
paho reads on without waiting in ``select``. Only plain TCP is wrapped: TLS and
WebSocket sockets are paho's own.

Nothing is held longer than one pass of paho's loop: what is written is flushed before
the loop waits again, and whatever the kernel does not take at once stays queued, with
the loop told to wait until the socket can take more.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import paho.mqtt.client as mqtt

__all__ = ["BatchingClient"]

log = logging.getLogger(__name__)

READ_BYTES = 65536  # one recv: many statuses and acks, or one block request's worth
FLUSH_BYTES = 262144  # written bytes that go out even while more input waits


class _Batched:
    """A connected TCP socket as paho uses it: ``recv`` from a buffer, ``send`` into one."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._in = b""
        self._at = 0
        self._out = bytearray()

    def __getattr__(self, name: str) -> Any:  # fileno, setblocking, setsockopt…
        return getattr(self._sock, name)

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def pending(self) -> int:
        """Bytes received and not yet read (paho reads on without ``select``)."""
        return len(self._in) - self._at

    def recv(self, size: int) -> bytes:
        if self._at >= len(self._in):
            data = self._sock.recv(max(size, READ_BYTES))  # b"": the broker closed
            if len(data) <= size:
                return data
            self._in, self._at = data, 0
        piece = self._in[self._at:self._at + size]
        self._at += len(piece)
        return piece

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self._out += data
        return len(data)

    @property
    def unsent(self) -> int:
        return len(self._out)

    def flush(self) -> None:
        """Send what is queued, as much as the kernel takes now.

        Raises:
            OSError: the connection broke (what was queued is dropped; paho resends
                unacknowledged QoS 1 messages on the next connection).
        """
        while self._out:
            try:
                sent = self._sock.send(self._out)
            except BlockingIOError:
                return
            except OSError:
                self._out.clear()
                raise
            del self._out[:sent]

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a DISCONNECT paho queued last, if it fits
            self.flush()
        self._sock.close()


class BatchingClient(mqtt.Client):
    """A paho client whose plain TCP connection is batched (see the module doc)."""

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        # paho's own names for a TLS or WebSocket session: when they are not there (another
        # paho), the socket is left as it is
        if getattr(self, "_ssl", True) or getattr(self, "_transport", "") != "tcp":
            return sock
        return _Batched(sock)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        sock = self._sock
        # what is buffered already costs no system call: read it all before writing
        while rc == mqtt.MQTT_ERR_SUCCESS and isinstance(sock, _Batched) and sock.pending() \
                and self._sock is sock:
            rc = super().loop_read(max_packets)
        return rc

    def loop_write(self) -> mqtt.MQTTErrorCode:
        rc = super().loop_write()
        sock = self._sock
        if isinstance(sock, _Batched) and (not sock.pending() or sock.unsent >= FLUSH_BYTES):
            try:
                sock.flush()
            except OSError as exc:  # the next read finds the connection gone
                log.info("sending to the broker failed: %s", exc)
        return rc

    def want_write(self) -> bool:
        sock = self._sock
        return super().want_write() or (isinstance(sock, _Batched) and sock.unsent > 0)
