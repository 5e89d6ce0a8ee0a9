"""Drift end to end: real agents score their inputs against the bundle's reference profile,
the controller raises drift alerts per device and per cohort, and a retrain event."""

from __future__ import annotations

import numpy as np
import pytest
from _support import register_digits, wait_deployment, wait_devices_known
from _webhook import Hook, alerting_controller

from edgefleet.contract import ManualClock
from edgefleet.simulations.fleet import wait_until


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def _windows(fleet, clock, inputs: dict[str, np.ndarray], windows: int = 2) -> None:
    """Each agent answers ``inputs[device]`` in every window; the windows then close."""
    for _ in range(windows):
        for device, x in inputs.items():
            for i in range(0, len(x), 16):
                fleet.agents[device].predict(x[i:i + 16])
        clock.advance(60.0)
        for agent in fleet.agents.values():
            agent.tick()


def test_shifted_inputs_raise_drift_and_retrain_and_unshifted_ones_do_not(
        tmp_path, mosquitto, trust_root, make_fleet, evalset, hook):
    ctl = alerting_controller(tmp_path, mosquitto.url, trust_root, hook)
    try:
        clock = ManualClock()
        lab = make_fleet(2, clock=clock, tags={"site": "lab"}, prefix="lab",
                         summary_window_s=60.0)
        field = make_fleet(2, clock=clock, tags={"site": "field"}, prefix="field",
                           summary_window_s=60.0)
        wait_devices_known(ctl, lab.ids + field.ids)
        register_digits(ctl)
        assert wait_deployment(ctl, ctl.deploy("digits", 1)["id"])["state"] == "succeeded"

        x = evalset["x"][:160]
        shifted = np.clip(16.0 - x, 0, 16).astype(x.dtype)  # inverted strokes: a new camera
        for fleet, data in ((lab, shifted), (field, x)):
            _windows(fleet, clock, dict.fromkeys(fleet.ids, data))
        wait_until(lambda: all(a.buffer.stats()["summaries_unacked"] == 0
                               for f in (lab, field) for a in f.agents.values()), 20)
        rows = [r for d in lab.ids + field.ids for r in ctl.store.summaries(d)]
        assert any(r["drift"] for r in rows)  # the agents scored their windows

        wait_until(lambda: "retrain:digits:1:site=lab" in hook.fired(), 10)
        evaluations = ctl.alerts.counters["evaluations"]
        wait_until(lambda: ctl.alerts.counters["evaluations"] >= evaluations + 3, 5)
    finally:
        ctl.stop()

    fired = set(hook.fired())
    assert {f"drift:device:{d}" for d in lab.ids} <= fired
    assert not {f"drift:device:{d}" for d in field.ids} & fired
    assert "drift:cohort:digits:1:site=lab" in fired
    assert "drift:cohort:digits:1:site=field" not in fired
    (retrain,) = hook.sent("retrain:digits:1:site=lab")
    evidence = retrain["detail"]
    assert retrain["event"] == "retrain" and evidence["model"] == "digits"
    assert evidence["cohort"]["selector"] == {"site": "lab"}
    assert set(evidence["devices"]) == set(lab.ids)
    assert min(evidence["devices"].values()) >= 0.25
    assert evidence["worst_features"] and evidence["windows"]["count"] >= 2
    field_scores = [r["drift_score"] for d in field.ids for r in ctl.store.summaries(d)
                    if r["drift_score"] is not None]
    assert field_scores and max(field_scores) < 0.1  # the same inputs as the reference
