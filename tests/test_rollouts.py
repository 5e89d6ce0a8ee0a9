"""Safe rollouts on 20 real agents and a real Mosquitto, with live traffic on every agent.

Each scenario gets its own broker, controller and fleet, all running the same good model
when it begins; the candidate models are trained once for the module.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from _models import broken, save, slowed, train_small
from _support import ASSETS, TOKEN, register_digits, wait_deployment, wait_devices_known

from edgefleet.controller import FleetController, RolloutPolicy, Settings, init_keys
from edgefleet.controller.rollout import JOB_DONE
from edgefleet.simulations.brokers import MosquittoProcess
from edgefleet.simulations.fleet import Fleet, wait_until

N = 20


class Traffic:
    """Keeps every agent answering inferences on eval samples, as applications would."""

    def __init__(self, fleet: Fleet, x: np.ndarray) -> None:
        self.fleet, self.x = fleet, x
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(0.02):
            for agent in list(self.fleet.agents.values()):
                with contextlib.suppress(Exception):  # the agent records any failure
                    agent.predict(self.x[i % len(self.x)][None, :])
                i += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The candidate models, trained once for the module, and their raw latencies."""
    root = tmp_path_factory.mktemp("rollout-models")
    good = train_small((32,), 1)
    files = {
        "good": save(good, root / "good.onnx"),
        "broken": save(broken(good), root / "broken.onnx"),
        # much slower in compute, so that it is at least twice as slow as what the agents
        # observe (their latency includes waiting for the interpreter, shared by 20 agents)
        "slow": save(slowed(good, 512, depth=24), root / "slow.onnx"),
        "weak": save(train_small((4,), 4), root / "weak.onnx"),
        "alt": save(train_small((32,), 2), root / "alt.onnx"),
    }
    x = np.load(ASSETS / "eval.npz")["x"]
    # measured before any fleet runs, so that no traffic shares the cores
    raw_latency = {name: _raw_latency(files[name], x[:1]) for name in ("good", "slow")}
    return {"files": files, "x": x, "raw_latency": raw_latency}


@pytest.fixture
def env(tmp_path, models):
    """A fresh broker, controller and 20-agent fleet per scenario, all running the good
    model, with traffic on every agent: one scenario's slow or stuck agent cannot carry
    into the next."""
    trust_root = init_keys(tmp_path / "keys")
    broker = MosquittoProcess(workdir=tmp_path / "mq")
    broker.start()
    ctl = FleetController(Settings(db_url=f"sqlite:///{tmp_path / 'ctl.db'}",
                                   broker_url=broker.url, keys_dir=tmp_path / "keys",
                                   data_dir=tmp_path / "ctl", admin_token=TOKEN,
                                   client_id="rollout-ctl", rollout_tick_s=0.2))
    # 20 agents, their links and the controller share this process and two cores: a 60 s
    # keep-alive, so an agent busy installing on a loaded machine is not dropped by the
    # broker mid-test (a cut link is seen at once: the proxy resets it)
    fleet = Fleet(tmp_path / "fleet", broker.url, trust_root, N, with_links=True,
                  tags={"site": "lab"}, summary_window_s=1.0, resend_after_s=2.0,
                  keepalive_s=60)
    traffic = None
    try:
        ctl.start()
        fleet.start()
        fleet.wait_connected(30)
        wait_devices_known(ctl, fleet.ids, 20)
        base = register_digits(ctl, models["files"]["good"])
        dep = wait_deployment(ctl, ctl.deploy("digits", base["version"])["id"], 90)
        assert dep["state"] == "succeeded", dep["result"]
        traffic = Traffic(fleet, models["x"])
        yield {"ctl": ctl, "fleet": fleet, "broker": broker, "base": base["version"],
               **models}
    finally:
        if traffic is not None:
            traffic.stop()
        fleet.stop()
        ctl.stop()
        broker.stop()


