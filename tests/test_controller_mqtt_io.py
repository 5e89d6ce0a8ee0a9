"""The controller's batched MQTT socket: paho's small reads served from one large read,
its sends gathered into one, nothing lost when the kernel takes less, and a real
controller session through Mosquitto working on it."""

from __future__ import annotations

import socket
import threading

import paho.mqtt.client as mqtt
import pytest

from edgefleet.controller._mqtt_io import BatchingClient, _Batched


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_small_reads_come_from_one_large_read_and_pending_says_what_is_left(pair):
    a, b = pair
    sock = _Batched(a)
    with pytest.raises(BlockingIOError):  # nothing there: as the socket says
        sock.recv(1)
    b.sendall(b"\x30\x05hello\x40\x02\x00\x01")
    assert sock.recv(1) == b"\x30"
    assert sock.pending() == 10  # the rest came with the first read
    assert sock.recv(1) == b"\x05"
    assert sock.recv(5) == b"hello"
    assert sock.recv(100) == b"\x40\x02\x00\x01"  # no more than what is buffered
    assert sock.pending() == 0
    b.close()
    assert sock.recv(1) == b""  # the peer closed: end of stream, as from the socket


def test_sends_are_gathered_until_flushed_and_what_the_kernel_refuses_stays(pair):
    a, b = pair
    sock = _Batched(a)
    assert sock.send(b"one") == 3 and sock.send(bytearray(b"two")) == 3
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(10)  # nothing sent yet
    sock.flush()
    assert b.recv(10) == b"onetwo" and sock.unsent == 0

    big = b"x" * (8 << 20)  # more than a socket pair's buffers take at once
    sock.send(big)
    sock.flush()
    assert 0 < sock.unsent < len(big)
    got = bytearray()
    while len(got) < len(big):  # the reader drains; each flush sends what fits
        try:
            got += b.recv(1 << 20)
        except BlockingIOError:
            sock.flush()
    assert bytes(got) == big and sock.unsent == 0


def test_close_sends_what_is_queued_first(pair):
    a, b = pair
    sock = _Batched(a)
    sock.send(b"\xe0\x00")  # a DISCONNECT queued last
    sock.close()
    assert b.recv(10) == b"\xe0\x00"


def test_a_broken_connection_drops_what_was_queued_and_says_so(pair):
    a, b = pair
    sock = _Batched(a)
    b.close()
    sock.send(b"late")
    with pytest.raises(OSError):
        sock.flush()
    assert sock.unsent == 0


def test_a_batching_client_publishes_and_receives_through_mosquitto(mosquitto):
    """Many QoS 1 messages both ways (the PUBACKs gathered), in order and complete."""
    got: list[bytes] = []
    done = threading.Event()
    n = 500

    def on_message(_c, _u, msg):
        got.append(msg.payload)
        if len(got) == n:
            done.set()

    receiver = BatchingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="batched-rx")
    sender = BatchingClient(mqtt.CallbackAPIVersion.VERSION2, client_id="batched-tx")
    receiver.on_message = on_message
    subscribed = threading.Event()
    receiver.on_subscribe = lambda *a: subscribed.set()
    receiver.on_connect = lambda c, *a: c.subscribe("batched/#", qos=1)
    for c in (receiver, sender):
        c.connect("127.0.0.1", mosquitto.port, keepalive=15)
        c.loop_start()
    try:
        assert subscribed.wait(10)
        assert isinstance(receiver._sock, _Batched)
        infos = [sender.publish(f"batched/{i % 7}", f"m{i}".encode(), qos=1)
                 for i in range(n)]
        for info in infos:
            info.wait_for_publish(10)
        assert done.wait(10), f"{len(got)} of {n} arrived"
        assert sorted(got, key=lambda p: int(p[1:])) == [f"m{i}".encode() for i in range(n)]
    finally:
        for c in (receiver, sender):
            c.disconnect()
            c.loop_stop()
