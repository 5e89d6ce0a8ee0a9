"""Summary bytes uplinked vs the raw per-inference records they cover.

A clock-accelerated run of the digits model at ``RATE`` inferences/s: real inputs
from the eval set, real onnxruntime outputs and latencies, recorded through the
telemetry buffer with the bundle's reference profile (drift and input statistics on)
and real system metrics. Figure: the bytes of the summaries exactly as the agent
publishes them (``Summary.encode()``, ``historical`` set as on a replay). Baseline: what
a naive tool would uplink instead, one compact JSON object per inference: ``ts``,
``model``, ``version``, ``latency_ms``, ``ok``, ``top`` and the input vector. Target:
summaries ≤ 1% of that.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from . import make_result
from ._digits import MODEL, eval_inputs, labels, manifest

__all__ = ["SIZES", "run"]

SIZES = {"tiny": 0.05, "small": 0.25, "medium": 1.0, "large": 4.0, "full": 1.0}  # hours
RATE = 10.0  # inferences per second
WINDOW_S = 60.0
TARGET_RATIO = 0.01
T0 = 1_700_000_040.0


def run(size: str = "full") -> dict[str, Any]:
    """Raises: ValueError for an unknown size."""
    from edgefleet.agent._system import SystemMetrics
    from edgefleet.agent._windows import DriftSpec
    from edgefleet.agent.runtime import OnnxRuntime
    from edgefleet.agent.telemetry import TelemetryBuffer

    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    n = max(int(SIZES[size] * 3600 * RATE), int(2 * WINDOW_S * RATE))
    x = eval_inputs()
    names = labels()
    rt = OnnxRuntime(MODEL)
    spec = DriftSpec.from_manifest(manifest())
    raw_bytes = 0
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-summary-") as tmp:
        root = Path(tmp)
        buf = TelemetryBuffer(root / "telemetry.db", window_s=WINDOW_S, queue_max=n + 1,
                              system_metrics=SystemMetrics(root))
        try:
            buf.close_windows(T0)
            for i in range(n):
                row = x[i % len(x)][None, :]
                start = time.perf_counter()
                probs = rt.run({"pixels": row})["probs"]
                latency_ms = (time.perf_counter() - start) * 1000.0
                top = names[int(probs[0].argmax())]
                ts = T0 + i / RATE
                buf.record(ts, "digits", 1, latency_ms, True, top, None,
                           spec.rows(row) if spec else None, spec)
                raw_bytes += len(json.dumps(
                    {"ts": ts, "model": "digits", "version": 1, "latency_ms": latency_ms,
                     "ok": True, "top": top, "input": row[0].tolist()},
                    separators=(",", ":")))
            end = T0 + n / RATE
            buf.close_windows(end + WINDOW_S)
            summaries = buf.pending(end + WINDOW_S, resend_after_s=0, limit=10**6)
        finally:
            buf.stop()
    sent = [dataclasses.replace(s, historical=True).encode() for s in summaries]
    summary_bytes = sum(len(p) for p in sent)
    ratio = summary_bytes / raw_bytes
    return make_result(
        "summary_bytes", figure=summary_bytes, unit="bytes", baseline=raw_bytes,
        ratio=round(ratio, 5), target=f"<= {TARGET_RATIO:.0%} of raw",
        passed=ratio <= TARGET_RATIO, target_value=TARGET_RATIO, target_of="ratio",
        target_op="<=", why=(f"{summary_bytes / len(sent):.0f} bytes per summary cover only "
                             f"{n / len(sent):.0f} inferences at {RATE:g}/s"),
        inferences=n, rate_per_s=RATE, window_s=WINDOW_S,
        summaries=len(sent), bytes_per_summary=round(summary_bytes / len(sent)),
        raw_bytes_per_inference=round(raw_bytes / n, 1),
        inferences_per_summary=round(n / len(sent), 1))
