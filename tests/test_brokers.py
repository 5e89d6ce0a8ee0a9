"""The brokers edgefleet runs on, and the network faults tests inject.

The same scenarios run against the embedded amqtt broker (the no-services
default) and a real Mosquitto process, so the product can rely on one
behaviour for QoS 1, retained state, wills and persistent sessions.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
import pytest

from edgefleet.contract import TransportError
from edgefleet.controller.broker import EmbeddedBroker
from edgefleet.simulations import brokers as brokers_module
from edgefleet.simulations.brokers import MosquittoProcess, free_port
from edgefleet.simulations.netem import LinkProxy, LinkState

WAIT_S = 5.0


class Broker(Protocol):
    @property
    def port(self) -> int: ...


class Probe:
    """A paho MQTT 3.1.1 client that records what happens to it."""

    def __init__(
        self,
        client_id: str,
        port: int,
        *,
        clean_session: bool = True,
        keepalive: int = 30,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.port = port
        self.keepalive = keepalive
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connects = 0
        self.session_present: bool | None = None
        self.resubscribe: list[str] = []
        self._subacks: dict[int, threading.Event] = {}
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=False)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            return
        self.connects += 1
        self.session_present = bool(flags.session_present)
        for topic in self.resubscribe:
            client.subscribe(topic, qos=1)
        self.disconnected.clear()
        self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        self.connected.clear()
        self.disconnected.set()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        self._subacks.setdefault(mid, threading.Event()).set()

    def connect(self) -> Probe:
        self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive)
        self.client.loop_start()
        assert self.connected.wait(WAIT_S), "no CONNACK"
        return self

    def subscribe(self, topic: str, qos: int = 1) -> None:
        result, mid = self.client.subscribe(topic, qos=qos)
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
        assert self._subacks.setdefault(mid, threading.Event()).wait(WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), "no PUBACK"

    def next_message(self, timeout_s: float = WAIT_S) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout_s}s") from None

    def assert_no_message(self, within_s: float) -> None:
        try:
            extra = self.messages.get(timeout=within_s)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {extra.topic}: {extra.payload!r}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(params=["embedded", "mosquitto"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    if request.param == "embedded":
        embedded = EmbeddedBroker()
        embedded.start(timeout_s=WAIT_S)
        yield embedded
        embedded.stop(timeout_s=WAIT_S)
    else:
        with MosquittoProcess(workdir=tmp_path / "mosquitto") as mosquitto:
            yield mosquitto


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for probe in made:
        probe.close()


def make(probes: list[Probe], client_id: str, port: int, **kwargs: Any) -> Probe:
    probe = Probe(client_id, port, **kwargs)
    probes.append(probe)
    return probe


def test_device_telemetry_reaches_controller_wildcard_at_qos1(
    broker: Broker, probes: list[Probe]
) -> None:
    controller = make(probes, "controller", broker.port).connect()
    controller.subscribe("fleet/v1/dev/+/telemetry")
    device = make(probes, "dev-1", broker.port).connect()
    payload = os.urandom(1024 * 1024)  # a chunk-sized message with room to spare

    device.publish("fleet/v1/dev/dev-1/telemetry", payload)

    message = controller.next_message()
    assert message.topic == "fleet/v1/dev/dev-1/telemetry"
    assert message.qos == 1
    assert message.payload == payload


def test_retained_desired_state_reaches_device_that_subscribes_later_once(
    broker: Broker, probes: list[Probe]
) -> None:
    observer = make(probes, "observer", broker.port).connect()
    observer.subscribe("fleet/#")  # another client's filter must not leak to the device
    controller = make(probes, "controller", broker.port).connect()
    controller.publish("fleet/v1/dev/dev-1/desired", b'{"model": "digits:2"}', retain=True)

    device = make(probes, "dev-1", broker.port).connect()
    device.subscribe("fleet/v1/dev/dev-1/desired")

    message = device.next_message()
    assert (message.topic, message.payload, message.retain) == (
        "fleet/v1/dev/dev-1/desired",
        b'{"model": "digits:2"}',
        True,
    )
    device.assert_no_message(within_s=0.5)


def test_death_will_is_published_when_device_link_is_cut(
    broker: Broker, probes: list[Probe]
) -> None:
    controller = make(probes, "controller", broker.port).connect()
    controller.subscribe("fleet/v1/dev/+/death")
    with LinkProxy("127.0.0.1", broker.port) as link:
        device = make(
            probes, "dev-1", link.port, will=("fleet/v1/dev/dev-1/death", b'{"bd_seq": 7}')
        ).connect()
        assert link.connected == 1

        link.cut()

        will = controller.next_message()
        assert (will.topic, will.payload) == ("fleet/v1/dev/dev-1/death", b'{"bd_seq": 7}')
        assert device.disconnected.wait(WAIT_S)
        assert link.connected == 0


def test_death_will_is_published_when_device_goes_silent_past_keepalive(
    broker: Broker, probes: list[Probe]
) -> None:
    controller = make(probes, "controller", broker.port).connect()
    controller.subscribe("fleet/v1/dev/+/death")
    with LinkProxy("127.0.0.1", broker.port) as link:
        make(
            probes,
            "dev-1",
            link.port,
            keepalive=1,
            will=("fleet/v1/dev/dev-1/death", b'{"bd_seq": 3}'),
        ).connect()
        started = time.monotonic()

        link.blackhole()  # no FIN, no RST: only the broker's keep-alive check can tell

        # 1.5 x keep-alive, but Mosquitto 2.0 checks keep-alives on a ~5 s tick.
        will = controller.next_message(timeout_s=10.0)
        assert will.payload == b'{"bd_seq": 3}'
        assert 1.4 <= time.monotonic() - started < 10.0


def test_no_will_when_device_disconnects_cleanly(broker: Broker, probes: list[Probe]) -> None:
    controller = make(probes, "controller", broker.port).connect()
    controller.subscribe("fleet/v1/dev/+/death")
    with LinkProxy("127.0.0.1", broker.port) as link:
        device = Probe("dev-1", link.port, will=("fleet/v1/dev/dev-1/death", b"{}")).connect()

        device.close()

        controller.assert_no_message(within_s=1.0)
        assert link.bytes_up > 0 and link.bytes_down > 0


def test_cloned_device_id_takes_over_and_old_connection_dies_with_its_will(
    broker: Broker, probes: list[Probe]
) -> None:
    controller = make(probes, "controller", broker.port).connect()
    controller.subscribe("fleet/v1/dev/+/death")
    original = make(probes, "dev-1", broker.port, will=("fleet/v1/dev/dev-1/death", b"old"))
    original.client.reconnect_delay_set(min_delay=30, max_delay=30)  # stay down once kicked
    original.connect()

    make(probes, "dev-1", broker.port).connect()

    assert original.disconnected.wait(WAIT_S), "old connection still open"
    assert controller.next_message().payload == b"old"


def test_device_with_persistent_session_gets_commands_sent_while_offline(
    broker: Broker, probes: list[Probe]
) -> None:
    device = Probe("dev-1", broker.port, clean_session=False).connect()
    device.subscribe("fleet/v1/dev/dev-1/cmd")
    device.close()
    controller = make(probes, "controller", broker.port).connect()
    for n in range(3):
        controller.publish("fleet/v1/dev/dev-1/cmd", f"cmd-{n}".encode())

    back = make(probes, "dev-1", broker.port, clean_session=False).connect()

    assert back.session_present is True
    received = [back.next_message() for _ in range(3)]
    assert [m.payload for m in received] == [b"cmd-0", b"cmd-1", b"cmd-2"]
    assert [(m.qos, m.retain) for m in received] == [(1, False)] * 3


def test_embedded_broker_drops_and_counts_past_offline_queue_limit(probes: list[Probe]) -> None:
    with EmbeddedBroker(max_queued_messages=2) as embedded:
        device = Probe("dev-1", embedded.port, clean_session=False).connect()
        device.subscribe("fleet/v1/dev/dev-1/cmd")
        device.close()
        controller = make(probes, "controller", embedded.port).connect()
        for n in range(5):
            controller.publish("fleet/v1/dev/dev-1/cmd", f"cmd-{n}".encode())

        back = make(probes, "dev-1", embedded.port, clean_session=False).connect()

        assert [back.next_message().payload for _ in range(2)] == [b"cmd-0", b"cmd-1"]
        back.assert_no_message(within_s=0.5)
        assert embedded.dropped_messages == 3


def test_embedded_broker_picks_a_port_and_comes_back_on_it() -> None:
    embedded = EmbeddedBroker(port=0)
    embedded.start()
    port = embedded.port
    assert port > 0
    assert embedded.url == f"mqtt://127.0.0.1:{port}"
    embedded.stop()
    assert not embedded.running

    embedded.start()
    try:
        assert embedded.port == port
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S):
            pass
    finally:
        embedded.stop()


def test_embedded_broker_on_a_taken_port_raises_transport_error() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        embedded = EmbeddedBroker(port=squatter.getsockname()[1])
        with pytest.raises(TransportError, match="could not listen"):
            embedded.start(timeout_s=WAIT_S)
        assert not embedded.running


def test_device_reconnects_after_mosquitto_crash_and_restart(
    tmp_path: Path, probes: list[Probe]
) -> None:
    with MosquittoProcess(workdir=tmp_path) as mosquitto:
        port = mosquitto.port
        device = make(probes, "dev-1", port)
        device.resubscribe = ["fleet/v1/dev/dev-1/cmd"]
        device.connect()

        mosquitto.kill()
        assert not mosquitto.running
        assert device.disconnected.wait(WAIT_S)
        mosquitto.restart()

        assert mosquitto.port == port
        assert device.connected.wait(10.0), "no reconnect after restart"
        assert device.connects == 2
        assert device.session_present is False  # persistence is off: a crash loses sessions
        controller = make(probes, "controller", port).connect()
        deadline = time.monotonic() + WAIT_S  # the resubscribe races this publish
        while True:
            controller.publish("fleet/v1/dev/dev-1/cmd", b"after-restart")
            try:
                assert device.next_message(timeout_s=0.5).payload == b"after-restart"
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise


def test_mosquitto_config_carries_limits_and_extra_lines(tmp_path: Path) -> None:
    process = MosquittoProcess(port=18830, workdir=tmp_path, extra_config="max_inflight_messages 5")

    config = process.config_text().splitlines()

    assert config[0] == "listener 18830 127.0.0.1"
    assert "allow_anonymous true" in config
    assert "persistence false" in config
    assert "max_queued_messages 10000" in config
    assert config[-1] == "max_inflight_messages 5"


def test_missing_mosquitto_binary_is_reported_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(brokers_module.shutil, "which", lambda _name: None)
    monkeypatch.setattr(brokers_module, "_FALLBACK_PATHS", (str(tmp_path / "nope"),))

    with pytest.raises(FileNotFoundError, match="apt-get install mosquitto"):
        MosquittoProcess(workdir=tmp_path).start()


def test_device_reconnects_once_its_cut_link_is_restored(
    tmp_path: Path, probes: list[Probe]
) -> None:
    with MosquittoProcess(workdir=tmp_path) as mosquitto, LinkProxy(
        "127.0.0.1", mosquitto.port
    ) as link:
        device = make(probes, "dev-1", link.port).connect()

        link.cut()
        assert device.disconnected.wait(WAIT_S)
        assert not device.connected.wait(1.5), "reconnected through a cut link"
        assert (link.state, link.connected) == (LinkState.CUT, 0)
        link.restore()

        assert device.connected.wait(10.0), "no reconnect after restore"
        assert device.connects == 2
        assert link.connected == 1


def test_link_proxy_stop_returns_promptly_and_resets_clients() -> None:
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen()
    link = LinkProxy("127.0.0.1", upstream.getsockname()[1], listen_port=free_port())
    link.start()
    clients = [socket.create_connection(("127.0.0.1", link.port), timeout=WAIT_S) for _ in range(3)]
    accepted = [upstream.accept()[0] for _ in clients]
    clients[0].sendall(b"ping")
    assert accepted[0].recv(4) == b"ping"

    started = time.monotonic()
    link.stop()
    elapsed = time.monotonic() - started

    assert elapsed < 2.0
    assert link.connected == 0
    for sock in clients:
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
        sock.close()
    for sock in accepted:
        sock.close()
    upstream.close()
