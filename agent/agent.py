"""The agent: serves the installed model at once, applies desired state, reports.

Threads: paho's network thread (``AgentLink``), the v2 HTTP server, the job worker
(``JobRunner``), the shadow worker when a candidate is shadowed, the telemetry writer
and one loop (telemetry windows, publishing, the health window). Inference never
waits on the network or on a disk commit.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

import edgefleet
from edgefleet.contract import (
    Ack,
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
from ._loaded import Trial as _Trial
from ._logs import Repeating
from ._mqtt import AgentLink, NetworkLoop
from ._signature import v2_shape
from ._system import SystemMetrics
from .commands import CommandGuard, ControlInbox
from .config import AgentConfig, repository_base
from .health import HealthPolicy, judge, p95
from .models import InstalledModel, ModelStore
from .runtime import Runtime, available_runtimes, load_runtime
from .server import InferenceServer
from .shadow import ShadowRunner
from .telemetry import TelemetryBuffer
from .updater import BundleUpdater, ChunkFetcher

if TYPE_CHECKING:
    from ._grpc import GrpcServer

__all__ = ["Agent", "Prediction"]

log = logging.getLogger(__name__)
# thousands of idle job workers waking every second cost a hosting process whole cores
_HOSTED_JOB_IDLE_S = 30.0


@dataclasses.dataclass(frozen=True)
class Prediction:
    outputs: dict[str, np.ndarray]
    model: ModelRef
    latency_ms: float
    top: str | None


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
        self._stop = threading.Event()
        self.jobs = JobRunner(self)
        self._shadow: ShadowRunner | None = None
        self._shadow_model: _Loaded | None = None
        self.buffer = TelemetryBuffer(state / "telemetry.db", window_s=config.summary_window_s,
                                      queue_max=config.telemetry_queue_max,
                                      max_bytes=config.max_buffer_bytes,
                                      max_raw_rows=config.max_raw_rows,
                                      flush_interval_s=config.telemetry_flush_interval_s,
                                      system_metrics=system_metrics or SystemMetrics(state),
                                      shadow_stats=self._shadow_stats)
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
                                        DeviceTopic.TELEMETRY_ACK: self._on_ack})
        local = self.store.file_with if config.reuse_local_files else None
        self.fetcher: ChunkFetcher | HttpFetcher
        if config.repository_url:  # bundles over HTTP(S); no broadcast
            repository = repository_base(config.repository_url)
            self.fetcher = HttpFetcher(repository, ca_file=config.repository_ca,
                                       timeout_s=config.fetch_timeout_s,
                                       deadline_s=config.download_deadline_s,
                                       max_bytes_per_s=config.max_download_bytes_per_s,
                                       progress=self.jobs.on_progress, stop=self._stop,
                                       local=local)
        else:
            repository = "mqtt:/"
            self.fetcher = ChunkFetcher(self.link.request_chunk, chunk_bytes=config.chunk_bytes,
                                        timeout_s=config.fetch_timeout_s,
                                        deadline_s=config.download_deadline_s,
                                        max_bytes_per_s=config.max_download_bytes_per_s,
                                        progress=self.jobs.on_progress, stop=self._stop,
                                        blobs=self.blobs,
                                        broadcast_wait_s=config.broadcast_wait_s, local=local)
        self.fetcher.temp_dir = state / "downloads"
        self.updater = BundleUpdater(tuf_dir, state / "downloads", self.fetcher,
                                     repository_url=repository)
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
        workers: list[tuple[Any, str]] = [(lambda: self.jobs.run(self._stop, idle_s), "jobs")]
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
            t = threading.Thread(target=target, name=f"{self.config.device_id}-{name}", daemon=True)
            t.start()
            self._threads.append(t)
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

    def _load_installed(self) -> None:
        trial = self.store.read_trial()
        state = self.store.read_state()
        for key in ("active", "last_good"):
            ref = state[key]
            installed = self.store.get(ref) if ref else None
            if installed is None:
                continue
            try:
                self._active = self._load(installed)
            except ModelError as exc:
                log.error("installed %s model %s cannot load: %s", key, ref, exc)
                continue
            if key == "last_good":
                self.store.rollback(failed=True)
            log.info("serving %s:%d", installed.manifest.name, installed.manifest.version)
            break
        if trial is None:
            return
        desired = DesiredState(**trial["desired"])
        if key == "active" and self._active is not None:
            self._resume_trial(trial)
        else:  # the model on trial did not even load: it is not the one serving
            self.store.update_trial(None)
            self.jobs.report(desired, JobState.ROLLED_BACK, reason="load_failed",
                             detail="the model on trial could not be loaded after a restart")

    def _resume_trial(self, trial: dict[str, Any]) -> None:
        """A restart inside a health window: resume it once, roll back if it repeats."""
        desired = DesiredState(**{k: v for k, v in trial["desired"].items()})
        policy = HealthPolicy.from_dict(desired.health)
        attempts = int(trial.get("attempts", 0)) + 1
        if attempts > policy.max_trial_restarts:
            detail = f"agent restarted {attempts} times inside the health window"
            target = self.store.rollback(failed=True)
            if target is None:
                self.store.commit()
                self.jobs.report(desired, JobState.FAILED, reason="crashed_during_health_window",
                                 detail=detail + "; no last known good model, still serving it")
                return
            installed = self.store.get(target)
            if installed is not None:
                self._active = self._load(installed)
            self.jobs.report(desired, JobState.ROLLED_BACK, reason="crashed_during_health_window",
                             detail=detail)
            return
        self.store.update_trial({**trial, "attempts": attempts})
        self._trial = _Trial(desired, policy, self.clock.time(), trial.get("baseline_p95"))
        self.jobs.report(desired, JobState.ACTIVATED, detail="agent restarted; health window "
                                                             "starts again")

    # -- inference --------------------------------------------------------------------
    @property
    def active(self) -> ModelRef | None:
        loaded = self._active
        return loaded.installed.ref if loaded else None

    @property
    def shadow_ref(self) -> ModelRef | None:
        shadow = self._shadow
        return shadow.ref if shadow else None

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
        shadow = self._shadow
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
        loaded = self._active
        if loaded is None or loaded.installed.manifest.name != name:
            return None
        m = loaded.installed.manifest
        return {"name": m.name, "versions": [str(m.version)], "platform": m.runtime,
                "inputs": [{**i.to_dict(), "shape": v2_shape(i.shape)} for i in m.inputs],
                "outputs": [{**o.to_dict(), "shape": v2_shape(o.shape)} for o in m.outputs]}

    def status(self) -> dict[str, Any]:
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
    def activate(self, installed: InstalledModel, runtime: Runtime, d: DesiredState) -> None:
        """Switch to a verified, smoke-tested model and start its health window."""
        policy = HealthPolicy.from_dict(d.health)
        with self._switch_lock:
            baseline = p95(list(self._recent)) if len(self._recent) >= policy.min_samples \
                else None
            trial = None
            if policy.window_s > 0:
                trial = {"desired": d.to_dict(), "attempts": 0, "baseline_p95": baseline}
            self.store.activate(installed.ref, trial=trial)
            self._previous, self._active = self._active, _Loaded(installed, runtime)
            self._recent.clear()
            shadow = self._shadow
            if shadow is not None and shadow.ref == installed.ref:
                self.stop_shadow()  # promoted
            self._trial = _Trial(d, policy, self.clock.time(), baseline) if trial else None
        self.jobs.report(d, JobState.ACTIVATED)
        if trial is None:
            self._raise_floor(installed)
            self.jobs.report(d, JobState.HEALTHY)
        self.announce()
        state = self.store.read_state()
        self.store.prune({r for r in state.values() if r is not None} |
                         ({self._shadow.ref} if self._shadow else set()))

    def _raise_floor(self, installed: InstalledModel) -> None:
        """A model ran healthy: its release counter becomes the floor for its name."""
        trust = self.store.trust_of(installed)
        if trust is not None:
            self.store.raise_floor(installed.manifest.name, trust.release_counter)

    def on_trial(self, job: str) -> bool:
        """Whether ``job``'s model is active and its health window has not ended yet."""
        trial = self._trial
        return trial is not None and trial.desired.job == job

    def switch_to(self, installed: InstalledModel, d: DesiredState, *, reason: str) -> None:
        """Controller-ordered switch to a model already on disk (a rollback)."""
        with self._switch_lock:
            previous = self._previous
            if previous is not None and previous.installed.ref == installed.ref:
                loaded = previous  # kept hot: instant
            else:
                loaded = self._load(installed)
            self.store.activate(installed.ref)
            self._previous, self._active = self._active, loaded
            self._trial = None
            self._recent.clear()
        self.stop_shadow()
        self.jobs.report(d, JobState.HEALTHY, detail=reason)
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
            previous = self._previous
            loaded = previous if previous and previous.installed.ref == target else \
                self._load(installed)
            self.store.rollback(failed=failed)
            self._previous, self._active = (None if failed else self._active), loaded
            self._trial = None
            self._recent.clear()
        log.warning("rolled back to %s (%s)", target, reason)
        self.announce()
        return target

    def start_shadow(self, installed: InstalledModel, runtime: Runtime, sample: float) -> None:
        self.stop_shadow()
        self._shadow_model = _Loaded(installed, runtime)
        self._shadow = ShadowRunner(installed.ref, runtime, sample)

    def stop_shadow(self) -> None:
        shadow, self._shadow = self._shadow, None
        if shadow is not None:
            shadow.stop()

    def shadowed(self, name: str, version: int) -> tuple[InstalledModel, Runtime] | None:
        """The shadowed candidate, loaded, if it is ``name:version`` (promotion is instant)."""
        loaded = self._shadow_model
        if self._shadow is None or loaded is None:
            return None
        ref = loaded.installed.ref
        return (loaded.installed, loaded.runtime) if (ref.name, ref.version) == (
            name, version) else None

    def _shadow_stats(self) -> dict[str, Any]:
        shadow = self._shadow
        return shadow.take_stats() if shadow is not None else {}

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
        state = self.store.read_state()
        return Birth(bd_seq=bd_seq, agent_version=edgefleet.__version__, ts=self.clock.time(),
                     hw={**self.hardware.to_dict(), "class": self.hardware_class,
                         "tags": dict(self.config.tags), "providers": self._providers()},
                     runtimes=available_runtimes(), active=state["active"],
                     last_good=state["last_good"], trust=dict(self.jobs.trust),
                     api_url=self.server.url if self.server else "").encode()

    def _providers(self) -> dict[str, Any]:
        """What the active model runs on (and why not on what was asked for)."""
        active = self._active
        report = getattr(active.runtime, "providers", None) if active else None
        return report.to_dict() if report is not None else {}

    def announce(self) -> None:
        """Publish a fresh birth (state changed: model, trust)."""
        self.jobs.announce_due = False
        self.link.publish(DeviceTopic.BIRTH, self._birth(self.link.bd_seq))

    def _on_connected(self) -> None:
        self.buffer.reset_sent()
        self.jobs.republish()
        self.jobs.wake()

    def _on_ack(self, payload: bytes) -> None:
        self.buffer.ack(Ack.decode(payload).seqs)

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
        if not self.link.connected.is_set():
            return
        due = self.buffer.pending(now, resend_after_s=self.config.resend_after_s,
                                  limit=self.config.publish_batch)
        sent = []
        for summary in due:
            late = now - summary.window_end > self.config.summary_window_s
            payload = dataclasses.replace(summary, historical=late).encode()
            if not self.link.publish(DeviceTopic.TELEMETRY, payload):
                break
            sent.append(summary.seq)
        if sent:
            self.buffer.mark_sent(sent, now)
