"""The controller API through the real ASGI app: auth, bad bodies, the happy path."""

from __future__ import annotations

import base64
import io
import logging
import time

import httpx
import numpy as np
import pytest
from _support import ASSETS, TOKEN, register_digits, wait_devices_known, wait_optimization
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer
from edgefleet.controller.provisioning import provision_message
from edgefleet.controller.rollout import STRATEGIES, RolloutPolicy
from edgefleet.simulations.fleet import wait_until


@pytest.fixture
def client(controller):
    with TestClient(create_app(controller), raise_server_exceptions=False) as c:
        yield c


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/models"), ("GET", "/v1/devices"), ("GET", "/v1/deployments"),
    ("POST", "/v1/deployments"), ("POST", "/v1/models"), ("GET", "/v1/stats"),
    ("POST", "/v1/models/digits/1/optimize"), ("GET", "/v1/optimizations"),
    ("GET", "/v1/optimizations/opt-1-abcdef"),
])
@pytest.mark.parametrize("headers,status", [
    ({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "Basic eDp5"}, 401),
])
def test_api_rejects_missing_or_wrong_token(client, method, path, headers, status):
    resp = client.request(method, path, headers=headers, json={})
    assert resp.status_code == status


@pytest.mark.parametrize("body", [
    {}, {"model": "digits"}, {"model": "digits", "version": 0},
    {"model": "digits", "version": "one"}, {"model": "digits", "version": 1, "devices": []},
    {"model": "digits", "version": 1, "extra": True}, [], "text",
])
def test_api_rejects_bad_deployment_bodies_with_422(client, body):
    resp = client.post("/v1/deployments", headers=AUTH, json=body)
    assert resp.status_code == 422


def test_api_answers_unknown_things_with_404_and_conflicts_with_4xx(client, controller):
    assert client.get("/v1/models/nope/1", headers=AUTH).status_code == 404
    assert client.get("/v1/deployments/dep-nope", headers=AUTH).status_code == 404
    assert client.get("/v1/devices/ghost", headers=AUTH).status_code == 404
    resp = client.post("/v1/deployments", headers=AUTH, json={"model": "nope", "version": 1})
    assert resp.status_code == 404
    register_digits(controller)
    resp = client.post("/v1/deployments", headers=AUTH,
                       json={"model": "digits", "version": 1, "selector": {"site": "mars"}})
    assert resp.status_code == 422 and "no device" in resp.json()["detail"]
    resp = client.post("/v1/deployments", headers=AUTH,
                       json={"model": "digits", "version": 1, "devices": ["bad/id"]})
    assert resp.status_code == 422
    resp = client.post("/v1/models/digits/1/optimize", headers=AUTH, json={"method": "magic"})
    assert resp.status_code == 422


def test_api_rejects_bad_model_uploads(client):
    bad = client.post("/v1/models", headers=AUTH, data={"name": "x"},
                      files={"model": ("m.onnx", b"not a model")})
    assert bad.status_code == 422 and "ONNX" in bad.json()["detail"]
    bad_name = client.post("/v1/models", headers=AUTH, data={"name": "../etc"},
                           files={"model": ("m.onnx", (ASSETS / "digits.onnx").read_bytes())})
    assert bad_name.status_code == 422
    bad_eval = client.post("/v1/models", headers=AUTH, data={"name": "x"},
                           files={"model": ("m.onnx", (ASSETS / "digits.onnx").read_bytes()),
                                  "eval_set": ("e.npz", b"junk")})
    assert bad_eval.status_code == 422
    no_file = client.post("/v1/models", headers=AUTH, data={"name": "x"})
    assert no_file.status_code == 422


