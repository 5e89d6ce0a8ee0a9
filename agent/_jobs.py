"""Applying desired state: download → verify → install → smoke test → switch or shadow.

One worker thread takes the newest desired state and applies it; every step is
reported as a job status. A job whose status could not be published (offline) is
published again on the next connect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import edgefleet
from edgefleet.contract import (
    Birth,
    Clock,
    CompatibilityError,
    DesiredState,
    DeviceTopic,
    EdgefleetError,
    ExpiredError,
    FetchError,
    JobState,
    JobStatus,
    ModelRef,
    RollbackError,
    TargetTrust,
    TrustError,
)

from ._blobs import BlobCache
from ._job_choices import Choice, Holdings, blobs_to_take, choose
from ._mqtt import AgentLink
from ._pacing import Lazy, StatusPacer
from ._smoke import smoke_test
from .config import AgentConfig
from .models import InstalledModel, ModelStore
from .runtime import Runtime, available_runtimes
from .updater import BundleUpdater

__all__ = ["JobHost", "JobRunner", "JobSlots", "smoke_test"]

log = logging.getLogger(__name__)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".") if p.isdigit())


class JobSlots:
    """Turns for the job workers of many agents in one host (a simulated fleet's shard).

    At most ``n`` workers hold a slot at once, so a thousand jobs started together queue
    for a few cores instead of all contending for them; a worker waiting on its link
    (``released``) gives its slot to another meanwhile.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"job slots must be at least 1, got {n}")
        self._slots = threading.BoundedSemaphore(n)
        self._held = threading.local()

    def __enter__(self) -> JobSlots:
        self._slots.acquire()
        self._held.on = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._held.on = False
        self._slots.release()

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """Give the slot up while waiting (a no-op on a thread that holds none)."""
        if not getattr(self._held, "on", False):
            yield
            return
        self.__exit__()
        try:
            yield
        finally:
            self.__enter__()


class JobHost(Protocol):
    """What the job worker needs of the agent it works for (``Agent`` is one).

    Read when needed, not kept: a host may replace its store after construction (a
    simulated device's store that runs out of disk).
    """

    # its parts
    @property
    def config(self) -> AgentConfig: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def store(self) -> ModelStore: ...
    @property
    def link(self) -> AgentLink: ...
    @property
    def updater(self) -> BundleUpdater: ...
    @property
    def blobs(self) -> BlobCache: ...
    @property
    def hardware_class(self) -> str: ...

    # what it serves and shadows, and the switches between them
    @property
    def active(self) -> ModelRef | None: ...
    @property
    def shadow_ref(self) -> ModelRef | None: ...
    def on_trial(self, job: str) -> bool: ...
    def shadowed(self, name: str, version: int) -> tuple[InstalledModel, Runtime] | None: ...
    def load_runtime(self, installed: InstalledModel) -> Runtime: ...
    def activate(self, installed: InstalledModel, runtime: Runtime,
                 desired: DesiredState) -> None: ...
    def switch_to(self, installed: InstalledModel, desired: DesiredState, *,
                  reason: str) -> None: ...
    def start_shadow(self, installed: InstalledModel, runtime: Runtime,
                     sample: float) -> None: ...
    def stop_shadow(self) -> None: ...
    def announce(self) -> None: ...
    def birth(self) -> Birth: ...


