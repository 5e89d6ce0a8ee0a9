"""On-device health after activation: a pure judge over what the agent observed.

After a new model is switched in, the agent watches a health window. The judge
decides from counts and latencies (no I/O, explicit time): ``watching`` until the
window has passed, ``healthy`` then, or ``unhealthy`` with a reason as soon as the
model errors too often or is much slower than the model it replaced. The agent acts
on the verdict by itself, so this works with no controller reachable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["HealthPolicy", "Verdict", "judge", "p95"]


@dataclasses.dataclass(frozen=True)
class HealthPolicy:
    """How a device judges a freshly activated model.

    Attributes:
        window_s: how long to watch after activation (0: healthy right after the smoke test).
        max_error_rate: inference errors (model failures, not bad requests) tolerated.
        max_latency_ratio: p95 latency allowed relative to the previous model (``None``: off).
        min_samples: inferences needed before error rate or latency are judged.
        max_trial_restarts: agent restarts tolerated inside one health window before the
            model is presumed to crash the device and is rolled back.
    """

    window_s: float = 0.0
    max_error_rate: float = 0.05
    max_latency_ratio: float | None = 3.0
    min_samples: int = 20
    max_trial_restarts: int = 1

    def __post_init__(self) -> None:
        if self.window_s < 0 or not 0 <= self.max_error_rate <= 1 or self.min_samples < 1:
            raise ValueError("window_s ≥ 0, 0 ≤ max_error_rate ≤ 1, min_samples ≥ 1")
        if self.max_latency_ratio is not None and self.max_latency_ratio <= 0:
            raise ValueError("max_latency_ratio must be > 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HealthPolicy:
        """Build from a desired state's ``health`` field; unknown keys are ignored.

        Raises:
            ValueError: a value of the wrong type or out of range.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ValueError(f"bad health policy: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class Verdict:
    state: str  # "watching" | "healthy" | "unhealthy"
    reason: str = ""


def p95(latencies: Sequence[float]) -> float | None:
    """The 95th percentile, or ``None`` for no samples."""
    return float(np.percentile(np.asarray(latencies, dtype=np.float64), 95)) if latencies else None


def judge(policy: HealthPolicy, *, started_at: float, now: float, count: int, errors: int,
          latency_p95: float | None, baseline_p95: float | None) -> Verdict:
    """Decide a trial's state from what was observed since ``started_at``."""
    # With few samples, judge errors only once they exceed what min_samples would allow.
    enough = count >= policy.min_samples or errors > policy.min_samples * policy.max_error_rate
    if enough and errors > policy.max_error_rate * max(count, 1):
        return Verdict("unhealthy", "error_rate")
    if (policy.max_latency_ratio is not None and baseline_p95 and latency_p95 is not None
            and count >= policy.min_samples
            and latency_p95 > baseline_p95 * policy.max_latency_ratio):
        return Verdict("unhealthy", "latency_regression")
    if now - started_at >= policy.window_s:
        return Verdict("healthy")
    return Verdict("watching")
