"""The agent's MQTT adapter (paho): connection, birth/death, request/response, dispatch.

The one place paho is touched on the device. Reconnects are paho's, with a bounded
exponential backoff whose first wait after each lost connection is jittered (a fleet that
lost the same broker does not come back in one burst); every request waits with a
timeout. Malformed payloads are counted, logged
and dropped by the dispatcher; a handler error never reaches paho's loop.

A device runs its session on paho's own network thread. A simulated fleet running
hundreds of agents in one process passes a ``NetworkLoop`` instead, which drives every
client from one thread through paho's external-loop API and owns their reconnects.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import paho.mqtt.client as mqtt

from edgefleet.contract import (
    BLOB_PREFIX,
    CTL_STATE,
    ChunkResponse,
    Death,
    DeviceTopic,
    EdgefleetError,
    FetchError,
    FetchRequest,
    blob_filter,
    device_topic,
    parse_blob_topic,
)
from edgefleet.contract._sockets import no_delay

from ._blobs import BlobCache
from .config import AgentConfig, parse_broker_url

__all__ = ["AgentLink", "NetworkLoop"]

log = logging.getLogger(__name__)
# the first wait after a lost connection is reconnect_min_s times a number drawn from this
# range; paho doubles it from there up to reconnect_max_s
FIRST_WAIT_JITTER = (0.5, 1.5)
Handler = Callable[[bytes], None]
# a controller announcing itself again within this window gets no second birth (after
# an online: false, the next announcement always does)
_REBIRTH_EVERY_S = 5.0


class NetworkLoop(Protocol):
    """Drives many paho clients from one thread instead of a network thread per client.

    ``add`` takes a client on which ``connect_async`` was called: the loop connects it,
    reads and writes its socket, keeps it alive and reconnects it with a backoff between
    ``reconnect_min_s`` and ``reconnect_max_s`` until ``remove``. ``remove`` returns once
    what the client had queued (a DISCONNECT) is written or a short timeout passed.
    """

    def add(self, client: mqtt.Client, *, reconnect_min_s: float,
            reconnect_max_s: float) -> None: ...

    def remove(self, client: mqtt.Client) -> None: ...


class AgentLink:
    """One device's MQTT session.

    Args:
        config: the agent configuration (device id, broker, keepalive, backoff).
        birth: called on every connect; returns the birth payload to publish.
        handlers: device-topic suffix → handler for ``cmd``, ``desired``, ``telemetry/ack``.
        on_connected: called (from paho's thread) after each successful connect.
        network: drives the session instead of a paho thread of its own (simulated
            fleets); ``None`` on a device.
        blobs: where broadcast blocks of the current job go (``subscribe_blobs``).
    """

    def __init__(self, config: AgentConfig, *, birth: Callable[[int], bytes],
                 handlers: dict[str, Handler],
                 on_connected: Callable[[], None] | None = None,
                 network: NetworkLoop | None = None,
                 blobs: BlobCache | None = None) -> None:
        self.config = config
        self._blobs = blobs
        self._network = network
        self._birth = birth
        self._handlers = handlers
        self._on_connected = on_connected
        self._pending: dict[str, tuple[threading.Event, list[ChunkResponse]]] = {}
        self._lock = threading.Lock()
        self.connected = threading.Event()
        # Birth/death sequence numbers start from the clock, so a late death from a
        # previous process can never match this process's birth.
        self.bd_seq = int(time.time() * 1000)
        self.malformed = 0
        self.connects = 0
        self.refused = 0  # connects the broker refused (bad or revoked credentials)
        self._rebirth_at = -_REBIRTH_EVERY_S
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.device_id,
                                   clean_session=False, protocol=mqtt.MQTTv311)
        # paho annotates whole seconds; its loop takes fractions as well
        self._client.reconnect_delay_set(config.reconnect_min_s,  # type: ignore[arg-type]
                                         config.reconnect_max_s)  # type: ignore[arg-type]
        self._client.max_queued_messages_set(1000)
        if config.mqtt_password is not None:
            self._client.username_pw_set(config.device_id, config.mqtt_password)
        if config.broker_url.startswith("mqtts://"):  # verify the broker's certificate
            ca = config.broker_ca_file
            self._client.tls_set(ca_certs=str(ca) if ca is not None else None)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_socket_open = lambda client, userdata, sock: no_delay(sock)
        self._set_will()

    def topic(self, suffix: str, **fields: str) -> str:
        return device_topic(self.config.device_id, suffix, **fields)

    def _set_will(self) -> None:
        self.bd_seq += 1
        self._client.will_set(self.topic(DeviceTopic.DEATH), Death(bd_seq=self.bd_seq).encode(),
                              qos=1)

    def start(self) -> None:
        """Connect in the background; returns at once, even when the broker is down."""
        host, port = parse_broker_url(self.config.broker_url)
        self._client.connect_async(host, port, keepalive=self.config.keepalive_s)
        if self._network is not None:
            self._network.add(self._client, reconnect_min_s=self.config.reconnect_min_s,
                              reconnect_max_s=self.config.reconnect_max_s)
            return
        self._client.loop_start()

    def stop(self) -> None:
        """Publish our death (a clean disconnect sends no will), disconnect, stop the thread."""
        with self._lock:  # wake every chunk request still waiting: no answer will come
            for event, _box in self._pending.values():
                event.set()
        try:
            if self.connected.is_set():
                info = self._client.publish(self.topic(DeviceTopic.DEATH),
                                            Death(bd_seq=self.bd_seq).encode(), qos=1)
                info.wait_for_publish(2.0)
            self._client.disconnect()
        finally:
            if self._network is not None:
                self._network.remove(self._client)
            else:
                self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _ud: object, _flags: object,
                    reason: mqtt.ReasonCode, _props: object = None) -> None:
        if reason.is_failure:
            self.refused += 1
            log.warning("broker refused connection: %s", reason)
            return
        for suffix in (DeviceTopic.CMD, DeviceTopic.DESIRED, DeviceTopic.FETCH_RESP,
                       DeviceTopic.TELEMETRY_ACK):
            client.subscribe(self.topic(suffix), qos=1)
        client.subscribe(CTL_STATE, qos=1)
        if self._blobs is not None:  # again: a broker restarted since may not know them
            for sha in self._blobs.expected():
                client.subscribe(blob_filter(sha), qos=1)
        client.publish(self.topic(DeviceTopic.BIRTH), self._birth(self.bd_seq), qos=1)
        self.connects += 1
        self.connected.set()
        log.info("connected to %s (bd_seq %d)", self.config.broker_url, self.bd_seq)
        if self._on_connected is not None:
            self._on_connected()

    def _on_disconnect(self, _client: mqtt.Client, _ud: object, _flags: object,
                       reason: mqtt.ReasonCode, _props: object = None,
                       *, uniform: Callable[[float, float], float] = random.uniform) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._set_will()
        # paho's own loop reconnects: a session that was up starts again at a jittered wait
        # (a refused connect, e.g. revoked credentials, keeps doubling its wait)
        if self._network is None and was_connected:
            first = self.config.reconnect_min_s * uniform(*FIRST_WAIT_JITTER)
            self._client.reconnect_delay_set(first,  # type: ignore[arg-type]
                                             self.config.reconnect_max_s)  # type: ignore[arg-type]
        log.info("disconnected from broker: %s", reason)

    def _on_message(self, _client: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        prefix = self.topic("")
        suffix = msg.topic[len(prefix):] if msg.topic.startswith(prefix) else ""
        try:
            if msg.topic.startswith(BLOB_PREFIX):
                self._on_blob(msg.topic, bytes(msg.payload))
            elif msg.topic == CTL_STATE:
                self._on_controller_state(bytes(msg.payload), retained=bool(msg.retain))
            elif suffix == DeviceTopic.FETCH_RESP:
                self._on_chunk(ChunkResponse.decode(bytes(msg.payload)))
            elif suffix in self._handlers:
                self._handlers[suffix](bytes(msg.payload))
            else:
                log.warning("dropped message on unexpected topic %s", msg.topic)
        except EdgefleetError as exc:
            self.malformed += 1
            log.warning("dropped message on %s: %s (%s)", msg.topic, exc, exc.reason)
        except Exception:  # a handler bug must not kill paho's network thread
            self.malformed += 1
            log.exception("handler for %s failed", msg.topic)

    def _on_controller_state(self, payload: bytes, *, retained: bool) -> None:
        """A controller that comes up after us may have missed our birth: send it again.

        The retained copy delivered on subscribe is old news (our birth just went out).
        """
        try:
            online = json.loads(payload).get("online") is True
        except (ValueError, AttributeError, RecursionError):  # RecursionError: deep nesting
            self.malformed += 1
            log.warning("dropped malformed controller state")
            return
        if not online:
            self._rebirth_at = -_REBIRTH_EVERY_S  # the next controller gets a birth at once
        elif not retained and self.connected.is_set():
            now = time.monotonic()
            if now - self._rebirth_at < _REBIRTH_EVERY_S:
                return  # one birth answers a burst of announcements
            self._rebirth_at = now
            self._client.publish(self.topic(DeviceTopic.BIRTH), self._birth(self.bd_seq), qos=1)

    def _on_blob(self, topic: str, payload: bytes) -> None:
        where = parse_blob_topic(topic)
        if where is None or self._blobs is None:
            log.warning("dropped message on unexpected topic %s", topic)
            return
        if payload:  # an empty retained payload is the controller clearing the block
            self._blobs.put(where[0], where[1], payload)

    def subscribe_blobs(self, shas: list[str]) -> None:
        """Take the blocks of these broadcast files (retained ones arrive at once), in
        the order given, at QoS 0: a block that does not come is pulled (the fetcher
        repairs gaps), so the tens of blocks of a bundle need no acknowledgement each."""
        if shas:
            self._client.subscribe([(blob_filter(sha), 0) for sha in shas])

    def unsubscribe_blobs(self, shas: list[str]) -> None:
        if shas:
            self._client.unsubscribe([blob_filter(sha) for sha in shas])

    def _on_chunk(self, chunk: ChunkResponse) -> None:
        with self._lock:
            waiter = self._pending.get(chunk.req)
        if waiter is None:
            return  # a late answer to a request that already timed out
        waiter[1].append(chunk)
        waiter[0].set()

    def publish(self, suffix: str, payload: bytes, *, retain: bool = False, **fields: str) -> bool:
        """Publish at QoS 1; ``False`` when not connected (the caller keeps the data)."""
        if not self.connected.is_set():
            return False
        info = self._client.publish(self.topic(suffix, **fields), payload, qos=1, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def request_chunk(self, file: str, offset: int, count: int, timeout_s: float) -> ChunkResponse:
        """Ask the controller for a block of a file and wait for it.

        Raises:
            FetchError: not connected, or no answer within ``timeout_s``.
        """
        if not self.connected.is_set():
            raise FetchError("not connected to the broker")
        req = uuid.uuid4().hex[:16]
        event = threading.Event()
        box: list[ChunkResponse] = []
        with self._lock:
            self._pending[req] = (event, box)
        try:
            payload = FetchRequest(req=req, file=file, offset=offset, count=count).encode()
            info = self._client.publish(self.topic(DeviceTopic.FETCH_REQ), payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise FetchError(f"could not send fetch request ({mqtt.error_string(info.rc)})")
            if not event.wait(timeout_s):
                raise FetchError(f"no answer for {file}@{offset} within {timeout_s:.1f}s")
            if not box:
                raise FetchError("the link is stopping")
            return box[0]
        finally:
            with self._lock:
                self._pending.pop(req, None)

    def wait_connected(self, timeout_s: float) -> bool:
        return self.connected.wait(timeout_s)


