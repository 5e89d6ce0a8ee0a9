"""``edgefleet demo``: the whole loop on embedded defaults, in one process, no services.

Embedded MQTT broker, the controller (SQLite, FastAPI on a free localhost port) and N
real agents; register the example model, optimize it to int8, sign and deploy it,
run inferences through each agent's v2 endpoint, take one agent's network away and
back, and report what happened.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgefleet.controller import FleetController, Settings, init_keys
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer

from ._models import ASSETS
from .fleet import Fleet, wait_until

__all__ = ["ASSETS", "run_demo"]



def _register_example(api: httpx.Client, name: str = "digits") -> dict[str, Any]:
    meta = json.loads((ASSETS / "digits.json").read_text())
    files = {"model": ("digits.onnx", (ASSETS / "digits.onnx").read_bytes()),
             "eval_set": ("eval.npz", (ASSETS / "eval.npz").read_bytes()),
             "calibration": ("calibration.npz", (ASSETS / "calibration.npz").read_bytes())}
    resp = api.post("/v1/models", data={"name": name, "labels": json.dumps(meta["labels"])},
                    files=files)
    resp.raise_for_status()
    return resp.json()  # type: ignore[no-any-return]


def _infer(url: str, x: np.ndarray) -> str:
    body = {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}
    resp = httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=10)
    resp.raise_for_status()
    probs = np.asarray(resp.json()["outputs"][0]["data"]).reshape(x.shape[0], -1)
    return str(int(probs[0].argmax()))


def _optimize(api: httpx.Client, version: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Queue an optimization job, follow its progress, return the child version.

    Raises:
        RuntimeError: the job failed (its stage, type and message).
    """
    resp = api.post(f"/v1/models/digits/{version}/optimize", json={"method": "auto"})
    resp.raise_for_status()
    location, said = resp.headers["Location"], 0

    def finished() -> dict[str, Any] | None:
        nonlocal said
        job: dict[str, Any] = api.get(location).json()
        for step in job["progress"][said:]:
            say(f"  {step['message']}")
        said = len(job["progress"])
        return job if job["state"] in ("succeeded", "failed") else None

    job = wait_until(finished, 120, interval_s=0.2)
    if job["state"] == "failed":
        err = job["error"]
        raise RuntimeError(f"optimize failed at {err['stage']}: {err['type']}: "
                           f"{err['message']}")
    return job["result"]  # type: ignore[no-any-return]


