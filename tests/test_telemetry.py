"""Telemetry: every inference counted, summaries survive being offline, stored exactly once."""

from __future__ import annotations

import json
from collections import namedtuple

import numpy as np
import pytest
from _support import ASSETS, register_digits, wait_deployment, wait_devices_known
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgefleet.agent._system import SystemMetrics, pick_temperature
from edgefleet.agent._windows import DriftSpec, WindowStats
from edgefleet.agent.drift import DriftWindow
from edgefleet.agent.telemetry import TelemetryBuffer, summarize
from edgefleet.contract import DDSketch, InputError, Manifest, ManualClock, ModelError, TensorSpec
from edgefleet.optimizer import reference_profile
from edgefleet.simulations.bench._digits import manifest as digits_manifest
from edgefleet.simulations.fleet import wait_until


def test_offline_for_an_hour_loses_no_summary_replays_in_order_and_stores_once(
        controller, make_fleet, evalset):
    clock = ManualClock()
    fleet = make_fleet(1, with_links=True, clock=clock, summary_window_s=60.0,
                       resend_after_s=3600.0)
    dev = fleet.ids[0]
    agent = fleet.agents[dev]
    wait_devices_known(controller, fleet.ids)
    row = register_digits(controller)
    assert wait_deployment(controller, controller.deploy("digits", row["version"])["id"])[
        "state"] == "succeeded"

    fleet.cut(dev)
    wait_until(lambda: not controller.store.get_device(dev)["online"], 15)
    per_window = 7
    for minute in range(60):  # one clock-accelerated hour, a window a minute
        for i in range(per_window):
            agent.predict(evalset["x"][(minute * per_window + i) % len(evalset["x"])][None, :])
        clock.advance(60.0)
        agent.tick()
    stats = agent.buffer.stats()
    assert stats["summaries"] == 60 and stats["summaries_unacked"] == 60
    assert controller.store.summaries(dev) == []

    fleet.restore(dev)
    wait_until(lambda: agent.buffer.stats()["summaries_unacked"] == 0, 30)
    stored = controller.store.summaries(dev)
    assert [s["seq"] for s in stored] == list(range(1, 61))
    assert all(s["count"] == per_window and s["errors"] == 0 for s in stored)
    assert sum(s["count"] for s in stored) == 60 * per_window
    by_arrival = sorted(stored, key=lambda s: s["received_at"])
    assert [s["seq"] for s in by_arrival] == list(range(1, 61))  # replayed in order
    assert sum(s["historical"] for s in stored) >= 59  # marked as replayed history

    # a second replay of everything (e.g. acks lost) stores nothing twice
    before = controller.counters["summaries_duplicate"]
    with agent.buffer._lock:
        agent.buffer._db.execute("UPDATE summaries SET acked = 0, sent_at = NULL")
    agent.tick()
    agent.tick()
    wait_until(lambda: agent.buffer.stats()["summaries_unacked"] == 0, 30)
    assert controller.counters["summaries_duplicate"] - before == 60
    assert len(controller.store.summaries(dev)) == 60


def test_summary_reports_percentiles_histogram_and_errors():
    rows = [("m", 1, float(ms), 1, str(ms % 3)) for ms in range(1, 101)] + [("m", 1, 5.0, 0, None)]
    s = summarize(rows, seq=4, start=0.0, end=60.0, system={"cpu_percent": 1.0})
    assert (s.seq, s.count, s.errors, s.model, s.version) == (4, 101, 1, "m", 1)
    assert 49 <= s.latency_ms["p50"] <= 51 and 94 <= s.latency_ms["p95"] <= 96
    assert s.latency_ms["p99"] <= s.latency_ms["max"] == 100.0
    assert s.predictions == {"0": 33, "1": 34, "2": 33}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 600, allow_nan=False), st.booleans()), max_size=60),
       st.sampled_from([10.0, 60.0]))
