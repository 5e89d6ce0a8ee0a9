"""Hostile MQTT on every topic each side subscribes to (docs/mqtt.md), on a real
Mosquitto, while the device keeps answering: both sides keep serving, and every
inference recorded before, during and after reaches the controller exactly once.

The payloads are what an outside attack run sent: random bytes, invalid UTF-8, JSON
nested 200,000 deep, numbers past 64 bits, NaN and 1e999, wrong types, megabyte strings,
path traversal in fetch requests, frames that claim more than they carry. Forged but
well-formed acks for sequence numbers the device really used are left out: acks are
trusted to come from the controller's account (the generated broker ACL allows no one
else), so a forged one would, by design, let the device forget a summary.
"""

from __future__ import annotations

import json
import random
import struct
import threading

import numpy as np
import paho.mqtt.client as mqtt
from _support import ASSETS, register_digits, wait_deployment, wait_devices_known

from edgefleet.contract import CTL_STATE, PREFIX
from edgefleet.simulations.fleet import wait_until

SEED = 20261205
DEVICE_READS = ("cmd", "desired", "fetch/resp", "telemetry/ack")
CONTROLLER_READS = ("birth", "death", "job/fuzz-job/status", "telemetry", "fetch/req")
_BIG = 2**70


def _payloads(rng: random.Random) -> list[bytes]:
    deep = b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    frame = struct.pack(">I", 40) + b'{"req": "x", "file": "../../etc/passwd"}'
    return [
        b"",
        rng.randbytes(64),
        b"\xff\xfe\xfa not utf-8 \xc3\x28",
        deep,
        b"[" * 5000,
        b'{"seqs": [9223372036854775808]}',
        b'{"seqs": [-1, "x", null, 1e999]}',
        b'{"seqs": [1000000000000]}',  # well-formed, but no summary has that number
        b'{"online": true, "x": NaN}',
        json.dumps({"bd_seq": _BIG, "agent_version": "x" * 2_000_000, "ts": 1}).encode(),
        json.dumps({"job": "j", "deployment": "d", "state": "exploded", "ts": 1e308}).encode(),
        json.dumps({"seq": _BIG, "window_start": 0, "window_end": 60, "count": -5,
                    "errors": 0, "model": "m", "version": 1}).encode(),
        json.dumps({"req": "r1", "file": "../../../etc/passwd", "offset": 0,
                    "count": 65536}).encode(),
        json.dumps({"req": "r2", "file": "digits/1/model.onnx", "offset": -1,
                    "count": 2**62}).encode(),
        frame,
        struct.pack(">I", 2**31) + b"{}",
        json.dumps({"deployment": "d", "job": "j", "model": "m", "version": 1,
                    "manifest": "../../x", "issued_at": 0}).encode(),  # unsigned desired
        rng.randbytes(200_000),
    ]


def test_hostile_messages_on_every_topic_lose_no_record_and_stop_no_one(
        controller, make_fleet, mosquitto):
    fleet = make_fleet(1, summary_window_s=1.0)
    wait_devices_known(controller, fleet.ids)
    (device,) = fleet.ids
    agent = fleet.agents[device]
    dep = controller.deploy("digits", register_digits(controller)["version"])["id"]
    assert wait_deployment(controller, dep)["state"] == "succeeded"
    x = np.load(ASSETS / "eval.npz")["x"][:1].astype(np.float32)
    made = 0

    def infer(n: int) -> None:
        nonlocal made
        for _ in range(n):
            agent.predict(x)
            made += 1

    infer(50)  # before

    fuzzer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzzer",
                         protocol=mqtt.MQTTv311)
    fuzzer.connect("127.0.0.1", mosquitto.port)
    fuzzer.loop_start()
    during = threading.Thread(target=infer, args=(300,))
    during.start()
    rng = random.Random(SEED)
    topics = ([f"{PREFIX}/dev/{device}/{t}" for t in DEVICE_READS + CONTROLLER_READS]
              + [CTL_STATE])
    try:
        for topic in topics:
            for payload in _payloads(rng):
                fuzzer.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        during.join()
        fuzzer.disconnect()
        fuzzer.loop_stop()
    infer(50)  # after

    # both still serve: the device answers and reports, the controller stores and acks
    assert agent.predict(x).outputs["probs"].shape == (1, 10)
    made += 1
    assert agent.link.connected.is_set()
    assert controller.counters["malformed"] > 0 and agent.link.malformed > 0

    def stored() -> int:
        return sum(r["count"] for r in controller.store.summaries(device, limit=10_000))

    wait_until(lambda: stored() == made, 60)
    rows = controller.store.summaries(device, limit=10_000)
    assert len({(r["stream"], r["seq"]) for r in rows}) == len(rows)  # each once
    stats = agent.buffer.stats()
    assert stats["dropped"] == 0 and stats["evicted_summaries"] == 0
