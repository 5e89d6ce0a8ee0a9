"""The agent: serves the installed model at once, applies desired state, reports.

Threads: paho's network thread (``AgentLink``), the v2 HTTP server, the job worker
(``JobRunner``), the shadow worker when a candidate is shadowed, the telemetry writer
and one loop (telemetry windows, publishing, the health window). Inference never
waits on the network or on a disk commit.
"""

from __future__ import annotations

import collections
import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.contract import (
    Birth,
    Clock,
    DesiredState,
    DeviceTopic,
    EdgefleetError,
    InputError,
    JobState,
    ModelError,
    ModelRef,
    SystemClock,
)
from edgefleet.contract.hardware import detect

from ._blobs import BlobCache
from ._http_fetch import HttpFetcher
from ._jobs import JobRunner, JobSlots
from ._loaded import Loaded as _Loaded
from ._loaded import Prediction
from ._loaded import Trial as _Trial
from ._logs import Repeating
from ._mqtt import AgentLink, NetworkLoop
from ._restart import resume
from ._transport import open_updater
from ._uplink import TelemetryUplink, birth
from ._v2 import metadata_of
from .commands import CommandGuard, ControlInbox
from .config import AgentConfig
from .health import HealthPolicy, judge, p95
from .models import InstalledModel, ModelStore
from .runtime import Runtime, load_runtime
from .server import InferenceServer
from .shadow import ShadowSlot
from .updater import ChunkFetcher

if TYPE_CHECKING:
    from ._grpc import GrpcServer

__all__ = ["Agent", "Prediction"]

log = logging.getLogger(__name__)
# thousands of idle job workers waking every second cost a hosting process whole cores
_HOSTED_JOB_IDLE_S = 30.0


