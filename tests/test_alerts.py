"""Alerts: the rules, de-duplication and cooldown (pure, on a manual clock), webhook delivery
to a real local HTTP server, and alerts raised by a real controller from real devices."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from _devices import MqttDevices, summary
from _support import TOKEN, register_digits, wait_deployment, wait_devices_known
from _webhook import Hook, alerting_controller
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from edgefleet.cli import app as cli_app
from edgefleet.contract import DDSketch, ManualClock
from edgefleet.controller._webhook import WebhookSender
from edgefleet.controller.aggregate import Aggregate
from edgefleet.controller.alerts import (
    Alert,
    AlertRules,
    Facts,
    evaluate,
    reconcile,
    webhook_payload,
)
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer
from edgefleet.simulations.fleet import wait_until

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
RULES = AlertRules(cohort_tags=("site",), latency_min_count=100)


# -- notification policy (pure) -----------------------------------------------------------
class Book:
    """Alert states as the store keeps them, driven through ``reconcile``."""

    def __init__(self, cooldown_s: float = 600.0) -> None:
        self.clock = ManualClock(1_000_000.0)
        self.states: dict[str, Any] = {}
        self.cooldown_s = cooldown_s

    def round(self, *firing: Alert) -> list[tuple[str, str, str]]:
        changed, notes = reconcile(self.states, firing, now=self.clock.time(),
                                   cooldown_s=self.cooldown_s)
        self.states.update({s.key: s for s in changed})
        return [(n.status, n.alert.key, n.alert.severity) for n in notes]


def _alert(key: str = "offline:pi-1", severity: str = "warn", kind: str = "device_offline"):
    return Alert(key, kind, severity, "pi-1", "pi-1 offline")


def test_an_active_alert_is_sent_once_however_often_it_fires():
    book = Book()
    assert book.round(_alert()) == [("firing", "offline:pi-1", "warn")]
    for _ in range(5):
        book.clock.advance(60)
        assert book.round(_alert()) == []
    assert book.states["offline:pi-1"].active


def test_an_alert_back_within_its_cooldown_is_sent_when_the_cooldown_ends():
    book = Book(cooldown_s=600)
    book.round(_alert())
    book.clock.advance(60)
    assert book.round() == [("resolved", "offline:pi-1", "warn")]
    book.clock.advance(60)
    assert book.round(_alert()) == []  # flapping: 60 s after the last message (resolved)
    book.clock.advance(539)
    assert book.round(_alert()) == []
    book.clock.advance(1)  # 600 s after the last message for this key
    assert book.round(_alert()) == [("firing", "offline:pi-1", "warn")]


def test_an_alert_that_ends_within_its_cooldown_sends_no_resolved_message():
    book = Book(cooldown_s=600)
    book.round(_alert())
    book.round()
    book.clock.advance(10)
    book.round(_alert())  # suppressed: nothing sent this episode…
    book.clock.advance(10)
    assert book.round() == []  # …so nothing to resolve either


def test_rising_severity_is_sent_at_once_and_falling_is_not():
    book = Book()
    book.round(_alert("drift:device:pi-1", "warn", "drift_device"))
    book.clock.advance(1)
    assert book.round(_alert("drift:device:pi-1", "alert", "drift_device")) == [
        ("firing", "drift:device:pi-1", "alert")]
    book.clock.advance(1)
    assert book.round(_alert("drift:device:pi-1", "warn", "drift_device")) == []


def test_rollbacks_and_retrain_events_end_without_a_message():
    book = Book()
    book.round(_alert("rollback:dep-1", "alert", "rollback"),
               _alert("retrain:digits:1", "alert", "retrain"))
    assert book.round() == []


# -- rules (pure) -------------------------------------------------------------------------
def _drift(device: str, psi_mean: float, *, psi_max: float = 0.0, version: int = 1,
           end: float = 100.0, pred: float | None = None) -> dict[str, Any]:
    drift: dict[str, Any] = {"samples": 100, "psi_mean": psi_mean, "psi_max": psi_max,
                             "top": {"7": psi_max or psi_mean, "3": psi_mean / 2}}
    if pred is not None:
        drift["psi_predictions"] = pred
    score = max(psi_mean, pred or 0.0)
    return {"device": device, "model": "digits", "version": version, "window_start": end - 60,
            "window_end": end, "drift": drift, "drift_score": score}


DEVICES = [{"id": "pi-1", "tags": {"site": "lab"}}, {"id": "pi-2", "tags": {"site": "lab"}},
           {"id": "pi-3", "tags": {"site": "field"}}, {"id": "pi-4", "tags": {"site": "field"}}]


def test_drift_fires_per_device_and_cohort_on_mean_psi_not_on_one_noisy_feature():
    windows = [_drift("pi-1", 0.30), _drift("pi-2", 0.35),
               _drift("pi-3", 0.02, psi_max=0.9),  # one noisy feature out of 64: not drift
               _drift("pi-4", 0.05, pred=0.12)]  # predictions shifted: warn
    fired = {a.key: a for a in evaluate(Facts(drift=windows, devices=DEVICES), RULES, 0)}

    assert {k: a.severity for k, a in fired.items()} == {
        "drift:device:pi-1": "alert", "drift:device:pi-2": "alert",
        "drift:device:pi-4": "warn",
        "drift:cohort:digits:1": "warn",  # (0.30 + 0.35 + 0.02 + 0.12) / 4
        "drift:cohort:digits:1:site=lab": "alert", "retrain:digits:1:site=lab": "alert"}
    retrain = fired["retrain:digits:1:site=lab"].detail
    assert retrain["cohort"] == {"model": "digits", "version": 1, "selector": {"site": "lab"}}
    assert retrain["devices"] == {"pi-1": 0.3, "pi-2": 0.35}
    assert retrain["score"] == pytest.approx(0.325)
    assert list(retrain["worst_features"]) == ["7", "3"]
    assert retrain["windows"] == {"count": 2, "from": 40.0, "to": 100.0}


def test_a_device_is_judged_on_its_latest_version_only():
    windows = [_drift("pi-1", 0.5, version=1, end=100), _drift("pi-1", 0.01, version=2, end=200)]
    assert evaluate(Facts(drift=windows, devices=DEVICES), RULES, 0) == []


def _lat(values: list[float]) -> Aggregate:
    return Aggregate().add_window({"count": len(values),
                                   "latency_sketch": DDSketch().extend(values).to_dict()})


def test_latency_regression_against_the_same_devices_then_the_fleet():
    fast, slow = [1.0] * 150, [1.5] * 150
    base = {("digits", 1, "pi-1"): _lat(fast), ("digits", 1, "pi-2"): _lat([5.0] * 150)}
    fired = evaluate(Facts(latency_now={("digits", 2, "pi-1"): _lat(slow)},
                           latency_base=base), RULES, 0)
    (a,) = fired
    assert (a.key, a.detail["baseline"], a.detail["previous_version"]) == (
        "latency:digits:2", "same_devices", 1)
    assert a.detail["ratio"] == pytest.approx(1.5, rel=0.03)
    # pi-3 never ran version 1: compared with the fleet's version 1 (fast and slow devices)
    fleet = evaluate(Facts(latency_now={("digits", 2, "pi-3"): _lat([7.0] * 150)},
                           latency_base=base), RULES, 0)
    assert [(x.key, x.detail["baseline"]) for x in fleet] == [("latency:digits:2", "fleet")]
    within = evaluate(Facts(latency_now={("digits", 2, "pi-1"): _lat([1.1] * 150)},
                            latency_base=base), RULES, 0)
    few = evaluate(Facts(latency_now={("digits", 2, "pi-1"): _lat([9.0] * 20)},
                         latency_base=base), RULES, 0)
    assert within == few == []


def test_offline_and_buffer_rules_fire_at_their_limits():
    devices = [{"id": "on", "online": True, "last_seen": 0.0},
               {"id": "short", "online": False, "last_seen": 1000.0 - 599},
               {"id": "long", "online": False, "last_seen": 1000.0 - 600},
               {"id": "never", "online": False, "last_seen": None}]
    buffers = {"a": {"bytes": 899, "cap_bytes": 1000}, "b": {"bytes": 900, "cap_bytes": 1000},
               "c": {"bytes": 5, "cap_bytes": 0}}
    fired = evaluate(Facts(devices=devices, buffers=buffers), RULES, 1000.0)
    assert sorted(a.key for a in fired) == ["buffer:b", "offline:long"]


def test_webhook_payload_is_slack_compatible_with_the_structured_alert():
    book = Book()
    retrain = Alert("retrain:digits:1", "retrain", "alert", "digits:1", "retrain digits",
                    {"model": "digits", "version": 1, "devices": {"pi-1": 0.3}})
    changed, (note,) = reconcile({}, [retrain], now=book.clock.time(), cooldown_s=0)
    body = webhook_payload(note)
    assert body["text"].startswith(":arrows_counterclockwise: [ALERT] retrain: digits:1")
    assert body["blocks"][0]["type"] == "section"
    assert body["edgefleet"]["event"] == "retrain" and body["edgefleet"]["status"] == "firing"
    assert body["edgefleet"]["detail"]["devices"] == {"pi-1": 0.3}
    json.dumps(body)  # plain JSON


# -- webhook delivery (a real local HTTP server) ------------------------------------------
@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def test_webhook_retries_with_backoff_until_the_receiver_answers(hook):
    hook.failures = 2
    sender = WebhookSender(hook.url, backoff_s=0.01)
    sender.start()
    try:
        assert sender.send({"text": "hi", "edgefleet": {"key": "k"}})
        wait_until(lambda: hook.posts, 5)
    finally:
        sender.stop()
    assert hook.posts == [{"text": "hi", "edgefleet": {"key": "k"}}]
    assert sender.counters == {"sent": 1, "failed": 0, "retried": 2, "dropped": 0}


def test_a_full_webhook_queue_drops_and_counts_and_a_dead_receiver_is_given_up(hook):
    sender = WebhookSender(hook.url, queue_max=1)  # not started: nothing leaves the queue
    assert sender.send({"n": 1}) and not sender.send({"n": 2})
    assert sender.counters["dropped"] == 1
    dead = WebhookSender("http://127.0.0.1:9/", max_attempts=2, backoff_s=0.01, timeout_s=1)
    dead.start()
    try:
        dead.send({"n": 1})
        wait_until(lambda: dead.counters["failed"] == 1, 10)
    finally:
        dead.stop()
    assert dead.counters["retried"] == 1 and dead.counters["sent"] == 0


# -- a real controller ----------------------------------------------------------------------
@pytest.fixture
def alerting(tmp_path, mosquitto, trust_root, hook):
    ctl = alerting_controller(tmp_path, mosquitto.url, trust_root, hook)
    yield ctl
    ctl.stop()


def test_rollback_and_offline_of_real_agents_reach_the_webhook_once(alerting, make_fleet,
                                                                     hook):
    ctl = alerting
    fleet = make_fleet(1)
    dev = fleet.ids[0]
    wait_devices_known(ctl, fleet.ids)
    register_digits(ctl)
    register_digits(ctl)
    assert wait_deployment(ctl, ctl.deploy("digits", 1)["id"])["state"] == "succeeded"
    dep = ctl.deploy("digits", 2)["id"]
    assert wait_deployment(ctl, dep)["state"] == "succeeded"
    ctl.orchestrator.act(dep, "rollback", "admin")
    assert wait_deployment(ctl, dep)["state"] == "rolled_back"

    wait_until(lambda: f"rollback:{dep}" in hook.fired(), 10)
    (sent,) = [p for p in hook.posts if p["edgefleet"]["key"] == f"rollback:{dep}"]
    assert sent["edgefleet"]["detail"]["reason"] == "operator"
    assert sent["edgefleet"]["detail"]["version"] == 2 and "rolled back" in sent["text"]

    fleet.stop_agent(dev)  # a clean stop publishes the device's death
    wait_until(lambda: f"offline:{dev}" in hook.fired(), 10)
    fleet.restart_agent(dev)
    wait_until(lambda: f"offline:{dev}" in hook.fired("resolved"), 15)
    evaluations = ctl.alerts.counters["evaluations"]
    wait_until(lambda: ctl.alerts.counters["evaluations"] >= evaluations + 3, 5)
    assert hook.fired().count(f"rollback:{dep}") == 1  # de-duplicated across evaluations
    assert hook.fired().count(f"offline:{dev}") == 1
    assert not any(k.startswith("rollback") for k in hook.fired("resolved"))


def _sketch(mean_ms: float, n: int = 200) -> dict[str, Any]:
    return DDSketch().extend(np.random.default_rng(3).normal(mean_ms, mean_ms / 20, n)).to_dict()


@pytest.fixture
def alerting_by_hand(tmp_path, mosquitto, trust_root, hook):
    """An alerting controller whose rules run only when the test evaluates them."""
    ctl = alerting_controller(tmp_path, mosquitto.url, trust_root, hook, alert_interval_s=3600)
    yield ctl
    ctl.stop()


def test_drift_retrain_latency_and_full_buffers_from_device_summaries(alerting_by_hand,
                                                                      mosquitto, hook):
    # the rules are evaluated here, once every summary is stored: a round in the middle
    # of the devices' summaries would fire the lab cohort with only some of its devices
    ctl = alerting_by_hand
    lab, field = ["lab-1", "lab-2", "lab-3"], ["field-1", "field-2"]
    for d in lab + field:
        ctl.store.upsert_device(d, tags={"site": "lab" if d in lab else "field"}, online=True)

    def evaluate_once_stored(count: int) -> None:
        wait_until(lambda: len(ctl.store.summaries()) >= count, 10)
        ctl.alerts.evaluate()

    devices = MqttDevices(mosquitto.url)
    try:
        for d in lab:  # inputs shifted on the lab devices
            devices.publish(d, *(summary(i, latency_sketch=_sketch(1.0), drift={
                "samples": 200, "psi_mean": 0.31, "psi_max": 1.4,
                "top": {"12": 1.4, "40": 0.9}}) for i in (1, 2)))
        for d in field:  # not on these; a noisy feature alone does not count
            devices.publish(d, *(summary(i, latency_sketch=_sketch(1.0), drift={
                "samples": 200, "psi_mean": 0.03, "psi_max": 0.8, "top": {"5": 0.8}})
                for i in (1, 2)))
        devices.publish("field-1", summary(3, version=2, latency_sketch=_sketch(1.6)))
        devices.publish("field-2", summary(3, buffer={"bytes": 960_000, "cap_bytes": 10**6}))
        evaluate_once_stored(12)
        wait_until(lambda: {"retrain:digits:1:site=lab", "latency:digits:2",
                            "buffer:field-2"} <= set(hook.fired()), 10)
        devices.publish("field-2", summary(4, buffer={"bytes": 1000, "cap_bytes": 10**6}))
        evaluate_once_stored(13)
        wait_until(lambda: "buffer:field-2" in hook.fired("resolved"), 10)
    finally:
        devices.close()

    fired = set(hook.fired())
    assert {f"drift:device:{d}" for d in lab} <= fired
    assert not any(k.startswith("drift:device:field") for k in fired)
    assert "drift:cohort:digits:1:site=field" not in fired
    (retrain,) = [p["edgefleet"] for p in hook.posts
                  if p["edgefleet"]["key"] == "retrain:digits:1:site=lab"]
    assert retrain["event"] == "retrain" and retrain["detail"]["model"] == "digits"
    assert retrain["detail"]["devices"] == dict.fromkeys(lab, 0.31)
    assert retrain["detail"]["worst_features"] == {"12": 1.4, "40": 0.9}
    latency = next(p["edgefleet"]["detail"] for p in hook.posts
                   if p["edgefleet"]["key"] == "latency:digits:2")
    assert latency["baseline"] == "same_devices" and 1.5 < latency["ratio"] < 1.7

    active = TestClient(create_app(ctl)).get("/v1/alerts", headers=ADMIN).json()
    assert "retrain:digits:1:site=lab" in {a["key"] for a in active}
    assert "buffer:field-2" not in {a["key"] for a in active}
    server = ApiServer(create_app(ctl))
    server.start()
    try:
        env = {"EDGEFLEET_URL": server.url, "EDGEFLEET_TOKEN": TOKEN, "COLUMNS": "200"}
        listed = CliRunner().invoke(cli_app, ["alerts", "list", "--all", "--json"], env=env)
        assert listed.exit_code == 0, listed.output
        assert "buffer:field-2" in {a["key"] for a in json.loads(listed.stdout)}
        human = CliRunner().invoke(cli_app, ["alerts", "list"], env=env)
        assert "drift_cohort" in human.stdout and "lab-1" in human.stdout
    finally:
        server.stop()
