"""The optimizer on the model zoo: per ONNX model, what was tried, what changed, what was
quantized, and what shipped.

For every ONNX model of ``edgefleet.simulations.zoo`` the registry's path runs:
``optimize_samples`` on its calibration and eval sets (task as the zoo names it). One
row per model: the figure is the shipped model's p50 over fp32's (the baseline, timed
interleaved in the same run, single-sample calls, one thread); the target is "int8
ships within its quality gate". The JSON keeps the method, the plan changes (opset,
pre-processing, per-tensor, folded constants, nodes kept float), quantized ops over
the total and the share of weights in int8, the size ratio, the quality metric and
its value, the verdict and, when fp32 shipped, the reason.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import make_result

__all__ = ["SIZES", "run", "zoo_inputs"]

SIZES = {"tiny": 32, "small": 100, "medium": 200, "large": 400, "full": 200}  # timed runs
_TASKS = ("classification", "detection", "segmentation", "sequence", "embedding")


def _quality(report: dict[str, Any]) -> tuple[str, float | None]:
    if report["metric"] == "top1":
        return "top-1 drop pt", report.get("accuracy_drop_pt")
    values = [f["sqnr_db"] for f in report["quality"].values() if isinstance(f, dict)]
    return "min SQNR dB", min(values) if values else None


def zoo_inputs(m: Any, work: Path) -> tuple[Path, Any, Any, str]:
    """What the optimizer takes for a zoo model: ``(one-file model, calibration samples,
    eval samples, task)`` (external data folded into ``work``)."""
    from edgefleet.optimizer import inline_external_data, inspect_model, load_samples

    path = m.file
    if m.name == "external-data":
        path = work / "external-data.inlined.onnx"
        path.write_bytes(inline_external_data(m.file))
    sig = inspect_model(path)
    ev = load_samples(m.eval_npz.read_bytes(), sig)
    cal = load_samples(m.calibration_npz.read_bytes(), sig, what="calibration set") \
        if m.calibration_npz else ev
    return path, cal, ev, m.task if m.task in _TASKS else ""


def run(size: str, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    from edgefleet.optimizer import OptimizeTarget, optimize_samples
    from edgefleet.simulations.zoo import build_zoo

    say = progress or (lambda _m: None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-zoo-opt-") as tmp:
        root = Path(tmp)
        for name, m in build_zoo(root / "zoo").items():
            if m.runtime != "onnxruntime":
                continue
            say(f"optimizing {name}")
            path, cal, ev, task = zoo_inputs(m, root)
            target = OptimizeTarget(latency_runs=SIZES[size], warmup_runs=10, task=task)
            result = optimize_samples(path, cal, ev, root / f"out-{name}", target)
            rep = result.report
            metric, value = _quality(rep)
            q = rep["quantization"] or {}
            p50 = rep["int8"]["p50_ms"] if result.shipped == "int8" else rep["fp32"]["p50_ms"]
            rows.append(make_result(
                f"optimizer_zoo.{name}", figure=p50, unit="ms", baseline=rep["fp32"]["p50_ms"],
                ratio=p50 / rep["fp32"]["p50_ms"], target="int8 ships within its gates",
                passed=result.shipped == "int8", why=rep["reason"],
                method=rep["method"], plan=rep["plan"], shipped=result.shipped,
                quantized_ops=q.get("quantized_nodes"), ops_total=q.get("ops_total"),
                int8_weight_share=q.get("int8_weight_share"), float_nodes=rep["float_nodes"],
                size_ratio=rep["size_ratio"], p50_ratio=rep["p50_ratio"],
                quality_metric=metric, quality_value=value, opset=m.opset))
    return rows
