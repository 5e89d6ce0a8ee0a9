"""One network thread for hundreds of paho clients, with emulated links.

``SharedLoop`` implements the agent's ``NetworkLoop``: paho's external-loop API
(``loop_read``/``loop_write``/``loop_misc`` plus the socket open/close/write callbacks)
on one ``selectors`` loop, instead of one ``loop_start`` thread per client. It owns the
clients' (re)connects: at most ``connect_rate`` new TCP connections per second for the
whole loop (a thousand clients reconnecting after a broker restart do not overflow the
broker's listen backlog), each client backing off between its ``reconnect_min_s`` and
``reconnect_max_s`` with jitter, as paho's own loop does.

Per client it can also emulate the link (``shape``), take it away (``partition``) and
cut it like a crashed process (``sever``):

- bandwidth and latency: every message to the device waits until the emulated downlink
  has carried its bytes (``bandwidth_bps``), then ``latency_s`` more (the round trip,
  applied on the way in); messages keep their order.
- loss: a fraction of the chunk answers (``fetch/resp``) never arrive, so the agent's
  fetch times out and resumes, as it would behind a lossy link. Other messages are not
  dropped: over TCP, loss shows as delay, and MQTT's QoS 1 would resend them.
- partition: nothing crosses the link and nothing says so (no FIN, no RST), like an
  unplugged uplink: paho notices after its keep-alive, the broker after 1.5 times it,
  and reconnects fail until ``heal``.
- sever: the socket is shut down at once, as when the device's process dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import logging
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.contract._sockets import no_delay
from edgefleet.contract.backoff import Backoff

__all__ = ["LinkShape", "SharedLoop"]

log = logging.getLogger(__name__)

_MISC_INTERVAL_S = 1.0  # keep-alives and connection checks, per client
_REMOVE_TIMEOUT_S = 2.0


@dataclasses.dataclass(frozen=True)
class LinkShape:
    """An emulated downlink: bits per second (0: unlimited), round trip and chunk loss."""

    bandwidth_bps: float = 0.0
    latency_s: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.bandwidth_bps < 0 or self.latency_s < 0 or not 0 <= self.loss < 1:
            raise ValueError("bandwidth and latency must be ≥ 0, loss within [0, 1)")


class _Entry:
    """What the loop knows about one client."""

    __slots__ = ("client", "connecting", "deliver", "dropped", "dead", "free_at", "last_at",
                 "backoff", "partitioned", "reconnect_at", "removed", "shape",
                 "sock")

    def __init__(self, client: mqtt.Client, min_s: float, max_s: float,
                 uniform: Callable[[float, float], float]) -> None:
        self.client = client
        self.backoff = Backoff(max(min_s, 0.05), max(max_s, min_s, 0.05), uniform=uniform)
        self.sock: Any = None
        self.reconnect_at: float | None = None
        self.shape: LinkShape | None = None
        self.free_at = 0.0  # when the emulated downlink has carried what it was given
        self.last_at = 0.0  # when the last delayed message is delivered (keeps the order)
        self.partitioned = False
        self.connecting = False  # a connector thread is in paho's reconnect()
        self.dead = False  # severed or removed: never reconnected
        self.removed = threading.Event()
        self.dropped = 0
        self.deliver: Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None] | None = None


class SharedLoop:
    """Drives paho clients from one thread; see the module docstring.

    Args:
        name: the thread's name.
        connect_rate: new TCP connections per second, at most, for all clients.
        seed: seeds the jitter and the emulated loss.
    """

    def __init__(self, name: str = "shared-mqtt", *, connect_rate: float = 400.0,
                 seed: int = 0) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._posted: list[Callable[[], None]] = []
        self._woken = False
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._entries: dict[int, _Entry] = {}  # id(client) → entry
        self._connect_gap = 1.0 / connect_rate
        self._next_connect = 0.0
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        # paho's connect() blocks (up to its connect timeout when the broker's backlog is
        # full); it runs here so the loop keeps every other client alive meanwhile
        self._connector = ThreadPoolExecutor(2, thread_name_prefix=f"{name}-connect")
        self.connects = 0
        self.connect_failures = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; clients still added are left as they are."""
        self._stop.set()
        self._wake()
        self._thread.join(5.0)
        self._connector.shutdown(wait=False, cancel_futures=True)
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        self._sel.close()

    @property
    def clients(self) -> int:
        return len(self._entries)

    # -- NetworkLoop ----------------------------------------------------------------------
    def add(self, client: mqtt.Client, *, reconnect_min_s: float,
            reconnect_max_s: float) -> None:
        """Take over a client on which ``connect_async`` was called; it connects soon."""
        entry = _Entry(client, reconnect_min_s, reconnect_max_s, self._rng.uniform)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        entry.deliver = client.on_message
        client.on_message = self._on_message
        client.user_data_set(entry)
        self._entries[id(client)] = entry  # at once: a remove() right after finds it
        self.call_soon(lambda: self._schedule_connect(entry, 0.0))

    def remove(self, client: mqtt.Client) -> None:
        """Forget a client once its queued packets (a DISCONNECT) are written (≤ 2 s)."""
        entry = self._entries.get(id(client))
        if entry is None:
            return
        entry.dead = True  # the socket closing after the DISCONNECT is not reconnected
        deadline = time.monotonic() + _REMOVE_TIMEOUT_S

        def check() -> None:
            if entry.sock is not None and client.want_write() and \
                    time.monotonic() < deadline and not entry.partitioned:
                self.call_later(0.02, check)
                return
            self._forget(entry)
        self.call_soon(check)
        if threading.current_thread() is not self._thread:
            entry.removed.wait(_REMOVE_TIMEOUT_S + 1.0)

    # -- link emulation (any thread) ------------------------------------------------------
    def shape(self, client: mqtt.Client, shape: LinkShape | None) -> None:
        entry = self._entries.get(id(client))
        if entry is not None:
            entry.shape = shape

    def dropped(self, client: mqtt.Client) -> int:
        entry = self._entries.get(id(client))
        return entry.dropped if entry is not None else 0

    def partition(self, client: mqtt.Client) -> None:
        """Silently cut the client off until ``heal``."""
        def cut() -> None:
            entry = self._entries.get(id(client))
            if entry is None or entry.partitioned:
                return
            entry.partitioned = True
            if entry.sock is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(entry.sock)
        self.call_soon(cut)

    def heal(self, client: mqtt.Client) -> None:
        def heal() -> None:
            entry = self._entries.get(id(client))
            if entry is None or not entry.partitioned:
                return
            entry.partitioned = False
            if entry.sock is not None:  # the session outlived the outage
                events = selectors.EVENT_READ | (
                    selectors.EVENT_WRITE if client.want_write() else 0)
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.register(entry.sock, events, entry)
            elif entry.reconnect_at is None:
                self._schedule_connect(entry, 0.0)
        self.call_soon(heal)

    def sever(self, client: mqtt.Client) -> None:
        """Cut the connection now, as a dying process does, and never reconnect it.

        Returns once paho has seen the connection go (its ``on_disconnect`` ran).
        """
        done = threading.Event()

        def cut() -> None:
            entry = self._entries.get(id(client))
            if entry is not None:
                entry.dead = True
                sock = entry.sock
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    client.loop_read()  # sees the end of the stream: on_disconnect
                    if entry.sock is not None:  # nothing to read yet: close it ourselves
                        client.loop_misc()
                self._forget(entry)
            done.set()
        self.call_soon(cut)
        done.wait(_REMOVE_TIMEOUT_S)

    # -- scheduling (any thread) ----------------------------------------------------------
    def call_soon(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._posted.append(fn)
        self._wake()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        when = time.monotonic() + delay_s
        if threading.current_thread() is self._thread:
            heapq.heappush(self._timers, (when, next(self._seq), fn))
        else:
            self.call_soon(lambda: heapq.heappush(self._timers, (when, next(self._seq), fn)))

    def _wake(self) -> None:
        if self._woken:  # a byte is already on its way: the loop will look at the queue
            return
        self._woken = True
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    # -- paho callbacks -----------------------------------------------------------------
    def _on_socket_open(self, client: mqtt.Client, entry: _Entry, sock: Any) -> None:
        no_delay(sock)  # as the agent's own link sets it
        entry.sock = sock

        def register() -> None:
            if entry.sock is not sock:
                return  # closed again before we got to it
            if entry.dead:
                with contextlib.suppress(OSError):
                    sock.close()
                entry.sock = None
            elif not entry.partitioned:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.register(sock, selectors.EVENT_READ, entry)
        if threading.current_thread() is self._thread:
            register()
        else:  # opened by a connector thread
            self.call_soon(register)

    def _on_socket_close(self, client: mqtt.Client, entry: _Entry, sock: Any) -> None:
        def closed() -> None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(sock)
            if entry.sock is sock:
                entry.sock = None
            if entry.sock is None and not (entry.dead or entry.connecting) and \
                    entry.reconnect_at is None and id(client) in self._entries:
                self._schedule_connect(entry, next(entry.backoff))
        if threading.current_thread() is self._thread:
            closed()  # before paho closes it
        else:
            self.call_soon(closed)

    def _on_register_write(self, client: mqtt.Client, entry: _Entry, sock: Any) -> None:
        if threading.current_thread() is self._thread:
            self._want_write(entry)
        else:
            self.call_soon(lambda: self._want_write(entry))

    def _on_unregister_write(self, client: mqtt.Client, entry: _Entry, sock: Any) -> None:
        if entry.partitioned or entry.sock is None:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.modify(sock, selectors.EVENT_READ, entry)

    def _want_write(self, entry: _Entry) -> None:
        if entry.sock is None or entry.partitioned:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.modify(entry.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, entry)

    def _on_message(self, client: mqtt.Client, entry: _Entry, msg: mqtt.MQTTMessage) -> None:
        deliver = entry.deliver
        if deliver is None:
            return
        shape = entry.shape
        now = time.monotonic()
        if shape is None:
            if entry.last_at <= now:
                deliver(client, entry, msg)
                return
            at = entry.last_at  # a message delayed before the shape went is still due
        elif shape.loss and msg.topic.endswith("/fetch/resp") and \
                self._rng.random() < shape.loss:
            entry.dropped += 1
            return
        elif shape.bandwidth_bps:
            entry.free_at = max(now, entry.free_at) + len(msg.payload) * 8 / shape.bandwidth_bps
            at = entry.free_at + shape.latency_s
        else:
            at = now + shape.latency_s
        at = max(at, entry.last_at)
        if at <= now:
            deliver(client, entry, msg)
            return
        entry.last_at = at
        heapq.heappush(self._timers, (at, next(self._seq), lambda: self._late(entry, msg)))

    def _late(self, entry: _Entry, msg: mqtt.MQTTMessage) -> None:
        if entry.deliver is not None and not entry.dead:
            entry.deliver(entry.client, entry, msg)

    # -- the loop -----------------------------------------------------------------------
    def _schedule_connect(self, entry: _Entry, delay_s: float) -> None:
        now = time.monotonic()
        at = max(now + delay_s, self._next_connect)
        self._next_connect = at + self._connect_gap
        entry.reconnect_at = at
        heapq.heappush(self._timers, (at, next(self._seq), lambda: self._connect(entry)))

    def _connect(self, entry: _Entry) -> None:
        entry.reconnect_at = None
        if entry.dead or entry.connecting or entry.sock is not None or \
                id(entry.client) not in self._entries:
            return
        if entry.partitioned:  # the SYN goes nowhere: try again later
            self._failed(entry)
            return
        entry.connecting = True
        self._connector.submit(self._reconnect, entry)

    def _reconnect(self, entry: _Entry) -> None:
        """On a connector thread: paho's blocking connect, then back to the loop."""
        try:
            entry.client.reconnect()
            self.connects += 1
        except (OSError, ValueError) as exc:
            log.debug("connect failed: %s", exc)
            self.call_soon(lambda: self._failed(entry))
        finally:
            entry.connecting = False

    def _failed(self, entry: _Entry) -> None:
        self.connect_failures += 1
        if entry.sock is not None:  # opened, then failed while sending CONNECT
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(entry.sock)
            entry.sock = None
        if not entry.dead:
            self._schedule_connect(entry, next(entry.backoff))

    def _forget(self, entry: _Entry) -> None:
        entry.dead = True
        self._entries.pop(id(entry.client), None)
        if entry.sock is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(entry.sock)
            with contextlib.suppress(OSError):
                entry.sock.close()
            entry.sock = None
        entry.removed.set()

    def _run(self) -> None:
        next_misc = time.monotonic() + _MISC_INTERVAL_S
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = min(next_misc, self._timers[0][0] if self._timers else next_misc) - now
            try:
                events = self._sel.select(max(timeout, 0.0))
            except OSError:  # a socket closed under us: the next round sees it gone
                events = []
            for key, mask in events:
                entry = key.data
                if entry is None:
                    with contextlib.suppress(BlockingIOError, OSError):
                        self._wake_r.recv(4096)
                    # after draining (a byte sent meanwhile must not be lost with the flag
                    # still set) and before the queue is read below (nothing posted before
                    # this is missed)
                    self._woken = False
                    continue
                self._serve(entry, mask)
            with self._lock:
                posted, self._posted = self._posted, []
            for fn in posted:
                self._guarded(fn)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                self._guarded(fn)
            if now >= next_misc:
                next_misc = now + _MISC_INTERVAL_S
                for entry in list(self._entries.values()):
                    self._misc(entry)

    def _serve(self, entry: _Entry, mask: int) -> None:
        client = entry.client
        try:
            if mask & selectors.EVENT_READ and entry.sock is not None:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and entry.sock is not None:
                client.loop_write()
        except Exception:  # one client's trouble must not stop the others
            log.exception("network loop: client error")

    def _misc(self, entry: _Entry) -> None:
        if entry.sock is None or entry.connecting:
            return
        try:
            entry.client.loop_misc()
            if entry.client.is_connected():
                entry.backoff.reset()
        except Exception:
            log.exception("network loop: keep-alive error")

    @staticmethod
    def _guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("network loop: callback error")
