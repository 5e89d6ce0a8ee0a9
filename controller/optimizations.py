"""Optimization jobs: ``Registry.optimize`` on a few worker threads, not inside a request.

``POST /v1/models/{name}/{version}/optimize`` checks what is cheap to check (the version
exists, is an ONNX model, has an eval set), queues a job and answers ``202``
at once; ``GET /v1/optimizations/{id}`` says where the job stands::

    queued ──▶ running ──▶ succeeded   result: the child version
                      └──▶ failed      error: stage, type, message, reason

Bounds, each stated and counted in the controller's ``counters`` (``GET /v1/stats``):

* at most ``queue_max`` jobs wait (``Settings.optimize_queue_max``, default 16); one more
  is refused with ``RegistryError(reason=QUEUE_FULL)`` (HTTP 429) and counted in
  ``optimizations_refused``;
* ``workers`` threads run jobs (``Settings.optimize_workers``, default 1); two jobs on
  the same model never run at once, since the registry numbers a model's child versions
  one at a time;
* a job keeps its last ``PROGRESS_MAX`` progress messages; older ones are counted in its
  ``progress_dropped``;
* the last ``history_max`` finished jobs are kept (``Settings.optimize_history_max``,
  default 100); older ones are forgotten and counted in ``optimizations_forgotten``.

Jobs live in this process's memory. A controller that restarts forgets its queued and
running jobs: a child version exists only if its job finished. ``stop`` fails the jobs
still waiting (reason ``controller_stopped``); a running one cannot be interrupted and
finishes only if the process lives on. With replicas, a job is known only to the
replica that accepted it.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Literal

import onnx

from edgefleet.contract import EdgefleetError, NotFoundError, OptimizationError, RegistryError
from edgefleet.optimizer import OptimizeTarget, refuse_quantized

if TYPE_CHECKING:
    from .registry import Registry

__all__ = [
    "FINISHED",
    "PROGRESS_MAX",
    "QUEUE_FULL",
    "STOPPED",
    "OptimizationJob",
    "OptimizationJobs",
    "failure",
    "next_runnable",
]

log = logging.getLogger(__name__)

State = Literal["queued", "running", "succeeded", "failed"]
FINISHED: Final = frozenset({"succeeded", "failed"})
PROGRESS_MAX: Final = 200  # progress messages a job keeps (the newest)
MESSAGE_MAX_CHARS: Final = 500  # one progress or error message, cut beyond this
QUEUE_FULL: Final = "optimize_queue_full"  # the reason a refused submit carries
STOPPED: Final = "controller_stopped"  # the reason a job still waiting at stop fails with


@dataclasses.dataclass
class OptimizationJob:
    """One optimization, from queued to finished (mutated under ``OptimizationJobs``' lock)."""

    id: str
    model: str
    version: int
    target: OptimizeTarget
    hardware_classes: list[str]
    created_by: str
    created_at: float
    state: State = "queued"
    started_at: float | None = None
    finished_at: float | None = None
    progress: deque[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: deque(maxlen=PROGRESS_MAX))
    progress_dropped: int = 0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        """The job as the API shows it (``result`` is the registry's row of the child)."""
        t = self.target
        return {"id": self.id, "model": self.model, "version": self.version,
                "state": self.state, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "created_by": self.created_by,
                "request": {"method": t.method, "sparsity": t.sparsity,
                            "accuracy_budget_pt": t.accuracy_budget_pt,
                            "latency_runs": t.latency_runs,
                            "hardware_classes": list(self.hardware_classes)},
                "progress": [dict(p) for p in self.progress],
                "progress_dropped": self.progress_dropped,
                "result": dict(self.result) if self.result is not None else None,
                "error": dict(self.error) if self.error is not None else None}


def failure(exc: BaseException, stage: str | None) -> dict[str, Any]:
    """What a failed job reports: the step it was at, what was raised and why.

    ``stage`` is the job's last progress message (None: it said nothing yet, "optimize");
    the message falls back to the exception's type name, never empty; ``reason`` is the
    edgefleet error's reason code (None for any other exception).
    """
    name = type(exc).__name__
    return {"stage": stage or "optimize", "type": name,
            "message": (str(exc) or name)[:MESSAGE_MAX_CHARS],
            "reason": exc.reason if isinstance(exc, EdgefleetError) else None}


def next_runnable(queued: Iterable[OptimizationJob],
                  busy_models: set[str]) -> OptimizationJob | None:
    """The oldest queued job whose model no job is optimizing now (None: none may start)."""
    return next((job for job in queued if job.model not in busy_models), None)


class OptimizationJobs:
    """A bounded queue of optimizations and the worker threads that run them.

    Args:
        registry: runs each job (``Registry.optimize``) and answers the checks at submit.
        clock: wall-clock seconds, for every timestamp a job carries.
        workers: worker threads (``start`` starts them).
        queue_max: jobs that may wait; a submit beyond is refused.
        history_max: finished jobs kept; the oldest beyond are forgotten.
        counters: where ``optimizations_refused`` and ``optimizations_forgotten`` are
            counted (the controller's ``counters``).

    Raises:
        ValueError: a bound below one.
    """

    def __init__(self, registry: Registry, *, clock: Callable[[], float], workers: int = 1,
                 queue_max: int = 16, history_max: int = 100,
                 counters: dict[str, int] | None = None) -> None:
        if min(workers, queue_max, history_max) < 1:
            raise ValueError("workers, queue_max and history_max must each be at least 1")
        self._registry = registry
        self._clock = clock
        self._workers = workers
        self.queue_max = queue_max
        self.history_max = history_max
        self.counters = counters if counters is not None else {}
        for key in ("optimizations_refused", "optimizations_forgotten"):
            self.counters.setdefault(key, 0)
        self._cond = threading.Condition()
        self._jobs: dict[str, OptimizationJob] = {}  # every known job, oldest first
        self._queued: deque[OptimizationJob] = deque()
        self._finished: deque[str] = deque()  # ids, oldest first
        self._busy: set[str] = set()  # models a worker is optimizing now
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the worker threads."""
        with self._cond:
            self._stopping = False
        for i in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"optimize-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Fail the jobs still waiting, then wait up to ``timeout_s`` per worker.

        A running optimization cannot be interrupted: its thread (a daemon) finishes it
        only if the process lives on.
        """
        with self._cond:
            self._stopping = True
            now = self._clock()
            while self._queued:
                job = self._queued.popleft()
                self._finish_locked(job, now, error={
                    "stage": "queued", "type": "ControllerStopped",
                    "message": "the controller stopped before this job started; submit it "
                               "again", "reason": STOPPED})
            running = [j.id for j in self._jobs.values() if j.state == "running"]
            self._cond.notify_all()
        if running:
            log.warning("stopping with optimization job(s) %s still running: they finish "
                        "only if this process lives on", ", ".join(running))
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = [t for t in self._threads if t.is_alive()]

    # -- the API's side ------------------------------------------------------------------
    def check(self, name: str, version: int) -> None:
        """What can be refused before queuing, cheaply (the registry checks it all again).

        Raises:
            NotFoundError: unknown version.
            OptimizationError: neither an ONNX nor a ``.tflite`` model (``unsupported``).
            RegistryError: an ONNX model quantized already (``already_quantized``).
            RegistryError: no eval set on the version or an ancestor.
            InvalidRequest: its eval set does not fit the model.
        """
        row = self._registry.get(name, version)
        if row["runtime"] not in ("onnxruntime", "litert"):
            raise OptimizationError(f"{name}:{version} is a {row['runtime']} model; the "
                                    "optimizer takes ONNX and .tflite models",
                                    reason="unsupported")
        if row["runtime"] == "onnxruntime":  # the graph only, not its weights
            try:
                refuse_quantized(onnx.load(self._registry.local_file(row["file"]),
                                           load_external_data=False),
                                 f"{name}:{version}")
            except OptimizationError as exc:  # what the version is, not the request: 409
                raise RegistryError(str(exc), reason=exc.reason) from exc
        evalset = self._registry.dataset(name, version, "eval")
        if evalset is None:
            raise RegistryError(f"{name}:{version} has no eval set; register it with one",
                                reason="missing_eval_set")

    def submit(self, name: str, version: int, target: OptimizeTarget, *,
               hardware_classes: list[str] | None = None,
               created_by: str = "admin") -> dict[str, Any]:
        """Check, then queue an optimization; returns the job's view (state ``queued``).

        Raises:
            NotFoundError, OptimizationError, RegistryError, InvalidRequest: see ``check``.
            RegistryError: ``queue_max`` jobs are already waiting (reason ``QUEUE_FULL``),
                or the controller is stopping (reason ``STOPPED``).
        """
        self.check(name, version)
        with self._cond:
            if self._stopping:
                raise RegistryError("the controller is stopping and takes no optimization "
                                    "job now; submit it again once it runs", reason=STOPPED)
            if len(self._queued) >= self.queue_max:
                self.counters["optimizations_refused"] += 1
                raise RegistryError(
                    f"{len(self._queued)} optimization jobs are already waiting (the most "
                    f"this controller queues: optimize_queue_max={self.queue_max}); try "
                    "again when one has finished", reason=QUEUE_FULL)
            now = self._clock()
            job = OptimizationJob(id=f"opt-{int(now)}-{secrets.token_hex(3)}", model=name,
                                  version=version, target=target,
                                  hardware_classes=list(hardware_classes or []),
                                  created_by=created_by, created_at=now)
            self._jobs[job.id] = job
            self._queued.append(job)
            self._cond.notify_all()
            view = job.view()
        log.info("optimization %s of %s:%d queued by %s", job.id, name, version, created_by)
        return view

    def get(self, job_id: str) -> dict[str, Any]:
        """One job's view.

        Raises:
            NotFoundError: no such job here (never made, forgotten from the history, or
                made before this controller restarted).
        """
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFoundError(
                    f"no optimization job {job_id!r} (jobs live in the controller's memory: "
                    f"it keeps the last {self.history_max} finished ones and forgets all "
                    "when it restarts)")
            return job.view()

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs, newest first."""
        with self._cond:
            newest = list(self._jobs.values())[::-1][:max(0, limit)]
            return [job.view() for job in newest]

    # -- the workers' side ---------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                job = next_runnable(self._queued, self._busy)
                while job is None and not self._stopping:
                    self._cond.wait()  # woken by submit, a job finishing, or stop
                    job = next_runnable(self._queued, self._busy)
                if self._stopping or job is None:
                    return
                self._queued.remove(job)
                self._busy.add(job.model)
                job.state, job.started_at = "running", self._clock()
            self._run(job)

    def _run(self, job: OptimizationJob) -> None:
        log.info("optimization %s of %s:%d started", job.id, job.model, job.version)
        try:
            row = self._registry.optimize(job.model, job.version, job.target,
                                          progress=lambda message: self._progress(job, message),
                                          hardware_classes=job.hardware_classes or None)
        except Exception as exc:
            with self._cond:
                stage = job.progress[-1]["message"] if job.progress else None
                error = failure(exc, stage)
                self._finish_locked(job, self._clock(), error=error)
            if isinstance(exc, EdgefleetError):  # said why: the optimizer's or data's fault
                log.warning("optimization %s of %s:%d failed at %s: %s: %s (%s)", job.id,
                            job.model, job.version, error["stage"], error["type"],
                            error["message"], error["reason"])
            else:
                log.exception("optimization %s of %s:%d failed at %s", job.id, job.model,
                              job.version, error["stage"])
            return
        with self._cond:
            self._finish_locked(job, self._clock(), result=row)
        log.info("optimization %s of %s:%d made %s:%s", job.id, job.model, job.version,
                 row.get("name"), row.get("version"))

    def _progress(self, job: OptimizationJob, message: str) -> None:
        with self._cond:
            if len(job.progress) == PROGRESS_MAX:
                job.progress_dropped += 1
            job.progress.append({"ts": self._clock(),
                                 "message": str(message)[:MESSAGE_MAX_CHARS]})

    def _finish_locked(self, job: OptimizationJob, now: float, *,
                       result: dict[str, Any] | None = None,
                       error: dict[str, Any] | None = None) -> None:
        if job.state == "running":
            self._busy.discard(job.model)
        job.state = "failed" if error is not None else "succeeded"
        job.finished_at, job.result, job.error = now, result, error
        self._finished.append(job.id)
        while len(self._finished) > self.history_max:
            del self._jobs[self._finished.popleft()]
            self.counters["optimizations_forgotten"] += 1
        self._cond.notify_all()  # a job of this model may start now
