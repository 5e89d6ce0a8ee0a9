"""Mergeable telemetry aggregates, pure: what queries, rollups, gates and alerts add up.

An ``Aggregate`` is the sum of any number of summary windows: counts, errors by kind,
predictions, the merged latency sketch (``contract.sketch.DDSketch``), drift scores
and input counters. Two aggregates merge into the aggregate of their windows, in any
order and grouping, so an hourly rollup of a device's windows answers exactly what
the windows themselves would (latency quantiles within the sketch's relative error
``alpha``; sums exact up to float rounding). That is what lets the controller delete
raw summaries after ``telemetry_raw_retention_s`` without changing any answer.

Latency from windows without a sketch (agents from before sketches) is kept as
count-weighted sums of the percentiles they reported; an answer mixes the two by
inference count and says which it used (``source``: ``sketch``, ``reported``,
``mixed``). Sketches of another ``alpha`` than ``ALPHA`` are treated the same way.

A window's drift score is ``max(psi_mean, psi_predictions)`` (see ``agent.drift``):
the mean PSI over the profiled features, not the maximum, which over dozens of noisy
features is mostly sampling noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from edgefleet.contract.sketch import DEFAULT_ALPHA, DDSketch

__all__ = ["ALPHA", "HOUR_S", "TOP_FEATURES", "Aggregate", "hour_of", "rollup",
           "sketch_or_none", "sketch_shape_ok", "window_drift_score"]

ALPHA = DEFAULT_ALPHA  # the relative error every answer is stated with
HOUR_S = 3600.0
TOP_FEATURES = 5
_QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def window_drift_score(drift: Mapping[str, Any] | None) -> float | None:
    """``max(psi_mean, psi_predictions)`` of one window's drift scores; None if unscored."""
    if not drift:
        return None
    values = [float(drift[k]) for k in ("psi_mean", "psi_predictions")
              if isinstance(drift.get(k), (int, float)) and not isinstance(drift.get(k), bool)
              and math.isfinite(drift[k])]
    return max(values) if values else None


def sketch_or_none(data: Mapping[str, Any] | None) -> DDSketch | None:
    """A summary's latency sketch, or None when absent or malformed."""
    if not data:
        return None
    try:
        return DDSketch.from_dict(dict(data))
    except (ValueError, TypeError):
        return None


def sketch_shape_ok(data: Mapping[str, Any]) -> bool:
    """A cheap check of a sketch's shape, for the ingest path (``sketch_or_none`` does
    the full validation when it is read)."""
    k, c = data.get("k"), data.get("c")
    return (isinstance(data.get("a"), (int, float)) and isinstance(data.get("n"), int)
            and isinstance(data.get("z"), int) and isinstance(k, list) and isinstance(c, list)
            and len(k) == len(c))


def hour_of(ts: float) -> float:
    """Start of the hour ``ts`` falls in (epoch seconds)."""
    return math.floor(ts / HOUR_S) * HOUR_S


def _top(merged: Mapping[str, float]) -> dict[str, float]:
    best = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_FEATURES]
    return dict(best)