def _raw_latency(path, x: np.ndarray) -> float:
    """Best-of-five mean seconds per single-sample run, one thread (as the agent runs it)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(100):
        s.run(None, {"pixels": x})
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(300):
            s.run(None, {"pixels": x})
        best = min(best, (time.perf_counter() - t) / 300)
    return best


def _versions(fleet: Fleet) -> dict[str, int]:
    return {d: a.active.version for d, a in fleet.agents.items()}


def test_staged_rollout_with_a_model_failing_its_smoke_test_stops_at_the_first_wave(env):
    ctl, fleet = env["ctl"], env["fleet"]
    before = env["base"]
    bad = register_digits(ctl, env["files"]["broken"])
    policy = RolloutPolicy(strategy="staged", waves=(20, 50, 100), health_window_s=1.0,
                           max_failure_rate=0.0, wave_timeout_s=60, on_breach="rollback")

    dep = wait_deployment(ctl, ctl.deploy("digits", bad["version"], selector={"site": "lab"},
                                          policy=policy)["id"], 90)

    assert dep["state"] == "rolled_back"
    breach = next(e for e in dep["events"] if e["kind"] == "wave_breached")
    assert breach["detail"]["wave"] == 0 and breach["detail"]["reason"] == "failure_rate"
    first = {j["device"] for j in dep["jobs"] if j["wave"] == 0}
    assert len(first) == 4
    for j in dep["jobs"]:
        if j["device"] in first:
            assert j["reason"] == "smoke_test_failed" and j["state"] == "reverted", j
        else:  # never touched: no job sent, no desired state for this deployment
            assert j["job"] is None and j["state"] == "pending", j
            assert (ctl.store.get_desired(j["device"]) or {}).get("deployment") != dep["id"]
    assert _versions(fleet) == {d: before for d in fleet.ids}
    assert not any(e["kind"] == "wave_started" and e["detail"]["wave"] == 1
                   for e in dep["events"])


def test_a_model_twice_as_slow_is_caught_by_the_p95_gate_not_the_smoke_test(env):
    ctl, fleet = env["ctl"], env["fleet"]
    before = env["base"]
    lat = env["raw_latency"]  # measured before the traffic started
    assert lat["slow"] >= 2 * lat["good"], lat  # the candidate really is twice as slow
    slow = register_digits(ctl, env["files"]["slow"])
    policy = RolloutPolicy(strategy="staged", waves=(20, 100), health_window_s=3.0,
                           max_p95_regression=0.2, min_samples=100, wave_timeout_s=60,
                           # the devices' own latency check is off: this is the
                           # controller's p95 gate (the slow model is ~30x slower per call
                           # here, and more under load: a device check would trip first,
                           # now and then)
                           device_max_latency_ratio=None, on_breach="rollback")

    dep = wait_deployment(ctl, ctl.deploy("digits", slow["version"], policy=policy)["id"], 90)

    assert dep["state"] == "rolled_back", json.dumps(dep["result"])
    breach = next(e for e in dep["events"] if e["kind"] == "wave_breached")
    assert breach["detail"]["reason"] == "p95_regression", breach
    wave0 = [j for j in dep["jobs"] if j["wave"] == 0]
    assert all(j["reason"] != "smoke_test_failed" for j in wave0)
    assert all(j["state"] == "reverted" for j in wave0)
    assert _versions(fleet) == {d: before for d in fleet.ids}


def test_a_silent_device_does_not_hold_the_rollout_past_the_wave_timeout(env):
    ctl, fleet = env["ctl"], env["fleet"]
    silent = fleet.ids[7]
    fleet.cut(silent)
    try:
        wait_until(lambda: not ctl.store.get_device(silent)["online"], 15)
        alt = register_digits(ctl, env["files"]["alt"])
        policy = RolloutPolicy(strategy="all-at-once", wave_timeout_s=8.0, silent="skipped",
                               max_failure_rate=0.0)
        dep = wait_deployment(ctl, ctl.deploy("digits", alt["version"], policy=policy)["id"],
                              60)

        assert dep["state"] == "succeeded"
        # held for the wave timeout, not until the silent device answers: from the wave's
        # start to the deployment's end, 8 s and the orchestrator's ticks (signing each
        # device's bundle comes first, and on a busy machine takes a few seconds)
        at = {e["kind"]: e["ts"] for e in dep["events"]}
        assert 8.0 <= at["succeeded"] - at["wave_started"] < 8.0 + 6.0, at
        states = {j["device"]: j["state"] for j in dep["jobs"]}
        assert states.pop(silent) == "timed_out"
        # the others are healthy, or as slow as the wave timeout on a busy machine
        assert set(states.values()) <= {"healthy", "timed_out"}, states
        assert "healthy" in states.values()
    finally:
        fleet.restore(silent)
    # back on the network, it catches up from its retained desired state
    wait_until(lambda: fleet.agents[silent].active.version == alt["version"], 30)


def test_shadow_reports_agreement_and_latency_and_promotes_when_they_hold(env):
    ctl, fleet = env["ctl"], env["fleet"]
    # the twin is the active model's own file registered again, so it agrees on every
    # input (another training run of the same network agrees on only ~98% of the eval set,
    # right at the gate); its latency ratio is reported and gated
    active = ctl.registry.get("digits", env["base"])
    twin = register_digits(ctl, Path(active["file"]))
    policy = RolloutPolicy(strategy="shadow", sample=0.5, min_agreement=0.98, duration_s=4.0,
                           min_samples=200, max_latency_ratio=3.0, wave_timeout_s=60)

    dep = ctl.deploy("digits", twin["version"], policy=policy)
    first = fleet.ids[0]
    # installed as its shadow, or its job ended without (then the message says why)
    wait_until(lambda: fleet.agents[first].shadow_ref is not None or
               (ctl.store.get_job(dep["id"], first) or {}).get("state") in JOB_DONE, 60)
    assert fleet.agents[first].shadow_ref is not None, (ctl.store.get_job(dep["id"], first),
                                                        ctl.store.get_deployment(dep["id"])[
                                                            "state"])
    assert fleet.agents[fleet.ids[0]].active.version != twin["version"]  # never served
    dep = wait_deployment(ctl, dep["id"], 90)

    assert dep["state"] == "succeeded", (dep["result"], dep["events"])
    shadow = dep["result"]["shadow"]
    assert shadow["samples"] >= 200 and shadow["agreement"] == 1.0
    assert shadow["latency_ratio"] is not None and shadow["mean_distance"] is not None
    assert any(e["kind"] == "promotion_started" for e in dep["events"])
    wait_until(lambda: set(_versions(fleet).values()) == {twin["version"]}, 30)
    assert all(a.shadow_ref is None for a in fleet.agents.values())


def test_shadow_does_not_promote_a_model_that_disagrees(env):
    ctl, fleet = env["ctl"], env["fleet"]
    before = env["base"]
    weak = register_digits(ctl, env["files"]["weak"])
    policy = RolloutPolicy(strategy="shadow", sample=0.5, min_agreement=0.98, duration_s=4.0,
                           min_samples=200, wave_timeout_s=60)

    dep = wait_deployment(ctl, ctl.deploy("digits", weak["version"], policy=policy)["id"], 90)

    assert dep["state"] == "rejected"
    assert dep["result"]["reason"] == "disagreement"
    assert dep["result"]["shadow"]["agreement"] < 0.95
    assert _versions(fleet) == {d: before for d in fleet.ids}
    wait_until(lambda: all(a.shadow_ref is None for a in fleet.agents.values()), 20)


def test_ab_reports_per_arm_metrics_and_promote_moves_the_other_arm_over(env):
    ctl, fleet = env["ctl"], env["fleet"]
    before = env["base"]
    cand = register_digits(ctl, env["files"]["good"])
    policy = RolloutPolicy(strategy="ab", split=50, duration_s=3.0, min_samples=50,
                           wave_timeout_s=60)

    dep = wait_deployment(ctl, ctl.deploy("digits", cand["version"], policy=policy)["id"], 120,
                          states=("awaiting_decision",))
    # each arm's figures come from its summaries, which may land after the decision point
    arms = wait_until(lambda: (a := ctl.orchestrator.arm_metrics(
        ctl.store.get_deployment(dep["id"]))) and a["new"]["inferences"] > 0
        and a["control"]["inferences"] > 0 and a, 30)
    assert arms["new"]["version"] == cand["version"] and arms["control"]["version"] == before
    assert arms["new"]["devices"] + arms["control"]["devices"] == N
    new_arm = set(dep["plan"]["arms"]["new"])
    assert {d for d, v in _versions(fleet).items() if v == cand["version"]} == new_arm

    ctl.orchestrator.act(dep["id"], "promote", "tester")
    dep = wait_deployment(ctl, dep["id"], 60)
    assert dep["state"] == "succeeded", (  # what went wrong: the jobs that did not end well
        [(j["device"], j["job"], j["state"], j["reason"], j["detail"]) for j in dep["jobs"]
         if j["state"] not in ("healthy", "control")], dep["events"][-1])
    assert set(_versions(fleet).values()) == {cand["version"]}
    assert [e["actor"] for e in dep["events"] if e["kind"] == "promotion_started"] == ["tester"]