def test_every_record_lands_in_exactly_one_summary(tmp_path_factory, records, window):
    path = tmp_path_factory.mktemp("buf") / "t.db"
    buf = TelemetryBuffer(path, window_s=window)
    buf.start()
    try:
        base = 1_000_000.0
        buf.close_windows(base)  # the first window opens at base
        for offset, ok in sorted(records):
            assert buf.record(base + offset, "m", 1, 1.0, ok, "0" if ok else None)
        buf.close_windows(base + 601 + window)
        got = buf.pending(base + 10_000, resend_after_s=0, limit=10_000)
        assert sum(s.count for s in got) == len(records)
        assert sum(s.errors for s in got) == sum(1 for _, ok in records if not ok)
        assert [s.seq for s in got] == list(range(1, len(got) + 1))
        assert all(s.window_end - s.window_start == window for s in got)
        assert buf.ack([s.seq for s in got]) == len(got)
        assert buf.ack([s.seq for s in got]) == 0
        assert buf.stats()["summaries_unacked"] == 0
    finally:
        buf.stop()


def test_buffer_survives_reopen_with_unacked_summaries(tmp_path):
    path = tmp_path / "t.db"
    buf = TelemetryBuffer(path, window_s=60)
    buf.start()
    buf.close_windows(6000.0)
    for i in range(5):
        buf.record(6000.0 + i, "m", 1, 2.0, True, "7")
    buf.close_windows(6060.0)
    buf.stop()

    again = TelemetryBuffer(path, window_s=60)
    again.start()
    try:
        pending = again.pending(7000.0, resend_after_s=0, limit=10)
        assert [(s.seq, s.count, s.predictions) for s in pending] == [(1, 5, {"7": 5})]
        assert json.loads(json.dumps(pending[0].to_dict()))["latency_ms"]["p50"] == 2.0
    finally:
        again.stop()


def test_a_summary_is_due_when_it_closes_and_again_until_acked(tmp_path):
    """What ``pending`` gives as a summary is closed, sent, left unacked, acked, and the
    next one closes (a tick with nothing due reads nothing from the database)."""
    buf = TelemetryBuffer(tmp_path / "t.db", window_s=60)
    buf.start()
    try:
        buf.close_windows(6000.0)
        buf.record(6000.0, "m", 1, 2.0, True, "7")
        assert buf.pending(6010.0, resend_after_s=30, limit=10) == []  # none closed yet
        buf.close_windows(6060.0)
        (first,) = buf.pending(6060.0, resend_after_s=30, limit=10)  # at once
        buf.mark_sent([first.seq], 6060.0)
        assert buf.pending(6089.0, resend_after_s=30, limit=10) == []
        assert buf.pending(6089.5, resend_after_s=30, limit=10) == []
        assert [s.seq for s in buf.pending(6090.0, resend_after_s=30, limit=10)] == [1]
        assert [s.seq for s in buf.pending(6070.0, resend_after_s=0, limit=10)] == [1]
        buf.mark_sent([1], 6095.0)
        assert buf.pending(6096.0, resend_after_s=30, limit=10) == []
        buf.reset_sent()  # a new session: unacked summaries are due again at once
        assert [s.seq for s in buf.pending(6096.0, resend_after_s=30, limit=10)] == [1]
        assert buf.delivered() == (1, 0)  # made, acked
        assert buf.ack([1]) == 1
        stats = buf.stats()
        assert buf.delivered() == (stats["summaries"], stats["summaries_acked"]) == (1, 1)
        assert buf.pending(10_000.0, resend_after_s=0, limit=10) == []
        buf.record(6121.0, "m", 1, 2.0, True, "7")
        buf.close_windows(6180.0)
        assert [s.seq for s in buf.pending(6180.0, resend_after_s=0, limit=10)] == [2]
    finally:
        buf.stop()


