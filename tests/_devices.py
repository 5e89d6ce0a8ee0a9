"""Devices at the protocol level: an MQTT client that publishes summaries as agents do.

For scenarios that need summaries the agents do not (yet) produce — chosen sketches,
drift scores, buffer reports, out-of-order arrivals — against the real broker and the
real controller. It collects the controller's acks per device.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.contract import Ack, DeviceTopic, Summary, device_topic, device_wildcard
from edgefleet.contract.topics import parse_device_topic
from edgefleet.simulations.fleet import wait_until


def summary(seq: int, *, stream: str = "s1", start: float = 0.0, count: int = 100,
            **fields: Any) -> Summary:
    """A 60 s window numbered ``seq`` starting ``start + 60 * (seq - 1)``."""
    window_start = start + 60.0 * (seq - 1)
    values: dict[str, Any] = {"model": "digits", "version": 1, "errors": 0, **fields}
    return Summary(seq=seq, window_start=window_start, window_end=window_start + 60.0,
                   count=count, stream=stream, **values)


class MqttDevices:
    """One MQTT connection publishing for any number of device ids."""

    def __init__(self, broker_url: str, client_id: str = "test-devices") -> None:
        host, port = broker_url.split("//", 1)[1].rsplit(":", 1)
        self.acks: dict[str, list[int]] = collections.defaultdict(list)
        self.ack_messages = 0
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_message = self._on_message
        self._client.connect(host, int(port))
        self._client.subscribe(device_wildcard(DeviceTopic.TELEMETRY_ACK), qos=1)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parsed = parse_device_topic(msg.topic)
        if parsed is None:
            return
        with self._lock:
            self.acks[parsed[0]].extend(Ack.decode(msg.payload).seqs)
            self.ack_messages += 1

    def publish(self, device: str, *summaries: Summary) -> None:
        for s in summaries:
            self._client.publish(device_topic(device, DeviceTopic.TELEMETRY), s.encode(),
                                 qos=1).wait_for_publish(5)

    def acked(self, device: str) -> set[int]:
        with self._lock:
            return set(self.acks[device])

    def wait_acked(self, device: str, seqs: set[int], timeout_s: float = 10) -> None:
        wait_until(lambda: self.acked(device) >= seqs, timeout_s)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
