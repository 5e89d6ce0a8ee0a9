"""Shadow runs: the candidate model sees a sample of live inputs, never serves.

The inference path only offers (a cheap counter decides the sample, then a
non-blocking put on a bounded queue; a full queue drops and counts). A worker thread
runs the candidate and compares it with what the active model answered: top-1
agreement, mean absolute output distance and both latencies, accumulated until the
telemetry window takes them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from edgefleet.contract import ModelRef

from ._loaded import Loaded
from .models import InstalledModel
from .runtime import Runtime

__all__ = ["ShadowRunner", "ShadowSlot"]

log = logging.getLogger(__name__)
_Item = tuple[dict[str, np.ndarray], np.ndarray, float]


class ShadowRunner:
    """Runs ``runtime`` beside the active model on a ``sample`` fraction of inputs.

    Args:
        ref: the candidate model.
        runtime: its loaded runtime.
        sample: fraction of live inferences mirrored (CPU cost is bounded by it).
        queue_max: bound of the mirror queue.
    """

    def __init__(self, ref: ModelRef, runtime: Runtime, sample: float, *,
                 queue_max: int = 64) -> None:
        if not 0.0 < sample <= 1.0:
            raise ValueError("sample must be within (0, 1]")
        self.ref = ref
        self._runtime = runtime
        self._sample = sample
        self._credit = 0.0
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_max)
        self._lock = threading.Lock()
        self._stats = self._empty()
        self._thread = threading.Thread(target=self._work, name="shadow", daemon=True)
        self._thread.start()

    def _empty(self) -> dict[str, Any]:
        return {"model": self.ref.name, "version": self.ref.version, "samples": 0, "agree": 0,
                "distance_sum": 0.0, "candidate_ms_sum": 0.0, "active_ms_sum": 0.0,
                "dropped": 0, "errors": 0}

    def offer(self, feeds: dict[str, np.ndarray], active_output: np.ndarray,
              active_ms: float) -> None:
        """Mirror this inference if it falls in the sample; never blocks."""
        self._credit += self._sample
        if self._credit < 1.0:
            return
        self._credit -= 1.0
        try:
            self._queue.put_nowait((feeds, active_output, active_ms))
        except queue.Full:
            with self._lock:
                self._stats["dropped"] += 1

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            feeds, active_out, active_ms = item
            start = time.perf_counter()
            try:
                out = next(iter(self._runtime.run(feeds).values()))
            except Exception:
                with self._lock:
                    self._stats["errors"] += 1
                continue
            cand_ms = (time.perf_counter() - start) * 1000.0
            agree = int(out.shape == active_out.shape
                        and bool(np.all(out.argmax(axis=-1) == active_out.argmax(axis=-1))))
            dist = float(np.mean(np.abs(out - active_out))) if out.shape == active_out.shape \
                else float("inf")
            with self._lock:
                s = self._stats
                s["samples"] += 1
                s["agree"] += agree
                s["distance_sum"] += dist if np.isfinite(dist) else 1.0
                s["candidate_ms_sum"] += cand_ms
                s["active_ms_sum"] += active_ms

    def take_stats(self) -> dict[str, Any]:
        """This window's figures (then reset)."""
        with self._lock:
            stats, self._stats = self._stats, self._empty()
        return stats

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1.0)
        self._thread.join(2.0)


class ShadowSlot:
    """The candidate an agent shadows, if any: its runner, and the candidate loaded, so
    that promoting it switches at once."""

    def __init__(self) -> None:
        self.runner: ShadowRunner | None = None  # read on the inference path
        self._loaded: Loaded | None = None

    @property
    def ref(self) -> ModelRef | None:
        runner = self.runner
        return runner.ref if runner else None

    def start(self, installed: InstalledModel, runtime: Runtime, sample: float) -> None:
        """Shadow ``installed`` (instead of any candidate shadowed before)."""
        self.stop()
        self._loaded = Loaded(installed, runtime)
        self.runner = ShadowRunner(installed.ref, runtime, sample)

    def stop(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.stop()

    def loaded(self, name: str, version: int) -> tuple[InstalledModel, Runtime] | None:
        """The candidate and its runtime, if it is ``name:version`` and still shadowed."""
        loaded = self._loaded
        if self.runner is None or loaded is None:
            return None
        ref = loaded.installed.ref
        return (loaded.installed, loaded.runtime) if (ref.name, ref.version) == (
            name, version) else None

    def take_stats(self) -> dict[str, Any]:
        """This window's comparison figures (``{}`` while nothing is shadowed)."""
        runner = self.runner
        return runner.take_stats() if runner is not None else {}
