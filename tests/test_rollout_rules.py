"""The pure rollout rules: cohorts, wave gates, shadow verdicts, reconciliation."""

from __future__ import annotations

import collections
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract import InvalidRequest
from edgefleet.controller.rollout import (
    STRATEGIES,
    WAVE_STRATEGIES,
    CohortMetrics,
    RolloutPolicy,
    ShadowMetrics,
    cohort_position,
    evaluate_shadow,
    evaluate_wave,
    needs_redrive,
    plan_deployment,
    plan_waves,
    split_arms,
)

ids = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True), min_size=1,
               max_size=300, unique=True)
wave_lists = st.lists(st.integers(1, 99), max_size=4, unique=True).map(
    lambda ws: tuple(sorted(ws)) + (100,))


@given(devices=ids, waves=wave_lists, dep=st.text(min_size=1, max_size=20))
def test_waves_partition_the_targets_stably_and_in_proportion(devices, waves, dep):
    plan = plan_waves(devices, dep, waves)
    flat = [d for w in plan for d in w]
    assert sorted(flat) == sorted(devices) and len(flat) == len(set(flat))
    assert plan == plan_waves(list(reversed(devices)), dep, waves)  # order-independent
    assert all(plan) and len(plan) <= len(waves)  # no empty wave
    n, total = len(devices), 0
    for wave, pct in zip(plan, waves, strict=False):
        total += len(wave)
        assert total >= min(n, -(-n * pct // 100))  # at least the share (rounded up)


@given(devices=ids, dep=st.text(min_size=1, max_size=20))
def test_the_plan_is_the_same_after_a_restart_or_retry(devices, dep):
    # membership depends only on (device, deployment): recomputing gives the same waves
    assert plan_waves(devices, dep, (10, 50, 100)) == plan_waves(sorted(devices), dep,
                                                                 (10, 50, 100))
    assert [cohort_position(d, dep) for d in devices] == [cohort_position(d, dep)
                                                          for d in devices]


@given(devices=ids, split=st.floats(1, 99), dep=st.text(min_size=1, max_size=20))
def test_ab_arms_split_by_hash_and_both_exist(devices, split, dep):
    new, control = split_arms(devices, dep, split)
    assert sorted(new + control) == sorted(devices)
    if len(devices) >= 2:
        assert new and control
    assert (new, control) == split_arms(devices[::-1], dep, split)


def test_cohort_positions_are_uniform_enough():
    pos = [cohort_position(f"dev-{i}", "dep-1") for i in range(5000)]
    assert all(0 <= p < 1 for p in pos)
    assert 0.45 < sum(p < 0.5 for p in pos) / 5000 < 0.55


STATES = ["pending", "downloading", "activated", "healthy", "failed", "rolled_back"]


@settings(max_examples=300)
@given(states=st.lists(st.sampled_from(STATES), min_size=1, max_size=30),
       elapsed=st.floats(0, 200), rate=st.sampled_from([0.0, 0.1, 0.5]),
       silent=st.sampled_from(["failed", "skipped"]))
def test_wave_gate_breaches_exactly_when_too_many_fail(states, elapsed, rate, silent):
    policy = RolloutPolicy(strategy="staged", waves=(50, 100), max_failure_rate=rate,
                           wave_timeout_s=100, silent=silent)
    d = evaluate_wave(collections.Counter(states), started_at=0, now=elapsed, policy=policy)
    bad = sum(s in ("failed", "rolled_back") for s in states)
    unfinished = sum(s not in ("healthy", "failed", "rolled_back") for s in states)
    timed_out = elapsed >= 100
    failed = bad + (unfinished if timed_out and silent == "failed" else 0)
    judged = len(states) - (unfinished if timed_out and silent == "skipped" else 0)
    if judged == 0:
        assert (d.outcome, d.reason) == ("breached", "no_device_answered")
    elif failed / judged > rate:
        assert (d.outcome, d.reason) == ("breached", "failure_rate")
    elif unfinished and not timed_out:
        assert d.outcome == "running"
    else:
        assert d.outcome == "passed"  # a wave never waits past its timeout
    assert sum(d.counts[k] for k in ("healthy", "failed", "silent", "pending")) == len(states)


@pytest.mark.parametrize("new_p95,base_p95,outcome", [
    (1.0, 1.0, "passed"), (1.19, 1.0, "passed"), (1.21, 1.0, "breached"), (2.0, 1.0, "breached"),
])
def test_p95_gate_compares_the_new_cohort_with_the_old_version(new_p95, base_p95, outcome):
    policy = RolloutPolicy(max_p95_regression=0.2, min_samples=10)
    d = evaluate_wave({"healthy": 1}, started_at=0, now=1, policy=policy,
                      new=CohortMetrics(100, 0, new_p95), base=CohortMetrics(100, 0, base_p95))
    assert d.outcome == outcome
    if outcome == "breached":
        assert d.reason == "p95_regression"


def test_metric_gates_wait_for_traffic_but_not_past_the_timeout():
    policy = RolloutPolicy(max_p95_regression=0.2, min_samples=100, wave_timeout_s=60)
    few = CohortMetrics(5, 0, 9.0)
    d = evaluate_wave({"healthy": 1}, started_at=0, now=10, policy=policy, new=few,
                      base=CohortMetrics(500, 0, 1.0))
    assert (d.outcome, d.reason) == ("running", "waiting_for_telemetry")
    d = evaluate_wave({"healthy": 1}, started_at=0, now=61, policy=policy, new=few,
                      base=CohortMetrics(500, 0, 1.0))
    assert d.outcome == "passed" and "not judged" in d.detail


def test_error_rate_gate():
    policy = RolloutPolicy(max_error_rate=0.01, min_samples=100)
    d = evaluate_wave({"activated": 1}, started_at=0, now=1, policy=policy,
                      new=CohortMetrics(1000, 50, 1.0))
    assert (d.outcome, d.reason) == ("breached", "error_rate")


@given(samples=st.integers(0, 1000), agree_frac=st.floats(0, 1),
       cand=st.floats(0.1, 10), elapsed=st.floats(0, 20))
def test_shadow_promotes_only_when_agreement_latency_and_duration_hold(samples, agree_frac,
                                                                         cand, elapsed):
    policy = RolloutPolicy(strategy="shadow", min_agreement=0.98, max_latency_ratio=1.5,
                           duration_s=10, min_samples=100)
    m = ShadowMetrics(samples=samples, agree=int(samples * agree_frac),
                      candidate_ms_sum=cand * samples, active_ms_sum=1.0 * samples)
    d = evaluate_shadow(m, started_at=0, now=elapsed, policy=policy)
    if elapsed < 10 or samples < 100:  # too few samples: it waits (up to the wave timeout)
        assert d.outcome == "running"
    elif d.outcome == "promote":
        assert samples >= 100 and m.agreement >= 0.98 and cand <= 1.5
    else:
        assert d.outcome == "reject"
        assert samples < 100 or m.agreement < 0.98 or cand > 1.5


@pytest.mark.parametrize("mode,reported,job_state,expected", [
    ("active", ("m", 2), None, False),
    ("active", ("m", 1), None, True),
    ("active", ("m", 2), "downloading", True),  # there, but its last status was lost
    ("active", None, "downloading", True),
    ("active", ("m", 1), "failed", False),
    ("active", ("m", 1), "healthy", False),
    ("active", ("m", 1), "rolled_back", False),
    ("shadow", ("m", 1), "shadowing", True),
])
def test_reconciliation_re_drives_only_unfinished_differences(mode, reported, job_state,
                                                              expected):
    assert needs_redrive(desired_model="m", desired_version=2, mode=mode, reported=reported,
                         job_state=job_state) is expected


@pytest.mark.parametrize("bad", [
    {"strategy": "yolo"}, {"waves": (50, 20, 100)}, {"waves": (50,)}, {"on_breach": "panic"},
    {"max_failure_rate": 2.0}, {"silent": "ignored"}, {"sample": 0.0}, {"split": 100.0},
    {"strategy": "all-at-once", "waves": (50, 100)}, {"wave_timeout_s": -1},
    {"waves": 5}, {"max_p95_regression": "x"}, {"wave_timeout_s": float("inf")},
    {"device_max_latency_ratio": 0}, {"max_error_rate": -0.1}, {"auto_promote": "yes"},
    {"health_window_s": float("nan")},
])
def test_inconsistent_policies_are_refused(bad):
    with pytest.raises(ValueError):
        RolloutPolicy.from_dict(bad)


def test_a_canary_is_two_waves_by_default():
    assert RolloutPolicy(strategy="canary").waves == (10.0, 100.0)


def test_shadow_waits_for_enough_samples_up_to_the_timeout():
    policy = RolloutPolicy(strategy="shadow", duration_s=0, min_samples=100, wave_timeout_s=60)
    few = ShadowMetrics(samples=10, agree=10, candidate_ms_sum=1, active_ms_sum=1)
    assert evaluate_shadow(few, started_at=0, now=5, policy=policy).outcome == "running"
    late = evaluate_shadow(few, started_at=0, now=61, policy=policy)
    assert (late.outcome, late.reason) == ("reject", "too_few_samples")


def test_policy_round_trips_through_json_shapes():
    for strategy, waves in itertools.product(["staged", "canary"], [(5, 25, 100), (10, 100)]):
        p = RolloutPolicy(strategy=strategy, waves=waves, max_p95_regression=0.2)
        assert RolloutPolicy.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown"):
        RolloutPolicy.from_dict({"colour": "red"})



def test_a_policy_stored_by_an_earlier_release_loads_as_it_was():
    # a deployments.policy row from before ``silent`` and ``split``, numbers as given
    stored = {"strategy": "staged", "waves": [5, 25, 100], "health_window_s": 120,
              "max_failure_rate": 0.02, "max_p95_regression": None, "max_error_rate": 0.01,
              "wave_timeout_s": 600, "on_breach": "pause", "min_samples": 50,
              "device_max_latency_ratio": 3.0, "device_max_error_rate": 0.05, "sample": 0.2,
              "min_agreement": 0.98, "max_latency_ratio": None, "duration_s": 0,
              "auto_promote": True}
    policy = RolloutPolicy.from_dict(stored)
    assert policy.waves == (5.0, 25.0, 100.0) and policy.on_breach == "pause"
    assert (policy.silent, policy.split) == ("failed", 50.0)  # what they were without them
    assert policy.to_dict() == {**stored, "silent": "failed", "split": 50.0}
    assert RolloutPolicy.from_dict(policy.to_dict()) == policy


def test_a_refused_policy_names_each_field_and_what_it_takes():
    with pytest.raises(ValueError) as err:
        RolloutPolicy.from_dict({"strategy": "staged", "waves": [50, 20, 100],
                                 "max_failure_rate": 2, "min_samples": 0.5})
    assert str(err.value) == (
        "waves: must be increasing percentages ending at 100, e.g. 5,25,100; "
        "max_failure_rate: Input should be less than or equal to 1; "
        "min_samples: Input should be a valid integer")


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.from_regex(r"[a-z]{1,3}-[0-9]{1,3}", fullmatch=True), min_size=1,
                    max_size=40, unique=True),
       strategy=st.sampled_from(STRATEGIES), split=st.floats(1, 99),
       running_share=st.floats(0, 1))
