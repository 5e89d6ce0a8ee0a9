"""Rollouts survive restarts: the controller killed mid-rollout, an agent killed mid-window."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from _models import save, train_small
from _support import ASSETS, TOKEN, wait_devices_known

from edgefleet.contract import JobState
from edgefleet.controller import FleetController, RolloutPolicy, Settings
from edgefleet.simulations.brokers import free_port
from edgefleet.simulations.fleet import Fleet, wait_until

N = 20


def _serve(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "controller", "serve",
                             *args], stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _register(api: httpx.Client, path: Path) -> int:
    files = {"model": ("m.onnx", path.read_bytes()),
             "eval_set": ("eval.npz", (ASSETS / "eval.npz").read_bytes())}
    resp = api.post("/v1/models", data={"name": "digits"}, files=files)
    assert resp.status_code == 201, resp.text
    return resp.json()["version"]


@pytest.fixture
def models(tmp_path):
    return [save(train_small((32,), seed), tmp_path / f"m{seed}.onnx") for seed in (1, 2)]


def test_controller_killed_mid_rollout_carries_on_from_its_store(tmp_path, mosquitto,
                                                                 trust_root, models):
    port = free_port()
    args = ["--broker", mosquitto.url, "--db", f"sqlite:///{tmp_path / 'ctl.db'}",
            "--keys", str(trust_root.parent), "--data", str(tmp_path / "data"),
            "--port", str(port), "--token", TOKEN]
    log = tmp_path / "controller.log"
    proc = _serve(args, log)
    fleet = Fleet(tmp_path / "fleet", mosquitto.url, trust_root, N, summary_window_s=1.0)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                       headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        wait_until(lambda: _up(api), 20)
        fleet.start()
        fleet.wait_connected(30)
        wait_until(lambda: len(api.get("/v1/devices").json()) == N, 20)
        v1 = _register(api, models[0])
        dep = api.post("/v1/deployments", json={"model": "digits", "version": v1}).json()
        wait_until(lambda: api.get(f"/v1/deployments/{dep['id']}").json()["state"]
                   == "succeeded", 90)
        v2 = _register(api, models[1])
        dep = api.post("/v1/deployments", json={
            "model": "digits", "version": v2, "strategy": "staged",
            "policy": {"waves": [25, 50, 100], "health_window_s": 2.0,
                       "wave_timeout_s": 60}}).json()
        wait_until(lambda: api.get(f"/v1/deployments/{dep['id']}").json()["wave"] >= 1, 60,
                   interval_s=0.02)

        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = _serve(args, log)
        wait_until(lambda: _up(api), 20)

        final = wait_until(lambda: _finished(api, dep["id"]), 120)
        assert final["state"] == "succeeded", final["events"]
        assert [w["outcome"] for w in final["waves"]] == ["passed"] * 3
        assert {j["state"] for j in final["jobs"]} == {"healthy"}
        assert {a.active.version for a in fleet.agents.values()} == {v2}
        passed = [e["detail"]["wave"] for e in final["events"] if e["kind"] == "wave_passed"]
        assert sorted(set(passed)) == [0, 1, 2]
    finally:
        fleet.stop()
        api.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _up(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").json()["broker_connected"] is True
    except httpx.HTTPError:
        return False


def _finished(api: httpx.Client, dep_id: str) -> dict | None:
    dep = api.get(f"/v1/deployments/{dep_id}").json()
    return dep if dep["state"] in ("succeeded", "failed", "rolled_back", "aborted") else None


def test_agent_killed_during_its_health_window_comes_back_valid_and_tells_the_truth(
        tmp_path, mosquitto, trust_root, models):
    ctl = FleetController(Settings(db_url=f"sqlite:///{tmp_path / 'ctl.db'}",
                                   broker_url=mosquitto.url, keys_dir=trust_root.parent,
                                   data_dir=tmp_path / "ctl", admin_token=TOKEN,
                                   rollout_tick_s=0.2))
    ctl.start()
    api_port = free_port()
    state = tmp_path / "pi"
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "pi-trial"\nbroker_url = "{mosquitto.url}"\n'
                      f'state_dir = "{state}"\ntrust_root = "{trust_root}"\n'
                      f"api_port = {api_port}\nsummary_window_s = 1.0\n")
    log = tmp_path / "agent.log"

    def spawn() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "agent", "run",
                                 "--config", str(config)], stdout=log.open("ab"),
                                stderr=subprocess.STDOUT)

    proc = spawn()
    try:
        wait_devices_known(ctl, ["pi-trial"], 30)
        labels = [str(i) for i in range(10)]
        evalset = (ASSETS / "eval.npz").read_bytes()
        v1 = ctl.registry.register("digits", models[0].read_bytes(), labels=labels,
                                   eval_npz=evalset)["version"]
        dep = ctl.deploy("digits", v1)
        wait_until(lambda: ctl.store.get_deployment(dep["id"])["state"] == "succeeded", 60)
        v2 = ctl.registry.register("digits", models[1].read_bytes(), labels=labels,
                                   eval_npz=evalset)["version"]
        dep = ctl.deploy("digits", v2, policy=RolloutPolicy(health_window_s=6.0,
                                                            wave_timeout_s=90))
        job = lambda: ctl.store.get_deployment(dep["id"])["jobs"][0]  # noqa: E731
        wait_until(lambda: job()["state"] == JobState.ACTIVATED, 60, interval_s=0.02)

        proc.send_signal(signal.SIGKILL)  # inside the health window
        proc.wait(10)
        proc = spawn()
        status = wait_until(lambda: _agent_status(api_port), 20)
        assert status["active"]["version"] == v2  # a valid model at once: the one on trial
        assert status["health_window"] is not None  # and it says the window runs again

        wait_until(lambda: ctl.store.get_deployment(dep["id"])["state"] == "succeeded", 60)
        assert job()["state"] == "healthy"
        assert "health window passed" in job()["detail"]
        assert _agent_status(api_port)["health_window"] is None
    finally:
        proc.kill()
        proc.wait(10)
        ctl.stop()


def _agent_status(port: int) -> dict | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/agent/status", timeout=2).json()
    except httpx.HTTPError:
        return None


def test_a_device_that_lost_its_desired_state_is_driven_again_on_birth(controller, make_fleet,
                                                                         mosquitto):
    from _support import register_digits

    fleet = make_fleet(2, with_links=True)
    wait_devices_known(controller, fleet.ids)
    away = fleet.ids[1]
    fleet.cut(away)
    wait_until(lambda: not controller.store.get_device(away)["online"], 15)
    row = register_digits(controller)
    dep = controller.deploy("digits", row["version"])
    wait_until(lambda: fleet.agents[fleet.ids[0]].active is not None, 30)

    mosquitto.restart()  # no persistence: the retained desired state for `away` is gone
    fleet.restore(away)

    wait_until(lambda: (fleet.agents[away].active or None) is not None, 30)
    assert fleet.agents[away].active.version == row["version"]
    final = wait_until(lambda: controller.store.get_deployment(dep["id"])
                       if controller.store.get_deployment(dep["id"])["state"] == "succeeded"
                       else None, 30)
    assert {j["state"] for j in final["jobs"]} == {"healthy"}
    assert controller.counters["desired_redriven"] >= 1  # the birth, not a retained message


def test_overlapping_deployments_are_refused_and_abort_holds_devices_where_they_are(
        controller, make_fleet):
    from _support import register_digits

    from edgefleet.contract import RegistryError

    fleet = make_fleet(2)
    wait_devices_known(controller, fleet.ids)
    v1 = register_digits(controller)
    slow = RolloutPolicy(strategy="staged", waves=(50, 100), health_window_s=30.0)
    dep = controller.deploy("digits", v1["version"], policy=slow)
    with pytest.raises(RegistryError) as busy:
        controller.deploy("digits", v1["version"])
    assert busy.value.reason == "device_busy"

    first = next(j["device"] for j in dep["jobs"] if j["wave"] == 0)
    # the first wave's device switched and is in its health window
    wait_until(lambda: controller.store.get_device(first)["active"] is not None, 30)
    done = controller.orchestrator.act(dep["id"], "abort", "tester")
    assert done["state"] == "aborted"
    assert [e["actor"] for e in done["events"] if e["kind"] == "aborted"] == ["tester"]
    other = next(d for d in fleet.ids if d != first)
    assert fleet.agents[other].active is None  # the second wave never started
    held = wait_until(lambda: next(j for j in controller.store.get_deployment(dep["id"])["jobs"]
                                   if j["device"] == first)["state"] == "held", 20)
    assert held and fleet.agents[first].active.version == v1["version"]
    assert controller.store.get_desired(first)["job"] == f"{dep['id']}.a"
    again = controller.deploy("digits", v1["version"])  # no longer busy
    assert again["state"] == "running"
