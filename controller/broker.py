"""An in-process MQTT 3.1.1 broker for the no-services default.

``edgefleet demo`` and ``edgefleet controller serve`` without ``--broker`` run an
amqtt broker inside the controller process, on its own asyncio event loop in a
daemon thread. Real deployments point at Mosquitto or EMQX instead; this broker
is sized for a demo or a developer machine, not for a fleet.

What it gives the rest of edgefleet, matching Mosquitto where it matters:

- anonymous access, QoS 0/1, retained messages, wildcard subscriptions;
- last will, published when a client's connection ends without DISCONNECT,
  including when the client goes silent past 1.5 x its keep-alive (amqtt alone
  never enforces keep-alive, so a vanished device would never "die");
- persistent sessions (``clean_session=False``): subscriptions survive a
  disconnect and QoS 1/2 messages are queued for the client while it is away.

Still unlike Mosquitto (amqtt 0.12): messages go out at the subscription's QoS
even if published lower; no packet size limit; a QoS 1 message not acknowledged
within 5 s is dropped, not redelivered on the next connection.

Example::

    with EmbeddedBroker() as broker:
        client.connect("127.0.0.1", broker.port)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from types import TracebackType
from typing import Any

from amqtt.adapters import ReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.mqtt.constants import QOS_0
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from edgefleet.contract import TransportError

__all__ = ["EmbeddedBroker"]

logger = logging.getLogger(__name__)

_LISTENER = "default"
# A client that opens a socket but sends no CONNECT is dropped after this long.
_CONNECT_TIMEOUT_S = 10.0
# Mosquitto and the MQTT spec drop a client after 1.5 x its keep-alive of silence.
_KEEPALIVE_GRACE = 1.5
_CONNECT_PREFIX_MAX = 32  # a CONNECT's keep-alive is within its first bytes (3.1 and 3.1.1)
# Upper bound for handing a reconnecting client the messages queued while it was away.
_QUEUE_FLUSH_TIMEOUT_S = 30.0


class _OpenAuthPlugin(BaseAuthPlugin):
    """Lets every client in, as a *named* session.

    amqtt's own ``AnonymousAuthPlugin`` marks sessions anonymous, and amqtt then
    neither queues messages for them nor keeps their session after a disconnect,
    which would silently turn ``clean_session=False`` into a clean session.
    """

    async def authenticate(self, *, session: Session) -> bool:
        """Accept ``session``'s client; always True."""
        session.is_anonymous = False
        return True


def _connect_keepalive_s(prefix: bytes) -> int | None:
    """Read the keep-alive from the first bytes of an MQTT CONNECT packet.

    Args:
        prefix: The bytes received so far on a new connection.

    Returns:
        The keep-alive in seconds (0 means "none"), or None when ``prefix`` is
        still too short to tell. Malformed input yields 0, so the broker's own
        CONNECT parsing decides what to do with the client.
    """
    if not prefix:
        return None
    if prefix[0] >> 4 != 1:  # not a CONNECT
        return 0
    index = 1
    for _ in range(4):  # remaining length: 1 to 4 bytes
        if index >= len(prefix):
            return None
        more = prefix[index] & 0x80
        index += 1
        if not more:
            break
    else:
        return 0
    if index + 2 > len(prefix):
        return None
    name_len = int.from_bytes(prefix[index : index + 2], "big")
    if name_len > 6:
        return 0
    index += 2 + name_len + 2  # protocol name, level, connect flags
    if index + 2 > len(prefix):
        return None
    return int.from_bytes(prefix[index : index + 2], "big")


