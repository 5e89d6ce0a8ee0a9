"""Telemetry windows as pure data: per-window accumulators and the summary they make.

``WindowStats`` adds a batch of inference records (numpy, off the inference path)
into a window's counts: inferences, errors by kind, predicted labels, models and a
latency ``DDSketch``. It round-trips through JSON (``state``/``from_state``) so the
telemetry store can keep every open window's accumulator in the same transaction as
the raw rows it counts. ``DriftSpec`` is what a model's reference profile needs on
the inference path (the features of each call) and at window close (PSI scores by
feature name).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import numpy as np

from edgefleet.contract import DDSketch, Manifest, Summary
from edgefleet.contract.features import extract, feature_names

from .drift import DriftWindow, extractors_of

__all__ = ["DriftSpec", "WindowStats", "make_summary", "window_start"]


def window_start(ts: float, window_s: float) -> float:
    return math.floor(ts / window_s) * window_s


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
        self.sketch.add_array(np.fromiter(latencies, dtype=np.float64, count=n))

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


_LATER_ELEMENTS = 65536  # outputs up to this size are copied and described by the writer


class Later(NamedTuple):
    """An output copied on the inference path, described by the telemetry writer."""

    array: np.ndarray


def _prepare(e: dict[str, Any], first: str, shapes: dict[str, list[Any]]
             ) -> tuple[dict[str, Any], tuple[str, str, int] | None]:
    """An extractor made ready for the inference path, and its plan (None: it does not
    fit this model).

    Raises:
        KeyError, TypeError, ValueError: a malformed extractor.
    """
    if not e.get("tensor"):  # the first input, named now that it is known
        e = {**e, "tensor": first}
        e["features"] = feature_names(e)
    kind, name = e["kind"], str(e["tensor"])
    if e.get("source", "input") == "output":
        return e, ("later", name, 0)
    if kind == "tabular":
        index = np.asarray(e["index"], dtype=np.intp)
        shape = shapes.get(name) or []
        sample = list(shape[1:]) if e.get("batched", True) else list(shape)
        if sample and all(isinstance(d, int) for d in sample) and index.size and \
                int(index.max()) >= math.prod(sample):
            return e, None  # a profile for another input shape
        e = {**e, "_index": index, "_top": int(index.max()) if index.size else -1}
        if e.get("batched", True) and np.array_equal(index, np.arange(len(index))):
            return e, ("row", name, len(index))
    elif kind == "tokens":
        e = {**e, "_vocab": np.unique(np.asarray(e.get("vocab", []), dtype=np.int64))}
    return e, ("now", name, 0)


@dataclasses.dataclass(frozen=True, eq=False)
class DriftSpec:
    """A model's reference profile, prepared for the inference path and the writer.

    The inference path computes each extractor's small feature matrix from the call's
    inputs and outputs (``extract``: a few statistics per sample, the tensors are not
    copied); the writer counts them into a ``DriftWindow``.
    """

    profile: dict[str, Any]
    extractors: tuple[dict[str, Any], ...]
    first_input: str
    # per extractor, what the inference path does: ("row", input, width) copies a
    # tabular row profiled at every position; ("later", output, 0) copies a small output
    # for the writer to describe; ("now", tensor, 0) computes the features at once
    plans: tuple[tuple[str, str, int], ...] = ()

    @classmethod
    def from_manifest(cls, manifest: Manifest,
                      profile: dict[str, Any] | None = None) -> DriftSpec | None:
        """The spec for a bundle's profile (``profile``, else the one inline in older
        manifests); None when there is none or none of it fits the model. An extractor
        that does not fit (another input shape, a field missing) is left out: drift must
        never stop a model from serving."""
        profile = manifest.reference_profile if profile is None else profile
        if not profile or not manifest.inputs:
            return None
        try:
            DriftWindow(profile)  # readable?
            found = extractors_of(profile)
        except ValueError:
            return None
        first = manifest.inputs[0].name
        shapes = {t.name: t.shape for t in manifest.inputs}
        resolved, plans = [], []
        for e in found:
            try:
                e, plan = _prepare(e, first, shapes)
            except (KeyError, TypeError, ValueError):
                continue
            if plan is not None:
                resolved.append(e)
                plans.append(plan)
        if not resolved:
            return None
        return cls({**profile, "extractors": resolved}, tuple(resolved), first, tuple(plans))

    def rows(self, x: np.ndarray) -> list[Any] | None:
        """``extract`` for a call that feeds only the first input."""
        return self.extract({self.first_input: x}, {})

    def extract(self, feeds: dict[str, np.ndarray],
                outputs: dict[str, np.ndarray]) -> list[Any] | None:
        """Each extractor's ``[samples, features]`` for one call, or a copy of a small
        output for the writer (``resolve``); None when nothing applies. The caller may
        reuse its arrays afterwards: nothing here keeps a reference to them."""
        found: list[Any] = []
        hit = False
        for (how, name, width), spec in zip(self.plans, self.extractors, strict=True):
            m: Any = None
            if how == "row":
                x = feeds.get(name)
                if x is not None and x.ndim and x.size == len(x) * width:
                    m = x.reshape(len(x), width).copy()
            elif how == "later":
                y = outputs.get(name)
                if y is not None:
                    m = Later(y.copy()) if y.size <= _LATER_ELEMENTS else \
                        extract(spec, feeds, outputs)
            else:
                m = extract(spec, feeds, outputs)
            hit = hit or m is not None
            found.append(m)
        return found if hit else None

    def merge(self, calls: list[list[Any]]) -> list[np.ndarray | None]:
        """The writer's half of ``extract``: one matrix per extractor for a batch of
        calls. Copied outputs with a batch axis are stacked and described at once (one
        extraction per flush, not per call); the others one call at a time. An
        extractor whose calls do not stack (shapes changed mid-batch) gives None.
        """
        merged: list[np.ndarray | None] = []
        for j, spec in enumerate(self.extractors):
            parts = [call[j] for call in calls if call[j] is not None]
            later = [p.array for p in parts if isinstance(p, Later)]
            try:
                stacked = (extract(spec, {}, {spec["tensor"]: np.concatenate(later)})
                           if len(later) > 1 and spec.get("batched", True) else None)
            except ValueError:  # outputs of different shapes: described one by one
                stacked = None
            if stacked is not None:
                parts = [p for p in parts if not isinstance(p, Later)] + [stacked]
            else:
                parts = [extract(spec, {}, {spec["tensor"]: p.array})
                         if isinstance(p, Later) else p for p in parts]
            try:
                parts = [p for p in parts if p is not None]
                merged.append(np.concatenate(parts) if len(parts) > 1
                              else parts[0] if parts else None)
            except ValueError:  # shapes changed within the batch
                merged.append(None)
        return merged

    def window(self) -> DriftWindow:
        return DriftWindow(self.profile)

    def scores(self, window: DriftWindow, predictions: dict[str, int]) -> dict[str, Any]:
        return window.scores(predictions)


def summarize(rows: list[tuple[Any, ...]], *, seq: int, start: float, end: float,
              system: dict[str, float], shadow: dict[str, Any] | None = None) -> Summary:
    """Build one window's summary from ``(model, version, latency_ms, ok, top[, kind])`` rows."""
    stats = WindowStats()
    if rows:
        kinds = [None if r[3] else (r[5] if len(r) > 5 and r[5] else "error") for r in rows]
        stats.add([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], kinds,
                  [r[4] if r[3] else None for r in rows])
    return make_summary(stats, seq=seq, start=start, end=end, system=system, shadow=shadow)
