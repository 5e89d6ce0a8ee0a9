"""Benchmarks: figures and ratios against a baseline measured in the same run.

Each benchmark is a module of this package with ``SIZES`` (the first is the smallest,
for smoke tests) and ``run(size: str) -> dict``. The dict carries the row the runner
prints — ``benchmark``, ``figure``, ``unit``, ``baseline``, ``ratio``, ``target``
(text) and ``passed`` (``make_result`` builds them) — plus whatever detail the module
wants kept in the JSON. Register a benchmark by adding its module name to
``BENCHMARKS``; run them with ``python -m edgefleet.simulations.bench`` or
``edgefleet bench``. Benchmarks print figures; they are not timed tests.
"""

from __future__ import annotations

from typing import Any

from ._runner import main, render, run_benchmarks

__all__ = ["BENCHMARKS", "main", "make_result", "render", "run_benchmarks"]

BENCHMARKS: tuple[str, ...] = (
    "buffer_write",  # telemetry buffer records/s vs raw batched SQLite inserts
    "predict_overhead",  # Agent.predict p50 (telemetry on) vs raw onnxruntime session.run
    "summary_bytes",  # summary bytes uplinked vs the raw per-inference records they cover
    "ingest",  # controller ingest summaries/s through MQTT vs raw batched SQLite inserts
)


def make_result(benchmark: str, *, figure: float, unit: str, baseline: float, ratio: float,
                target: str, passed: bool, **detail: Any) -> dict[str, Any]:
    """The standard result of one benchmark (``detail`` goes into the JSON only)."""
    return {"benchmark": benchmark, "figure": figure, "unit": unit, "baseline": baseline,
            "ratio": ratio, "target": target, "passed": passed, **detail}