def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    buf = TelemetryBuffer(tmp_path / "t.db", queue_max=10)  # writer not started
    results = [buf.record(float(i), "m", 1, 1.0, True, "1") for i in range(25)]
    assert results.count(True) == 10 and buf.dropped == 15
    buf.stop()  # drains what was queued
    again = TelemetryBuffer(tmp_path / "t.db")
    assert again.stats()["raw_rows"] == 10
    assert again.stats()["dropped"] == 15  # the count survives a restart
    again.stop()


@pytest.fixture
def digits_agent(tmp_path, trust_root):
    """A running, offline agent serving digits from a bundle with a reference profile."""
    from edgefleet.agent import Agent, AgentConfig

    clock = ManualClock(1_700_000_040.0)
    agent = Agent(AgentConfig(device_id="pi-t", state_dir=tmp_path / "state",
                              trust_root=trust_root, broker_url="mqtt://127.0.0.1:1",
                              api_port=0, summary_window_s=60.0), clock=clock)
    m = digits_manifest()
    agent.store.activate(agent.store.install(m, m.encode(), ASSETS / "digits.onnx").ref)
    agent.start()
    agent.clock_ = clock  # type: ignore[attr-defined]
    yield agent
    agent.stop()


def test_summaries_count_errors_by_kind_and_carry_drift_inputs_system_and_stream(
        digits_agent, evalset):
    agent, clock = digits_agent, digits_agent.clock_
    agent.tick()  # the first window opens
    x = evalset["x"][:1].copy()
    for i in range(120):
        x[0] = evalset["x"][i]
        agent.predict(x)  # the same array, rewritten by the caller every time
    x[0] = 1e6  # after the last call: the buffer copied what it needs
    for bad in (evalset["x"][:1, :10], evalset["x"][:1].astype("float64")):
        with pytest.raises(InputError):
            agent.predict(bad)
    with pytest.raises(ModelError):
        agent.predict(evalset["x"][:1], model="not-served")  # refused before it runs
    clock.advance(60.0)
    agent.tick()
    (s,) = agent.buffer.pending(clock.time(), resend_after_s=0, limit=10)
    assert (s.count, s.errors, s.errors_by_kind) == (122, 2, {"bad_input": 2})
    assert sum(s.predictions.values()) == 120 and s.latency_sketch["n"] == 122
    assert 0 < s.latency_ms["p50"] <= s.latency_ms["p99"] <= s.latency_ms["max"]
    assert s.inputs["samples"] == s.drift["samples"] == 120
    assert s.inputs["mean"] < 1.0 and s.inputs["out_of_range"] < 60  # not the 1e6 rows
    assert s.drift["psi_max"] >= 0 and set(s.drift["top"]) <= {f"pixels[{i}]" for i in range(64)}
    assert {"cpu_percent", "rss_bytes", "mem_percent", "disk_free_bytes"} <= set(s.system)
    assert s.stream == agent.buffer.stream and len(s.stream) == 32
    assert set(s.buffer) == {"bytes", "cap_bytes", "evicted_raw", "evicted_summaries",
                             "dropped"}
    assert s.buffer["cap_bytes"] == agent.config.max_buffer_bytes
    assert 0 < s.buffer["bytes"] <= s.buffer["cap_bytes"]


def test_agent_status_shows_buffer_size_rows_oldest_unsent_summary_drops_and_evictions(
        digits_agent, evalset):
    from edgefleet.cli import app

    agent, clock = digits_agent, digits_agent.clock_
    agent.tick()
    for row in evalset["x"][:30]:
        agent.predict(row[None, :])
    clock.advance(60.0)
    agent.tick()
    assert agent.server is not None
    runner = CliRunner()
    shown = runner.invoke(app, ["agent", "status", "--url", agent.server.url])
    assert shown.exit_code == 0, shown.output
    for label in ("buffer", "MiB of 64.0 MiB", "30 raw, 1 summaries (1 unsent)",
                  "oldest unsent summary", "dropped", "evicted", "0 raw, 0 summaries"):
        assert label in shown.output
    data = json.loads(runner.invoke(app, ["agent", "status", "--url", agent.server.url,
                                          "--json"]).output)
    buf = data["buffer"]
    assert buf["oldest_unacked_window_end"] == clock.time()
    assert (buf["raw_rows"], buf["summaries_unacked"], buf["dropped"], buf["evicted_raw"],
            buf["evicted_summaries"]) == (30, 1, 0, 0, 0)
    assert 0 < buf["bytes"] <= buf["cap_bytes"] == 64 * 1024 * 1024


