"""Reference profiles for drift detection: what a model's inputs and outputs looked like.

``reference_profile`` bins each input feature at its reference deciles and records the
share of reference samples per bin, plus the share of each predicted class. The
profile ships in the bundle (``Manifest.reference_profile``); devices compare each
telemetry window with it by PSI (``edgefleet.agent.drift``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PROFILE_VERSION", "reference_profile"]

PROFILE_VERSION = 1


def reference_profile(x: np.ndarray, predictions: np.ndarray | None = None, *,
                      labels: list[str] | None = None, bins: int = 10,
                      max_features: int = 256) -> dict[str, Any]:
    """Profile reference inputs (and the model's predictions on them).

    Args:
        x: reference inputs, first axis = samples; other axes are flattened.
        predictions: the predicted class index per sample (optional).
        labels: class names by index (default: the indices as strings).
        bins: bins per feature (cut at the reference quantiles).
        max_features: profile at most this many features, evenly spaced.

    Raises:
        ValueError: fewer than ``2 * bins`` samples, or non-finite inputs.
    """
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if flat.shape[0] < 2 * bins:
        raise ValueError(f"a reference profile needs at least {2 * bins} samples")
    if not np.all(np.isfinite(flat)):
        raise ValueError("reference inputs must be finite")
    n_features = flat.shape[1]
    index = np.unique(np.linspace(0, n_features - 1, min(n_features, max_features))
                      .round().astype(int))
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    edges, expected = [], []
    for j in index:
        cuts = np.unique(np.quantile(flat[:, j], qs))
        counts = np.bincount(np.searchsorted(cuts, flat[:, j], side="right"),
                             minlength=len(cuts) + 1)
        edges.append([round(float(c), 6) for c in cuts])
        expected.append([round(float(c) / len(flat), 6) for c in counts])
    profile: dict[str, Any] = {
        "version": PROFILE_VERSION, "bins": bins, "samples": int(flat.shape[0]),
        "features": {"index": [int(i) for i in index], "edges": edges, "expected": expected},
        "range": {"min": [round(float(v), 6) for v in flat[:, index].min(axis=0)],
                  "max": [round(float(v), 6) for v in flat[:, index].max(axis=0)]},
    }
    if predictions is not None:
        preds = np.asarray(predictions).astype(int).ravel()
        k = max(int(preds.max()) + 1, len(labels or []))
        names = list(labels or []) + [str(i) for i in range(len(labels or []), k)]
        share = np.bincount(preds, minlength=k) / len(preds)
        profile["predictions"] = {"labels": names[:k],
                                  "expected": [round(float(s), 6) for s in share]}
    return profile
