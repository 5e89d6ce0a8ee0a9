"""Devices' births, deaths and job statuses, stored off paho's thread.

A rollout brings every device's statuses at once (downloading, installing, activated,
healthy), and a fleet that reconnects brings every device's birth: written one
transaction each on paho's thread, they kept that thread from reading the socket (its
keep-alive lapsed with 10,000 devices connecting) and fetch answers waited behind them.
``RecordWriter`` queues what paho decoded, in the order it came; one worker takes what
has queued (waiting ``batch_wait_s`` for more once it has one) and hands it to
``apply``, which stores a run of statuses folded (``fold``) in one transaction and
births and deaths in order between them.

A message is acknowledged to the broker when it is queued, so one queued when the
controller dies is lost, as one lost in flight: a job that has not ended is sent again
by the next leader and the device answers with where it stands; a device's next
reconnect brings its birth again.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from edgefleet.contract import JobState, JobStatus

__all__ = ["RecordWriter", "StatusUpdate", "fold", "status_fields", "step_status_interval"]

log = logging.getLogger(__name__)
# the longest a device waits between step statuses: a step that long is still seen
STEP_INTERVAL_MAX_S = 300.0
Item = tuple[str, JobStatus]
Record = tuple[str, Any]  # (device, a decoded Birth, Death or JobStatus)


def step_status_interval(devices: int, rate: float) -> float:
    """How long each of ``devices`` sent a desired state at once waits between its job's
    step statuses, so that together they send at most ``rate`` a second.

    Below a second (a few devices) it is 0: each device keeps its own pacing.
    """
    wanted = devices / rate
    return 0.0 if wanted < 1.0 else round(min(wanted, STEP_INTERVAL_MAX_S), 3)


@dataclasses.dataclass
class StatusUpdate:
    """What a device's statuses for one job change on its row.

    ``fields`` apply while ``job`` is the row's job and its state has not settled;
    ``failure`` (reason, detail) is kept on the row when the controller has moved on to
    another job (a rollback) before the device's failure arrived.
    """

    deployment: str
    device: str
    job: str
    fields: dict[str, Any]
    settles: bool = False
    failure: tuple[str, str] | None = None
    count: int = 1


def status_fields(status: JobStatus) -> dict[str, Any]:
    """The job row's fields for one device status (the controller's state names: a
    rollback job's ``healthy`` is ``reverted``, and so on)."""
    state = status.state
    if status.job.endswith(".rb"):  # a rollback job: where the device ends up
        state = {"healthy": "reverted", "failed": "revert_failed",
                 "rolled_back": "reverted"}.get(state, "reverting")
    elif status.job.endswith(".s"):
        state = {"healthy": "shadow_stopped"}.get(state, "stopping_shadow")
        if status.state == JobState.FAILED:
            state = "shadow_stop_failed"
    elif status.job.endswith(".a"):
        state = {"healthy": "held", "failed": "hold_failed"}.get(state, "holding")
    fields: dict[str, Any] = {"state": state}
    if not status.job.endswith((".rb", ".a")):  # these keep the reason they were needed
        fields.update(reason=status.reason, detail=status.detail)
    elif status.state == JobState.FAILED:  # ...and say why going back failed
        fields.update(detail=f"{status.reason}: {status.detail}"[:500])
    if status.progress:
        fields["progress"] = status.progress
    return fields


def fold(items: Iterable[Item], settled: frozenset[str]) -> list[StatusUpdate]:
    """One update per (deployment, device, job), equal to applying its statuses in the
    order they came: later fields overwrite earlier ones, and nothing after the first
    status that settles the job counts (a job that ended stays ended)."""
    out: dict[tuple[str, str, str], StatusUpdate] = {}
    for device, status in items:
        key = (status.deployment, device, status.job)
        fields = status_fields(status)
        failure = (status.reason, status.detail) if status.state in (
            JobState.FAILED, JobState.ROLLED_BACK) and status.reason else None
        u = out.get(key)
        if u is None:
            out[key] = StatusUpdate(status.deployment, device, status.job, fields,
                                    settles=fields["state"] in settled, failure=failure)
            continue
        u.count += 1
        if u.failure is None:
            u.failure = failure
        if not u.settles:
            u.fields.update(fields)
            u.settles = fields["state"] in settled
    return list(out.values())


class RecordWriter:
    """A queue of decoded device records and the worker that stores them in batches.

    Args:
        apply: stores one batch, in order.
        counters: the controller's counters (``record_batches``, ``records_queue_full``).
        queue_max: records waiting at most (a full queue drops the record: the job's
            next status or a re-sent desired state brings where it stands, the device's
            next connection its birth).
        batch_max: records per batch at most.
        batch_wait_s: how long a batch waits to fill once it has a record.
    """

    def __init__(self, apply: Callable[[list[Record]], None], *, counters: dict[str, int],
                 queue_max: int = 100_000, batch_max: int = 2000,
                 batch_wait_s: float = 0.02) -> None:
        self._apply = apply
        self.counters = counters
        for name in ("record_batches", "records_queue_full"):
            counters.setdefault(name, 0)
        self.batch_max, self.batch_wait_s = batch_max, batch_wait_s
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=queue_max)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, device: str, record: Any) -> None:
        """Queue one record (paho's thread); applied at once when no worker runs."""
        if self._thread is None:
            self._apply([(device, record)])
            return
        try:
            self._queue.put_nowait((device, record))
        except queue.Full:
            self.counters["records_queue_full"] += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="device-records", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store what is queued, then end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued record is stored (False on timeout)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline or self._thread is None \
                    or not self._thread.is_alive():
                return False
            time.sleep(0.005)
        return True

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            # let the batch fill without being woken for every record (each wake-up is a
            # context switch for paho's thread as well), then take what came
            if self.batch_wait_s > 0 and self._queue.qsize() < self.batch_max:
                self._stop.wait(self.batch_wait_s)
            while len(batch) < self.batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._apply(batch)
                self.counters["record_batches"] += 1
            except Exception:  # the database is down: the next records bring it back
                log.exception("storing %d device records failed", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()
