"""The agent: serves the installed model at once, applies desired state, reports.

Threads: paho's network thread (``AgentLink``), the v2 HTTP server, one job worker
(download → verify → install → smoke test → switch) and one loop (telemetry windows
and publishing). Inference never waits on the network or on a disk commit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import shutil
import threading
import time
from typing import Any

import numpy as np
import psutil

import edgefleet
from edgefleet.contract import (
    Ack,
    Birth,
    Clock,
    Command,
    CompatibilityError,
    DesiredState,
    DeviceTopic,
    EdgefleetError,
    FetchError,
    JobState,
    JobStatus,
    ModelError,
    ModelRef,
    RollbackError,
    SmokeTestError,
    SystemClock,
)

from ._mqtt import AgentLink
from .config import AgentConfig
from .models import InstalledModel, ModelStore
from .runtime import Runtime, available_runtimes, load_runtime
from .server import InferenceServer
from .telemetry import TelemetryBuffer
from .updater import BundleUpdater, ChunkFetcher

__all__ = ["Agent", "Prediction"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prediction:
    outputs: dict[str, np.ndarray]
    model: ModelRef
    latency_ms: float
    top: str | None


@dataclasses.dataclass(frozen=True)
class _Loaded:
    installed: InstalledModel
    runtime: Runtime


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".") if p.isdigit())


class Agent:
    """One edge device's daemon.

    Args:
        config: the agent configuration.
        clock: time source for telemetry windows and command expiry (tests move it).
    """

    def __init__(self, config: AgentConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        tuf_dir = state / "tuf"
        tuf_dir.mkdir(exist_ok=True)
        if not (tuf_dir / "root.json").exists():
            shutil.copyfile(config.trust_root, tuf_dir / "root.json")
        self.store = ModelStore(state)
        self._proc = psutil.Process()
        self.buffer = TelemetryBuffer(state / "telemetry.db", window_s=config.summary_window_s,
                                      queue_max=config.telemetry_queue_max,
                                      max_raw_rows=config.max_raw_rows,
                                      system_metrics=self._system_metrics)
        self.link = AgentLink(config, birth=self._birth, on_connected=self._on_connected,
                              handlers={DeviceTopic.CMD: self._on_cmd,
                                        DeviceTopic.DESIRED: self._on_desired,
                                        DeviceTopic.TELEMETRY_ACK: self._on_ack})
        self.fetcher = ChunkFetcher(self.link.request_chunk, chunk_bytes=config.chunk_bytes,
                                    timeout_s=config.fetch_timeout_s,
                                    deadline_s=config.download_deadline_s,
                                    max_bytes_per_s=config.max_download_bytes_per_s,
                                    progress=self._on_progress)
        self.updater = BundleUpdater(tuf_dir, state / "downloads", self.fetcher)
        self._active: _Loaded | None = None
        self._wanted: DesiredState | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._done_jobs: dict[str, str] = {}  # job id → terminal state
        self._last_status: dict[str, bytes] = {}
        self._seen_cmds: dict[str, float] = {}
        self._current_job: DesiredState | None = None
        self._threads: list[threading.Thread] = []
        self.server: InferenceServer | None = None
        self.inferences = 0
        self.errors = 0

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Serve the installed model at once, then connect in the background."""
        self._load_installed()
        self.buffer.start()
        self.server = InferenceServer(self, self.config.api_host, self.config.api_port)
        self.server.start()
        for target, name in ((self._job_worker, "jobs"), (self._loop, "loop")):
            t = threading.Thread(target=target, name=f"{self.config.device_id}-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.link.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.link.stop()
        if self.server is not None:
            self.server.stop()
        for t in self._threads:
            t.join(5.0)
        self.buffer.stop()

    def _load_installed(self) -> None:
        state = self.store.read_state()
        for key in ("active", "last_good"):
            ref = state[key]
            installed = self.store.get(ref) if ref else None
            if installed is None:
                continue
            try:
                runtime = load_runtime(installed.manifest.runtime, installed.model_path,
                                       intra_op_threads=self.config.intra_op_threads)
            except ModelError as exc:
                log.error("installed %s model %s cannot load: %s", key, ref, exc)
                continue
            self._active = _Loaded(installed, runtime)
            if key == "last_good":
                self.store.rollback()
            log.info("serving %s:%d", installed.manifest.name, installed.manifest.version)
            return

    # -- inference --------------------------------------------------------------------
    @property
    def active(self) -> ModelRef | None:
        loaded = self._active
        return loaded.installed.ref if loaded else None

    def predict(self, feeds: dict[str, np.ndarray] | np.ndarray, *,
                model: str | None = None) -> Prediction:
        """Run the active model; records the inference for telemetry.

        Args:
            feeds: named input arrays, or one array for a single-input model.
            model: the model name the caller expects (``None``: whatever is active).

        Raises:
            InputError: the input does not match the model's signature.
            ModelError: no model is installed, or ``model`` is not the one served.
        """
        loaded = self._active
        if loaded is None:
            raise ModelError("no model is installed yet", reason="no_model")
        manifest = loaded.installed.manifest
        if model is not None and model != manifest.name:
            raise ModelError(f"this device serves {manifest.name!r}, not {model!r}",
                             reason="unknown_model")
        if isinstance(feeds, np.ndarray):
            feeds = {loaded.runtime.inputs[0].name: feeds}
        start = time.perf_counter()
        ok, top = False, None
        try:
            outputs = loaded.runtime.run(feeds)
            ok = True
            first = next(iter(outputs.values()))
            if first.ndim == 2 and first.shape[0] >= 1 and first.dtype.kind == "f":
                idx = int(first[0].argmax())
                top = manifest.labels[idx] if idx < len(manifest.labels) else str(idx)
            return Prediction(outputs, loaded.installed.ref, 0.0, top)
        finally:
            latency_ms = (time.perf_counter() - start) * 1000.0
            self.inferences += 1
            self.errors += not ok
            self.buffer.record(self.clock.time(), manifest.name, manifest.version, latency_ms,
                               ok, top)

    def model_metadata(self, name: str) -> dict[str, Any] | None:
        loaded = self._active
        if loaded is None or loaded.installed.manifest.name != name:
            return None
        m = loaded.installed.manifest
        return {"name": m.name, "versions": [str(m.version)], "platform": m.runtime,
                "inputs": [i.to_dict() for i in m.inputs],
                "outputs": [o.to_dict() for o in m.outputs]}

    def status(self) -> dict[str, Any]:
        state = self.store.read_state()
        return {"device_id": self.config.device_id, "connected": self.link.connected.is_set(),
                "active": state["active"].to_dict() if state["active"] else None,
                "last_good": state["last_good"].to_dict() if state["last_good"] else None,
                "inferences": self.inferences, "errors": self.errors,
                "malformed_messages": self.link.malformed, "buffer": self.buffer.stats(),
                "jobs": dict(self._done_jobs)}

    # -- MQTT handlers (paho's thread) --------------------------------------------------
    def _birth(self, bd_seq: int) -> bytes:
        state = self.store.read_state()
        return Birth(bd_seq=bd_seq, agent_version=edgefleet.__version__, ts=self.clock.time(),
                     hw={"class": self.config.hardware_class, "machine": platform.machine(),
                         "cpus": os.cpu_count() or 1, "tags": dict(self.config.tags)},
                     runtimes=available_runtimes(), active=state["active"],
                     last_good=state["last_good"],
                     api_url=self.server.url if self.server else "").encode()

    def _on_connected(self) -> None:
        self.buffer.reset_sent()
        for job, payload in list(self._last_status.items())[-5:]:
            self.link.publish(DeviceTopic.JOB_STATUS, payload, job=job)
        self._wake.set()

    def _on_desired(self, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        self._want(DesiredState.decode(payload))

    def _on_cmd(self, payload: bytes) -> None:
        cmd = Command.decode(payload)
        now = self.clock.time()
        if cmd.id in self._seen_cmds:
            log.warning("dropped replayed command %s", cmd.id)
            return
        if cmd.expires_at < now or now - cmd.issued_at > self.config.command_max_age_s:
            log.warning("dropped expired command %s (%s)", cmd.id, cmd.action)
            return
        self._seen_cmds[cmd.id] = cmd.expires_at
        self._seen_cmds = {k: v for k, v in self._seen_cmds.items() if v >= now}
        if cmd.action == "deploy" and cmd.desired is not None:
            self._want(cmd.desired)
        elif cmd.action == "rollback":
            self.rollback()
        elif cmd.action == "rebirth":
            self.link.publish(DeviceTopic.BIRTH, self._birth(self.link.bd_seq))

    def _on_ack(self, payload: bytes) -> None:
        self.buffer.ack(Ack.decode(payload).seqs)

    def _want(self, desired: DesiredState) -> None:
        with self._lock:
            current = self._current_job
            if self._done_jobs.get(desired.job) in JobState.TERMINAL or (
                    current is not None and current.job == desired.job):
                return  # the command and the retained desired state both carry each job
            self._wanted = desired
        self._wake.set()

    # -- jobs -------------------------------------------------------------------------
    def _report(self, d: DesiredState, state: str, *, reason: str = "", detail: str = "",
                progress: dict[str, Any] | None = None) -> None:
        payload = JobStatus(job=d.job, deployment=d.deployment, state=state, ts=self.clock.time(),
                            model=d.model, version=d.version, reason=reason, detail=detail[:500],
                            progress=progress or {}).encode()
        self._last_status[d.job] = payload
        while len(self._last_status) > 20:
            self._last_status.pop(next(iter(self._last_status)))
        if state in JobState.TERMINAL:
            self._done_jobs[d.job] = state
        self.link.publish(DeviceTopic.JOB_STATUS, payload, job=d.job)

    def _on_progress(self, file: str, done: int, total: int) -> None:
        job = self._current_job
        is_model = file.startswith("targets/") and not file.endswith("manifest.json")
        every = self.config.chunk_bytes * 8  # report about every eight chunks
        due = done == total or done % every < self.config.chunk_bytes
        if job is not None and is_model and due:
            self._report(job, JobState.DOWNLOADING, progress={"bytes": done, "total": total})

    def _job_worker(self) -> None:
        retry_at = 0.0
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            with self._lock:
                desired = self._wanted
                if desired is None or time.monotonic() < retry_at:
                    continue
                self._current_job = desired
            try:
                self._apply(desired)
                retry_at = 0.0
            except FetchError as exc:
                log.warning("job %s: %s; will retry", desired.job, exc)
                self._report(desired, JobState.DOWNLOADING, reason=exc.reason, detail=str(exc))
                retry_at = time.monotonic() + 5.0
                continue
            except EdgefleetError as exc:
                log.warning("job %s failed: %s (%s)", desired.job, exc, exc.reason)
                self._report(desired, JobState.FAILED, reason=exc.reason, detail=str(exc))
            except Exception as exc:  # never let a bad bundle kill the worker
                log.exception("job %s crashed", desired.job)
                self._report(desired, JobState.FAILED, reason="agent_error", detail=repr(exc))
            finally:
                with self._lock:
                    self._current_job = None
            with self._lock:
                if self._wanted is not None and self._wanted.job == desired.job:
                    self._wanted = None

    def _apply(self, d: DesiredState) -> None:
        active = self.active
        if active is not None and (active.name, active.version) == (d.model, d.version):
            self._report(d, JobState.HEALTHY, detail="already active")
            return
        self._report(d, JobState.DOWNLOADING)
        bundle = self.updater.fetch(d.model, d.version)
        self._report(d, JobState.VERIFYING)
        m = bundle.manifest
        if active is not None and active.name == m.name and m.version < active.version:
            raise RollbackError(f"{m.name}:{m.version} is older than the installed "
                                f"{active.name}:{active.version}")
        self._check_compatible(m.runtime, m.compatibility)
        self._report(d, JobState.INSTALLING)
        installed = self.store.install(m, bundle.manifest_bytes, bundle.model_path)
        runtime = load_runtime(m.runtime, installed.model_path,
                               intra_op_threads=self.config.intra_op_threads)
        self._smoke_test(installed, runtime)
        self.store.activate(installed.ref)
        self._active = _Loaded(installed, runtime)
        self.updater.clear()
        self._report(d, JobState.ACTIVATED)
        state = self.store.read_state()
        self.store.prune({r for r in state.values() if r is not None})
        self._report(d, JobState.HEALTHY)
        self.link.publish(DeviceTopic.BIRTH, self._birth(self.link.bd_seq))

    def _check_compatible(self, runtime: str, compat: dict[str, Any]) -> None:
        have = {r.split(":")[0] for r in available_runtimes()}
        if runtime not in have:
            raise CompatibilityError(f"runtime {runtime} is not installed on this device",
                                     reason="runtime_unavailable")
        classes = compat.get("hardware_classes") or []
        if classes and self.config.hardware_class not in classes:
            raise CompatibilityError(f"bundle is for {classes}, this device is "
                                     f"{self.config.hardware_class}", reason="wrong_hardware")
        need = str(compat.get("min_agent_version", "0"))
        if _version_tuple(need) > _version_tuple(edgefleet.__version__):
            raise CompatibilityError(f"bundle needs agent ≥ {need}", reason="agent_too_old")

    def _smoke_test(self, installed: InstalledModel, runtime: Runtime) -> None:
        smoke = installed.manifest.smoke_test
        if not smoke:
            return
        spec = runtime.inputs[0]
        from .runtime import V2_TO_NUMPY

        x: np.ndarray = np.asarray(smoke["input"], dtype=V2_TO_NUMPY.get(spec.datatype, np.float32))
        out = next(iter(runtime.run({spec.name: x}).values()))
        expected = np.asarray(smoke["expected"], dtype=np.float64)
        atol = float(smoke.get("atol", 1e-3))
        if out.shape != expected.shape or not np.allclose(out, expected, atol=atol):
            raise SmokeTestError("the model's output on its smoke-test sample is not the "
                                 "expected one")

    def rollback(self) -> ModelRef | None:
        """Switch to the last known good model; returns it, or ``None`` if there is none."""
        ref = self.store.rollback()
        if ref is not None:
            installed = self.store.get(ref)
            assert installed is not None
            self._active = _Loaded(installed, load_runtime(
                installed.manifest.runtime, installed.model_path,
                intra_op_threads=self.config.intra_op_threads))
            self.link.publish(DeviceTopic.BIRTH, self._birth(self.link.bd_seq))
        return ref

    # -- telemetry loop ---------------------------------------------------------------
    def _system_metrics(self) -> dict[str, float]:
        mem = self._proc.memory_info()
        return {"cpu_percent": psutil.cpu_percent(None), "rss_bytes": float(mem.rss),
                "mem_percent": psutil.virtual_memory().percent}

    def _loop(self) -> None:
        while not self._stop.wait(self.config.loop_interval_s):
            try:
                self.tick()
            except Exception:
                log.exception("telemetry loop error")

    def tick(self) -> None:
        """Close due windows and publish unacked summaries (oldest first)."""
        now = self.clock.time()
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
