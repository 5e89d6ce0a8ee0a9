"""One simulated device: a real ``Agent`` with a profile, a shared session and faults.

``SimulatedAgent`` is the product's ``Agent`` (its MQTT session, SQLite buffer, TUF
verification, model store, job worker and health windows all run as on a device) with
what a simulated fleet changes around it:

- its MQTT session is driven by the shard's ``SharedLoop`` and it runs hosted (no HTTP
  server, the shard calls ``tick``);
- its model runtime is the shard's one session for that model file (``SessionCache``),
  wrapped by ``SlowedRuntime`` to take as long as the profiled device would;
- the host's system figures in its telemetry are read once a second for the whole
  shard (``SharedSystemMetrics``);
- its clock may be skewed (``SkewedClock``) and its model store may run out of disk
  (``FullDiskStore``).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent import Agent, AgentConfig, InstalledModel, ModelStore, Runtime
from edgefleet.agent._mqtt import NetworkLoop
from edgefleet.agent._system import SystemMetrics
from edgefleet.contract import Manifest, TargetTrust

__all__ = ["FullDiskStore", "SessionCache", "SharedSystemMetrics", "SimulatedAgent", "SkewedClock",
           "SlowedRuntime"]


class SkewedClock:
    """The real clock, ``offset_s`` off (a device whose RTC drifted or was never set)."""

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s

    def time(self) -> float:
        return time.time() + self.offset_s

    def monotonic(self) -> float:
        return time.monotonic()


class SlowedRuntime:
    """A shared runtime that takes ``slowdown`` times as long, as a slower CPU would.

    Each run is timed on this machine, then the device sleeps for the difference, so the
    latency the agent measures (and its health window judges) is the profiled one.
    """

    def __init__(self, inner: Runtime, slowdown: float) -> None:
        self.inner = inner
        self.slowdown = slowdown
        self.inputs = inner.inputs
        self.outputs = inner.outputs
        self.providers = getattr(inner, "providers", None)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        out = self.inner.run(feeds)
        extra = (time.perf_counter() - start) * (self.slowdown - 1.0)
        if extra > 0:
            time.sleep(extra)
        return out


class SessionCache:
    """One runtime per (model file, runtime, hardware class), shared by a shard's devices.

    onnxruntime sessions answer concurrent ``run`` calls, so a thousand devices serving
    the same bundle hold one copy of its weights. Keyed by the manifest's signed SHA-256:
    the agent only loads files that passed verification.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runtimes: dict[tuple[str, str, str], Runtime] = {}
        self.loads = 0

    def get(self, installed: InstalledModel, hardware_class: str,
            load: Callable[[], Runtime]) -> Runtime:
        m = installed.manifest
        key = (m.runtime, m.model_sha256, hardware_class)
        with self._lock:  # a model is loaded once however many devices ask together
            runtime = self._runtimes.get(key)
            if runtime is None:
                runtime = self._runtimes[key] = load()
                self.loads += 1
        return runtime

    def __len__(self) -> int:
        return len(self._runtimes)


class FullDiskStore(ModelStore):
    """The device's model store; once ``full`` is set, writing a model fails with ENOSPC.

    Only installs are refused (what a full disk breaks first for a deployment); the
    telemetry store and trust metadata keep working.
    """

    full = False

    def install(self, manifest: Manifest, manifest_bytes: bytes, model_src: Path,
                trust: TargetTrust | None = None,
                data: dict[str, Path] | None = None, *, move: bool = False,
                verified: bool = False) -> InstalledModel:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root))
        return super().install(manifest, manifest_bytes, model_src, trust, data, move=move,
                               verified=verified)


class SharedSystemMetrics:
    """The host's system figures, read at most once a second for every device of a shard.

    Simulated devices share one machine, so each reading its CPU, RAM and temperature
    sensors itself (~2 ms each time a window closes) would only burn the CPU it reports.
    """

    def __init__(self, state_dir: Path, max_age_s: float = 1.0) -> None:
        self._read = SystemMetrics(state_dir)
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = -1e9
        self._figures: dict[str, float] = {}

    def __call__(self) -> dict[str, float]:
        with self._lock:
            if time.monotonic() - self._at > self._max_age_s:
                self._figures, self._at = self._read(), time.monotonic()
            return dict(self._figures)


class SimulatedAgent(Agent):
    """A real agent hosted by a shard (see the module docstring).

    Args:
        config: the agent configuration (its profile's class, chunk size…).
        network: the shard's ``SharedLoop``.
        sessions: the shard's ``SessionCache``.
        system_metrics: the shard's ``SharedSystemMetrics``.
        slowdown: compute time relative to this machine (1: as fast).
        clock_skew_s: how far the device's clock is off.
    """

    def __init__(self, config: AgentConfig, *, network: NetworkLoop, sessions: SessionCache,
                 system_metrics: SharedSystemMetrics | None = None, slowdown: float = 1.0,
                 clock_skew_s: float = 0.0) -> None:
        clock = SkewedClock(clock_skew_s) if clock_skew_s else None
        super().__init__(config, clock=clock, network=network, system_metrics=system_metrics)
        self.store = FullDiskStore(config.state_dir)
        self.sessions = sessions
        self.slowdown = slowdown

    def load_runtime(self, installed: InstalledModel) -> Runtime:
        shared = self.sessions.get(installed, self.hardware_class,
                                   lambda: Agent.load_runtime(self, installed))
        return SlowedRuntime(shared, self.slowdown) if self.slowdown > 1.0 else shared

    def fill_disk(self) -> None:
        assert isinstance(self.store, FullDiskStore)
        self.store.full = True

    @property
    def on_trial_now(self) -> bool:
        """Whether a health window is running (the model is active, not yet judged)."""
        return self._trial is not None

    def snapshot(self) -> dict[str, Any]:
        """What the shard reports about this device (cheap: no SQLite reads)."""
        active = self.active
        done = self.jobs.done
        last_job = next(reversed(done), None) if done else None
        return {"version": active.version if active else None,
                "on_trial": self.on_trial_now,
                "connected": self.link.connected.is_set(),
                "last_job": last_job, "job_state": done.get(last_job) if last_job else None,
                "fetched": self.fetcher.bytes_received,
                "from_broadcast": getattr(self.fetcher, "bytes_from_broadcast", 0),  # HTTP: 0
                "inferences": self.inferences}
