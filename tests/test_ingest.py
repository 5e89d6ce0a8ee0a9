"""Telemetry ingest: once per (device, stream, seq), in order, batched, acked after commit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from _devices import MqttDevices, summary
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.contract import ManualClock, MessageError, Summary
from edgefleet.controller._ingestor import Ingestor
from edgefleet.controller.ingest import StreamState, admit
from edgefleet.controller.store import Store
from edgefleet.simulations.fleet import wait_until

TIMEOUT = 30.0


@pytest.fixture
def world(tmp_path):
    clock = ManualClock(1_700_000_000.0)
    store = Store(f"sqlite:///{tmp_path / 'ctl.db'}")
    acks: list[tuple[str, list[int]]] = []
    ingest = Ingestor(store.telemetry, lambda d, seqs: acks.append((d, seqs)), clock=clock,
                      counters={}, gap_timeout_s=TIMEOUT)
    return clock, store, ingest, acks


def _stored(store: Store, device: str) -> list[tuple[str, int]]:
    return [(r["stream"], r["seq"]) for r in store.summaries(device)]


def test_a_batch_is_one_transaction_and_one_ack_per_device(world):
    clock, store, ingest, acks = world
    now = clock.time()
    ingest.process([("a", summary(i), now) for i in (1, 2, 3)] +
                   [("b", summary(i), now) for i in (1, 2)] + [("a", summary(2), now)])
    assert sorted(acks) == [("a", [1, 2, 3]), ("b", [1, 2])]  # the repeat is acked too
    assert _stored(store, "a") == [("s1", 1), ("s1", 2), ("s1", 3)]
    assert ingest.counters["summaries_stored"] == 5
    assert ingest.counters["summaries_duplicate"] == 1
    assert ingest.counters["ingest_batches"] == 1
    assert store.get_device("b")["last_seen"] == now  # a device first heard of by telemetry


def test_a_summary_after_a_gap_is_held_back_unacked_until_the_missing_one_arrives(world):
    clock, store, ingest, acks = world
    ingest.process([("a", summary(1), clock.time()), ("a", summary(3), clock.time())])
    assert acks == [("a", [1])]  # 3 stays on the device
    assert _stored(store, "a") == [("s1", 1)]
    assert ingest.counters["summaries_held_back"] == 1

    clock.advance(10)  # the agent resends its unacked summaries, oldest first
    ingest.process([("a", summary(2), clock.time()), ("a", summary(3), clock.time())])
    assert acks[-1] == ("a", [2, 3])
    assert _stored(store, "a") == [("s1", 1), ("s1", 2), ("s1", 3)]
    (position,) = store.telemetry.streams("a")
    assert (position["last_seq"], position["lost"], position["gap_since"]) == (3, 0, None)


def test_summaries_reordered_within_one_batch_are_all_stored(world):
    clock, store, ingest, acks = world
    ingest.process([("a", summary(i), clock.time()) for i in (3, 1, 2)])
    assert acks == [("a", [1, 2, 3])] and ingest.counters["summaries_held_back"] == 0
    assert _stored(store, "a") == [("s1", 1), ("s1", 2), ("s1", 3)]


def test_a_gap_that_never_fills_is_given_up_after_the_timeout_and_counted_lost(world):
    clock, store, ingest, acks = world
    ingest.process([("a", summary(1), clock.time())])
    ingest.process([("a", summary(5), clock.time()), ("a", summary(6), clock.time())])
    clock.advance(TIMEOUT - 1)
    ingest.process([("a", summary(5), clock.time())])
    assert _stored(store, "a") == [("s1", 1)]  # still waiting for 2..4
    clock.advance(1)
    ingest.process([("a", summary(5), clock.time()), ("a", summary(6), clock.time())])
    assert _stored(store, "a") == [("s1", 1), ("s1", 5), ("s1", 6)]
    assert acks[-1] == ("a", [5, 6])
    assert store.telemetry.streams("a")[0]["lost"] == 3  # 2, 3, 4: evicted or lost
    ingest.process([("a", summary(3), clock.time())])  # too late now: acked, not stored
    assert acks[-1] == ("a", [3]) and len(_stored(store, "a")) == 3


def test_positions_survive_a_controller_restart(world, tmp_path):
    clock, store, ingest, _acks = world
    ingest.process([("a", summary(i), clock.time()) for i in (1, 2, 3)])
    again = Store(f"sqlite:///{tmp_path / 'ctl.db'}")
    acks: list[tuple[str, list[int]]] = []
    restarted = Ingestor(again.telemetry, lambda d, s: acks.append((d, s)), clock=clock,
                         counters={})
    restarted.process([("a", summary(2), clock.time()), ("a", summary(4), clock.time())])
    assert acks == [("a", [2, 4])]
    assert restarted.counters["summaries_duplicate"] == 1
    assert _stored(again, "a") == [("s1", 1), ("s1", 2), ("s1", 3), ("s1", 4)]


def test_nothing_is_acked_when_the_batch_cannot_be_stored(world):
    clock, store, ingest, acks = world
    ingest.process([("a", summary(1), clock.time())])
    with store.engine.begin() as c:
        c.execute(sa.text("ALTER TABLE telemetry RENAME TO telemetry_gone"))
    with pytest.raises(sa.exc.OperationalError):
        ingest.process([("a", summary(2), clock.time())])
    assert acks == [("a", [1])]
    with store.engine.begin() as c:
        c.execute(sa.text("ALTER TABLE telemetry_gone RENAME TO telemetry"))
    ingest.process([("a", summary(2), clock.time())])  # the agent's resend lands
    assert acks[-1] == ("a", [2]) and _stored(store, "a") == [("s1", 1), ("s1", 2)]


def test_a_full_queue_refuses_summaries_without_acking_them(world):
    clock, store, _ingest, acks = world
    small = Ingestor(store.telemetry, lambda d, s: acks.append((d, s)), clock=clock,
                     counters={}, queue_max=2)  # worker not started
    taken = [small.submit("a", summary(i), clock.time()) for i in (1, 2, 3)]
    assert taken == [True, True, False] and small.counters["summaries_queue_full"] == 1
    assert small.flush(5)
    assert acks == [("a", [1, 2])]


def test_a_malformed_summary_is_counted_and_dropped_and_its_batch_goes_on(world):
    clock, store, ingest, acks = world
    ingest.process([("a", b'{"seq": "x"}', clock.time()), ("a", b"\xff", clock.time()),
                    ("a", summary(1).encode(), clock.time())])
    assert ingest.counters["malformed"] == 2
    assert acks == [("a", [1])] and _stored(store, "a") == [("s1", 1)]


def test_malformed_sketch_is_dropped_but_the_summary_is_kept(world):
    clock, store, ingest, _acks = world
    bad = summary(1, latency_sketch={"a": 0.01, "k": [1, 2], "c": [1]})
    ingest.process([("a", bad, clock.time())])
    (row,) = store.summaries("a")
    assert row["latency_sketch"] is None and row["count"] == 100
    assert ingest.counters["sketch_invalid"] == 1


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 25), st.lists(st.randoms(use_true_random=False), min_size=1,
                                    max_size=6), st.booleans())
def test_any_arrival_order_stores_every_seq_once_and_in_order(n, rounds, resend_all):
    """The network reorders, repeats and loses; the agent resends what is not acked,
    oldest first. Whatever happens, each seq is stored once, in increasing order."""
    state, stored, acked = StreamState(), [], set()
    for rnd in rounds:
        unacked = [s for s in range(1, n + 1) if s not in acked]
        arriving = [s for s in unacked if rnd.random() < 0.7]
        arriving += rnd.sample(range(1, n + 1), k=min(n, 3))  # repeats of anything
        rnd.shuffle(arriving)
        for seq in arriving:
            v = admit(state, seq, now=0.0, gap_timeout_s=TIMEOUT)
            state = v.state
            if v.action == "store":
                stored.append(seq)
            if v.action != "hold":
                acked.add(seq)
    if resend_all:  # a last resend of everything unacked, in order, gets everything in
        for seq in [s for s in range(1, n + 1) if s not in acked]:
            v = admit(state, seq, now=0.0, gap_timeout_s=TIMEOUT)
            state = v.state
            stored += [seq] if v.action == "store" else []
        assert stored == list(range(1, n + 1))
    assert stored == sorted(set(stored)) == list(range(1, len(stored) + 1))
    assert all(v == "duplicate" for v in (
        admit(state, s, now=0.0, gap_timeout_s=TIMEOUT).action for s in stored))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 30), st.lists(st.tuples(st.integers(0, 4), st.randoms(
    use_true_random=False)), min_size=1, max_size=6))
def test_a_device_that_evicts_loses_exactly_what_it_evicted_and_nothing_else(n, rounds):
    """The agent evicts its oldest unsent summaries when full and says up to where; the
    network drops some of what is sent. Whatever happens, once the device has resent
    what it still holds, everything it did not evict is stored once, in order, and the
    controller counts exactly the evicted ones it has heard of as lost."""
    state, stored, lost, acked, evicted = StreamState(), [], 0, set(), set()

    def deliver(seqs: list[int], rnd: object = None) -> None:
        nonlocal state, lost
        through = max(evicted) if evicted else None
        for seq in seqs:
            v = admit(state, seq, now=0.0, gap_timeout_s=TIMEOUT, evicted_through=through)
            state, lost = v.state, lost + v.lost
            stored.extend([seq] if v.action == "store" else [])
            acked.update([seq] if v.action != "hold" else [])

    for evict, rnd in rounds:
        held = [s for s in range(1, n + 1) if s not in acked and s not in evicted]
        evicted.update(held[:evict])
        held = held[evict:]
        deliver([s for s in held if rnd.random() < 0.6])  # in order, some lost on the way
    deliver([s for s in range(1, n + 1) if s not in acked and s not in evicted])
    assert stored == sorted(set(stored))
    assert set(stored) == set(range(1, n + 1)) - evicted
    gone = {e for e in evicted if e <= state.last_seq}  # later ones are not known of yet
    assert set(stored) | gone == set(range(1, state.last_seq + 1))
    assert lost == len(gone)


def test_the_decoder_refuses_what_is_not_a_summary():
    for payload in (b"", b"[]", b"{", b"\xff", b'{"seq": 0, "window_start": 0, '
                    b'"window_end": 1, "count": 0, "errors": 0}', b"x" * (4 * 1024 * 1024 + 1)):
        with pytest.raises(MessageError):
            Summary.decode(payload)


def test_devices_over_mqtt_get_exactly_once_in_order_and_a_new_stream_after_reprovisioning(
        controller, mosquitto):
    devices = MqttDevices(mosquitto.url)
    try:
        devices.publish("pi-1", *(summary(i) for i in range(1, 41)))
        devices.publish("pi-1", *(summary(i) for i in range(1, 21)))  # acks "lost": resent
        devices.publish("pi-2", summary(1), summary(3))  # 2 lost on the way
        devices.wait_acked("pi-1", set(range(1, 41)))
        devices.wait_acked("pi-2", {1})
        wait_until(lambda: controller.counters["summaries_duplicate"] >= 20, 10)
        assert 3 not in devices.acked("pi-2")
        devices.publish("pi-2", summary(2), summary(3))  # the agent's resend, oldest first
        devices.wait_acked("pi-2", {2, 3})
        devices.publish("pi-1", summary(1, stream="s2"), summary(2, stream="s2"))  # new buffer
        devices.wait_acked("pi-1", {1, 2})
        wait_until(lambda: len(controller.store.summaries("pi-1")) == 42, 10)
    finally:
        devices.close()
    rows = controller.store.summaries("pi-1")
    assert [(r["stream"], r["seq"]) for r in rows] == [("s1", i) for i in range(1, 41)] + [
        ("s2", 1), ("s2", 2)]
    assert [r["seq"] for r in controller.store.summaries("pi-2")] == [1, 2, 3]
    assert controller.counters["summaries_duplicate"] == 20
    assert devices.ack_messages <= 40 + 20 + 2 + 2 + 2  # never more than one per summary


def test_one_summary_the_store_refuses_does_not_sink_its_batch(world):
    clock, store, ingest, acks = world
    with store.engine.begin() as c:  # a device row that cannot take a last_seen
        c.exec_driver_sql("CREATE TRIGGER refuse BEFORE UPDATE OF last_seen ON devices "
                          "WHEN NEW.id = 'bad' BEGIN SELECT RAISE(ABORT, 'refused'); END")
        c.exec_driver_sql("INSERT INTO devices (id, online, bd_seq, hw, tags) "
                          "VALUES ('bad', 0, 0, '{}', '{}')")
    ingest.start()
    try:
        for device in ("a", "bad", "b"):
            ingest.submit(device, summary(1), clock.time())
        assert ingest.flush(10)
    finally:
        ingest.stop()
    assert sorted(acks) == [("a", [1]), ("b", [1])]
    assert ingest.counters["ingest_failed"] == 1 and _stored(store, "bad") == []


def test_acks_are_encoded_as_the_contract_encodes_them():
    from edgefleet.contract import Ack
    from edgefleet.controller.ingest import encode_ack

    for seqs in ([], [1], [3, 4, 10**12]):
        assert encode_ack(seqs) == Ack(seqs=seqs).encode()


def test_a_gap_the_device_reports_as_evicted_is_counted_lost_at_once(world):
    clock, store, ingest, acks = world
    ingest.process([("a", summary(1), clock.time())])
    evicted = {"bytes": 10, "cap_bytes": 100, "evicted_summaries": 3, "evicted_through_seq": 4}
    ingest.process([("a", summary(5, buffer=evicted), clock.time()),
                    ("a", summary(7, buffer=evicted), clock.time())])  # 6 may still come
    assert _stored(store, "a") == [("s1", 1), ("s1", 5)] and acks[-1] == ("a", [5])
    assert store.telemetry.streams("a")[0]["lost"] == 3  # 2, 3, 4
    ingest.process([("a", summary(6), clock.time()), ("a", summary(7), clock.time())])
    assert _stored(store, "a")[-2:] == [("s1", 6), ("s1", 7)]
    assert ingest.counters["summaries_lost"] == 3


def test_evictions_announced_past_the_gap_move_it_without_storing_more(world):
    clock, store, ingest, _acks = world
    ingest.process([("a", summary(1), clock.time())])
    ingest.process([("a", summary(9, buffer={"evicted_through_seq": 5}), clock.time())])
    (position,) = store.telemetry.streams("a")
    assert (position["last_seq"], position["lost"]) == (5, 4)  # 6..8 may still come
    assert _stored(store, "a") == [("s1", 1)]


def _tampered(payload: bytes) -> list[bytes]:
    """The same summary as received, written in ways a naive parser would misread."""
    text = payload.decode()
    body = text[1:-1]
    return [
        payload,
        ('{"drift": "not this one", ' + body + "}").encode(),  # a repeated key: last wins
        text.replace('"drift"', '"\\u0064rift"').encode(),  # an escaped key
        text.replace('"system": {', '"system": {"nan": NaN, ').encode(),  # NaN elsewhere
        text.replace('"predictions": {', '"predictions": {"drift": 1, ').encode(),
    ]


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["psi_mean", "psi_max", "samples"]),
                       st.floats(0, 5), min_size=1),
       st.dictionaries(st.text(max_size=4), st.integers(0, 9), max_size=3),
       st.booleans())
def test_columns_cut_from_the_message_as_received_equal_the_validated_ones(
        tmp_path_factory, drift, kinds, sketch):
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('raw') / 'ctl.db'}")
    ingest = Ingestor(store.telemetry, lambda d, s: None, clock=ManualClock(), counters={})
    s = summary(1, drift=drift, errors_by_kind=kinds, system={"cpu_percent": 1.0},
                predictions={"7": 3},
                latency_sketch={"a": 0.01, "z": 0, "n": 1, "k": [3], "c": [1]} if sketch
                else {})
    items = []
    for i, raw in enumerate(_tampered(s.encode())):
        try:
            decoded = Summary.decode(raw)
        except MessageError:
            continue
        items += [(f"raw-{i}", raw, 1.0), (f"slow-{i}", decoded, 1.0)]
    ingest.process(items)
    rows = {r["device"]: r for r in store.summaries()}
    columns = ("latency_sketch", "errors_by_kind", "inputs", "drift", "buffer", "payload")
    for device in [d for d in rows if d.startswith("raw-")]:
        slow = rows[device.replace("raw", "slow")]
        assert {c: rows[device][c] for c in columns} == {c: slow[c] for c in columns}