def test_register_optimize_deploy_through_the_api(client, make_fleet, controller):
    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    files = {"model": ("digits.onnx", (ASSETS / "digits.onnx").read_bytes()),
             "eval_set": ("eval.npz", (ASSETS / "eval.npz").read_bytes()),
             "calibration": ("calibration.npz", (ASSETS / "calibration.npz").read_bytes())}
    reg = client.post("/v1/models", headers=AUTH, data={"name": "digits"}, files=files)
    assert reg.status_code == 201 and reg.json()["version"] == 1
    opt = client.post("/v1/models/digits/1/optimize", headers=AUTH,
                      json={"method": "auto", "latency_runs": 50})
    assert opt.status_code == 202 and opt.headers["location"] == f"/v1/optimizations/" \
                                                                  f"{opt.json()['id']}"
    wait_optimization(controller, opt.json()["id"])
    job = client.get(opt.headers["location"], headers=AUTH).json()
    assert job["state"] == "succeeded", job["error"]
    child = job["result"]
    assert child["parent"] == 1 and child["version"] == 2 and "file" not in child
    assert child["report"]["method"] == "dynamic"
    dep = client.post("/v1/deployments", headers=AUTH, json={"model": "digits", "version": 2})
    assert dep.status_code == 201 and [j["device"] for j in dep.json()["jobs"]] == fleet.ids
    assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("method,path,body,says", [
    ("POST", "/v1/deployments", {"model": "digits", "version": 1, "selector": {"site": "mars"}},
     "no device matches this deployment's target"),
    ("POST", "/v1/deployments", {"model": "digits", "version": 1, "devices": ["bad/id"]},
     "invalid device id 'bad/id'"),
    ("POST", "/v1/deployments", {"model": "digits", "version": 1, "devices": ["pi-1"],
                                 "strategy": "ab"},
     "an A/B deployment needs at least two devices"),
    ("POST", "/v1/tokens", {"name": "admin", "role": "viewer"}, "'admin' is reserved"),
    ("GET", "/v1/telemetry/query?selector=site", None,
     "selector parts are key=value, got 'site'"),
])
def test_values_the_controller_refuses_are_422s_that_say_what_was_wrong(
        client, controller, method, path, body, says):
    register_digits(controller)
    resp = client.request(method, path, headers=AUTH, json=body)
    assert resp.status_code == 422 and resp.json()["reason"] == "invalid", resp.text
    assert says in resp.json()["detail"]


def test_a_model_file_that_does_not_load_is_a_422_naming_its_kind(client):
    resp = client.post("/v1/models", headers=AUTH, data={"name": "x"},
                       files={"model": ("m.onnx", b"not a model")})
    assert (resp.status_code, resp.json()["reason"]) == (422, "invalid")
    assert resp.json()["detail"].startswith("not a loadable ONNX model: ")


@pytest.mark.parametrize("name,files,says", [
    ("bad/name", {}, "model name 'bad/name': expected 1 to 64 letters"),
    ("digits", {"eval_set": ("e.npz", b"not an npz")}, "eval set: not a valid .npz file"),
    ("digits", {"eval_set": "wrong-input"}, "eval set: ['pics'] are not inputs of the model"),
])
def test_a_registration_the_registry_refuses_is_a_422_naming_what_was_wrong(client, name,
                                                                            files, says):
    if files.get("eval_set") == "wrong-input":
        buf = io.BytesIO()
        np.savez(buf, pics=np.zeros((2, 64), np.float32))
        files = {"eval_set": ("e.npz", buf.getvalue())}
    resp = client.post("/v1/models", headers=AUTH, data={"name": name},
                       files={"model": ("m.onnx", (ASSETS / "digits.onnx").read_bytes()),
                              **files})
    assert (resp.status_code, resp.json()["reason"]) == (422, "invalid"), resp.text
    assert says in resp.json()["detail"], resp.json()["detail"]


def test_a_device_id_that_cannot_name_a_device_is_a_422_at_provisioning(client, controller):
    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    claim = controller.provisioner.create_claim_token(label="x", created_by="admin")["token"]
    ts = time.time()
    proof = base64.b64encode(key.sign(provision_message("pi 1", pem, ts))).decode()
    resp = client.post("/v1/provision", json={"claim_token": claim, "public_key": pem,
                                              "proof": proof, "ts": ts, "device_id": "pi 1"})
    assert resp.status_code == 422
    assert resp.json() == {"detail": "invalid device id 'pi 1'", "reason": "invalid"}


