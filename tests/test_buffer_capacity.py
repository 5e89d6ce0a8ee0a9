"""A day offline at 10 inferences/s: the documented capacity, delivered once and in order.

The claims come from ``offline_hours`` (the model behind docs/telemetry.md's table);
these scenarios run a clock-accelerated day against them: 864,000 records written
through the buffer's inference-path API, one summary per minute.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from _support import ASSETS, wait_devices_known

from edgefleet.agent._retention import offline_hours
from edgefleet.agent._store import disk_bytes
from edgefleet.agent._system import SystemMetrics
from edgefleet.agent._windows import DriftSpec
from edgefleet.agent.telemetry import TelemetryBuffer
from edgefleet.contract import DDSketch, Manifest, ManualClock, TensorSpec
from edgefleet.optimizer import reference_profile
from edgefleet.simulations.fleet import wait_until

RATE = 10  # inferences per second
HOURS = 24
T0 = 1_700_000_040.0  # a minute boundary
MIB = 1024 * 1024
DOCS = Path(__file__).resolve().parents[1] / "docs" / "telemetry.md"


class OfflineDay:
    """A day of digits inferences: lognormal latencies, 1% bad inputs, real input rows."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        n = RATE * 3600 * HOURS
        self.latency = rng.lognormal(np.log(0.03), 0.25, n)
        self.top = rng.integers(0, 10, n).astype(str)
        self.bad = rng.random(n) < 0.01
        x = np.load(ASSETS / "eval.npz")["x"].astype(np.float32)
        self.rows = [x[j:j + 1].copy() for j in range(len(x))]
        cal = np.load(ASSETS / "calibration.npz")["x"]
        profile = reference_profile(cal, np.arange(len(cal)) % 10,
                                    labels=[str(i) for i in range(10)])
        manifest = Manifest(name="digits", version=3, runtime="onnxruntime",
                            model_file="model.onnx", model_sha256="0" * 64, model_length=1,
                            inputs=[TensorSpec("pixels", "FP32", ["batch", 64])],
                            outputs=[TensorSpec("probs", "FP32", ["batch", 10])],
                            reference_profile=profile)
        self.spec = DriftSpec.from_manifest(manifest)
        assert self.spec is not None
        self.features = [self.spec.rows(r) for r in self.rows]

    def hour(self, buf: TelemetryBuffer, h: int) -> None:
        record, spec, rows = buf.record, self.spec, self.features
        for i in range(h * 3600 * RATE, (h + 1) * 3600 * RATE):
            if self.bad[i]:
                record(T0 + i / RATE, "digits", 3, float(self.latency[i]), False, None,
                       "bad_input")
            else:
                record(T0 + i / RATE, "digits", 3, float(self.latency[i]), True, self.top[i],
                       None, rows[i % len(rows)], spec)
        assert buf.flush()


def _summary_of(row: dict) -> dict:  # type: ignore[type-arg]
    """A stored summary as the device sent it, whichever fields the store keeps in columns."""
    fields = ("stream", "seq", "count", "errors", "historical", "latency_sketch",
              "errors_by_kind", "inputs", "drift", "buffer")
    out = {**(row.get("payload") or {}), **{k: row[k] for k in fields if k in row}}
    return {k: {} if v is None and k in fields[5:] else v for k, v in out.items()}


@pytest.fixture(scope="module")
def day() -> OfflineDay:
    return OfflineDay()


