"""Helpers shared by the scenario tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgefleet.controller import FleetController
from edgefleet.simulations._models import ASSETS
from edgefleet.simulations.fleet import wait_until

TOKEN = "test-admin-token"


def register_digits(ctl: FleetController, model: Path | None = None) -> dict[str, Any]:
    """Register the example model (or another ONNX file) with its eval/calibration sets."""
    labels = json.loads((ASSETS / "digits.json").read_text())["labels"]
    return ctl.registry.register(
        "digits", (model or ASSETS / "digits.onnx").read_bytes(), labels=labels,
        eval_npz=(ASSETS / "eval.npz").read_bytes(),
        calibration_npz=(ASSETS / "calibration.npz").read_bytes())


def wait_deployment(ctl: FleetController, dep_id: str, timeout_s: float = 60,
                    states: tuple[str, ...] = ()) -> dict[str, Any]:
    """Wait until a deployment has finished (or reached one of ``states``); return it."""
    from edgefleet.controller.orchestrator import ACTIVE

    def done() -> bool:
        state = ctl.store.get_deployment(dep_id)["state"]
        return state in states if states else state not in ACTIVE
    wait_until(done, timeout_s)
    return ctl.store.get_deployment(dep_id, with_events=True)


def wait_optimization(ctl: FleetController, job_id: str,
                      timeout_s: float = 120) -> dict[str, Any]:
    """Wait until an optimization job has finished (succeeded or failed); return it."""
    def finished() -> dict[str, Any] | None:
        job = ctl.optimizations.get(job_id)
        return job if job["state"] in ("succeeded", "failed") else None
    job: dict[str, Any] = wait_until(finished, timeout_s)
    return job


def wait_devices_known(ctl: FleetController, ids: list[str], timeout_s: float = 10) -> None:
    wait_until(lambda: {d["id"] for d in ctl.store.list_devices() if d["online"]} >= set(ids),
               timeout_s)


def job_of(dep: dict[str, Any], device: str) -> dict[str, Any]:
    return next(j for j in dep["jobs"] if j["device"] == device)


def answers_by_path(agent: Any, model: str, feeds: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The same feeds through every way an application on the device can call the model:
    in-process ``Agent.predict``, v2 REST as JSON and binary (``tritonclient.http``), and
    v2 gRPC (``tritonclient.grpc``; the agent needs ``grpc_port``). ``{path: outputs}``."""
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp
    from tritonclient.utils import np_to_triton_dtype

    answers = {"predict": dict(agent.predict(feeds, model=model).outputs)}
    http = thttp.InferenceServerClient(agent.server.url.removeprefix("http://"),
                                       network_timeout=60.0)
    for binary in (False, True):
        inputs = []
        for name, arr in feeds.items():
            tensor = thttp.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            tensor.set_data_from_numpy(arr, binary_data=binary)
            inputs.append(tensor)
        result = http.infer(model, inputs)
        answers["rest-binary" if binary else "rest-json"] = {
            o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
    with tgrpc.InferenceServerClient(agent.grpc.target) as rpc:
        inputs = []
        for name, arr in feeds.items():
            tensor = tgrpc.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            tensor.set_data_from_numpy(arr)
            inputs.append(tensor)
        result = rpc.infer(model, inputs, client_timeout=60.0)
        answers["grpc"] = {o.name: result.as_numpy(o.name)
                           for o in result.get_response().outputs}
    return answers
