"""Bad input from outside never crashes the agent or the controller."""

from __future__ import annotations

import time

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from _support import register_digits, wait_deployment, wait_devices_known

from edgefleet.contract import InputError
from edgefleet.simulations.fleet import wait_until


@pytest.fixture
def serving_agent(controller, make_fleet):
    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    row = register_digits(controller)
    assert wait_deployment(controller, controller.deploy("digits", row["version"])["id"])[
        "state"] == "succeeded"
    return fleet.agents[fleet.ids[0]]


def test_inference_with_wrong_shape_gets_a_clear_error_naming_the_signature(serving_agent):
    agent = serving_agent
    with pytest.raises(InputError, match=r"pixels: FP32\['batch', 64\]"):
        agent.predict(np.zeros((1, 63), dtype=np.float32))
    with pytest.raises(InputError, match="must be FP32"):
        agent.predict(np.zeros((1, 64), dtype=np.float64))

    url = f"{agent.server.url}/v2/models/digits/infer"
    bad_shape = {"inputs": [{"name": "pixels", "shape": [1, 32], "datatype": "FP32",
                             "data": [0.0] * 32}]}
    resp = httpx.post(url, json=bad_shape, timeout=5)
    assert resp.status_code == 400
    assert "expected {pixels: FP32['batch', 64]}" in resp.json()["error"]
    mismatch = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                            "data": [0.0] * 10}]}
    assert httpx.post(url, json=mismatch, timeout=5).status_code == 400
    assert httpx.post(url, content=b"{not json", timeout=5).status_code == 400
    assert httpx.post(f"{agent.server.url}/v2/models/other/infer", json=bad_shape,
                      timeout=5).status_code == 404
    # and it still answers correctly afterwards
    good = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                        "data": [0.0] * 64}]}
    assert httpx.post(url, json=good, timeout=5).status_code == 200
    assert agent.status()["errors"] >= 1


GARBAGE = [b"", b"\x00\xff\xfe", b"[]", b"{}", b'{"seq": "x"}', b"null", b"{" * 5000,
           b'{"bd_seq": 1, "agent_version": 5, "ts": 0}']


def test_malformed_payloads_on_every_topic_are_dropped_and_both_keep_running(
        controller, serving_agent, mosquitto, evalset):
    agent = serving_agent
    dev = agent.config.device_id
    attacker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzzer")
    attacker.connect("127.0.0.1", mosquitto.port)
    attacker.loop_start()
    try:
        topics = [f"fleet/v1/dev/{dev}/{s}" for s in (
            "birth", "death", "job/dep-x/status", "telemetry", "fetch/req",  # controller reads
            "cmd", "desired", "fetch/resp", "telemetry/ack")]            # agent reads
        topics += ["fleet/v1/dev/../birth", "fleet/v1/dev/a b/telemetry", "fleet/v1/other"]
        for topic in topics:
            for payload in GARBAGE:
                attacker.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_until(lambda: controller.link.malformed >= 20 and agent.link.malformed >= 10, 10)
    finally:
        attacker.loop_stop()
        attacker.disconnect()

    # both keep running: the agent serves, the controller still deploys to it
    assert agent.predict(evalset["x"][:1]).top is not None
    row = register_digits(controller)
    dep = wait_deployment(controller, controller.deploy("digits", row["version"])["id"])
    assert dep["state"] == "succeeded"
    assert agent.active.version == row["version"]
    assert controller.store.get_device(dev)["online"]


def test_agent_serves_installed_model_at_once_with_no_broker(controller, serving_agent,
                                                              mosquitto, evalset):
    agent = serving_agent
    config = agent.config
    agent.stop()
    mosquitto.stop()
    from edgefleet.agent import Agent

    started = time.monotonic()
    again = Agent(config)
    again.start()
    try:
        assert again.active is not None and again.active.name == "digits"
        assert again.predict(evalset["x"][:1]).top is not None
        # a start that waited for the (stopped) broker would not return at all; how fast
        # a cold start is is the agent_cold_start benchmark row's business
        assert time.monotonic() - started < 30
        assert not again.link.connected.is_set()
    finally:
        again.stop()


def test_agents_started_before_the_controller_are_known_once_it_starts(
        tmp_path, mosquitto, trust_root, make_fleet):
    from _support import TOKEN

    from edgefleet.controller import FleetController, Settings

    fleet = make_fleet(2)  # births go out while no controller listens
    ctl = FleetController(Settings(db_url=f"sqlite:///{tmp_path / 'late.db'}",
                                   broker_url=mosquitto.url, keys_dir=trust_root.parent,
                                   data_dir=tmp_path / "late", admin_token=TOKEN,
                                   client_id="late-controller"))
    ctl.start()
    try:
        wait_devices_known(ctl, fleet.ids, 10)
        agent = fleet.agents[fleet.ids[0]]
        fleet.stop_agent(fleet.ids[0])  # a clean stop announces its death
        wait_until(lambda: not ctl.store.get_device(agent.config.device_id)["online"], 10)
        assert ctl.store.get_device(fleet.ids[1])["online"]
    finally:
        ctl.stop()