class _WatchedReader(ReaderAdapter):
    """A stream reader that ends the connection when the client falls silent.

    Before CONNECT is complete the client gets ``_CONNECT_TIMEOUT_S``; afterwards
    ``1.5 x keep-alive`` since the last byte it sent. On expiry the transport is
    aborted and reads report end of stream, so amqtt treats the client as gone
    abnormally and publishes its will.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._prefix = b""
        self._idle_limit_s: float | None = _CONNECT_TIMEOUT_S
        self._keepalive_known = False
        self._last_rx = time.monotonic()
        self._expired = False

    async def read(self, n: int = -1) -> bytes:
        """Read exactly ``n`` bytes (or what is there when ``n`` is -1).

        Args:
            n: How many bytes to read; -1 for whatever is available.

        Returns:
            The bytes read; empty once the client has timed out.

        Raises:
            asyncio.IncompleteReadError: The client closed the stream mid-read.
        """
        if self._expired:
            return b""
        pending = self._reader.read(n) if n == -1 else self._reader.readexactly(n)
        if self._idle_limit_s is None:
            data = await pending
        else:
            remaining = self._last_rx + self._idle_limit_s - time.monotonic()
            try:
                data = await asyncio.wait_for(pending, timeout=max(remaining, 0.0))
            except TimeoutError:
                self._expire()
                return b""
        self._last_rx = time.monotonic()
        if not self._keepalive_known:
            self._learn_keepalive(data)
        return data

    def feed_eof(self) -> None:
        """Mark the underlying stream as ended."""
        self._reader.feed_eof()

    def _learn_keepalive(self, data: bytes) -> None:
        self._prefix += data
        keepalive = _connect_keepalive_s(self._prefix)
        if keepalive is None and len(self._prefix) < _CONNECT_PREFIX_MAX:
            return
        self._keepalive_known = True
        self._prefix = b""
        self._idle_limit_s = keepalive * _KEEPALIVE_GRACE if keepalive else None

    def _expire(self) -> None:
        self._expired = True
        peer = self._writer.get_extra_info("peername")
        logger.info("dropping silent MQTT client %s (keep-alive expired)", peer)
        self._writer.transport.abort()


class _FleetBroker(Broker):
    """amqtt's broker with its session and retained-message deviations fixed.

    Checked against amqtt 0.12; each override is pinned by a test in
    ``tests/test_brokers.py``:

    - On every CONNECT, amqtt sends the retained messages matching *every*
      subscription in the broker (other clients' included) to the new client,
      and re-sends them on each persistent-session resume. Here retained
      messages go out only in answer to a SUBSCRIBE, as in MQTT 3.1.1.
    - Messages queued for an offline persistent session were delivered with
      the retain flag set; they are delivered as ordinary messages.
    - A clean-session client reusing a connected client id did not take the
      old connection over: both stayed connected. The old one is now closed.
    - The offline queue had no bound; past ``max_queued`` messages per session
      new ones are dropped and counted, like Mosquitto's ``max_queued_messages``.
    """

    def __init__(self, config: dict[str, Any], *, max_queued: int) -> None:
        super().__init__(config, loop=asyncio.get_running_loop())
        self.max_queued = max_queued
        self.dropped_queued = 0
        self._fresh_subscriptions: set[tuple[str | None, str]] = set()

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        """Subscribe ``session``; returns the granted QoS or 0x80 (refused)."""
        granted = await super().add_subscription(subscription, session)
        if granted != 0x80:
            self._fresh_subscriptions.add((session.client_id, subscription[0]))
        return granted

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        key = (session.client_id, subscription[0])
        if key not in self._fresh_subscriptions:
            return  # a reconnect, or another client's filter: nothing is due
        self._fresh_subscriptions.discard(key)
        await super()._publish_retained_messages_for_subscription(subscription, session)

    async def _delete_session(self, client_id: str) -> None:
        entry = self._sessions.get(client_id)
        if entry is not None and entry[0].transitions.is_connected():
            # A clean-session CONNECT reusing a live client id: amqtt would leave
            # the old connection running beside the new one. End it, as amqtt
            # does for persistent sessions (its will goes out, as with Mosquitto).
            handler = entry[1]
            logger.info("MQTT client %s connected again; closing its old connection", client_id)
            await handler.handle_connection_closed()
            await handler.stop()
        await super()._delete_session(client_id)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = []
        while not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            qos = QOS_0 if queued.qos is None else queued.qos
            publish = handler.mqtt_publish(queued.topic, queued.data, qos, retain=False)
            tasks.append(asyncio.ensure_future(publish))
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=_QUEUE_FLUSH_TIMEOUT_S)
        for task in pending:
            task.cancel()
        failed = sum(1 for task in done if not task.cancelled() and task.exception() is not None)
        if failed or pending:
            logger.warning(
                "MQTT client %s: %d queued messages were not acknowledged and are lost",
                session.client_id,
                failed + len(pending),
            )

    async def _retain_broadcast_message(
        self, broadcast: dict[str, Any], qos: int, target_session: Session
    ) -> None:
        if target_session.retained_messages.qsize() >= self.max_queued:
            self.dropped_queued += 1
            if self.dropped_queued % 1000 == 1:  # the first drop, then every thousandth
                logger.warning(
                    "offline queue of MQTT client %s is full (%d); dropped a message on %s"
                    " (%d dropped so far)",
                    target_session.client_id,
                    self.max_queued,
                    broadcast.get("topic"),
                    self.dropped_queued,
                )
            return
        await super()._retain_broadcast_message(broadcast, qos, target_session)


class EmbeddedBroker:
    """An amqtt broker running in a daemon thread of this process.

    Args:
        host: Address to listen on.
        port: TCP port; 0 picks a free one (see ``port`` after ``start``). A
            broker restarted after ``stop`` listens on the same port again.
        session_expiry_s: Forget a persistent session this long after its client
            disconnected; None keeps it for the broker's lifetime.
        max_queued_messages: Per offline persistent session, how many QoS 1/2
            messages are kept for it; later ones are dropped and counted in
            ``dropped_messages``.

    Raises:
        ValueError: ``port`` or ``max_queued_messages`` is out of range.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        session_expiry_s: int | None = None,
        max_queued_messages: int = 10_000,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        if max_queued_messages < 1:
            raise ValueError(f"max_queued_messages must be >= 1, got {max_queued_messages}")
        self._host = host
        self._port = port
        self._session_expiry_s = session_expiry_s
        self._max_queued = max_queued_messages
        self._broker: _FleetBroker | None = None
        self._dropped_before = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        _quiet_amqtt_logging()

    @property
    def port(self) -> int:
        """The TCP port the broker listens on (0 before the first start)."""
        return self._port

    @property
    def url(self) -> str:
        """The broker's address as ``mqtt://HOST:PORT``."""
        return f"mqtt://{self._host}:{self._port}"

    @property
    def dropped_messages(self) -> int:
        """Messages dropped because an offline session's queue was full."""
        broker = self._broker
        return self._dropped_before + (broker.dropped_queued if broker is not None else 0)

    @property
    def running(self) -> bool:
        """Whether the broker thread is up and serving."""
        return self._thread is not None and self._thread.is_alive() and self._ready.is_set()

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the broker and return once it accepts connections.

        Args:
            timeout_s: How long to wait for the listener to come up.

        Raises:
            RuntimeError: The broker is already running.
            TransportError: The broker could not start (port taken, bad
                configuration) or did not come up within ``timeout_s``.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("embedded broker is already running")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="edgefleet-mqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self._request_stop()
            self._thread.join(timeout_s)
            raise TransportError(f"embedded MQTT broker did not start within {timeout_s:g}s")
        if self._error is not None:
            self._thread.join(timeout_s)
            error = self._error
            raise TransportError(
                f"embedded MQTT broker could not listen on {self._host}:{self._port}: {error}"
            ) from error
        logger.info("embedded MQTT broker listening on %s", self.url)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker, dropping every client connection.

        Clients see their connection end; sessions and retained messages are
        discarded. Calling ``stop`` on a stopped broker does nothing.

        Args:
            timeout_s: How long to wait for the broker thread to finish.

        Raises:
            TransportError: The broker thread did not finish within ``timeout_s``.
        """
        thread = self._thread
        if thread is None:
            return
        self._request_stop()
        thread.join(timeout_s)
        if thread.is_alive():
            raise TransportError(f"embedded MQTT broker did not stop within {timeout_s:g}s")
        self._thread = None
        self._ready.clear()

    def __enter__(self) -> EmbeddedBroker:
        """Start the broker for a ``with`` block.

        Raises:
            TransportError: The broker could not start.
        """
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker at the end of a ``with`` block.

        Raises:
            TransportError: The broker did not stop in time.
        """
        self.stop()

    def _request_stop(self) -> None:
        loop, stop = self._loop, self._stop_requested
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            # The listener is ours (see _serve); amqtt is handed accepted sockets.
            "listeners": {_LISTENER: {"type": "external", "bind": f"{self._host}:{self._port}"}},
            # No event/packet loggers, no $SYS publisher, no files.
            "plugins": {f"{__name__}.{_OpenAuthPlugin.__qualname__}": {}},
        }
        if self._session_expiry_s is not None:
            config["session_expiry_interval"] = self._session_expiry_s
        return config

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(); the thread must not die noisily
            if not self._ready.is_set():
                self._error = exc
            else:
                logger.exception("embedded MQTT broker stopped with an error")
        finally:
            with contextlib.suppress(Exception):
                _cancel_remaining_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            self._loop = None
            self._stop_requested = None
            loop.close()
            self._ready.set()

    async def _serve(self) -> None:
        self._stop_requested = asyncio.Event()
        broker = _FleetBroker(self._config(), max_queued=self._max_queued)
        self._broker = broker
        await broker.start()

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.add(writer)
            try:
                await broker.external_connected(
                    _WatchedReader(reader, writer), StreamWriterAdapter(writer), _LISTENER
                )
            except Exception:  # one client's failure must not take the listener down
                logger.debug("MQTT client connection ended with an error", exc_info=True)
            finally:
                self._writers.discard(writer)
                writer.transport.abort()

        try:
            server = await asyncio.start_server(on_connection, self._host, self._port)
        except OSError:
            await asyncio.wait_for(broker.shutdown(), timeout=5.0)
            raise
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop_requested.wait()
        finally:
            server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            try:
                await asyncio.wait_for(broker.shutdown(), timeout=3.0)
            except Exception:
                logger.warning("embedded MQTT broker did not shut down cleanly", exc_info=True)
            self._dropped_before += broker.dropped_queued
            self._broker = None


def _cancel_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(
            asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=2.0)
        )


def _quiet_amqtt_logging() -> None:
    """Keep amqtt's per-connection chatter out of the controller's log.

    Only loggers nobody configured are touched, so ``logging`` setup by the
    application (e.g. DEBUG for amqtt while investigating) still wins.
    """
    for name in ("amqtt", "transitions"):
        named = logging.getLogger(name)
        if named.level == logging.NOTSET:
            named.setLevel(logging.WARNING)