class JobRunner:
    """Applies desired states for one agent, one at a time."""

    def __init__(self, host: JobHost) -> None:
        self.host = host
        # held while the worker refreshes trust or applies a job; a host running many
        # agents on a few cores bounds how many do so at once (see ``Agent.start``)
        self.slots: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._wanted: DesiredState | None = None
        self.current: DesiredState | None = None
        finished = host.store.finished_jobs()  # survives restarts
        self.done: dict[str, str] = {job: v["state"] for job, v in finished.items()}
        self._newest = max((float(v.get("issued_at", 0)) for v in finished.values()),
                           default=0.0)
        self._last_status: dict[str, Lazy] = {}
        self.announce_due = False  # a change (trust) to say in a birth when the job ends
        self.pacer = StatusPacer(self._publish_status, host.config.status_interval_s)
        # whether trust metadata could last be refreshed; "expired" means the device keeps
        # serving what it has but installs nothing new until fresh metadata arrives
        self.trust: dict[str, Any] = {"state": "unknown", "reason": "", "checked_at": 0.0}
        self._after_refresh: list[Callable[[], None]] = []
        self._last_refresh = -1e9
        self._last_on_demand = -1e9

    # -- intake -------------------------------------------------------------------------
    def want(self, desired: DesiredState) -> None:
        with self._lock:
            current = self.current
            if current is not None and current.job == desired.job:
                return  # the command and the retained desired state both carry each job
            if self.done.get(desired.job) in JobState.TERMINAL:
                # asked again (e.g. by a restarted controller): say again how it ended
                payload = self.last_status(desired.job)
                if payload is not None:
                    self.host.link.publish(DeviceTopic.JOB_STATUS, payload, job=desired.job)
                return
            if desired.issued_at < self._newest:
                log.info("ignored desired state %s: older than one already applied",
                         desired.job)
                return
            self._wanted = desired
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def after_trust_refresh(self, then: Callable[[], None]) -> None:
        """Refresh trust metadata on the worker (not paho's thread), then call ``then``.

        At most four callbacks wait, and on-demand refreshes are at least 5 s apart, so
        messages signed by unknown keys cannot make the device fetch metadata in a loop.
        """
        with self._lock:
            if len(self._after_refresh) < 4:
                self._after_refresh.append(then)
        self._wake.set()

    def _refresh_trust(self) -> None:
        if time.monotonic() - self._last_on_demand < 5.0:
            return  # the callbacks wait for the next turn of the loop
        with self._lock:
            pending, self._after_refresh = self._after_refresh, []
        self._last_on_demand = time.monotonic()
        try:
            self.host.updater.refresh()
            self._on_refreshed(None)
        except TrustError as exc:
            self._on_refreshed(exc)
            return
        except EdgefleetError as exc:  # unreachable is not untrusted
            log.info("trust metadata refresh failed: %s", exc)
            return
        for then in pending:
            then()

    def _on_refreshed(self, exc: TrustError | None) -> None:
        """Record whether trust metadata is fresh; say so in a new birth when it changes."""
        self._last_refresh = time.monotonic()
        state = "ok" if exc is None else "expired" if isinstance(exc, ExpiredError) \
            else "untrusted"
        changed = self.trust["state"] != state
        self.trust = {"state": state, "reason": exc.reason if exc else "",
                      "checked_at": self.host.clock.time()}
        if changed and exc is not None:
            log.warning("trust metadata %s (%s): serving the installed model, installing "
                        "nothing new", state, exc.reason)
        if changed and self.current is not None:
            self.announce_due = True  # said once, with the job's outcome, when it ends
        elif changed:
            self.host.announce()

    # -- reporting ----------------------------------------------------------------------
    def report(self, desired: DesiredState, state: str, *, reason: str = "", detail: str = "",
               progress: dict[str, Any] | None = None) -> None:
        # from the switch on, and at the end, the status says what the device now runs
        # and trusts, when the controller reads that there (one message, not two)
        carry = desired.births_in_status and (state == JobState.ACTIVATED
                                              or state in JobState.TERMINAL)
        ts = self.host.clock.time()

        def make() -> bytes:  # when it is sent: a step the next one replaces never is
            return JobStatus(job=desired.job, deployment=desired.deployment, state=state,
                             ts=ts, model=desired.model, version=desired.version,
                             reason=reason, detail=detail[:500], progress=progress or {},
                             birth=self.host.birth() if carry else None).encode()

        payload = Lazy(make)
        if carry:
            self.announce_due = False
        self._last_status[desired.job] = payload
        while len(self._last_status) > 20:
            self._last_status.pop(next(iter(self._last_status)))
        if state in JobState.TERMINAL:
            self.done[desired.job] = state
            self._newest = max(self._newest, desired.issued_at)
            self.host.store.record_job(desired.job, state, desired.issued_at)
        self.pacer.send(desired.job, payload, final=state in JobState.TERMINAL,
                        at_least_s=desired.status_interval_s)

    def _publish_status(self, job: str, payload: Lazy) -> None:
        self.host.link.publish(DeviceTopic.JOB_STATUS, payload(), job=job)

    def last_status(self, job: str) -> bytes | None:
        """The latest status of a recent job, as sent (or as it would be)."""
        payload = self._last_status.get(job)
        return payload() if payload is not None else None

    def republish(self) -> None:
        """After a reconnect: the latest status of recent jobs, in case they were lost."""
        for job, payload in list(self._last_status.items())[-5:]:
            self.host.link.publish(DeviceTopic.JOB_STATUS, payload(), job=job)

    def on_progress(self, file: str, done: int, total: int) -> None:
        job = self.current
        cfg = self.host.config
        is_model = file.startswith("targets/") and not file.endswith("manifest.json")
        due = done == total or done % (cfg.chunk_bytes * 8) < cfg.chunk_bytes
        if job is not None and is_model and due:
            self.report(job, JobState.DOWNLOADING, progress={"bytes": done, "total": total})

    # -- worker -------------------------------------------------------------------------
    def run(self, stop: threading.Event, idle_s: float = 1.0) -> None:
        """Apply desired states until ``stop``.

        Args:
            idle_s: how long the worker sleeps when nothing wakes it (a retry due sooner
                wakes it sooner); a host running thousands of agents passes a long one.
        """
        retry_at = 0.0
        while not stop.is_set():
            due_in = retry_at - time.monotonic()  # a retry still to come wakes it then
            self._wake.wait(min(idle_s, due_in) if due_in > 0 else idle_s)
            self._wake.clear()
            with self.slots:
                retry_at = self._turn(stop, retry_at)

    def _turn(self, stop: threading.Event, retry_at: float) -> float:
        """One turn of the worker: a trust check when due, then the wanted job, if any.

        Returns when the next retry is due (0: none).
        """
        if stop.is_set():
            return retry_at
        interval = self.host.config.trust_check_interval_s
        # idle only: a job waiting to run refreshes the metadata itself
        if (interval > 0 and time.monotonic() - self._last_refresh > interval
                and self.current is None and self._wanted is None
                and self.host.link.connected.is_set()):
            self.after_trust_refresh(lambda: None)
        if self._after_refresh:
            self._refresh_trust()
        with self._lock:
            desired = self._wanted
            if desired is None or time.monotonic() < retry_at:
                return retry_at
            self.current = desired
        try:
            self._apply(desired)
            retry_at = 0.0
        except FetchError as exc:
            log.warning("job %s: %s; will retry", desired.job, exc)
            self.report(desired, JobState.DOWNLOADING, reason=exc.reason, detail=str(exc))
            return time.monotonic() + 5.0  # the job stays wanted
        except EdgefleetError as exc:
            log.warning("job %s failed: %s (%s)", desired.job, exc, exc.reason)
            self.report(desired, JobState.FAILED, reason=exc.reason, detail=str(exc))
            self.host.updater.clear()  # a failed job's download is of no further use
        except Exception as exc:  # never let a bad bundle kill the worker
            self.host.updater.clear()  # on a full disk, the partial download first
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # the device's fault, not the bundle's: say so; the old model stays
                log.error("job %s: out of disk space: %s", desired.job, exc)
                self.report(desired, JobState.FAILED, reason="disk_full",
                            detail=f"no space left to install the model: {exc}")
            else:
                log.exception("job %s crashed", desired.job)
                self.report(desired, JobState.FAILED, reason="agent_error",
                            detail=repr(exc))
        finally:
            with self._lock:
                self.current = None
            if self.announce_due:  # nothing the job did announced it
                self.host.announce()
        with self._lock:
            if self._wanted is not None and self._wanted.job == desired.job:
                self._wanted = None
        return retry_at

    def _apply(self, desired: DesiredState) -> None:
        """Carry out what ``choose`` makes of ``desired`` and what this device holds."""
        host = self.host
        local = (host.store.find(desired.model, desired.version)
                 if desired.allow_downgrade else None)
        held = Holdings(active=host.active, shadow=host.shadow_ref,
                        on_trial=host.on_trial(desired.job),
                        installed=local is not None)
        choice = choose(desired, held)
        if choice is Choice.PROMOTE_SHADOW:
            promoted = host.shadowed(desired.model, desired.version)
            if promoted is not None:  # already loaded: the switch is instant
                host.activate(*promoted, desired)
                return
            choice = choose(desired, dataclasses.replace(held, shadow=None))  # stopped meanwhile
        if choice is Choice.ALREADY_ACTIVE or choice is Choice.HEALTH_WINDOW_RUNNING:
            host.stop_shadow()
            if choice is Choice.HEALTH_WINDOW_RUNNING:
                self.report(desired, JobState.ACTIVATED, detail="health window running")
            else:
                self.report(desired, JobState.HEALTHY, detail="already active")
        elif choice is Choice.ALREADY_SHADOWING:
            self.report(desired, JobState.SHADOWING, detail="already shadowing")
        elif choice is Choice.SWITCH_TO_LOCAL and local is not None:
            trust = host.store.trust_of(local)
            self.check_counter(desired.model, trust.release_counter if trust else 0)
            host.switch_to(local, desired, reason="rollback")
        else:
            self._install(desired, held.active)

    def _install(self, desired: DesiredState, active: ModelRef | None) -> None:
        """Download, verify, install and smoke test ``desired``'s bundle, then activate or
        shadow it."""
        host = self.host
        self.report(desired, JobState.DOWNLOADING)
        # a device capped for a metered link pulls at its own pace instead of taking
        # broadcast blocks at the broker's; one fetching over HTTP(S) takes none either
        # (and files it holds already are copied, not taken from anywhere)
        cfg = host.config
        pulls_only = bool(cfg.max_download_bytes_per_s or cfg.repository_url)
        held = [sha for sha in desired.broadcast if host.store.file_with(sha) is not None] \
            if cfg.reuse_local_files and not pulls_only else []
        plan = blobs_to_take(desired, pulls_only=pulls_only, held=held)
        fetcher = host.updater.fetcher
        host.link.subscribe_blobs(host.blobs.expect(plan.take))
        fetcher.named = plan.named
        fetcher.roots_upto = desired.root_version if plan.named else 0
        try:
            bundle = host.updater.fetch(desired.model, desired.version,
                                        manifest_path=desired.manifest,
                                        check=self.check_target,
                                        on_refreshed=self._on_refreshed)
        finally:  # what TUF verified is in the download folder now
            fetcher.named = {}
            fetcher.roots_upto = 0
            if plan.take:
                host.link.unsubscribe_blobs(plan.take)
                host.blobs.forget(plan.take)
        self.report(desired, JobState.VERIFYING)
        m = bundle.manifest
        if (active is not None and active.name == m.name and m.version < active.version
                and not desired.allow_downgrade):
            raise RollbackError(f"{m.name}:{m.version} is older than the installed "
                                f"{active.name}:{active.version}")
        self.check_compatible(m.runtime, m.compatibility)
        self.report(desired, JobState.INSTALLING)
        installed = host.store.install(m, bundle.manifest_bytes, bundle.model_path, bundle.trust,
                                       bundle.data, move=True, verified=True)
        host.updater.clear()
        runtime = host.load_runtime(installed)
        smoke_test(installed, runtime)
        if desired.mode == "shadow":
            host.start_shadow(installed, runtime, desired.shadow_sample or 0.1)
            self.report(desired, JobState.SHADOWING)
            return
        host.activate(installed, runtime, desired)

    def check_target(self, trust: TargetTrust) -> None:
        """What the targets keys signed about a bundle, checked before it is downloaded.

        Raises:
            CompatibilityError: the bundle is for other hardware classes.
            RollbackError: its release counter is below this device's floor.
        """
        hw = self.host.hardware_class
        if not trust.allows(hw):
            raise CompatibilityError(f"signed for hardware classes {trust.hardware_classes}, "
                                     f"this device is {hw}", reason="wrong_hardware")
        self.check_counter(trust.model, trust.release_counter)

    def check_counter(self, model: str, counter: int) -> None:
        """Raises: RollbackError when ``counter`` is below the device's release floor."""
        floor = self.host.store.release_floor(model)
        if counter < floor:
            raise RollbackError(f"{model}: release counter {counter} is below {floor}, the "
                                f"highest this device has run", reason="counter_rollback")

    def check_compatible(self, runtime: str, compat: dict[str, Any]) -> None:
        """Raises: CompatibilityError naming what does not fit this device."""
        have = {r.split(":")[0] for r in available_runtimes()}
        if runtime not in have:
            raise CompatibilityError(f"runtime {runtime} is not installed on this device",
                                     reason="runtime_unavailable")
        classes = compat.get("hardware_classes") or []
        if classes and self.host.hardware_class not in classes:
            raise CompatibilityError(f"bundle is for {classes}, this device is "
                                     f"{self.host.hardware_class}",
                                     reason="wrong_hardware")
        need = str(compat.get("min_agent_version", "0"))
        if _version_tuple(need) > _version_tuple(edgefleet.__version__):
            raise CompatibilityError(f"bundle needs agent ≥ {need}", reason="agent_too_old")
