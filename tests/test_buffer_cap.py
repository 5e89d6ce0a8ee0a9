"""The telemetry buffer holds its byte cap on disk, evicts in the documented order and counts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from edgefleet.agent._retention import (
    MIN_BUFFER_BYTES,
    Budget,
    StoreState,
    offline_hours,
    plan_eviction,
)
from edgefleet.agent._store import disk_bytes
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.telemetry import TelemetryBuffer

T0 = 1_700_000_040.0  # a window boundary for 60 s windows
KIB = 1024


def _write(buf: TelemetryBuffer, start_ts: float, n: int, *, every_s: float = 0.1) -> None:
    for i in range(n):
        ok = i % 17 != 0
        buf.record(start_ts + i * every_s, "digits", 1, 0.02 + (i % 13) * 0.003, ok,
                   str(i % 10) if ok else None, None if ok else "bad_input")
    assert buf.flush()


# -- the pure planner ------------------------------------------------------------------
states = st.builds(StoreState, used_bytes=st.integers(0, 10**7), raw_rows=st.integers(0, 10**5),
                   acked=st.integers(0, 2000), unacked=st.integers(0, 2000),
                   raw_row_bytes=st.floats(8, 200), summary_bytes=st.floats(200, 5000))


@given(states, st.integers(10**5, 10**7), st.integers(0, 10**5), st.integers(0, 4000),
       st.integers(0, 10**5))
def test_eviction_takes_raw_rows_before_acked_before_unsent_summaries(state, target, incoming,
                                                                      incoming_raw, slack):
    plan = plan_eviction(state, target_bytes=target, incoming_bytes=incoming,
                         incoming_raw_rows=incoming_raw, slack_bytes=slack)
    assert 0 <= plan.raw <= state.raw_rows and 0 <= plan.skip_raw <= incoming_raw
    assert 0 <= plan.acked <= state.acked and 0 <= plan.unacked <= state.unacked
    if plan.acked or plan.unacked:  # summaries go only once every raw row has gone
        assert plan.raw == state.raw_rows and plan.skip_raw == incoming_raw
    if plan.unacked:
        assert plan.acked == state.acked
    freed = (plan.raw + plan.skip_raw) * state.raw_row_bytes + (
        plan.acked + plan.unacked) * state.summary_bytes
    everything = plan.raw == state.raw_rows and plan.skip_raw == incoming_raw and (
        plan.acked == state.acked and plan.unacked == state.unacked)
    assert state.used_bytes + incoming - freed <= target or everything
    if state.used_bytes + incoming <= target:
        assert not plan


def test_raw_rows_never_push_out_a_summary_they_are_skipped_instead():
    full = StoreState(used_bytes=1000_000, raw_rows=0, acked=0, unacked=400,
                      raw_row_bytes=40, summary_bytes=2500)
    plan = plan_eviction(full, target_bytes=1000_000, incoming_bytes=4000 * 40 + 1000,
                         incoming_raw_rows=4000)
    assert plan.skip_raw == 4000 and plan.unacked == 1  # only the window state needs room
    assert plan_eviction(full, target_bytes=1000_000, incoming_bytes=40 * 10,
                         incoming_raw_rows=10).unacked == 0


def test_a_row_limit_applies_beside_the_byte_cap():
    state = StoreState(used_bytes=0, raw_rows=1000, acked=0, unacked=0)
    plan = plan_eviction(state, target_bytes=10**9, incoming_raw_rows=300, max_raw_rows=1000)
    assert (plan.raw, plan.skip_raw) == (300, 0)
    assert plan_eviction(state, target_bytes=10**9, incoming_raw_rows=1500,
                         max_raw_rows=1000).skip_raw == 500


def test_budget_keeps_room_for_the_wal_its_index_and_one_transaction():
    for cap in (MIN_BUFFER_BYTES, 1024 * KIB, 64 * 1024 * KIB):
        b = Budget(cap)
        assert b.main_bytes + b.wal_bytes + b.shm_bytes + b.txn_reserve_bytes <= cap
        assert b.main_bytes % b.page_size == 0 and b.main_bytes > 0
    with pytest.raises(ValueError):
        Budget(MIN_BUFFER_BYTES - 1)
    with pytest.raises(ValueError):
        AgentConfig(device_id="d", state_dir=Path("s"), trust_root=Path("r"),
                    max_buffer_bytes=1000)


def test_capacity_grows_with_the_cap_and_shrinks_with_the_rate():
    small, big = offline_hours(16 << 20, 10), offline_hours(64 << 20, 10)
    assert big["summaries_h"] > 3.9 * small["summaries_h"]
    assert offline_hours(64 << 20, 100)["raw_h"] < big["raw_h"] < big["summaries_h"]


def _watch_eviction_order(buf: TelemetryBuffer) -> None:
    """A temp trigger on the buffer's own connection notes every unsent summary deleted
    while raw rows are still there (the eviction order forbids it)."""
    buf._db.execute("CREATE TEMP TABLE violations (seq INTEGER, raw INTEGER)")
    buf._db.execute(
        "CREATE TEMP TRIGGER unsent_before_raw AFTER DELETE ON main.summaries "
        "WHEN old.acked = 0 AND (SELECT COUNT(*) FROM main.inferences) > 0 BEGIN "
        "INSERT INTO violations VALUES (old.seq, (SELECT COUNT(*) FROM main.inferences)); END")


# -- the store on disk -------------------------------------------------------------------
OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.tuples(st.integers(1, 3000), st.integers(1, 240))),
    st.tuples(st.just("close"), st.integers(1, 300)),
    st.tuples(st.just("ack"), st.integers(0, 100)),
    st.tuples(st.just("reopen"), st.just(0)),
), min_size=1, max_size=14)


@settings(max_examples=30, deadline=None)
@given(cap=st.sampled_from([MIN_BUFFER_BYTES, 320 * KIB, 512 * KIB]), ops=OPS)
def test_buffer_never_exceeds_its_cap_and_counts_every_eviction(tmp_path_factory, cap, ops):
    path = tmp_path_factory.mktemp("cap") / "telemetry.db"
    buf = TelemetryBuffer(path, max_bytes=cap, queue_max=10**6, keep_acked=50)
    _watch_eviction_order(buf)
    now, written, acked = T0, 0, set()
    buf.close_windows(now)
    try:
        for op, arg in ops:
            evicted_before = buf.stats()["evicted_summaries"]
            if op == "write":  # n records spread over the next few minutes
                n, minutes = arg
                _write(buf, now, n, every_s=60.0 * minutes / n)
                written += n
            elif op == "close":
                now += 60.0 * arg
                buf.close_windows(now)
            elif op == "ack":
                due = buf.pending(now, resend_after_s=0, limit=arg)
                buf.ack([s.seq for s in due])
                acked.update(s.seq for s in due)
            else:
                buf.stop()
                buf = TelemetryBuffer(path, max_bytes=cap, queue_max=10**6, keep_acked=50)
                _watch_eviction_order(buf)
            s = buf.stats()
            assert disk_bytes(path) <= cap, (op, arg, s)
            assert s["bytes"] <= cap
            # nothing silent: every record is stored or counted as evicted
            assert s["raw_rows"] + s["evicted_raw"] + s["dropped"] == written
            # every summary made is acked, still waiting, or counted as evicted
            assert s["summaries"] == len(acked) + s["summaries_unacked"] + s[
                "evicted_summaries"]
            # raw rows went first: no unsent summary was deleted while one was left
            assert buf._db.execute("SELECT * FROM violations").fetchall() == []
            if s["evicted_summaries"] > evicted_before:
                event("unsent summaries evicted")
            if s["evicted_raw"]:
                event("raw rows evicted")
        assert buf._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        buf.stop()


def test_the_cap_holds_while_transactions_are_in_flight(tmp_path):
    """A sampler watches the files while the writer commits: the WAL reserve is enough."""
    path = tmp_path / "telemetry.db"
    cap = 384 * KIB
    buf = TelemetryBuffer(path, max_bytes=cap, queue_max=10**6)
    buf.close_windows(T0)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], disk_bytes(path))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for minute in range(40):
            _write(buf, T0 + minute * 60, 600)
            buf.close_windows(T0 + (minute + 1) * 60)
    finally:
        stop.set()
        sampler.join()
        stats = buf.stats()
        buf.stop()
    assert stats["evicted_raw"] > 0  # the cap was reached
    assert stats["summaries_unacked"] == 40 and stats["evicted_summaries"] == 0
    assert peak[0] <= cap, peak[0]


def test_lowering_the_cap_shrinks_the_file_at_the_next_start(tmp_path):
    path = tmp_path / "telemetry.db"
    buf = TelemetryBuffer(path, max_bytes=4 * 1024 * KIB, queue_max=10**6)
    buf.close_windows(T0)
    _write(buf, T0, 40_000, every_s=0.001)
    buf.stop()
    assert disk_bytes(path) > 1024 * KIB
    again = TelemetryBuffer(path, max_bytes=512 * KIB)
    try:
        assert disk_bytes(path) <= 512 * KIB
        s = again.stats()
        assert s["raw_rows"] + s["evicted_raw"] == 40_000 and s["evicted_raw"] > 0
    finally:
        again.stop()
