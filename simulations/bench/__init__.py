"""Benchmarks: figures and ratios against a baseline measured in the same run.

Each benchmark is a module of this package with ``SIZES`` (the first is the smallest,
for smoke tests and ``--quick``) and ``run(size: str) -> dict | list[dict]``: one row,
or several (``module.part``). A row carries what the runner prints — ``benchmark``,
``figure``, ``unit``, ``baseline``, ``ratio``, ``target`` (text), ``passed`` and, for
the verdict, the target as a number and a ``why`` (``make_result`` builds them) — plus
whatever detail the module wants kept in the JSON. A row with ``skipped`` (the reason)
has no figures. ``run`` may also take keyword options the runner passes when given:
``duration`` (seconds, for sustained runs) and ``progress`` (a callable for long work).

Register a benchmark by adding its module name to ``BENCHMARKS``; run them with
``edgefleet bench`` (or ``python -m edgefleet.simulations.bench``). Results are kept as
JSON in a history folder and each run is compared with the previous one of the same
size (docs/benchmarks.md). Benchmarks print figures; they are not timed tests.
"""

from __future__ import annotations

from typing import Any

from ._report import compare, render, verdict
from ._runner import main, run_benchmarks

__all__ = ["BENCHMARKS", "compare", "main", "make_result", "render", "run_benchmarks",
           "verdict"]

BENCHMARKS: tuple[str, ...] = (
    "buffer_write",  # telemetry buffer records/s vs raw batched SQLite inserts
    "predict_overhead",  # Agent.predict p50 (telemetry on) vs raw onnxruntime session.run
    "summary_bytes",  # summary bytes uplinked vs the raw per-inference records they cover
    "ingest",  # controller ingest summaries/s through MQTT vs raw batched SQLite inserts
    "optimizer",  # int8 ONNX and .tflite variants: size, p50, accuracy vs fp32 ONNX
    "optimizer_zoo",  # optimize on every ONNX model of the zoo: plan, int8 share, verdict
    "v2_rest",  # the agent's v2 REST endpoint (JSON, binary; digits, 640x640) vs session.run
    "v2_grpc",  # the agent's v2 gRPC service (digits, 640x640) vs session.run
    "kserve_peer",  # the agent's v2 REST vs KServe's Python server, same file: p50 and RSS
    "agent_footprint",  # agent process cold start and RSS vs a bare onnxruntime process
    "rollout",  # a rollout through the controller vs a raw MQTT fan-out (edgefleet simulate)
    "console",  # web console devices list and overview (10,000 devices) vs GET /v1/devices
)


def make_result(benchmark: str, *, figure: float, unit: str, baseline: float, ratio: float,
                target: str, passed: bool | None, target_value: float | None = None,
                target_of: str = "figure", target_op: str = "", why: str = "",
                **detail: Any) -> dict[str, Any]:
    """The standard result of one benchmark row (``detail`` goes into the JSON only).

    Args:
        benchmark: the row's name (``module`` or ``module.part``).
        figure: what was measured; ``baseline``: the same measured in the same run
            without edgefleet's part; ``ratio``: ``figure / baseline``.
        target: the target as text; ``passed``: whether it was met (``None``: no target).
        target_value, target_of, target_op: the target as a number, on ``"figure"`` or
            ``"ratio"``, with ``">="`` or ``"<="``: the runner says by how much a miss
            missed, and which direction of change is better.
        why: what explains a miss, from what was measured (printed when missed).

    Raises:
        ValueError: ``target_of`` or ``target_op`` is not one of the above.
    """
    if target_of not in ("figure", "ratio") or target_op not in ("", ">=", "<="):
        raise ValueError("target_of is 'figure' or 'ratio', target_op '>=', '<=' or ''")
    return {"benchmark": benchmark, "figure": figure, "unit": unit, "baseline": baseline,
            "ratio": ratio, "target": target, "passed": passed, "target_value": target_value,
            "target_of": target_of, "target_op": target_op, "why": why, **detail}
