"""The controller's MQTT adapter (paho): the one place paho is touched controller-side.

Subscribes to every device's birth, death, job status, telemetry and fetch requests,
dispatches them to handlers, and publishes commands, desired state, chunks and acks.
A malformed payload is counted, logged with its reason and dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgefleet.contract import CTL_STATE, EdgefleetError, TransportError, device_wildcard
from edgefleet.contract._sockets import no_delay
from edgefleet.contract.topics import DeviceTopic, device_topic, parse_device_topic

from ._mqtt_io import BatchingClient

__all__ = ["ControllerLink"]

log = logging.getLogger(__name__)
Handler = Callable[[str, str, bytes], None]  # (device id, suffix, payload)

SUBSCRIPTIONS = (DeviceTopic.BIRTH, DeviceTopic.DEATH, DeviceTopic.JOB_STATUS,
                 DeviceTopic.TELEMETRY, DeviceTopic.FETCH_REQ)


class ControllerLink:
    """The controller's MQTT session.

    Args:
        broker_url: ``mqtt://host:port``, or ``mqtts://host:port`` for TLS.
        client_id: MQTT client id (persistent session, so nothing is missed across restarts).
        handler: called for every device message from paho's network thread.
        share_group: replicas: MQTT 5 shared subscriptions in this group (``""``: MQTT
            3.1.1, plain subscriptions, one controller).
        on_broker_lost_state: called (on paho's thread) on a reconnect to a broker that
            no longer holds the controller's session.
    """

    def __init__(self, broker_url: str, client_id: str, handler: Handler, *,
                 username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, share_group: str = "",
                 on_broker_lost_state: Callable[[], None] | None = None) -> None:
        parsed = urlparse(broker_url)
        self._on_lost_state = on_broker_lost_state
        self._connects = 0
        self._share = share_group
        tls = parsed.scheme == "mqtts"
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or (8883 if tls else 1883)
        self._handler = handler
        self.connected = threading.Event()
        self._stopping = False
        self.malformed = 0
        if share_group:  # MQTT 5 (shared subscriptions); the session is set at connect
            self._client = BatchingClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                       protocol=mqtt.MQTTv5)
        else:
            self._client = BatchingClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                       clean_session=False, protocol=mqtt.MQTTv311)
        self._client.reconnect_delay_set(0.5, 10)  # type: ignore[arg-type]  # float seconds
        self._client.max_inflight_messages_set(100)
        self._client.max_queued_messages_set(0)
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls:  # verify the broker's certificate (ca_file, or the system's CAs)
            self._client.tls_set(ca_certs=ca_file)
        self._client.will_set(CTL_STATE, json.dumps({"online": False}), qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_socket_open = lambda client, userdata, sock: no_delay(sock)

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and wait until the session is up.

        Raises:
            TransportError: the broker could not be reached in time.
        """
        try:
            if self._share:
                # A replica's session ends with its connection: the broker then hands the
                # group's messages to the live replicas only. What was in flight to a dead
                # one is resent by the devices (unacked telemetry, births, job statuses
                # the new leader asks for again).
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 0
                self._client.connect_async(self._host, self._port, keepalive=15,
                                           clean_start=True, properties=props)
            else:
                self._client.connect_async(self._host, self._port, keepalive=15)
        except (OSError, ValueError) as exc:
            raise TransportError(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        self._client.loop_start()
        if not self.connected.wait(timeout_s):
            self._client.loop_stop()
            raise TransportError(f"broker {self._host}:{self._port} did not accept a connection "
                                 f"within {timeout_s:.0f}s")

    def stop(self) -> None:
        self._stopping = True
        info = self._client.publish(CTL_STATE, json.dumps({"online": False, "ts": time.time()}),
                                    qos=1, retain=True)
        if self.connected.is_set() and info.rc == mqtt.MQTT_ERR_SUCCESS:
            try:
                info.wait_for_publish(2.0)
            except (ValueError, RuntimeError) as exc:  # not sent: the will says offline
                log.warning("could not say offline before stopping: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _ud: object, flags: object,
                    reason: mqtt.ReasonCode, _props: object = None) -> None:
        if reason.is_failure:
            log.warning("broker refused the controller: %s", reason)
            return
        self._connects += 1
        if self._connects > 1 and not getattr(flags, "session_present", True) and \
                self._on_lost_state is not None:
            # back, and the broker does not know our session: it restarted without its
            # state, and what we had retained there (broadcast blocks) is gone with it
            self._on_lost_state()
        if self._share:
            client.subscribe([(f"$share/{self._share}/{device_wildcard(s)}",
                               SubscribeOptions(qos=1)) for s in SUBSCRIPTIONS])
            # a replica that dies leaves "offline" retained (its will) for the fleet: the
            # others see it and say "online" again
            client.subscribe(CTL_STATE, qos=1)
        else:
            client.subscribe([(device_wildcard(s), 1) for s in SUBSCRIPTIONS])
        self._announce(client)
        self.connected.set()
        log.info("controller connected to %s:%d", self._host, self._port)

    @staticmethod
    def _announce(client: mqtt.Client) -> None:
        client.publish(CTL_STATE, json.dumps({"online": True, "ts": time.time()}), qos=1,
                       retain=True)

    def _on_controller_state(self, payload: bytes) -> None:
        try:
            online = json.loads(payload).get("online") is True
        except (ValueError, AttributeError):
            self.malformed += 1
            return
        if not online and not self._stopping and self.connected.is_set():
            log.info("another replica left; announcing this one online")
            self._announce(self._client)

    def _on_disconnect(self, *_args: object) -> None:
        self.connected.clear()
        if not self._stopping:
            log.warning("controller lost the broker; reconnecting")

    def _on_message(self, _client: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == CTL_STATE:
            if not msg.retain:  # a retained copy is old news: we announced ourselves
                self._on_controller_state(bytes(msg.payload))
            return
        parsed = parse_device_topic(msg.topic)
        if parsed is None:
            self.malformed += 1
            log.warning("dropped message on unexpected topic %r", msg.topic)
            return
        device, suffix = parsed
        try:
            self._handler(device, suffix, bytes(msg.payload))
        except EdgefleetError as exc:
            self.malformed += 1
            log.warning("dropped %s from %s: %s (%s)", suffix, device, exc, exc.reason)
        except Exception:  # a handler bug must never kill paho's thread
            self.malformed += 1
            log.exception("handler for %s from %s failed", suffix, device)

    def publish(self, device: str, suffix: str, payload: bytes, *, retain: bool = False,
                qos: int = 1) -> None:
        """Queue a message to one device (paho delivers it when connected)."""
        self._client.publish(device_topic(device, suffix), payload, qos=qos, retain=retain)

    def publish_topic(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a message on a topic that is not a device's (broadcast blocks)."""
        self._client.publish(topic, payload, qos=1, retain=retain)
