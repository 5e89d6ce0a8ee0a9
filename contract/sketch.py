"""A mergeable quantile sketch (DDSketch) for latency (numpy for adding arrays at once).

Every value ``x > 0`` falls in bucket ``i = ceil(log_gamma(x))`` with
``gamma = (1 + alpha) / (1 - alpha)``; quantile ``q`` is answered with the midpoint
``2 * gamma**i / (gamma + 1)`` of the bucket holding the value of rank
``floor(q * (n - 1))``, which is within a relative error ``alpha`` of that value.
Sketches merge by adding bucket counts, so the controller can answer fleet-wide and
per-cohort p50/p95/p99 from the devices' per-window sketches with the same guarantee,
instead of averaging percentiles.

Values at or below ``MIN_VALUE`` (0.001 ms by default: 1 µs) are counted in a zero
bucket and answered as 0. The number of buckets is bounded by ``max_buckets``: beyond
it the lowest buckets collapse into one, which only loses accuracy on the lowest
quantiles (Masson et al., "DDSketch", VLDB 2019).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["DEFAULT_ALPHA", "DDSketch"]

DEFAULT_ALPHA = 0.01
MIN_VALUE = 1e-3


@dataclasses.dataclass
class DDSketch:
    """Bucket counts of a value distribution, with relative accuracy ``alpha``."""

    alpha: float = DEFAULT_ALPHA
    max_buckets: int = 2048
    buckets: dict[int, int] = dataclasses.field(default_factory=dict)
    zero: int = 0
    count: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must be within (0, 1)")
        self._log_gamma = math.log((1 + self.alpha) / (1 - self.alpha))

    # -- building -----------------------------------------------------------------------
    def add(self, value: float, weight: int = 1) -> None:
        """Count ``value`` (negative values are counted as 0)."""
        if weight <= 0:
            return
        if value <= MIN_VALUE:
            self.zero += weight
        else:
            i = math.ceil(math.log(value) / self._log_gamma)
            self.buckets[i] = self.buckets.get(i, 0) + weight
            if len(self.buckets) > self.max_buckets:
                self._collapse()
        self.count += weight
        self.total += value * weight
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def add_array(self, values: np.ndarray) -> None:
        """Count many values at once, vectorized: the same buckets as ``add``."""
        v = np.asarray(values, dtype=np.float64)
        if not v.size:
            return
        part = DDSketch(alpha=self.alpha, max_buckets=self.max_buckets)
        low = v <= MIN_VALUE
        part.zero = int(low.sum())
        pos = v[~low]
        if pos.size:
            keys, counts = np.unique(np.ceil(np.log(pos) / self._log_gamma).astype(np.int64),
                                     return_counts=True)
            part.buckets = dict(zip(keys.tolist(), counts.tolist(), strict=True))
        part.count = int(v.size)
        part.total = float(v.sum())
        part.min, part.max = float(v.min()), float(v.max())
        self.merge(part)

    def extend(self, values: Iterable[float]) -> DDSketch:
        for v in values:
            self.add(float(v))
        return self

    def merge(self, other: DDSketch) -> DDSketch:
        """Add ``other``'s counts into this sketch (same ``alpha`` required)."""
        if not math.isclose(other.alpha, self.alpha):
            raise ValueError(f"cannot merge sketches of alpha {self.alpha} and {other.alpha}")
        for i, n in other.buckets.items():
            self.buckets[i] = self.buckets.get(i, 0) + n
        if len(self.buckets) > self.max_buckets:
            self._collapse()
        self.zero += other.zero
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def _collapse(self) -> None:
        keys = sorted(self.buckets)
        extra = keys[: len(keys) - self.max_buckets + 1]
        lowest = keys[len(extra)]
        self.buckets[lowest] += sum(self.buckets.pop(k) for k in extra)

    # -- answering ----------------------------------------------------------------------
    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0..1), within ``alpha`` relative error; None if empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError("q must be within 0..1")
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        if rank < self.zero:
            return 0.0
        seen = self.zero
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen > rank:
                gamma = math.exp(self._log_gamma)
                value = 2 * gamma**i / (gamma + 1)
                return min(max(value, self.min), self.max)
        return self.max

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    # -- wire format ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Compact JSON: ``{"a", "z", "n", "s", "lo", "hi", "k": [...], "c": [...]}``."""
        keys = sorted(self.buckets)
        return {"a": self.alpha, "z": self.zero, "n": self.count, "s": round(self.total, 6),
                "lo": self.min if self.count else None, "hi": self.max if self.count else None,
                "k": keys, "c": [self.buckets[k] for k in keys]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DDSketch:
        """Raises: ValueError for a malformed sketch."""
        try:
            keys, counts = list(data["k"]), list(data["c"])
            if len(keys) != len(counts) or any(int(c) < 0 for c in counts):
                raise ValueError("bucket keys and counts differ in length or are negative")
            sketch = cls(alpha=float(data["a"]))
            sketch.buckets = {int(k): int(c) for k, c in zip(keys, counts, strict=True) if c}
            sketch.zero = int(data["z"])
            sketch.count = int(data["n"])
            sketch.total = float(data.get("s", 0.0))
            if data.get("lo") is not None:
                sketch.min, sketch.max = float(data["lo"]), float(data["hi"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed sketch: {exc}") from exc
        if sketch.count != sketch.zero + sum(sketch.buckets.values()):
            raise ValueError("malformed sketch: counts do not add up")
        return sketch
