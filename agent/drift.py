"""Drift on the device: each telemetry window's inputs and predictions against the
reference profile the bundle carries, scored by PSI (population stability index).

``DriftWindow`` counts, per profiled feature, how many of a window's inputs fall in
each reference bin (numpy, off the inference path: the telemetry writer calls
``add``), then ``scores`` turns the counts into PSI per feature and for the
predictions. Only the scores travel in the summary (the worst features, the maximum,
the mean), so drift costs a few hundred bytes per window whatever the input size.

PSI = Σ (actualᵢ − expectedᵢ) · ln(actualᵢ / expectedᵢ) over bins, with shares
smoothed by ``EPSILON`` so an empty bin does not make it infinite. Common reading:
< 0.1 stable, 0.1–0.25 moderate shift, > 0.25 significant shift.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["EPSILON", "MIN_SAMPLES", "DriftWindow", "psi"]

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


class DriftWindow:
    """Per-feature bin counts for one window, against one reference profile.

    Args:
        profile: ``Manifest.reference_profile`` (see ``edgefleet.optimizer.reference_profile``).

    Raises:
        ValueError: a profile this agent cannot read.
    """

    def __init__(self, profile: dict[str, Any]) -> None:
        try:
            feats = profile["features"]
            self.index = np.asarray(feats["index"], dtype=np.int64)
            self.edges = [np.asarray(e, dtype=np.float64) for e in feats["edges"]]
            self.expected = [np.asarray(e, dtype=np.float64) for e in feats["expected"]]
            rng = profile.get("range") or {}
            self.low = np.asarray(rng.get("min", []), dtype=np.float64)
            self.high = np.asarray(rng.get("max", []), dtype=np.float64)
            preds = profile.get("predictions") or {}
            self.labels = [str(x) for x in preds.get("labels", [])]
            self.pred_expected = np.asarray(preds.get("expected", []), dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable reference profile: {exc}") from exc
        if not (len(self.index) == len(self.edges) == len(self.expected)):
            raise ValueError("reference profile: index, edges and expected differ in length")
        self.counts = [np.zeros(len(e) + 1, dtype=np.int64) for e in self.edges]
        self.samples = 0
        self.non_finite = 0
        self.out_of_range = 0
        self._sum = 0.0
        self._sq = 0.0

    def add(self, x: np.ndarray) -> None:
        """Count a batch of inputs (first axis = samples) into the window."""
        flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if flat.shape[1] <= int(self.index.max(initial=-1)):
            return  # not this model's input shape: nothing to compare
        cols = flat[:, self.index]
        finite = np.isfinite(cols).all(axis=1)
        self.non_finite += int((~finite).sum())
        cols = cols[finite]
        if not len(cols):
            return
        for j, cut in enumerate(self.edges):
            self.counts[j] += np.bincount(np.searchsorted(cut, cols[:, j], side="right"),
                                          minlength=len(cut) + 1)
        if len(self.low) == cols.shape[1]:
            self.out_of_range += int(((cols < self.low) | (cols > self.high)).any(axis=1).sum())
        self.samples += len(cols)
        self._sum += float(cols.sum())
        self._sq += float(np.square(cols).sum())

    def inputs(self) -> dict[str, Any]:
        """Input statistics for the summary: samples, mean, std, out-of-range, non-finite."""
        n = self.samples * len(self.index)
        mean = self._sum / n if n else 0.0
        var = max(self._sq / n - mean * mean, 0.0) if n else 0.0
        return {"samples": self.samples, "mean": round(mean, 6), "std": round(var ** 0.5, 6),
                "out_of_range": self.out_of_range, "non_finite": self.non_finite}

    def scores(self, predictions: dict[str, int] | None = None) -> dict[str, Any]:
        """PSI per feature (the worst few), max, mean, and for the predictions.

        Empty (``{}``) when the window has fewer than ``MIN_SAMPLES`` inputs.
        """
        if self.samples < MIN_SAMPLES:
            return {}
        per = np.array([psi(e, c) for e, c in zip(self.expected, self.counts, strict=True)])
        worst = np.argsort(per)[::-1][:TOP_FEATURES]
        out: dict[str, Any] = {
            "samples": self.samples, "psi_max": round(float(per.max()), 4),
            "psi_mean": round(float(per.mean()), 4),
            "top": {str(int(self.index[i])): round(float(per[i]), 4) for i in worst},
        }
        if predictions and len(self.pred_expected):
            counts = [int(predictions.get(label, 0)) for label in self.labels]
            if sum(counts) >= MIN_SAMPLES:
                out["psi_predictions"] = round(psi(self.pred_expected, counts), 4)
        return out