class Agent:
    """One edge device's daemon.

    Args:
        config: the agent configuration.
        clock: time source for telemetry windows, health windows and command expiry.
        network: drives the MQTT session from a shared thread (simulated fleets run
            hundreds of agents per process); ``None``: paho's own thread, as on a device.
        system_metrics: what telemetry windows report about the system (CPU, RAM, disk,
            temperature); ``None``: read with psutil when each window closes.
    """

    def __init__(self, config: AgentConfig, *, clock: Clock | None = None,
                 network: NetworkLoop | None = None,
                 system_metrics: Callable[[], dict[str, float]] | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        tuf_dir = state / "tuf"
        tuf_dir.mkdir(exist_ok=True)
        if not (tuf_dir / "root.json").exists():
            shutil.copyfile(config.trust_root, tuf_dir / "root.json")
        self.store = ModelStore(state)
        self.hardware = detect()
        self.hardware_class = (self.hardware.hardware_class if config.hardware_class == "auto"
                               else config.hardware_class)
        # what every birth says of the hardware: the same for the life of the process
        self._hw = {**self.hardware.to_dict(), "class": self.hardware_class,
                    "tags": dict(config.tags)}
        self._stop = threading.Event()
        self.jobs = JobRunner(self)
        self._shadow = ShadowSlot()
        self.uplink = TelemetryUplink(config, system_metrics=system_metrics,
                                      shadow_stats=self._shadow.take_stats)
        self.buffer = self.uplink.buffer
        self.guard = CommandGuard(config.device_id, tuf_dir / "root.json",
                                  state / "commands-seen.json", self.clock,
                                  max_age_s=config.command_max_age_s)
        self.inbox = ControlInbox(self.guard, want=self.jobs.want,
                                  actions={"rollback": lambda: self.rollback("command"),
                                           "rebirth": self.announce},
                                  refresh_then=self.jobs.after_trust_refresh)
        self.blobs = BlobCache(state / "blobs")
        self.link = AgentLink(config, birth=self._birth, on_connected=self._on_connected,
                              network=network, blobs=self.blobs,
                              handlers={DeviceTopic.CMD: self.inbox.on_cmd,
                                        DeviceTopic.DESIRED: self.inbox.on_desired,
                                        DeviceTopic.TELEMETRY_ACK: self.uplink.on_ack})
        self.fetcher: ChunkFetcher | HttpFetcher
        self.updater, self.fetcher = open_updater(
            config, tuf_dir, request_chunk=self.link.request_chunk, blobs=self.blobs,
            local=self.store.file_with if config.reuse_local_files else None,
            progress=self.jobs.on_progress, stop=self._stop)
        self._active: _Loaded | None = None
        self._previous: _Loaded | None = None  # kept loaded for an instant rollback
        self._trial: _Trial | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=512)
        self._switch_lock = threading.RLock()
        self._threads: list[threading.Thread] = []
        self.server: InferenceServer | None = None
        self.grpc: GrpcServer | None = None
        self.inferences = 0
        self.errors = 0

    # -- lifecycle --------------------------------------------------------------------
    def start(self, *, hosted: bool = False, job_slots: JobSlots | None = None) -> None:
        """Serve the installed model at once, then connect in the background.

        Args:
            hosted: run inside a host that drives many agents (a simulated fleet): no v2
                HTTP server, no telemetry writer thread (records are committed when their
                window closes) and no loop thread (the host calls ``tick``); the job
                worker keeps its thread, waking when there is work (or a retry is due)
                rather than every second.
            job_slots: turns shared by the agents of one host: the job worker works
                holding one and gives it up while its fetcher waits on the link.
        """
        if job_slots is not None:
            self.jobs.slots = job_slots
            self.fetcher.waiting = job_slots.released
        self._load_installed()
        idle_s = _HOSTED_JOB_IDLE_S if hosted else 1.0
        workers: list[tuple[Callable[[], None], str]] = [
            (lambda: self.jobs.run(self._stop, idle_s), "jobs")]
        if not hosted:
            self.buffer.start()
            self.server = InferenceServer(self, self.config.api_host, self.config.api_port,
                                          max_request_bytes=self.config.max_request_bytes)
            self.server.start()
            if self.config.grpc_port is not None:
                from ._grpc import GrpcServer  # grpcio only where gRPC is wanted

                self.grpc = GrpcServer(self, self.config.api_host, self.config.grpc_port,
                                       max_message_bytes=self.config.max_request_bytes)
                self.grpc.start()
            workers.append((self._loop, "loop"))
        for target, name in workers:
            thread = threading.Thread(target=target, name=f"{self.config.device_id}-{name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        self.link.start()

    def stop(self) -> None:
        self._stop.set()
        self.jobs.wake()
        self.jobs.pacer.close()  # a step status still waiting goes out before the link ends
        self.link.stop()
        if self.server is not None:
            self.server.stop()
        if self.grpc is not None:
            self.grpc.stop()
        for t in self._threads:
            t.join(5.0)
        self.stop_shadow()
        self.buffer.stop()

    def alive(self) -> bool:
        """Whether the agent's worker threads are all running (for a service watchdog)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def load_runtime(self, installed: InstalledModel) -> Runtime:
        """Open an installed model with its runtime, on this device's best provider."""
        return load_runtime(installed.manifest.runtime, installed.model_path,
                            intra_op_threads=self.config.intra_op_threads,
                            providers=list(self.config.execution_providers),
                            hardware_class=self.hardware_class,
                            cache_dir=self.config.state_dir / "engine-cache")

    def _load(self, installed: InstalledModel) -> _Loaded:
        return _Loaded(installed, self.load_runtime(installed))

    def _hot(self, installed: InstalledModel) -> _Loaded:
        """``installed`` loaded: the previous model when it is that one (kept loaded for an
        instant switch back), else loaded now."""
        previous = self._previous
        if previous is not None and previous.installed.ref == installed.ref:
            return previous
        return self._load(installed)

    def _load_installed(self) -> None:
        """Serve the installed model and settle a health window a restart interrupted."""
        resumed = resume(self.store, self._load, self.clock, self.jobs.report)
        self._active, self._trial = resumed.active, resumed.trial

    # -- inference --------------------------------------------------------------------
    @property
    def active(self) -> ModelRef | None:
        loaded = self._active
        return loaded.installed.ref if loaded else None

    @property
    def shadow_ref(self) -> ModelRef | None:
        return self._shadow.ref

    def predict(self, feeds: dict[str, np.ndarray] | np.ndarray, *,
                model: str | None = None) -> Prediction:
        """Run the active model; records the inference for telemetry and health.

        Args:
            feeds: named input arrays, or one array for a single-input model.
            model: the model name the caller expects (``None``: whatever is active).

        Raises:
            InputError: the input does not match the model's signature.
            ModelError: no model is installed, ``model`` is not the one served, or the
                model failed.
        """
        loaded = self._active
        if loaded is None:
            raise ModelError("no model is installed yet", reason="no_model")
        manifest = loaded.installed.manifest
        if model is not None and model != manifest.name:
            raise ModelError(f"this device serves {manifest.name!r}, not {model!r}",
                             reason="unknown_model")
        if isinstance(feeds, np.ndarray):
            feeds = {loaded.first_input: feeds}
        start = time.perf_counter()
        try:
            outputs = loaded.runtime.run(feeds)
        except BaseException as exc:
            self._failed(loaded, exc, (time.perf_counter() - start) * 1000.0)
            raise
        latency_ms = (time.perf_counter() - start) * 1000.0
        self.inferences += 1
        first, top = next(iter(outputs.values())), None
        if first.ndim == 2 and first.shape[0] >= 1 and first.dtype.kind == "f":
            idx = int(first[0].argmax())
            labels = loaded.labels
            top = labels[idx] if idx < len(labels) else str(idx)
        drift = loaded.drift  # a few numbers per sample here; the writer thread bins them
        self.buffer.record(self.clock.time(), manifest.name, manifest.version, latency_ms, True,
                           top, None, drift.extract(feeds, outputs) if drift else None, drift)
        trial = self._trial
        if trial is not None:
            trial.count += 1
            trial.latencies.append(latency_ms)
        self._recent.append(latency_ms)
        shadow = self._shadow.runner
        if shadow is not None:
            shadow.offer(feeds, first, latency_ms)
        return Prediction(outputs, loaded.ref, latency_ms, top)

    def _failed(self, loaded: _Loaded, exc: BaseException, latency_ms: float) -> None:
        """Count a failed inference by kind; a bad input is not held against the model."""
        self.inferences += 1
        self.errors += 1
        m = loaded.installed.manifest
        kind = exc.reason if isinstance(exc, EdgefleetError) else "internal"
        self.buffer.record(self.clock.time(), m.name, m.version, latency_ms, False, None, kind)
        trial = self._trial
        if trial is not None and isinstance(exc, ModelError) and not isinstance(exc, InputError):
            trial.count += 1
            trial.errors += 1
            trial.latencies.append(latency_ms)

    def model_metadata(self, name: str) -> dict[str, Any] | None:
        """The v2 metadata of ``name`` while it is the model served (``None``: it is not)."""
        loaded = self._active
        if loaded is None or loaded.installed.manifest.name != name:
            return None
        return metadata_of(loaded.installed.manifest)

    def status(self) -> dict[str, Any]:
        """What ``edgefleet agent status`` and ``GET /v2/agent/status`` show."""
        state = self.store.read_state()
        trial = self._trial
        return {"device_id": self.config.device_id, "connected": self.link.connected.is_set(),
                "active": state["active"].to_dict() if state["active"] else None,
                "last_good": state["last_good"].to_dict() if state["last_good"] else None,
                "shadow": self.shadow_ref.to_dict() if self.shadow_ref else None,
                "health_window": {"job": trial.desired.job, "inferences": trial.count,
                                  "errors": trial.errors} if trial else None,
                "inferences": self.inferences, "errors": self.errors,
                "malformed_messages": self.link.malformed, "buffer": self.buffer.stats(),
                "jobs": dict(self.jobs.done), "trust": dict(self.jobs.trust),
                "commands": self.guard.stats()}

    # -- switching (job worker and loop) --------------------------------------------------
    def activate(self, installed: InstalledModel, runtime: Runtime, desired: DesiredState) -> None:
        """Switch to a verified, smoke-tested model and start its health window."""
        policy = HealthPolicy.from_dict(desired.health)
        with self._switch_lock:
            baseline = p95(list(self._recent)) if len(self._recent) >= policy.min_samples \
                else None
            trial = None
            if policy.window_s > 0:
                trial = {"desired": desired.to_dict(), "attempts": 0, "baseline_p95": baseline}
            # no health window: healthy now, and its release counter the floor (one write)
            trust = None if trial else self.store.trust_of(installed)
            self.store.activate(installed.ref, trial=trial,
                                floor=trust.release_counter if trust is not None else None)
            self._previous, self._active = self._active, _Loaded(installed, runtime)
            self._recent.clear()
            if self._shadow.ref == installed.ref:
                self.stop_shadow()  # promoted
            self._trial = _Trial(desired, policy, self.clock.time(), baseline) if trial else None
        self.jobs.report(desired, JobState.ACTIVATED)
        if trial is None:
            self.jobs.report(desired, JobState.HEALTHY)
        if not desired.births_in_status:  # else the statuses carried it
            self.announce()
        keep = {*self.store.read_state().values(), self._shadow.ref}
        self.store.prune({r for r in keep if r is not None})

    def _raise_floor(self, installed: InstalledModel) -> None:
        """A model ran healthy: its release counter becomes the floor for its name."""
        trust = self.store.trust_of(installed)
        if trust is not None:
            self.store.raise_floor(installed.manifest.name, trust.release_counter)

    def on_trial(self, job: str) -> bool:
        """Whether ``job``'s model is active and its health window has not ended yet."""
        trial = self._trial
        return trial is not None and trial.desired.job == job

    def switch_to(self, installed: InstalledModel, desired: DesiredState, *, reason: str) -> None:
        """Controller-ordered switch to a model already on disk (a rollback)."""
        with self._switch_lock:
            loaded = self._hot(installed)
            self.store.activate(installed.ref)
            self._previous, self._active = self._active, loaded
            self._trial = None
            self._recent.clear()
        self.stop_shadow()
        self.jobs.report(desired, JobState.HEALTHY, detail=reason)
        if not desired.births_in_status:  # else the status carried it
            self.announce()

    def rollback(self, reason: str = "command", *, failed: bool = False) -> ModelRef | None:
        """Switch to the last known good model; returns it, or ``None`` if there is none.

        Args:
            reason: for the log.
            failed: the active model failed (it will not become the last known good).
        """
        with self._switch_lock:
            state = self.store.read_state()
            target = state["last_good"]
            installed = self.store.get(target) if target else None
            if installed is None:
                return None
            loaded = self._hot(installed)
            self.store.rollback(failed=failed)
            self._previous, self._active = (None if failed else self._active), loaded
            self._trial = None
            self._recent.clear()
        log.warning("rolled back to %s (%s)", target, reason)
        self.announce()
        return target

    def start_shadow(self, installed: InstalledModel, runtime: Runtime, sample: float) -> None:
        """Run ``installed`` beside the active model on a ``sample`` of live inputs."""
        self._shadow.start(installed, runtime, sample)

    def stop_shadow(self) -> None:
        self._shadow.stop()

    def shadowed(self, name: str, version: int) -> tuple[InstalledModel, Runtime] | None:
        """The shadowed candidate, loaded, if it is ``name:version`` (promotion is instant)."""
        return self._shadow.loaded(name, version)

    def _check_trial(self, now: float) -> None:
        trial = self._trial
        if trial is None:
            return
        verdict = judge(trial.policy, started_at=trial.started_at, now=now, count=trial.count,
                        errors=trial.errors, latency_p95=p95(trial.latencies),
                        baseline_p95=trial.baseline_p95)
        if verdict.state == "healthy":
            with self._switch_lock:
                if self._trial is not trial:
                    return
                self.store.commit()
                self._trial = None
                if self._active is not None:
                    self._raise_floor(self._active.installed)
            self.jobs.report(trial.desired, JobState.HEALTHY,
                             detail=f"health window passed ({trial.count} inferences)")
        elif verdict.state == "unhealthy":
            with self._switch_lock:
                if self._trial is not trial:
                    return
                back = self.rollback(verdict.reason, failed=True)
                if back is None:  # nothing to go back to: keep serving, say so
                    self.store.commit()
                self._trial = None
            if back is None:
                self.jobs.report(trial.desired, JobState.FAILED, reason=verdict.reason,
                                 detail="unhealthy, but there is no last known good model to "
                                        "go back to; still serving it")
                return
            self.jobs.report(trial.desired, JobState.ROLLED_BACK, reason=verdict.reason,
                             detail=f"{trial.errors} errors in {trial.count} inferences; "
                                    f"p95 {p95(trial.latencies)} ms vs {trial.baseline_p95} ms")

    # -- MQTT handlers (paho's thread) --------------------------------------------------
    def _birth(self, bd_seq: int) -> bytes:
        return self._birth_of(bd_seq).encode()

    def _birth_of(self, bd_seq: int) -> Birth:
        active = self._active
        return birth(bd_seq, now=self.clock.time(), hw=self._hw,
                     serving=active.runtime if active else None, state=self.store.read_state(),
                     trust=self.jobs.trust, api_url=self.server.url if self.server else "")

    def birth(self) -> Birth:
        """This session's birth as things stand (carried in job statuses, see
        ``DesiredState.births_in_status``)."""
        return self._birth_of(self.link.bd_seq)

    def announce(self) -> None:
        """Publish a fresh birth (state changed: model, trust)."""
        self.jobs.announce_due = False
        self.link.publish(DeviceTopic.BIRTH, self._birth(self.link.bd_seq))

    def _on_connected(self) -> None:
        self.uplink.on_connected()
        self.jobs.republish()
        self.jobs.wake()

    # -- telemetry loop ---------------------------------------------------------------
    def _loop(self) -> None:
        failing = Repeating(log, "agent loop")
        while not self._stop.wait(self.config.loop_interval_s):
            try:
                self.tick()
            except Exception as exc:
                failing.failed(exc)
            else:
                failing.ok()

    def tick(self) -> None:
        """Judge the health window, close due windows, publish unacked summaries."""
        now = self.clock.time()
        self._check_trial(now)
        self.buffer.close_windows(now)
        self.uplink.publish_due(self.link, now)