@dataclasses.dataclass
class Aggregate:
    """The sum of summary windows. Build with ``add_window``; combine with ``merge``."""

    windows: int = 0
    historical: int = 0  # windows that arrived as replayed history
    count: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    predictions: dict[str, int] = dataclasses.field(default_factory=dict)
    sketch: DDSketch = dataclasses.field(default_factory=lambda: DDSketch(alpha=ALPHA))
    reported_count: int = 0  # inferences in windows without a usable sketch
    reported: dict[str, float] = dataclasses.field(default_factory=dict)  # p → Σ p·count
    latency_max: float | None = None
    drift_windows: int = 0
    drift_samples: int = 0
    drift_sum: float = 0.0  # Σ window score · samples
    drift_max: float | None = None
    drift_top: dict[str, float] = dataclasses.field(default_factory=dict)
    inputs: dict[str, int] = dataclasses.field(default_factory=dict)  # samples, out_of_range…
    first_window: float | None = None
    last_window: float | None = None
    devices: set[str] = dataclasses.field(default_factory=set)

    # -- building -----------------------------------------------------------------------
    def add_window(self, row: Mapping[Any, Any]) -> Aggregate:
        """Add one stored summary (a telemetry row: columns plus ``payload``)."""
        payload = row.get("payload") or {}
        n = int(row.get("count") or 0)
        self.windows += 1
        self.historical += bool(row.get("historical"))
        self.count += n
        self.errors += int(row.get("errors") or 0)
        _add_counts(self.errors_by_kind, row.get("errors_by_kind"))
        _add_counts(self.predictions, payload.get("predictions"))
        sketch = row.get("latency_sketch")
        parsed = sketch if isinstance(sketch, DDSketch) else sketch_or_none(sketch)
        if parsed is not None and math.isclose(parsed.alpha, ALPHA):
            self.sketch.merge(parsed)
        else:
            reported = payload.get("latency_ms") or {}
            if n and reported.get("p95") is not None:
                self.reported_count += n
                for name, _q in _QUANTILES:
                    value = reported.get(name, reported["p95"])
                    self.reported[name] = self.reported.get(name, 0.0) + float(value) * n
            if reported.get("max") is not None:
                self.latency_max = _max(self.latency_max, float(reported["max"]))
        drift = row.get("drift") or {}
        score = window_drift_score(drift)
        if score is not None:
            samples = int(drift.get("samples") or 1)
            self.drift_windows += 1
            self.drift_samples += samples
            self.drift_sum += score * samples
            self.drift_max = _max(self.drift_max, score)
            top = dict(self.drift_top)
            for feature, psi in (drift.get("top") or {}).items():
                if isinstance(psi, (int, float)):
                    top[str(feature)] = max(top.get(str(feature), -math.inf), float(psi))
            self.drift_top = _top(top)
        for key in ("samples", "out_of_range", "non_finite"):
            value = (row.get("inputs") or {}).get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                self.inputs[key] = self.inputs.get(key, 0) + value
        start, end = row.get("window_start"), row.get("window_end")
        if start is not None:
            self.first_window = _min(self.first_window, float(start))
        if end is not None:
            self.last_window = _max(self.last_window, float(end))
        if row.get("device"):
            self.devices.add(str(row["device"]))
        return self

    def merge(self, other: Aggregate) -> Aggregate:
        """Add ``other`` into this aggregate (in place); returns self."""
        self.windows += other.windows
        self.historical += other.historical
        self.count += other.count
        self.errors += other.errors
        _add_counts(self.errors_by_kind, other.errors_by_kind)
        _add_counts(self.predictions, other.predictions)
        self.sketch.merge(other.sketch)
        self.reported_count += other.reported_count
        for k, v in other.reported.items():
            self.reported[k] = self.reported.get(k, 0.0) + v
        if other.latency_max is not None:
            self.latency_max = _max(self.latency_max, other.latency_max)
        self.drift_windows += other.drift_windows
        self.drift_samples += other.drift_samples
        self.drift_sum += other.drift_sum
        if other.drift_max is not None:
            self.drift_max = _max(self.drift_max, other.drift_max)
        top = dict(self.drift_top)
        for k, v in other.drift_top.items():
            top[k] = max(top.get(k, -math.inf), v)
        self.drift_top = _top(top)
        _add_counts(self.inputs, other.inputs)
        if other.first_window is not None:
            self.first_window = _min(self.first_window, other.first_window)
        if other.last_window is not None:
            self.last_window = _max(self.last_window, other.last_window)
        self.devices |= other.devices
        return self

    # -- answering ----------------------------------------------------------------------
    def quantile(self, q: float) -> float | None:
        """Latency at quantile ``q`` (ms): the merged sketch's, mixed with reported
        percentiles by inference count when some windows had no sketch."""
        name = {0.5: "p50", 0.95: "p95", 0.99: "p99"}.get(q)
        from_sketch = self.sketch.quantile(q) if self.sketch.count else None
        if not self.reported_count or name is None:
            return from_sketch
        reported = self.reported[name] / self.reported_count
        if from_sketch is None:
            return reported
        n = self.sketch.count
        return (from_sketch * n + reported * self.reported_count) / (n + self.reported_count)

    @property
    def latency_source(self) -> str | None:
        if self.sketch.count and self.reported_count:
            return "mixed"
        if self.sketch.count:
            return "sketch"
        return "reported" if self.reported_count else None

    @property
    def drift_mean(self) -> float | None:
        return self.drift_sum / self.drift_samples if self.drift_samples else None

    def answer(self) -> dict[str, Any]:
        """The figures a query returns for this aggregate (JSON-ready)."""
        latency: dict[str, Any] = {name: _round(self.quantile(q)) for name, q in _QUANTILES}
        top = self.sketch.max if self.sketch.count else None
        if self.latency_max is not None:
            top = _max(top, self.latency_max)
        latency.update(max=_round(top), mean=_round(self.sketch.mean),
                       source=self.latency_source, sketched=self.sketch.count,
                       reported=self.reported_count)
        return {
            "windows": self.windows, "devices": len(self.devices), "count": self.count,
            "errors": self.errors, "error_rate": _round(self.errors / self.count)
            if self.count else None,
            "errors_by_kind": dict(sorted(self.errors_by_kind.items())),
            "latency_ms": latency,
            "drift": {"windows": self.drift_windows, "mean": _round(self.drift_mean),
                      "max": _round(self.drift_max), "top": dict(self.drift_top)},
            "inputs": dict(sorted(self.inputs.items())),
            "historical_share": _round(self.historical / self.windows) if self.windows
            else None,
            "first_window": self.first_window, "last_window": self.last_window,
        }

    # -- persistence (rollups) ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["sketch"] = self.sketch.to_dict()
        d["devices"] = sorted(self.devices)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Aggregate:
        """Raises: ValueError for a malformed stored aggregate."""
        values = dict(data)
        try:
            values["sketch"] = DDSketch.from_dict(values.get("sketch") or {"a": ALPHA, "z": 0,
                                                                          "n": 0, "k": [],
                                                                          "c": []})
            values["devices"] = set(values.get("devices") or ())
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in values.items() if k in known})
        except (TypeError, KeyError) as exc:
            raise ValueError(f"malformed aggregate: {exc}") from exc


def rollup(rows: Iterable[Mapping[Any, Any]]) -> dict[tuple[str, float, str, int], Aggregate]:
    """Hourly per-device aggregates: ``(device, hour, model, version)`` → Aggregate."""
    out: dict[tuple[str, float, str, int], Aggregate] = {}
    for row in rows:
        key = (str(row["device"]), hour_of(float(row["window_start"])), str(row["model"]),
               int(row["version"]))
        out.setdefault(key, Aggregate()).add_window(row)
    return out


def _add_counts(into: dict[str, int], counts: Mapping[str, Any] | None) -> None:
    for k, v in (counts or {}).items():
        if isinstance(v, int) and not isinstance(v, bool):
            into[str(k)] = into.get(str(k), 0) + v


def _max(a: float | None, b: float) -> float:
    return b if a is None else max(a, b)


def _min(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 6)
