"""``optimize_tflite``: a ``.tflite`` model's int8 variant through ai-edge-quantizer, held
to the same gates as ONNX models.

The quantizer's dynamic recipe stores weights in int8 and computes in float (no
calibration, no TensorFlow). What was quantized is read back from the file (tensors
stored as 8-bit integers, their share of the weight elements); quality is top-1 for a
classifier with labels and fidelity to the float model per output otherwise; speed is
single-sample ``invoke`` timed in interleaved blocks with the same noise bound. The
report has the ONNX report's shape, so the registry, the CLI and the bench read both.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.contract.errors import EdgefleetError, OptimizationError
from edgefleet.contract.files import atomic_write
from edgefleet.optimizer._graph import MIN_INT8_SHARE
from edgefleet.optimizer._measure import metric_for, time_blocks
from edgefleet.optimizer._quality import (
    classification_quality,
    fidelity,
    quality_verdict,
    speed_verdict,
)
from edgefleet.optimizer._runtime import describe
from edgefleet.optimizer._samples import Samples
from edgefleet.optimizer._tflite import TfliteRunner, quantize_tflite
from edgefleet.optimizer._types import OptimizationResult, OptimizeTarget

__all__ = ["optimize_tflite", "tflite_summary"]



def tflite_summary(path: Path) -> dict[str, Any]:
    """Weight tensors stored as 8-bit integers and their share of the weight elements
    (constant tensors of at least 16 elements), read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    int8_types = {s.TensorType.INT8, s.TensorType.UINT8}
    float_types = {s.TensorType.FLOAT32, s.TensorType.FLOAT16}
    int8 = flt = tensors = 0
    for graph in model.subgraphs or []:
        for t in graph.tensors or []:
            data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            n = int(np.prod(t.shape)) if t.shape is not None and len(t.shape) else 0
            if data is None or len(data) == 0 or n < 16:
                continue
            if t.type in int8_types:
                int8, tensors = int8 + n, tensors + 1
            elif t.type in float_types:
                flt += n
    return {"quantized_ops": {"int8 weight tensors": tensors} if tensors else {},
            "quantized_nodes": tensors, "weights_int8": int8, "weights_float": flt,
            "int8_weight_share": round(int8 / (int8 + flt), 4) if int8 + flt else 0.0}


def _outputs(run: TfliteRunner, calls: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [run(c) for c in calls]


def optimize_tflite(model_path: str | Path, evalset: Samples, out_dir: str | Path,
                    target: OptimizeTarget | None = None,
                    progress: Callable[[str], None] | None = None) -> OptimizationResult:
    """Make the int8-weight variant of a ``.tflite`` model and gate it against the float one.

    Raises:
        OptimizationError: the quantizer or LiteRT fails (stage, type and message said).
    """
    target = target or OptimizeTarget()
    say = progress or (lambda _m: None)
    source, out = Path(model_path), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = "copying the model"
    try:
        fp32 = out / f"{source.stem}.fp32.tflite"
        shutil.copyfile(source, fp32)
        cand = out / f"{source.stem}.int8.tflite"
        stage = "quantizing (ai-edge-quantizer, int8 weights)"
        say(stage)
        quantize_tflite(fp32, cand)
        summary = tflite_summary(cand)
        stage = "measuring the float and int8 models"
        say(stage)
        base_run, cand_run = TfliteRunner(fp32), TfliteRunner(cand)
        calls = [f for _, f in evalset.batches(1, 256)]
        ref, got = _outputs(base_run, calls), _outputs(cand_run, calls)
    except EdgefleetError as exc:
        raise OptimizationError(f"{stage}: {exc}", reason=exc.reason) from exc
    except Exception as exc:  # the quantizer and LiteRT raise many kinds
        raise OptimizationError(f"{stage}: {describe(exc)}", reason="optimizer_error") from exc
    task = target.task
    metric = metric_for(task, ref[0], evalset.labels)
    if metric == "top1":
        first = next(iter(ref[0]))
        values: dict[str, Any] = classification_quality(
            np.concatenate([r[first].reshape(len(r[first]), -1) for r in ref]),
            np.concatenate([g[first].reshape(len(g[first]), -1) for g in got]),
            np.asarray(evalset.labels)[:len(calls)])
    else:
        values = {n: fidelity([r[n] for r in ref], [g[n] for g in got])
                  for n, v in ref[0].items() if v.dtype.kind == "f"}
    ok, why = quality_verdict(metric, values, accuracy_budget_pt=target.accuracy_budget_pt,
                              min_sqnr_db=target.min_sqnr_db, min_cosine=target.min_cosine)
    finite = all(np.all(np.isfinite(v)) for g in got for v in g.values() if v.dtype.kind == "f")
    singles = [evalset.feed(i) for i in range(min(evalset.count, 32))]
    base_t, cand_t = time_blocks([base_run, cand_run], singles, target.latency_runs,
                                 target.warmup_runs)
    speed = speed_verdict(base_t, cand_t)
    quantized = summary["int8_weight_share"] >= MIN_INT8_SHARE
    gates = {"quantized": quantized, "finite": finite, "quality": ok,
             "faster": bool(speed["faster"]) if target.require_faster else True}
    why_gate = {"quantized": f"nothing to quantize: {summary['int8_weight_share']:.1%} of the "
                             f"weights are int8", "finite": "NaN/Inf outputs",
                "quality": why, "faster": speed["why"]}
    failed = [g for g, passed in gates.items() if not passed]
    shipped = "fp32" if failed else "int8"
    reason = ("fp32 ships: " + "; ".join(f"{g} ({why_gate[g]})" for g in failed)) if failed \
        else f"int8 ships: {why}; {speed['why']}"
    say(reason)
    figures = {side: {"size_bytes": p.stat().st_size,
                      "p50_ms": float(np.percentile(np.concatenate(t), 50)),
                      "p95_ms": float(np.percentile(np.concatenate(t), 95)), "finite": True}
               for side, p, t in (("fp32", fp32, base_t), ("int8", cand, cand_t))}
    if metric == "top1":
        figures["fp32"]["accuracy"] = values["accuracy_fp32"]
        figures["int8"]["accuracy"] = values["accuracy"]
    figures["int8"]["finite"] = finite
    shipped_path = cand if shipped == "int8" else fp32
    report = {"model": source.name, "runtime": "litert", "task": task, "metric": metric,
              "method": "dynamic", "method_reason": "ai-edge-quantizer dynamic recipe: "
              "int8 weights, float activations", "plan": [], "quantization": summary,
              "float_nodes": [], "fallback_steps": [], "fp32": figures["fp32"],
              "int8": figures["int8"] if quantized else None, "quality": values,
              "speed": speed, "gates": gates, "failed_gates": failed, "shipped": shipped,
              "reason": reason, "size_ratio": figures["fp32"]["size_bytes"]
              / max(figures["int8"]["size_bytes"], 1), "p50_ratio": speed["ratio"],
              "files": {"fp32": fp32.name, "candidate": cand.name,
                        "shipped": shipped_path.name}}
    atomic_write(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    return OptimizationResult(shipped, shipped_path, cand, "dynamic", report)
