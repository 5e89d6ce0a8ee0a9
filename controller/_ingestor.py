"""The telemetry ingest worker: a bounded queue, batched inserts, batched acks.

paho's thread only queues a summary's payload (``submit``), never waiting on the
database or even on JSON: one worker thread takes up to ``batch_max`` queued summaries
at a time, decodes them (``Summary.decode``: a malformed one is counted in
``malformed``, logged and dropped), judges each with ``ingest.admit`` against its
stream's position, writes the stored ones, the positions and the devices'
``last_seen`` in one transaction, and only then publishes one ``Ack`` per device with
the seqs it stored or already had. So an acked summary is always committed (the agent
may delete it), and a summary lost before the commit (full queue, crash, database
error) is simply resent by the agent. (Decoding here rather than on paho's thread
leaves that thread free to read the socket: ~15% more throughput, the two share the
GIL.)

Drop policy: when the queue is full a summary is not queued and not acked (counted
``summaries_queue_full``); the device keeps it and resends it.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from edgefleet.contract import Clock, MessageError, Summary

from ._telemetry_store import StreamKey, TelemetryStore, summary_row
from .aggregate import sketch_shape_ok
from .ingest import StreamState, admit, initial_state

__all__ = ["Ingestor"]

log = logging.getLogger(__name__)
# (device, the payload as received — or a decoded summary —, received_at)
Item = tuple[str, bytes | Summary, float]
AckFn = Callable[[str, list[int]], None]
COUNTERS = ("summaries_stored", "summaries_duplicate", "summaries_held_back", "summaries_lost",
            "summaries_queue_full", "sketch_invalid", "ingest_batches", "ingest_failed",
            "malformed")


@dataclasses.dataclass
class _Judged:
    """One batch, judged: rows to insert, stream positions, acks, counts."""

    work: dict[StreamKey, StreamState] = dataclasses.field(default_factory=dict)
    positions: dict[StreamKey, dict[str, Any]] = dataclasses.field(default_factory=dict)
    new_streams: set[StreamKey] = dataclasses.field(default_factory=set)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    acks: dict[str, list[int]] = dataclasses.field(
        default_factory=lambda: defaultdict(list))
    seen: dict[str, float] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(
        ("stored", "duplicate", "held_back", "lost", "invalid"), 0))


class Ingestor:
    """Stores summaries exactly once and in order per stream, in batches.

    Args:
        store: the telemetry tables.
        ack: publishes one device's ``Ack`` (``None`` link: nothing to publish).
        clock: for gap timeouts.
        counters: the controller's counters (``COUNTERS`` are added).
        queue_max: summaries waiting at most.
        batch_max: summaries per transaction at most.
        batch_wait_s: how long a batch waits to fill once it has a summary (bigger
            batches under load, at most this much added ack latency).
        gap_timeout_s: how long a gap in a stream may hold summaries back.
        shared: controller replicas share the telemetry (MQTT 5 shared subscriptions):
            stream positions are read, locked and written in each batch's transaction
            instead of kept in memory, so a device's summaries may reach any replica.
    """

    def __init__(self, store: TelemetryStore, ack: AckFn, *, clock: Clock,
                 counters: dict[str, int], queue_max: int = 100_000, batch_max: int = 2000,
                 batch_wait_s: float = 0.05, gap_timeout_s: float = 30.0,
                 shared: bool = False) -> None:
        self.store = store
        self.shared = shared
        self._ack = ack
        self.clock = clock
        self.counters = counters
        for name in COUNTERS:
            counters.setdefault(name, 0)
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.gap_timeout_s = gap_timeout_s
        self._queue: queue.Queue[Item] = queue.Queue(maxsize=queue_max)
        self._states: dict[StreamKey, StreamState] = {}
        self._loaded: set[str] = set()  # devices whose streams are in _states
        self._known: set[str] = set()  # devices that have a row
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- producer side (paho's thread) --------------------------------------------------
    def submit(self, device: str, summary: bytes | Summary, received_at: float) -> bool:
        """Queue one summary (its payload as received, or decoded); False (not acked,
        counted) when the queue is full or the worker stopped."""
        if self._stop.is_set():
            return False
        try:
            self._queue.put_nowait((device, summary, received_at))
            return True
        except queue.Full:
            self.counters["summaries_queue_full"] += 1
            return False

    # -- worker -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking summaries; store and ack what is queued, then end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        else:
            self._drain_now()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued summary is handled (False on timeout)."""
        if self._thread is None or not self._thread.is_alive():
            self._drain_now()
            return True
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _drain_now(self) -> None:
        while True:
            batch = self._take(block=False)
            if not batch:
                return
            self._handle(batch)

    def _take(self, *, block: bool) -> list[Item]:
        try:
            batch = [self._queue.get(timeout=0.2) if block else self._queue.get_nowait()]
        except queue.Empty:
            return []
        deadline = time.monotonic() + (self.batch_wait_s if block else 0.0)
        while len(batch) < self.batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=remaining))
                except queue.Empty:
                    break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take(block=True)
            if not batch:
                if self._stop.is_set():
                    return
                continue
            self._handle(batch)

    def _handle(self, batch: list[Item]) -> None:
        try:
            self.process(batch)
        except Exception:
            log.exception("storing %d summaries failed; trying them one by one", len(batch))
            failed = len(batch) if len(batch) == 1 else 0
            for item in batch if len(batch) > 1 else ():  # one bad summary must not
                try:  # keep failing every batch it lands in
                    self.process([item])
                except Exception as exc:
                    failed += 1
                    log.debug("a summary of %s not stored: %s", item[0], exc)
            if failed:
                self.counters["ingest_failed"] += failed
                log.warning("%d of %d summaries not stored (not acked: devices resend them)",
                            failed, len(batch))
        finally:
            for _ in batch:
                self._queue.task_done()

    def _decoded(self, items: list[Item]) -> list[tuple[str, Summary, float, bytes | None]]:
        out: list[tuple[str, Summary, float, bytes | None]] = []
        for device, payload, received in items:
            if isinstance(payload, Summary):
                out.append((device, payload, received, None))
                continue
            try:
                out.append((device, Summary.decode(payload), received, payload))
            except MessageError as exc:
                self.counters["malformed"] += 1
                log.warning("dropped telemetry from %s: %s (%s)", device, exc, exc.reason)
        return out

    def process(self, batch: list[Item]) -> None:
        """Decode, judge, store and ack one batch (the worker's step; callable directly).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the batch was not stored (nothing acked).
        """
        items = self._decoded(batch)
        devices = {item[0] for item in items}
        if self.shared:  # replicas: positions read (and locked) in the writing transaction
            with self.store.transaction() as conn:
                states = self.store.load_streams(devices, conn=conn, lock=True)
                judged = self._judge(items, states)
                self.store.write_batch(judged.rows, judged.positions, judged.new_streams,
                                       judged.seen, maybe_new_devices=devices - self._known,
                                       conn=conn)
            self._known |= devices  # a device's row, once there, stays
        else:
            unknown = devices - self._loaded
            if unknown:
                self._states.update(self.store.load_streams(unknown))
                self._loaded |= unknown
            judged = self._judge(items, self._states)
            try:
                self.store.write_batch(judged.rows, judged.positions, judged.new_streams,
                                       judged.seen, maybe_new_devices=devices - self._known)
            except Exception:
                self._forget(devices)  # reload positions from the database next time
                raise
            self._states.update(judged.work)
            self._known |= devices
        c, counts = self.counters, judged.counts
        c["summaries_stored"] += counts["stored"]
        c["summaries_duplicate"] += counts["duplicate"]
        c["summaries_held_back"] += counts["held_back"]
        c["summaries_lost"] += counts["lost"]
        c["sketch_invalid"] += counts["invalid"]
        c["ingest_batches"] += 1
        for device, seqs in judged.acks.items():
            try:
                self._ack(device, sorted(set(seqs)))
            except Exception:  # stored: the device resends and gets a duplicate's ack
                log.exception("acking summaries of %s failed", device)

    def _judge(self, items: list[tuple[str, Summary, float, bytes | None]],
               states: dict[StreamKey, StreamState]) -> _Judged:
        """Which summaries to store, hold back or ack as repeats, given stream positions."""
        now = self.clock.time()
        out = _Judged()
        work = out.work
        # a stream's summaries that arrived in the same batch are taken in seq order
        for device, s, received, raw in sorted(items, key=lambda it: (it[0], it[1].stream,
                                                                      it[1].seq)):
            key = (device, s.stream)
            state = work.get(key) or states.get(key)
            if state is None:
                legacy = work.get((device, "")) or states.get((device, ""))
                state = initial_state(s.seq, stream=s.stream,
                                      legacy_last=legacy.last_seq if legacy else None)
                out.new_streams.add(key)
            evicted = s.buffer.get("evicted_through_seq") if s.buffer else None
            verdict = admit(state, s.seq, now=now, gap_timeout_s=self.gap_timeout_s,
                            evicted_through=evicted if type(evicted) is int else None)
            work[key] = verdict.state
            pos = out.positions.setdefault(key, {"stored": 0, "lost": 0, "buffer": None})
            pos["received"] = received
            pos["lost"] += verdict.lost
            out.counts["lost"] += verdict.lost
            out.seen[device] = max(out.seen.get(device, received), received)
            if verdict.action == "hold":
                out.counts["held_back"] += 1
                continue
            out.acks[device].append(s.seq)
            if verdict.action == "duplicate":
                out.counts["duplicate"] += 1
                continue
            sketch_ok = not s.latency_sketch or sketch_shape_ok(s.latency_sketch)
            out.counts["invalid"] += not sketch_ok
            out.rows.append(summary_row(device, s, received, sketch_ok=sketch_ok, raw=raw))
            pos["stored"] += 1
            out.counts["stored"] += 1
            if s.buffer:
                pos["buffer"] = dict(s.buffer)
        for key, pos in out.positions.items():
            pos.update(last_seq=work[key].last_seq, gap_since=work[key].gap_since)
        return out

    def _forget(self, devices: set[str]) -> None:
        self._loaded -= devices
        for key in [k for k in self._states if k[0] in devices]:
            del self._states[key]
