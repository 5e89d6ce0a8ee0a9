"""The controller API through the real ASGI app: auth, bad bodies, the happy path."""

from __future__ import annotations

import pytest
from _support import ASSETS, TOKEN, register_digits, wait_devices_known, wait_optimization
from fastapi.testclient import TestClient

from edgefleet.controller.api import create_app


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