Temp = namedtuple("Temp", "label current high critical")


def test_cpu_temperature_is_reported_only_where_the_hardware_has_a_sensor(tmp_path):
    pi = {"cpu_thermal": [Temp("", 51.54, None, None)], "rp1_adc": [Temp("", 38.0, 0, 0)]}
    x86 = {"acpitz": [Temp("", 27.8, 0, 0)],
           "coretemp": [Temp("Package id 0", 45.0, 80, 100), Temp("Core 0", 47.0, 80, 100)]}
    assert pick_temperature(pi) == 51.5
    assert pick_temperature(x86) == 47.0  # the CPU's sensors beat the ACPI zone
    assert pick_temperature({"nvme": [Temp("Composite", 33.9, 80, 85)]}) == 33.9
    assert pick_temperature({}) is None
    assert pick_temperature({"bogus": [Temp("", -273.0, None, None)]}) is None
    metrics = SystemMetrics(tmp_path)()
    assert metrics["disk_free_bytes"] > 0 and metrics["rss_bytes"] > 0
    assert "temperature_c" not in metrics or -40 < metrics["temperature_c"] < 150


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e4, allow_nan=False), max_size=300))
def test_batched_latencies_land_in_the_same_sketch_buckets_as_one_by_one(values):
    one, batch = DDSketch().extend(values), DDSketch()
    batch.add_array(np.array(values))
    assert (batch.buckets, batch.zero, batch.count) == (one.buckets, one.zero, one.count)
    assert batch.total == pytest.approx(one.total)
    stats = WindowStats()
    stats.add(["m"] * len(values), [1] * len(values), values, [None] * len(values),
              ["0"] * len(values))
    again = WindowStats.from_state(json.loads(json.dumps(stats.state())))
    assert again.state() == stats.state()


def test_drift_on_a_subset_of_features_names_the_original_features(evalset):
    cal = np.load(ASSETS / "calibration.npz")["x"]
    profile = reference_profile(cal, max_features=16)
    m = Manifest(name="digits", version=1, runtime="onnxruntime", model_file="m.onnx",
                 model_sha256="0" * 64, model_length=1,
                 inputs=[TensorSpec("pixels", "FP32", ["batch", 64])],
                 outputs=[TensorSpec("probs", "FP32", ["batch", 10])],
                 reference_profile=profile)
    spec = DriftSpec.from_manifest(m)
    assert spec is not None and len(spec.extractors[0]["features"]) == 16
    x = evalset["x"][:200] * 1.5  # shifted
    compact = spec.window()
    compact.add(spec.rows(x))
    full = DriftWindow(profile)
    full.add(x)
    named = spec.scores(compact, {})
    assert set(named["top"]) <= {f"pixels[{i}]" for i in range(64)}
    # the same scores as a window over the raw rows, features named by the input
    unnamed = full.scores({})
    assert list(named["top"].values()) == list(unnamed["top"].values())
    assert {k: v for k, v in named.items() if k != "top"} == \
        {k: v for k, v in unnamed.items() if k != "top"}
    assert compact.inputs() == full.inputs()
    # a profile for another input shape, or none at all: no drift for that model
    assert DriftSpec.from_manifest(Manifest(**{**m.to_dict(), "inputs": [
        TensorSpec("pixels", "FP32", ["batch", 8])]})) is None
    assert DriftSpec.from_manifest(Manifest(**{**m.to_dict(), "reference_profile": {}})) is None
