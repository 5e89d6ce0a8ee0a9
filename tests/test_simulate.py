"""Simulated fleets: real agents in shard processes, a real Mosquitto, scenarios of faults.

Each scenario test runs a shipped scenario (``simulations/scenarios``) on a small fleet in
two shard processes and checks what the devices really ended up running. The same
scenarios run at full size by command, e.g.
``edgefleet simulate --scenario rollout --devices 1000`` (docs/simulations.md).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgefleet.simulations.scenario import (
    PROFILES,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
    plan,
)
from edgefleet.simulations.simulate import run_simulation

pytestmark = pytest.mark.timeout(120)


def _run(name: str, devices: int, tmp_path, *, fanout: bool = False):
    scenario = dataclasses.replace(load_scenario(name), fanout_baseline=fanout)
    report = run_simulation(scenario, devices, shards=2, out=tmp_path / "report")
    by_id = {d["id"]: d for d in report["devices"]}
    return report, by_id


def _picked(report, kind: str) -> int:
    return sum(f["devices"] for f in report["scenario"]["faults"] if f["kind"] == kind)


# -- scenarios, pure ------------------------------------------------------------------
def test_every_shipped_scenario_loads_and_plans():
    names = builtin_scenarios()
    assert {"rollout", "broker-restart", "partition", "crash", "disk-full", "clock-skew",
            "flaky", "rollout-with-faults", "connect"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        p = plan(scenario, 50)
        assert len(p.devices) == 50 and len({d.id for d in p.devices}) == 50


def test_plan_splits_profiles_by_share_and_never_gives_two_faults_one_device():
    scenario = parse_scenario({
        "fleet": {"profiles": [{"profile": "rpi4", "share": 3}, {"profile": "x86", "share": 1}]},
        "rollout": {"at": 1},
        "faults": [{"kind": "partition", "fraction": 0.2, "from": 1, "until": 5},
                   {"kind": "crash", "fraction": 0.3, "at": 2, "restart_after": 1},
                   {"kind": "disk_full", "devices": 3, "at": 0},
                   {"kind": "broker_restart", "at": 3, "down_s": 2}]})
    p = plan(scenario, 40, shards=3)
    assert sum(d.profile.name == "rpi4" for d in p.devices) == 30
    assert {d.shard for d in p.devices} == {0, 1, 2}
    sizes = [len(ids) for ids in p.picked.values()]
    assert sizes == [8, 12, 3]
    everyone = [d for ids in p.picked.values() for d in ids]
    assert len(everyone) == len(set(everyone))
    kinds = [(a.t, a.kind) for a in p.actions]
    assert kinds == sorted(kinds, key=lambda k: k[0])
    assert ("deploy" in {k for _, k in kinds}) and (5.0, "heal") in kinds
    assert (3.0, "broker_down") in kinds and (5.0, "broker_up") in kinds


@pytest.mark.parametrize("bad", [
    {"faults": [{"kind": "earthquake", "at": 1}]},
    {"faults": [{"kind": "partition", "fraction": 0.2, "from": 5, "until": 2}]},
    {"faults": [{"kind": "crash", "at": 1}]},  # no devices picked
    {"faults": [{"kind": "flaky", "fraction": 0.5, "loss": 1.5}]},
    {"fleet": {"profiles": [{"profile": "pdp-11"}]}},
    {"fleet": {"start_on": "yesterday"}},
    {"rolout": {"at": 1}},
])
def test_a_bad_scenario_is_refused_with_a_reason(bad):
    with pytest.raises(ValueError):
        parse_scenario(bad)


def test_a_custom_profile_overrides_a_built_in_one():
    scenario = parse_scenario({"fleet": {"profiles": [
        {"profile": "rpi4", "latency_ms": 300}, {"name": "pi-zero", "hardware_class": "rpi",
                                                "slowdown": 20}]}})
    (slow_pi, _), (zero, _) = scenario.profiles
    assert slow_pi.latency_ms == 300 and slow_pi.slowdown == PROFILES["rpi4"].slowdown
    assert zero.hardware_class == "rpi" and zero.slowdown == 20


# -- scenarios on real agents --------------------------------------------------------------
def test_rollout_reaches_every_device_and_is_compared_with_raw_fanout(tmp_path):
    report, devices = _run("rollout", 24, tmp_path, fanout=True)
    target = report["model"]["target_version"]
    f = report["figures"]
    assert report["settled"]
    assert all(d["version"] == target and d["outcome"] == "healthy on target"
               for d in devices.values())
    assert report["deployment"]["state"] == "succeeded"
    assert f["time_to_all_healthy_s"] > 0 and f["fanout_baseline_s"] > 0
    assert f["ratio_to_fanout"] == pytest.approx(
        f["time_to_all_healthy_s"] / f["fanout_baseline_s"], rel=0.02)
    # each target says whether it was met, and by how much and why when it was not
    healthy, ratio = f["targets"]
    assert healthy["met"] == (f["time_to_all_healthy_s"] <= 60.0)
    assert ratio["met"] == (f["ratio_to_fanout"] <= 3.0)
    if not ratio["met"]:
        assert ratio["by"] == round(f["ratio_to_fanout"] / 3.0, 1)
        assert "broadcast once" in ratio["why"] and "ms per update" in ratio["why"]
    # every device got the signed bundle (plus a little metadata it pulled), and the
    # controller sent the bundle's files once, broadcast: nothing of it was pulled
    bundle = report["model"]["bundle_bytes"]
    assert f["transport"] == "broadcast"
    assert f["bytes_fetched_per_device"] + f["bytes_from_broadcast_per_device"] >= bundle
    assert bundle <= f["bytes_broadcast"] < 1.1 * bundle
    assert f["bytes_bundle_pulled"] == f["bytes_repaired"] == 0
    assert f["bytes_out_of_controller"] == f["bytes_broadcast"] + f["bytes_metadata_served"]
    assert f["sessions_per_shard"] <= len(report["scenario"]["profiles"])  # shared, not 12
    assert 0 < f["rss_per_device_bytes"] < 64 * 1024 * 1024
    t = f["telemetry"]
    assert t["summaries_acked"] <= t["summaries_produced"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("<svg") == 4 and "<script" not in page and "http://" not in page.replace(
        "http://www.w3.org/2000/svg", "")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["figures"] == f


def test_broker_killed_during_rollout_every_device_still_converges(tmp_path):
    report, devices = _run("broker-restart", 30, tmp_path)
    target = report["model"]["target_version"]
    timeline = report["timeline"]
    assert [e["kind"] for e in report["events"]][:3] == ["deploy", "broker_down", "broker_up"]
    assert any(not row["broker_up"] for row in timeline)
    assert min(row["connected"] for row in timeline) < 30  # the devices really lost it
    assert all(d["version"] == target for d in devices.values())
    assert report["figures"]["converged_pct"] == 100.0
    assert report["figures"]["connects"] > 30  # each came back with a new connection


def test_partitioned_fifth_converges_after_heal_and_the_rest_before(tmp_path):
    report, devices = _run("partition", 30, tmp_path)
    target = report["model"]["target_version"]
    heal = next(e["t"] for e in report["events"] if e["kind"] == "heal")
    deploy = next(e["t"] for e in report["events"] if e["kind"] == "deploy")
    cut = [d for d in devices.values() if "partition" in d["faults"]]
    rest = [d for d in devices.values() if "partition" not in d["faults"]]
    assert len(cut) == 6 == _picked(report, "partition")
    # all reachable devices were healthy on v2 while the partition still held
    assert max(d["converged_after_s"] for d in rest) < heal - deploy
    assert report["figures"]["time_to_reachable_converged_s"] < heal - deploy
    # the partitioned ones only after it healed, and then all of them
    assert all(d["converged_after_s"] > heal - deploy for d in cut)
    assert all(d["version"] == target for d in devices.values())
    before_heal = [r for r in report["timeline"] if r["t"] < heal][-1]
    assert before_heal["reachable_converged"] == before_heal["reachable"] == 24


def test_crashed_devices_restart_from_disk_and_converge(tmp_path):
    report, devices = _run("crash", 24, tmp_path)
    target = report["model"]["target_version"]
    crashed = [d for d in devices.values() if "crash" in d["faults"]]
    assert len(crashed) == 6
    assert min(r["running"] for r in report["timeline"]) == 18  # really down for a while
    assert [e["kind"] for e in report["events"]].count("restart") == 1
    assert all(d["version"] == target and d["outcome"] == "healthy on target"
               for d in devices.values())


def test_full_disk_device_reports_failure_and_keeps_serving_old_model(tmp_path):
    report, devices = _run("disk-full", 20, tmp_path)
    target, first = report["model"]["target_version"], report["model"]["first_version"]
    full = [d for d in devices.values() if "disk_full" in d["faults"]]
    assert len(full) == 2
    for d in full:
        assert d["job_state"] == "failed" and d["version"] == first
        assert d["reason"] == "disk_full" and "No space left on device" in d["detail"]
        assert d["inferences"] > 0  # still answering on v1
        assert d["outcome"] == f"failed, serving v{first}"
    others = [d for d in devices.values() if "disk_full" not in d["faults"]]
    assert all(d["version"] == target for d in others)
    assert report["deployment"]["state"] == "succeeded"  # 2 of 20 is within the 10% budget
    assert report["figures"]["time_to_all_healthy_s"] is not None


def test_device_clock_hours_ahead_refuses_commands_but_converges_by_desired_state(tmp_path):
    report, devices = _run("clock-skew", 12, tmp_path)
    target = report["model"]["target_version"]
    skewed = {d["clock_skew_s"]: d for d in devices.values() if d["clock_skew_s"]}
    assert set(skewed) == {7200.0, -7200.0}
    # the device two hours ahead saw the signed rebirth command as expired…
    assert report["figures"]["commands_rejected"].get("expired_command", 0) >= 1
    # …and still got there from the signed retained desired state, as did the one behind
    assert all(d["version"] == target for d in devices.values())