def test_a_day_offline_within_capacity_replays_every_summary_in_order_once(
        controller, make_fleet, day):
    """End to end: a real agent's buffer, a real Mosquitto and controller."""
    cap = 4 * MIB
    claim = offline_hours(cap, RATE)
    assert claim["summaries_h"] > HOURS  # the documented capacity covers the day
    clock = ManualClock(T0)
    fleet = make_fleet(1, with_links=True, clock=clock, summary_window_s=60.0,
                       resend_after_s=3600.0, max_buffer_bytes=cap,
                       telemetry_queue_max=RATE * 3600 + 1, publish_batch=100)
    dev = fleet.ids[0]
    agent = fleet.agents[dev]
    wait_devices_known(controller, fleet.ids)
    fleet.cut(dev)
    wait_until(lambda: not controller.store.get_device(dev)["online"], 15)
    duplicates = controller.counters["summaries_duplicate"]

    raw_when_full = None
    agent.buffer.close_windows(clock.time())
    for h in range(HOURS):
        day.hour(agent.buffer, h)
        clock.advance(3600.0)
        agent.tick()
        stats = agent.buffer.stats()
        assert stats["bytes"] <= cap and disk_bytes(agent.buffer.path) <= cap
        if raw_when_full is None and stats["evicted_raw"]:
            raw_when_full = stats["raw_rows"]
    stats = agent.buffer.stats()
    total = HOURS * 60
    assert stats["summaries"] == stats["summaries_unacked"] == total
    assert stats["evicted_summaries"] == stats["dropped"] == 0
    assert stats["raw_rows"] + stats["evicted_raw"] == RATE * 3600 * HOURS
    # raw rows: at least the documented hours were kept when the store filled up
    assert raw_when_full is not None and raw_when_full >= claim["raw_h"] * 3600 * RATE

    fleet.restore(dev)
    wait_until(lambda: agent.buffer.stats()["summaries_unacked"] == 0, 60)
    stored = controller.store.summaries(dev, limit=10_000)
    assert [s["seq"] for s in stored] == list(range(1, total + 1))  # each exactly once
    by_arrival = sorted(stored, key=lambda s: (s["received_at"], s["seq"]))
    assert [s["seq"] for s in by_arrival] == list(range(1, total + 1))  # in order
    assert controller.counters["summaries_duplicate"] == duplicates
    payloads = [_summary_of(s) for s in stored]
    assert sum(p["count"] for p in payloads) == RATE * 3600 * HOURS
    assert sum(p["errors_by_kind"].get("bad_input", 0) for p in payloads) == int(day.bad.sum())
    assert {p["stream"] for p in payloads} == {agent.buffer.stream}
    assert sum(p["historical"] for p in payloads) >= total - 2  # replayed history
    # the per-minute sketches merge into the day's latency distribution within alpha
    merged = DDSketch()
    for p in payloads:
        merged.merge(DDSketch.from_dict(p["latency_sketch"]))
    assert merged.count == RATE * 3600 * HOURS
    for q in (0.5, 0.95, 0.99):
        true = float(np.quantile(day.latency, q, method="lower"))
        assert abs((merged.quantile(q) or 0.0) - true) <= 0.0101 * true
    last = payloads[-1]
    assert last["drift"]["samples"] > 500 and "psi_max" in last["drift"]
    assert last["inputs"]["samples"] == last["drift"]["samples"]
    assert {"cpu_percent", "rss_bytes", "mem_percent", "disk_free_bytes"} <= set(last["system"])
    assert last["buffer"]["cap_bytes"] == cap and last["buffer"]["evicted_summaries"] == 0


def test_a_day_offline_beyond_capacity_keeps_the_newest_summaries_and_counts_the_rest(
        tmp_path, day):
    """Buffer level (the pending/ack API the agent loop uses): what is past the cap."""
    cap = 1 * MIB
    claim = offline_hours(cap, RATE)
    assert claim["summaries_h"] < HOURS  # the day does not fit
    path = tmp_path / "telemetry.db"
    buf = TelemetryBuffer(path, max_bytes=cap, queue_max=10**6,
                          system_metrics=SystemMetrics(tmp_path))
    total = HOURS * 60
    try:
        buf.close_windows(T0)
        for h in range(HOURS):
            day.hour(buf, h)
            buf.close_windows(T0 + (h + 1) * 3600)
            assert disk_bytes(path) <= cap
        stats = buf.stats()
        kept = stats["summaries_unacked"]
        assert stats["summaries"] == total
        assert kept >= claim["summaries_h"] * 60  # the documented capacity holds
        assert stats["evicted_summaries"] == total - kept > 0  # beyond it: counted
        assert stats["raw_rows"] == 0  # raw rows went first
        assert stats["raw_rows"] + stats["evicted_raw"] == RATE * 3600 * HOURS

        delivered = []
        while due := buf.pending(T0 + 10**6, resend_after_s=3600, limit=50):
            buf.mark_sent([s.seq for s in due], T0 + 10**6)
            assert buf.ack([s.seq for s in due]) == len(due)
            delivered += due
    finally:
        buf.stop()
    first = total - kept + 1
    assert [s.seq for s in delivered] == list(range(first, total + 1))  # once, in order
    assert all(s.count == 600 for s in delivered)
    # what is gone is said on every summary sent: nothing unsent is left below first
    assert {s.buffer["evicted_through_seq"] for s in delivered} == {first - 1}
    assert 0 < delivered[-1].buffer["evicted_summaries"] <= total - kept


def test_the_documented_capacity_table_is_what_the_model_says():
    """docs/telemetry.md's table comes from ``offline_hours``, the model tested above."""
    text = DOCS.read_text()
    rows = re.findall(r"^\|\s*(\d+) MiB\s*\|\s*([\d.]+)\s*\|\s*([\d,.]+)\s*\|\s*([\d,.]+)\s*\|",
                      text, flags=re.M)
    assert len(rows) >= 6
    for cap, rate, summaries_h, raw_h in rows:
        model = offline_hours(int(cap) * MIB, float(rate))
        assert float(summaries_h.replace(",", "")) == pytest.approx(model["summaries_h"],
                                                                    rel=0.01, abs=0.1)
        assert float(raw_h.replace(",", "")) == pytest.approx(model["raw_h"], rel=0.01,
                                                              abs=0.1)
