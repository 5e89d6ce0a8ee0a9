"""What an outside attack run found, each pinned: bounds every reader of a message gets
from the contract, and a device store that stays usable whatever one write raises."""

from __future__ import annotations

import json

import pytest

from edgefleet.agent import TelemetryBuffer
from edgefleet.contract import Ack, Birth, MessageError


def test_an_ack_beyond_64_bits_is_refused_and_a_failed_ack_loses_no_record(tmp_path):
    with pytest.raises(MessageError, match="64-bit"):
        Ack.decode(b'{"seqs": [9223372036854775808]}')
    assert Ack.decode(b'{"seqs": [9223372036854775807]}').seqs == [2**63 - 1]

    buf = TelemetryBuffer(tmp_path / "t.db", window_s=60)
    buf.start()
    try:
        buf.close_windows(6000.0)
        for i in range(5):
            buf.record(6000.0 + i, "m", 1, 2.0, True, "7")
        assert buf.flush()
        with pytest.raises(OverflowError):  # what reached the store before decoding refused it
            buf.ack([2**63])
        for i in range(5):
            buf.record(6010.0 + i, "m", 1, 2.0, True, "7")
        assert buf.close_windows(6060.0)  # commits: no transaction was left open
        pending = buf.pending(7000.0, resend_after_s=0, limit=10)
        assert sum(s.count for s in pending) == 10
        assert buf.stats()["dropped"] == 0
        assert buf.ack([s.seq for s in pending]) == len(pending)
    finally:
        buf.stop()


@pytest.mark.parametrize("payload, field", [
    ({"agent_version": "x" * 2_000_000}, "characters"),
    ({"agent_version": "x" * 65}, "agent_version"),
    ({"runtimes": ["onnxruntime:CPU"] * 33}, "runtimes"),
    ({"hw": {"junk": "x" * 5000}}, "hw"),
    ({"bd_seq": 2**63}, "64-bit"),
    ({"bd_seq": 2**70}, "bd_seq"),
])
def test_a_birth_cannot_make_the_device_list_grow_without_bound(payload, field):
    base = {"bd_seq": 1, "agent_version": "0.1.0", "ts": 1.0}
    with pytest.raises(MessageError, match=field):
        Birth.decode(json.dumps({**base, **payload}))
    assert Birth.decode(json.dumps(base)).agent_version == "0.1.0"


def test_json_nested_too_deep_is_a_message_error_not_a_crash():
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(MessageError, match="not valid JSON"):
        Ack.decode('{"seqs": ' + deep + "}")


