"""Telemetry windows as pure data: per-window accumulators and the summary they make.

``WindowStats`` adds a batch of inference records (numpy, off the inference path)
into a window's counts: inferences, errors by kind, predicted labels, models and a
latency ``DDSketch``. It round-trips through JSON (``state``/``from_state``) so the
telemetry store can keep every open window's accumulator in the same transaction as
the raw rows it counts. ``DriftSpec`` is what a model's reference profile needs on
the inference path (which input columns to copy) and at window close (PSI scores
named by the original feature index).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from edgefleet.contract import DDSketch, Manifest, Summary
from edgefleet.contract.sketch import MIN_VALUE

from .drift import DriftWindow

__all__ = ["DriftSpec", "WindowStats", "add_latencies", "make_summary", "window_start"]


def window_start(ts: float, window_s: float) -> float:
    return math.floor(ts / window_s) * window_s


def add_latencies(sketch: DDSketch, values: np.ndarray) -> None:
    """Add many values to ``sketch`` at once (same buckets as ``DDSketch.add``)."""
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return
    part = DDSketch(alpha=sketch.alpha, max_buckets=sketch.max_buckets)
    low = v <= MIN_VALUE
    part.zero = int(low.sum())
    pos = v[~low]
    if pos.size:
        log_gamma = math.log((1 + sketch.alpha) / (1 - sketch.alpha))
        keys, counts = np.unique(np.ceil(np.log(pos) / log_gamma).astype(np.int64),
                                 return_counts=True)
        part.buckets = dict(zip(keys.tolist(), counts.tolist(), strict=True))
    part.count = int(v.size)
    part.total = float(v.sum())
    part.min, part.max = float(v.min()), float(v.max())
    sketch.merge(part)


@dataclasses.dataclass
class WindowStats:
    """One window's counts so far."""

    count: int = 0
    errors: int = 0
    late: int = 0  # records that arrived after their own window had closed
    errors_by_kind: Counter[str] = dataclasses.field(default_factory=Counter)
    predictions: Counter[str] = dataclasses.field(default_factory=Counter)
    models: Counter[tuple[str, int]] = dataclasses.field(default_factory=Counter)
    sketch: DDSketch = dataclasses.field(default_factory=DDSketch)

    def add(self, models: Sequence[str], versions: Sequence[int], latencies: Sequence[float],
            kinds: Sequence[str | None], tops: Sequence[str | None], *, late: int = 0) -> None:
        """Count a batch of records (parallel sequences, one item per inference)."""
        n = len(latencies)
        self.count += n
        self.late += late
        kind_counts: Counter[str | None] = Counter(kinds)
        ok = kind_counts.pop(None, 0)
        self.errors += n - ok
        self.errors_by_kind.update(cast("Counter[str]", kind_counts))
        top_counts: Counter[str | None] = Counter(tops)
        top_counts.pop(None, None)
        self.predictions.update(cast("Counter[str]", top_counts))
        if len(set(models)) == 1 and len(set(versions)) == 1:
            self.models[(models[0], int(versions[0]))] += n
        else:
            self.models.update(zip(models, (int(v) for v in versions), strict=True))
        add_latencies(self.sketch, np.fromiter(latencies, dtype=np.float64, count=n))

    def copy(self) -> WindowStats:
        return WindowStats.from_state(self.state())

    def dominant_model(self) -> tuple[str, int]:
        return self.models.most_common(1)[0][0] if self.models else ("", 0)

    def state(self) -> dict[str, Any]:
        return {"n": self.count, "e": self.errors, "late": self.late,
                "k": dict(self.errors_by_kind), "p": dict(self.predictions),
                "m": [[m, v, n] for (m, v), n in self.models.items()],
                "s": self.sketch.to_dict()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WindowStats:
        """Raises: ValueError for a state this agent did not write."""
        try:
            return cls(count=int(state["n"]), errors=int(state["e"]),
                       late=int(state.get("late", 0)), errors_by_kind=Counter(state["k"]),
                       predictions=Counter(state["p"]),
                       models=Counter({(str(m), int(v)): int(n) for m, v, n in state["m"]}),
                       sketch=DDSketch.from_dict(state["s"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"unreadable window state: {exc}") from exc


def make_summary(stats: WindowStats, *, seq: int, start: float, end: float,
                 system: dict[str, float], shadow: dict[str, Any] | None = None,
                 stream: str = "", drift: dict[str, Any] | None = None,
                 inputs: dict[str, Any] | None = None,
                 buffer: dict[str, Any] | None = None) -> Summary:
    """The summary of a closed window."""
    model, version = stats.dominant_model()
    pct: dict[str, float] = {}
    if stats.sketch.count:
        for q in (50, 95, 99):
            pct[f"p{q}"] = round(stats.sketch.quantile(q / 100) or 0.0, 4)
        pct["max"] = round(stats.sketch.max, 4)
    return Summary(seq=seq, window_start=start, window_end=end, count=stats.count,
                   errors=stats.errors, model=model, version=version, latency_ms=pct,
                   predictions={str(k): v for k, v in sorted(stats.predictions.items())},
                   system=system, shadow=shadow or {}, stream=stream,
                   latency_sketch=stats.sketch.to_dict(),
                   errors_by_kind=dict(sorted(stats.errors_by_kind.items())),
                   inputs=inputs or {}, drift=drift or {}, buffer=buffer or {})


@dataclasses.dataclass(frozen=True, eq=False)
class DriftSpec:
    """A model's reference profile, prepared for the inference path and the writer.

    The inference path copies only the profiled columns of the first input (or the
    whole row when every feature is profiled), so the drift window sees compact rows:
    column ``j`` is feature ``features[j]``.
    """

    profile: dict[str, Any]  # the reference profile with feature index 0..k-1
    features: tuple[int, ...]  # original feature index of each compact column
    columns: np.ndarray | None  # None: the row is the profiled features, copy it whole

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> DriftSpec | None:
        """None when the bundle has no (usable) profile: no drift for this model."""
        profile = manifest.reference_profile
        try:
            index = [int(i) for i in profile["features"]["index"]]
            compact = {**profile, "features": {**profile["features"],
                                               "index": list(range(len(index)))}}
            DriftWindow(compact)  # readable?
        except (KeyError, TypeError, ValueError):
            return None
        if not index:
            return None
        shape = manifest.inputs[0].shape[1:] if manifest.inputs else []
        width = math.prod(d for d in shape if isinstance(d, int)) if all(
            isinstance(d, int) for d in shape) else None
        if width is not None and max(index) >= width:
            return None  # a profile for another input shape
        whole = width is not None and index == list(range(width))
        return cls(compact, tuple(index), None if whole else np.asarray(index, dtype=np.intp))

    def rows(self, x: np.ndarray) -> np.ndarray | None:
        """The profiled columns of a batch, copied (the caller may reuse its array)."""
        try:
            if self.columns is None:
                return x.copy()
            return x.reshape(len(x), -1)[:, self.columns]
        except (IndexError, ValueError, TypeError, AttributeError):
            return None

    def window(self) -> DriftWindow:
        return DriftWindow(self.profile)

    def scores(self, window: DriftWindow, predictions: dict[str, int]) -> dict[str, Any]:
        out = window.scores(predictions)
        if "top" in out:
            out["top"] = {str(self.features[int(k)]): v for k, v in out["top"].items()}
        return out


def summarize(rows: list[tuple[Any, ...]], *, seq: int, start: float, end: float,
              system: dict[str, float], shadow: dict[str, Any] | None = None) -> Summary:
    """Build one window's summary from ``(model, version, latency_ms, ok, top[, kind])`` rows."""
    stats = WindowStats()
    if rows:
        kinds = [None if r[3] else (r[5] if len(r) > 5 and r[5] else "error") for r in rows]
        stats.add([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], kinds,
                  [r[4] if r[3] else None for r in rows])
    return make_summary(stats, seq=seq, start=start, end=end, system=system, shadow=shadow)
