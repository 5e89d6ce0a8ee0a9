"""Drift on the device: each telemetry window's data against the reference profile the
bundle carries, scored by PSI (population stability index).

The profile lists *extractors* (``edgefleet.contract.features``): for each input or
output that describes the data, its kind (image, audio, tokens, tabular, scores…),
its features and each feature's reference bins. On the inference path the agent
computes the small feature matrices of each call (``DriftSpec.extract`` in
``_windows``); the telemetry writer counts them into a ``DriftWindow`` (numpy, off the
inference path); at window close ``scores`` turns the counts into PSI per feature and
for the predicted classes. Only the scores travel in the summary (the worst features
by name, the maximum, the mean), so drift costs a few hundred bytes per window
whatever the input size.

PSI = Σ (actualᵢ − expectedᵢ) · ln(actualᵢ / expectedᵢ) over bins, with shares
smoothed by ``EPSILON`` so an empty bin does not make it infinite. Common reading:
< 0.1 stable, 0.1–0.25 moderate shift, > 0.25 significant shift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgefleet.contract.features import extract

__all__ = ["EPSILON", "MIN_SAMPLES", "DriftWindow", "extractors_of", "psi"]

EPSILON = 1e-4
MIN_SAMPLES = 50  # below this, a window's PSI is mostly sampling noise: not scored
TOP_FEATURES = 5


def psi(expected: np.ndarray | list[float], counts: np.ndarray | list[int]) -> float:
    """PSI of observed ``counts`` against ``expected`` shares (same bins)."""
    e = np.clip(np.asarray(expected, dtype=np.float64), EPSILON, None)
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return 0.0
    a = np.clip(c / total, EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def extractors_of(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """The profile's extractors; a profile of the first format (values at positions of
    the first input, ``features.index``) reads as one tabular extractor.

    Raises:
        ValueError: a profile this agent cannot read.
    """
    try:
        if "extractors" in profile:
            found = [dict(e) for e in profile["extractors"]]
        else:
            feats = profile["features"]
            rng = profile.get("range") or {}
            index = [int(i) for i in feats["index"]]
            found = [{"source": "input", "tensor": None, "kind": "tabular", "batched": True,
                      "index": index, "features": [f"input[{i}]" for i in index],
                      "edges": feats["edges"], "expected": feats["expected"],
                      "min": rng.get("min", []), "max": rng.get("max", [])}]
        for e in found:
            if not (len(e["features"]) == len(e["edges"]) == len(e["expected"])):
                raise ValueError(f"extractor {e.get('tensor')}: features, edges and "
                                 "expected differ in length")
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"unreadable reference profile: {exc}") from exc
    return found


class _Group:
    """One extractor's bins and this window's counts."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.source = str(spec.get("source", "input"))
        self.names = [str(n) for n in spec["features"]]
        self.edges = [np.asarray(e, dtype=np.float64) for e in spec["edges"]]
        self.expected = [np.asarray(e, dtype=np.float64) for e in spec["expected"]]
        for e, x in zip(self.edges, self.expected, strict=True):
            if len(x) != len(e) + 1:
                raise ValueError("reference profile: a feature's bins do not fit its edges")
        self.low = np.asarray(spec.get("min") or [], dtype=np.float64)
        self.high = np.asarray(spec.get("max") or [], dtype=np.float64)
        self.counts = [np.zeros(len(e) + 1, dtype=np.int64) for e in self.edges]
        self.samples = 0
        self.non_finite = 0
        self.out_of_range = 0
        self.total = 0.0
        self.squares = 0.0

    def add(self, m: np.ndarray) -> None:
        if m.ndim != 2 or m.shape[1] != len(self.edges):
            return
        m = np.asarray(m, dtype=np.float64)  # rows copied as they came (fp16, uint8…)
        finite = np.isfinite(m).all(axis=1)
        self.non_finite += int((~finite).sum())
        m = m[finite]
        if not len(m):
            return
        for j, cut in enumerate(self.edges):
            self.counts[j] += np.bincount(np.searchsorted(cut, m[:, j], side="right"),
                                          minlength=len(cut) + 1)
        if len(self.low) == m.shape[1] == len(self.high):
            self.out_of_range += int(((m < self.low) | (m > self.high)).any(axis=1).sum())
        self.samples += len(m)
        self.total += float(m.sum())
        self.squares += float(np.square(m).sum())


class DriftWindow:
    """Per-feature bin counts for one window, against one reference profile.

    Args:
        profile: the bundle's reference profile (see ``edgefleet.optimizer.profile_model``).

    Raises:
        ValueError: a profile this agent cannot read.
    """

    def __init__(self, profile: dict[str, Any]) -> None:
        try:
            self.groups = [_Group(e) for e in extractors_of(profile)]
            preds = profile.get("predictions") or {}
            self.labels = [str(x) for x in preds.get("labels", [])]
            self.pred_expected = np.asarray(preds.get("expected", []), dtype=np.float64)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"unreadable reference profile: {exc}") from exc

    def add(self, matrices: Sequence[np.ndarray | None] | np.ndarray) -> None:
        """Count one batch: a matrix per extractor (None: the call did not have it), or
        the first input's array itself, from which each extractor takes its features."""
        if isinstance(matrices, np.ndarray):
            feeds = {"": matrices}
            matrices = [extract(g.spec, feeds) for g in self.groups]
        for group, m in zip(self.groups, matrices, strict=False):
            if m is not None:
                group.add(m)

    @property
    def samples(self) -> int:
        """Samples counted by the input extractors (the outputs' when none)."""
        inputs = [g.samples for g in self.groups if g.source == "input"]
        return min(inputs) if inputs else min((g.samples for g in self.groups), default=0)

    def inputs(self) -> dict[str, Any]:
        """Input statistics for the summary: samples, mean, std, out-of-range, non-finite."""
        groups = [g for g in self.groups if g.source == "input"] or self.groups
        n = sum(g.samples * len(g.edges) for g in groups)
        mean = sum(g.total for g in groups) / n if n else 0.0
        var = max(sum(g.squares for g in groups) / n - mean * mean, 0.0) if n else 0.0
        if not (math.isfinite(mean) and math.isfinite(var)):  # summaries are strict JSON
            mean = var = 0.0
        return {"samples": self.samples, "mean": round(mean, 6), "std": round(var ** 0.5, 6),
                "out_of_range": sum(g.out_of_range for g in groups),
                "non_finite": sum(g.non_finite for g in groups)}

    def scores(self, predictions: dict[str, int] | None = None) -> dict[str, Any]:
        """PSI per feature (the worst few, by name), max, mean, and for the predictions.

        Features of an extractor with fewer than ``MIN_SAMPLES`` samples in the window
        are not scored; nothing is (``{}``) when no extractor has enough.
        """
        named: dict[str, float] = {}
        for g in self.groups:
            if g.samples < MIN_SAMPLES:
                continue
            for name, e, c in zip(g.names, g.expected, g.counts, strict=True):
                named[name] = psi(e, c)
        if not named:
            return {}
        values = np.fromiter(named.values(), dtype=np.float64)
        worst = sorted(named, key=named.__getitem__, reverse=True)[:TOP_FEATURES]
        out: dict[str, Any] = {
            "samples": self.samples, "psi_max": round(float(values.max()), 4),
            "psi_mean": round(float(values.mean()), 4),
            "top": {k: round(named[k], 4) for k in worst},
        }
        if predictions and len(self.pred_expected):
            counts = [int(predictions.get(label, 0)) for label in self.labels]
            if sum(counts) >= MIN_SAMPLES:
                out["psi_predictions"] = round(psi(self.pred_expected, counts), 4)
        return out