def test_integers_beyond_64_bits_in_the_api_are_a_422_not_a_500(controller):
    from _support import TOKEN
    from fastapi.testclient import TestClient

    from edgefleet.controller.api import create_app

    big = 2**63
    with TestClient(create_app(controller), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        for method, url, body in [
            ("GET", f"/v1/models/digits/{big}", None),
            ("GET", f"/v1/models/digits/{big}/variants", None),
            ("POST", f"/v1/models/digits/{big}/optimize", {}),
            ("POST", "/v1/deployments", {"model": "digits", "version": big}),
            ("GET", f"/v1/audit?after={big}", None),
            ("GET", f"/v1/telemetry/query?version={big}", None),
            ("GET", "/v1/devices/d1/telemetry?limit=99999999999999999999", None),
        ]:
            resp = client.request(method, url, json=body)
            assert resp.status_code == 422, (url, resp.status_code, resp.text[:200])
        assert client.get("/v1/models/digits/9223372036854775807").status_code == 404


def test_the_api_answers_what_its_spec_says_for_methods_types_and_claim_tokens(controller):
    from _support import TOKEN
    from fastapi.testclient import TestClient

    from edgefleet.controller.api import create_app

    with TestClient(create_app(controller), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        # Allow lists every method the path serves, not only one route's
        resp = client.options("/v1/models")
        assert resp.status_code == 405 and resp.headers["allow"] == "GET, POST"
        # events are read, not posted: 405, not a 422 for an unknown action
        resp = client.post("/v1/deployments/dep-x/events")
        assert resp.status_code == 405 and resp.headers["allow"] == "GET"
        assert client.post("/v1/deployments/dep-x/pause").status_code == 404
        # strict bodies: 0 is not false, "3" is not 3; an integral 3.0 is 3
        for body in ({"fallback": 0}, {"min_cosine": False}, {"latency_runs": "300"}):
            resp = client.post("/v1/models/digits/1/optimize", json=body)
            assert resp.status_code == 422, (body, resp.text[:200])
        assert client.post("/v1/claim-tokens", json={"label": "x", "uses": 3.0}).status_code == 201
        # a policy field the schema does not list is refused by the schema, naming it
        resp = client.post("/v1/deployments", json={"model": "digits", "version": 1,
                                                    "policy": {"wavez": [100]}})
        assert resp.status_code == 422 and resp.json()["detail"][0]["loc"][-1] == "wavez"
        # an unknown claim token is refused before the key it came with is even parsed
        resp = client.post("/v1/provision", headers={"Authorization": ""}, json={
            "claim_token": "not-a-token", "public_key": "x" * 40, "proof": "AAAAAAAA",
            "ts": 0.0})
        assert resp.status_code == 401 and resp.json()["reason"] == "invalid_claim_token"


def test_stale_job_statuses_do_not_change_a_job_that_ended(controller, make_fleet):
    from _support import job_of, register_digits, wait_deployment, wait_devices_known

    from edgefleet.contract import JobStatus

    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    (device,) = fleet.ids
    dep = wait_deployment(controller, controller.deploy(
        "digits", register_digits(controller)["version"])["id"])
    assert dep["state"] == "succeeded" and job_of(dep, device)["state"] == "healthy"
    job = job_of(dep, device)
    for state in ("failed", "rolled_back", "downloading"):  # replayed or delayed, any time
        controller._on_status(device, JobStatus(job=dep["id"], deployment=dep["id"],
                                                state=state, ts=1.0, reason="x"))
    after = controller.store.get_deployment(dep["id"])
    assert after["state"] == "succeeded"
    assert job_of(after, device)["state"] == "healthy"
    assert job_of(after, device)["reason"] == job["reason"]


@pytest.mark.parametrize("public", [True, False])
def test_the_api_description_is_public_or_not_served_at_all(tmp_path, trust_root, public):
    from fastapi.testclient import TestClient

    from edgefleet.controller import FleetController, Settings
    from edgefleet.controller.api import create_app

    ctl = FleetController(Settings(db_url=f"sqlite:///{tmp_path / 'c.db'}",
                                   keys_dir=trust_root.parent, data_dir=tmp_path / "ctl",
                                   admin_token="t" * 24, public_api_docs=public))
    with TestClient(create_app(ctl), raise_server_exceptions=False) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(path).status_code == (200 if public else 404), path
        assert client.get("/v1/models").status_code == 401  # everything else needs a token


def test_a_burst_of_controller_announcements_gets_one_birth_and_deep_json_is_counted(
        tmp_path, trust_root):
    from edgefleet.agent import AgentConfig
    from edgefleet.agent._mqtt import AgentLink

    births: list[int] = []
    link = AgentLink(AgentConfig(device_id="pi-9", state_dir=tmp_path, trust_root=trust_root),
                     birth=lambda seq: births.append(seq) or b"{}", handlers={})
    link._client.publish = lambda *a, **k: None  # not connected to a broker here
    link.connected.set()
    for _ in range(50):
        link._on_controller_state(b'{"online": true}', retained=False)
    assert len(births) == 1
    link._on_controller_state(b'{"online": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
                              retained=False)
    assert link.malformed == 1 and len(births) == 1
    link._on_controller_state(b'{"online": false}', retained=False)
    link._on_controller_state(b'{"online": true}', retained=False)  # a restarted controller
    assert len(births) == 2


def test_a_read_only_state_directory_still_serves_the_installed_model(tmp_path, trust_root):
    import shutil
    import subprocess

    import numpy as np
    from _support import ASSETS

    from edgefleet.agent import Agent, AgentConfig
    from edgefleet.contract import Manifest, TensorSpec, sha256_file

    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is needed to make a directory immutable")
    digest, length = sha256_file(str(ASSETS / "digits.onnx"))
    m = Manifest(name="digits", version=1, runtime="onnxruntime", model_file="model.onnx",
                 model_sha256=digest, model_length=length,
                 inputs=[TensorSpec("pixels", "FP32", ["batch", 64])],
                 outputs=[TensorSpec("probs", "FP32", ["batch", 10])])
    config = AgentConfig(device_id="ro-1", state_dir=tmp_path / "state", trust_root=trust_root,
                         broker_url="mqtt://127.0.0.1:1", api_port=0, trust_check_interval_s=0)
    first = Agent(config)
    first.store.activate(first.store.install(m, m.encode(), ASSETS / "digits.onnx").ref)
    first.start()
    first.stop()
    state = str(tmp_path / "state")
    if subprocess.run(["chattr", "-R", "+i", state], capture_output=True).returncode:
        pytest.skip("this filesystem has no immutable flag")
    try:
        agent = Agent(config)  # root ignores permission bits, not the immutable flag
        agent.start()
        try:
            x = np.load(ASSETS / "eval.npz")["x"][:1].astype(np.float32)
            assert agent.predict(x).outputs["probs"].shape == (1, 10)
            assert agent.status()["buffer"]["in_memory"] is True
        finally:
            agent.stop()
        assert not list((tmp_path / "state").glob("telemetry.db.unusable-*"))  # not claimed
    finally:
        subprocess.run(["chattr", "-R", "-i", state], check=True)


def test_a_lost_session_reconnects_after_a_jittered_first_wait_a_refused_one_keeps_doubling(
        tmp_path, trust_root):
    """Devices that lost the same broker at once do not all come back at the same instant;
    a connect the broker refuses (revoked credentials) keeps paho's growing wait."""
    from edgefleet.agent import AgentConfig
    from edgefleet.agent._mqtt import FIRST_WAIT_JITTER, AgentLink

    config = AgentConfig(device_id="pi-8", state_dir=tmp_path, trust_root=trust_root,
                         reconnect_min_s=2.0, reconnect_max_s=30.0)
    link = AgentLink(config, birth=lambda seq: b"{}", handlers={})
    waits: list[tuple[float, float]] = []
    link._client.reconnect_delay_set = lambda lo, hi: waits.append((lo, hi))  # type: ignore[method-assign]

    for draw in FIRST_WAIT_JITTER:  # the two ends of the range
        link.connected.set()  # a session that was up
        link._on_disconnect(link._client, None, None, "lost", uniform=lambda lo, hi, d=draw: d)
    assert waits == [(2.0 * FIRST_WAIT_JITTER[0], 30.0), (2.0 * FIRST_WAIT_JITTER[1], 30.0)]
    assert not link.connected.is_set()

    link._on_disconnect(link._client, None, None, "not authorized")  # never got a session
    assert len(waits) == 2  # paho's doubling goes on