def run_demo(devices: int = 3, *, workdir: Path | None = None, inferences: int = 40,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo and return its report (see ``docs/demo.md`` for the fields).

    Raises:
        TimeoutError: a step did not complete in time (the report would be meaningless).
        RuntimeError: the optimization job failed.
    """
    say = progress or (lambda _m: None)
    started = time.monotonic()
    root = Path(workdir or tempfile.mkdtemp(prefix="edgefleet-demo-"))
    for stale in ("keys", "controller", "devices", "controller.db"):  # a re-used workdir
        path = root / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    token = secrets.token_urlsafe(16)
    trust_root = init_keys(root / "keys", force=True)
    settings = Settings(db_url=f"sqlite:///{root / 'controller.db'}", broker_url=None,
                        keys_dir=root / "keys", data_dir=root / "controller", admin_token=token)
    say("starting the embedded broker and the controller")
    ctl = FleetController(settings)
    ctl.start()
    server = ApiServer(create_app(ctl))
    server.start()
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"},
                       timeout=120)
    assert ctl.broker_url is not None
    fleet = Fleet(root / "devices", ctl.broker_url, trust_root, devices, with_links=True,
                  summary_window_s=1.0, resend_after_s=2.0)
    try:
        say(f"starting {devices} agents")
        fleet.start()
        fleet.wait_connected(20)
        wait_until(lambda: len(api.get("/v1/devices").json()) >= devices, 20)

        say("registering the example model (digits MLP, fp32)")
        base = _register_example(api)
        say("optimizing to int8 (quantize, evaluate, gate)")
        child = _optimize(api, base["version"], say)
        report = child["report"]

        say(f"signing and deploying digits:{child['version']} over MQTT")
        dep = api.post("/v1/deployments", json={"model": "digits", "version": child["version"],
                                                "devices": fleet.ids}).json()
        wait_until(lambda: api.get(f"/v1/deployments/{dep['id']}").json()["state"] != "running",
                   60)

        say("running inferences through each agent's v2 endpoint")
        evalset = np.load(ASSETS / "eval.npz")
        xs, ys = evalset["x"], evalset["y"]
        correct: dict[str, int] = {}
        for device_id, agent in fleet.agents.items():
            assert agent.server is not None
            correct[device_id] = sum(
                _infer(agent.server.url, xs[i:i + 1]) == str(int(ys[i]))
                for i in range(inferences))

        offline_id = fleet.ids[-1]
        agent = fleet.agents[offline_id]
        say(f"taking {offline_id}'s network away")
        fleet.cut(offline_id)
        wait_until(lambda: not api.get(f"/v1/devices/{offline_id}").json()["online"], 30)
        first_seq = agent.buffer.stats()["summaries"] + 1
        offline_inferences = 0
        t_end = time.monotonic() + 3.0
        i = 0
        while time.monotonic() < t_end:  # several telemetry windows while offline
            agent.predict(xs[i % len(xs)][None, :])
            offline_inferences += 1
            i += 1
            time.sleep(0.01)
        agent.buffer.close_windows(agent.clock.time() + 1.0)
        last_seq = agent.buffer.stats()["summaries"]
        say(f"giving {offline_id} its network back")
        fleet.restore(offline_id)
        wait_until(lambda: api.get(f"/v1/devices/{offline_id}").json()["online"], 30)
        wait_until(lambda: agent.buffer.stats()["summaries_unacked"] == 0, 30)
        stored = {s["seq"] for s in api.get(f"/v1/devices/{offline_id}/telemetry").json()}
        replayed = [s for s in range(first_seq, last_seq + 1) if s in stored]

        for a in fleet.agents.values():  # flush every agent's last window
            a.buffer.close_windows(a.clock.time() + 1.0)
        wait_until(lambda: all(a.buffer.stats()["summaries_unacked"] == 0
                               for a in fleet.agents.values()), 20)
        job_states = {j["device"]: j["state"]
                      for j in api.get(f"/v1/deployments/{dep['id']}").json()["jobs"]}
        rows = {d["id"]: d for d in api.get("/v1/devices").json()}
        counts = {d: len(api.get(f"/v1/devices/{d}/telemetry").json()) for d in fleet.ids}
        return {
            "devices": [{
                "id": d,
                "model_version": (rows[d]["active"] or {}).get("version"),
                "healthy": job_states.get(d) == "healthy",
                "inferences": fleet.agents[d].inferences,
                "accuracy_v2": round(correct[d] / inferences, 4),
                "summaries_acked": counts[d],
            } for d in fleet.ids],
            "optimization": {
                "fp32": {k: report["fp32"][k] for k in ("size_bytes", "accuracy", "p50_ms")},
                "int8": {k: report["int8"][k] for k in ("size_bytes", "accuracy", "p50_ms")},
                "shipped": report["shipped"], "method": report["method"],
                "reason": report.get("reason", ""), "version": child["version"],
                "parent": child["parent"],
            },
            "deployment": {"id": dep["id"], "state": api.get(
                f"/v1/deployments/{dep['id']}").json()["state"]},
            "offline_check": {
                "device": offline_id, "inferences_while_offline": offline_inferences,
                "summaries_while_offline": last_seq - first_seq + 1,
                "summaries_replayed": len(replayed),
                "summaries_lost": (last_seq - first_seq + 1) - len(replayed),
            },
            "elapsed_s": round(time.monotonic() - started, 1),
            "workdir": str(root),
        }
    finally:
        fleet.stop()
        api.close()
        server.stop()
        ctl.stop()