@pytest.mark.parametrize("body,field,says", [
    ({"strategy": "staged", "policy": {"waves": [50, 20, 100]}}, "waves", "increasing"),
    ({"policy": {"waves": [50, 100]}}, "waves", "all-at-once has a single wave"),
    ({"strategy": "canary", "policy": {"max_failure_rate": 2}}, "max_failure_rate",
     "less than or equal to 1"),
    ({"policy": {"on_breach": "panic"}}, "on_breach", "'pause', 'abort' or 'rollback'"),
    ({"policy": {"min_samples": 0.5}}, "min_samples", "valid integer"),
])
def test_a_policy_the_rollout_rules_refuse_is_a_422_naming_the_field(client, body, field,
                                                                       says):
    resp = client.post("/v1/deployments", headers=AUTH,
                       json={"model": "digits", "version": 1, **body})
    assert resp.status_code == 422, resp.text
    [error] = resp.json()["detail"]
    assert error["loc"] == ["body", "policy", field] and says in error["msg"]


def test_the_deploy_body_takes_the_rollout_policy_itself(client):
    spec = client.get("/openapi.json").json()["components"]["schemas"]
    assert spec["DeployBody"]["properties"]["policy"]["$ref"] == \
        "#/components/schemas/RolloutPolicy"
    assert spec["DeployBody"]["properties"]["strategy"]["enum"] == list(STRATEGIES)
    fields = spec["RolloutPolicy"]["properties"]
    assert set(fields) == set(RolloutPolicy.model_fields) - {"strategy"}
    assert fields["max_failure_rate"]["maximum"] == 1 and fields["min_samples"]["minimum"] == 1
    assert fields["on_breach"]["enum"] == ["pause", "abort", "rollback"]


def test_the_strategy_is_given_beside_the_policy_not_in_it(client, controller, make_fleet):
    resp = client.post("/v1/deployments", headers=AUTH, json={
        "model": "digits", "version": 1, "policy": {"strategy": "staged"}})
    assert resp.status_code == 422 and "policy.strategy" in resp.json()["detail"][0]["msg"]
    fleet = make_fleet(2)
    wait_devices_known(controller, fleet.ids)
    register_digits(controller)
    canary = client.post("/v1/deployments", headers=AUTH, json={
        "model": "digits", "version": 1, "strategy": "canary",
        "policy": {"health_window_s": 1}})
    assert canary.status_code == 201, canary.text
    assert canary.json()["strategy"] == "canary"
    assert canary.json()["policy"]["waves"] == [10.0, 100.0]  # judged as a canary's
    assert canary.json()["policy"]["health_window_s"] == 1.0


def test_a_bug_in_a_route_is_a_500_whose_traceback_the_server_logs(controller, monkeypatch):
    """A stray ValueError is the controller's fault, not a bad request."""
    def broken(limit: int) -> list[dict]:
        raise ValueError("not the caller's fault")

    monkeypatch.setattr(controller.optimizations, "recent", broken)
    logged: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.ERROR)
    catcher.emit = logged.append  # type: ignore[method-assign]
    server_log = logging.getLogger("uvicorn.error")
    server = ApiServer(create_app(controller))
    server.start()
    server_log.addHandler(catcher)
    try:
        resp = httpx.get(f"{server.url}/v1/optimizations", headers=AUTH, timeout=10)
        wait_until(lambda: logged, 10)  # (the server logs it once the answer is sent)
    finally:
        server.stop()
        server_log.removeHandler(catcher)
    assert resp.status_code == 500 and resp.json()["reason"] == "internal"
    assert "not the caller's fault" not in resp.text
    [record] = logged
    assert record.exc_info and isinstance(record.exc_info[1], ValueError)
    assert str(record.exc_info[1]) == "not the caller's fault"


def test_a_bug_in_a_mutating_route_is_a_500_in_the_audit_log(client, controller,
                                                               monkeypatch):
    register_digits(controller)

    def broken(*_: object) -> None:
        raise ValueError("not the caller's fault")

    monkeypatch.setattr(controller.store.console, "put_card", broken)
    resp = client.put("/v1/models/digits/1/card", headers=AUTH, json={"intended_use": "x"})
    assert (resp.status_code, resp.json()["reason"]) == (500, "internal")
    [entry] = controller.store.audit.entries(target="/v1/models/digits/1/card")
    assert entry["detail"]["outcome"] == 500