def test_a_plan_gives_every_target_one_row_in_one_wave_or_arm_and_its_previous_version(
        ids, strategy, split, running_share):
    policy = RolloutPolicy(strategy=strategy, split=split)
    running = {d: {"name": "m", "version": i + 1}
               for i, d in enumerate(ids[:int(len(ids) * running_share)])}
    if strategy == "ab" and len(ids) < 2:
        with pytest.raises(InvalidRequest, match="at least two devices"):
            plan_deployment("dep-1", ids, policy, running)
        return
    plan, rows = plan_deployment("dep-1", ids, policy, running)

    assert plan["targets"] == ids and [r["device"] for r in rows] == ids
    for row in rows:
        was = running.get(row["device"], {})
        assert (row["from_model"], row["from_version"]) == (was.get("name"), was.get("version"))
    if strategy in WAVE_STRATEGIES:
        waves = plan["waves"]
        assert sorted(d for w in waves for d in w) == sorted(ids)  # a partition
        assert all(waves) and all(r["device"] in waves[r["wave"]] for r in rows)
        assert "arms" not in plan and {r["arm"] for r in rows} == {""}
    elif strategy == "ab":
        arms = plan["arms"]
        assert arms["new"] and arms["control"]
        assert sorted(arms["new"] + arms["control"]) == sorted(ids)
        assert all(r["device"] in arms[r["arm"]] for r in rows)
    else:  # shadow: every target at once, no waves or arms
        assert "waves" not in plan and "arms" not in plan
        assert {(r["wave"], r["arm"]) for r in rows} == {(0, "")}
