"""The agent's own health judgement and shadow runs, without a controller."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _support import ASSETS  # noqa: I001
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.agent.health import HealthPolicy, judge
from edgefleet.agent.runtime import OnnxRuntime
from edgefleet.agent.shadow import ShadowRunner
from edgefleet.contract import ModelRef
from edgefleet.simulations.fleet import wait_until


@given(count=st.integers(0, 500), errors=st.integers(0, 500), elapsed=st.floats(0, 100),
       p95=st.floats(0.01, 100), base=st.one_of(st.none(), st.floats(0.01, 100)))
def test_judge_is_healthy_only_after_the_window_and_without_breaches(count, errors, elapsed,
                                                                     p95, base):
    errors = min(errors, count)
    policy = HealthPolicy(window_s=30, max_error_rate=0.05, max_latency_ratio=2.0,
                          min_samples=20)
    v = judge(policy, started_at=0, now=elapsed, count=count, errors=errors,
              latency_p95=p95, baseline_p95=base)
    too_slow = base is not None and count >= 20 and p95 > 2.0 * base
    erring = (count >= 20 or errors > 1) and errors > 0.05 * max(count, 1)
    if erring:
        assert v.reason == "error_rate"
    elif too_slow:
        assert v.reason == "latency_regression"
    elif elapsed >= 30:
        assert v.state == "healthy"
    else:
        assert v.state == "watching"


def test_a_single_error_in_a_quiet_window_is_not_judged_alone():
    policy = HealthPolicy(window_s=10, min_samples=20, max_error_rate=0.05)
    assert judge(policy, started_at=0, now=1, count=1, errors=1, latency_p95=1.0,
                 baseline_p95=None).state == "watching"
    assert judge(policy, started_at=0, now=1, count=3, errors=2, latency_p95=1.0,
                 baseline_p95=None).reason == "error_rate"


def test_health_policy_from_a_desired_state_ignores_unknown_keys_and_checks_values():
    assert HealthPolicy.from_dict({"window_s": 5, "future_knob": 1}).window_s == 5
    with pytest.raises(ValueError):
        HealthPolicy.from_dict({"window_s": -1})
    with pytest.raises(ValueError):
        HealthPolicy.from_dict({"max_error_rate": "lots"})


def test_shadow_runner_counts_what_it_mirrors_and_what_matches():
    rt = OnnxRuntime(ASSETS / "digits.onnx")
    x = np.load(ASSETS / "eval.npz")["x"]
    runner = ShadowRunner(ModelRef("digits", 2), rt, sample=0.5, queue_max=1000)
    try:
        for i in range(200):
            feeds = {"pixels": x[i][None, :]}
            out = rt.run(feeds)["probs"]
            # the sample takes every other input (i = 1, 3, 5…); the "active" answer
            # differs from the candidate's on half of those (i = 1, 5, 9…)
            runner.offer(feeds, np.roll(out, 1, axis=1) if i % 4 == 1 else out, 0.05)
        wait_until(lambda: runner._stats["samples"] + runner._stats["errors"] == 100, 10)
        stats = runner.take_stats()
    finally:
        runner.stop()
    assert stats["samples"] == 100  # exactly half of 200 mirrored
    assert stats["agree"] == 50
    assert stats["dropped"] == 0 and stats["candidate_ms_sum"] > 0
    assert json.loads(json.dumps(stats)) == stats


def _two_installed_versions(state_dir):
    """A model store holding digits v1 and v2 (the same file), v1 active."""
    from edgefleet.agent.models import ModelStore
    from edgefleet.contract import Manifest, TensorSpec, sha256_file

    store = ModelStore(state_dir)
    installed = []
    for v in (1, 2):
        digest, length = sha256_file(str(ASSETS / "digits.onnx"))
        m = Manifest(name="digits", version=v, runtime="onnxruntime", model_file="model.onnx",
                     model_sha256=digest, model_length=length,
                     inputs=[TensorSpec("pixels", "FP32", ["batch", 64])],
                     outputs=[TensorSpec("probs", "FP32", ["batch", 10])])
        installed.append(store.install(m, m.encode(), ASSETS / "digits.onnx"))
    store.activate(installed[0].ref)
    return store, installed


def test_a_crash_loop_inside_the_health_window_rolls_the_device_back(tmp_path, trust_root):
    from edgefleet.agent import Agent, AgentConfig
    from edgefleet.contract import DesiredState

    store, installed = _two_installed_versions(tmp_path / "state")
    refs = [i.ref for i in installed]
    d = DesiredState(deployment="dep-x", job="dep-x", model="digits", version=2,
                     manifest="m", issued_at=0.0, health={"window_s": 60,
                                                          "max_trial_restarts": 1})
    # v2 was activated and the agent has already restarted once inside its window
    store.activate(refs[1], trial={"desired": d.to_dict(), "attempts": 1, "baseline_p95": None})

    agent = Agent(AgentConfig(device_id="pi-loop", state_dir=tmp_path / "state",
                              trust_root=trust_root, broker_url="mqtt://127.0.0.1:1",
                              api_port=0))
    agent.start()
    try:
        assert agent.active == refs[0]  # back on the last known good model
        assert store.read_trial() is None
        assert agent.jobs.done["dep-x"] == "rolled_back"
        status = json.loads(agent.jobs.last_status("dep-x"))
        assert status["reason"] == "crashed_during_health_window"
    finally:
        agent.stop()


def test_a_crash_loop_whose_last_known_good_model_does_not_load_keeps_serving_the_trial(
        tmp_path, trust_root):
    """Going back to a model that does not load would leave the device with nothing to
    serve (and the agent failing to start, over and over): it keeps the model on trial,
    ends its window and says so."""
    from edgefleet.agent import Agent, AgentConfig
    from edgefleet.contract import DesiredState

    store, installed = _two_installed_versions(tmp_path / "state")
    desired = DesiredState(deployment="dep-y", job="dep-y", model="digits", version=2,
                           manifest="m", issued_at=0.0, health={"window_s": 60,
                                                                "max_trial_restarts": 1})
    store.activate(installed[1].ref, trial={"desired": desired.to_dict(), "attempts": 1,
                                            "baseline_p95": None})
    rotten = installed[0].model_path  # v1 rotted on the flash: same length, no model
    rotten.write_bytes(b"\0" * rotten.stat().st_size)

    agent = Agent(AgentConfig(device_id="pi-rot", state_dir=tmp_path / "state",
                              trust_root=trust_root, broker_url="mqtt://127.0.0.1:1",
                              api_port=0))
    agent.start()
    try:
        assert agent.active == installed[1].ref  # still serving, on the model on trial
        assert agent.predict(np.zeros((1, 64), np.float32)).model.version == 2
        state = store.read_state()
        assert state["active"] == installed[1].ref and store.read_trial() is None
        assert agent.jobs.done["dep-y"] == "failed"
        status = json.loads(agent.jobs.last_status("dep-y"))
        assert status["reason"] == "crashed_during_health_window"
        assert "no last known good model that loads" in status["detail"]
    finally:
        agent.stop()


def test_blue_green_keeps_the_previous_model_loaded_for_an_instant_rollback(tmp_path,
                                                                           trust_root):
    from edgefleet.agent import Agent, AgentConfig
    from edgefleet.agent.runtime import load_runtime
    from edgefleet.contract import DesiredState, Manifest, TensorSpec, sha256_file

    agent = Agent(AgentConfig(device_id="pi-bg", state_dir=tmp_path / "state",
                              trust_root=trust_root, broker_url="mqtt://127.0.0.1:1",
                              api_port=0))
    agent.start()
    try:
        for v in (1, 2):  # install and activate v1, then v2, as two deployments would
            digest, length = sha256_file(str(ASSETS / "digits.onnx"))
            m = Manifest(name="digits", version=v, runtime="onnxruntime",
                         model_file="model.onnx", model_sha256=digest, model_length=length,
                         inputs=[TensorSpec("pixels", "FP32", ["batch", 64])],
                         outputs=[TensorSpec("probs", "FP32", ["batch", 10])])
            inst = agent.store.install(m, m.encode(), ASSETS / "digits.onnx")
            d = DesiredState(deployment=f"dep-{v}", job=f"dep-{v}", model="digits", version=v,
                             manifest="m", issued_at=0.0)
            agent.activate(inst, load_runtime("onnxruntime", inst.model_path), d)
        blue = agent._previous
        assert blue is not None and blue.installed.ref.version == 1
        assert agent.rollback("test").version == 1
        assert agent._active is blue  # the same loaded session: nothing was reloaded
        assert agent.store.read_state()["active"].version == 1
    finally:
        agent.stop()


def _install(agent, version):
    from edgefleet.contract import Manifest, TensorSpec, sha256_file

    digest, length = sha256_file(str(ASSETS / "digits.onnx"))
    m = Manifest(name="digits", version=version, runtime="onnxruntime", model_file="model.onnx",
                 model_sha256=digest, model_length=length,
                 inputs=[TensorSpec("pixels", "FP32", ["batch", 64])],
                 outputs=[TensorSpec("probs", "FP32", ["batch", 10])])
    return agent.store.install(m, m.encode(), ASSETS / "digits.onnx")


def _agent(tmp_path, trust_root, name="pi-h"):
    from edgefleet.agent import Agent, AgentConfig

    return Agent(AgentConfig(device_id=name, state_dir=tmp_path / "state",
                             trust_root=trust_root, broker_url="mqtt://127.0.0.1:1",
                             api_port=0))


def _trial_desired(version, job):
    from edgefleet.contract import DesiredState

    return DesiredState(deployment=job, job=job, model="digits", version=version, manifest="m",
                        issued_at=float(version), health={"window_s": 60, "min_samples": 5})


def test_an_unhealthy_first_model_with_nothing_to_go_back_to_fails_once(tmp_path, trust_root):
    from edgefleet.agent.runtime import load_runtime

    agent = _agent(tmp_path, trust_root)
    inst = _install(agent, 1)
    d = _trial_desired(1, "dep-a")
    agent.activate(inst, load_runtime("onnxruntime", inst.model_path), d)
    agent._trial.count, agent._trial.errors = 10, 10
    agent._check_trial(agent.clock.time())
    agent._check_trial(agent.clock.time())

    assert agent.jobs.done["dep-a"] == "failed"
    assert json.loads(agent.jobs.last_status("dep-a"))["reason"] == "error_rate"
    assert agent._trial is None and agent.store.read_trial() is None
    assert agent.active.version == 1  # still serving: there is nothing else


def test_a_rolled_back_job_is_not_run_again_after_a_restart(tmp_path, trust_root):
    from edgefleet.agent.runtime import load_runtime

    agent = _agent(tmp_path, trust_root)
    for v, job in ((1, "dep-1"), (2, "dep-2")):
        inst = _install(agent, v)
        agent.activate(inst, load_runtime("onnxruntime", inst.model_path),
                       _trial_desired(v, job))
        if v == 1:
            agent._trial = None
            agent.store.commit()
    agent._trial.count, agent._trial.errors = 10, 10
    agent._check_trial(agent.clock.time())
    assert agent.jobs.done["dep-2"] == "rolled_back"
    state = agent.store.read_state()
    assert state["active"].version == 1 and state["last_good"] is None  # v2 is not "good"
    agent.buffer.stop()

    again = _agent(tmp_path, trust_root)  # a restart
    again.jobs.want(_trial_desired(2, "dep-2"))  # the retained desired state comes back
    assert again.jobs._wanted is None and again.jobs.done["dep-2"] == "rolled_back"
    again.jobs.want(_trial_desired(1, "dep-old"))  # and an older one is ignored
    assert again.jobs._wanted is None
    again.buffer.stop()
