"""Telemetry: every inference counted, summaries survive being offline, stored exactly once."""

from __future__ import annotations

import json

from _support import register_digits, wait_deployment, wait_devices_known
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.agent.telemetry import TelemetryBuffer, summarize
from edgefleet.contract import ManualClock
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


def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    buf = TelemetryBuffer(tmp_path / "t.db", queue_max=10)  # writer not started
    results = [buf.record(float(i), "m", 1, 1.0, True, "1") for i in range(25)]
    assert results.count(True) == 10 and buf.dropped == 15
    buf.stop()  # drains what was queued
    again = TelemetryBuffer(tmp_path / "t.db")
    assert again.stats()["raw_rows"] == 10
    again.stop()
