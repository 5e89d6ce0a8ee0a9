"""``optimize``: prepare the graph, quantize, count what was quantized, measure against
fp32 by what the model is, keep sensitive nodes in float when needed, and pick the
file that ships.

Files written to ``out_dir`` (``<stem>`` is the input file's stem):

- ``<stem>.fp32.onnx``: a copy of the input, what ships when a gate fails;
- ``<stem>.pruned.onnx``: the pruned fp32 model, when ``sparsity > 0``;
- ``<stem>.int8.onnx``: the quantized candidate, when a method was applied;
- ``report.json``: the optimization report.

Every step that changed the plan (constants folded, opset converted, per-tensor
instead of per-channel, pre-processing without symbolic shapes, nodes kept in float)
is listed in the report's ``plan``. Temporary files live in a temporary folder inside
``out_dir`` that is removed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from edgefleet.contract.errors import EdgefleetError, OptimizationError
from edgefleet.contract.files import atomic_write
from edgefleet.optimizer._decisions import MethodChoice, choose_method
from edgefleet.optimizer._graph import (
    MIN_INT8_SHARE,
    QDQ_MIN_OPSET,
    default_opset,
    fold_constants,
    quantized_summary,
    refuse_quantized,
    upgrade_opset,
)
from edgefleet.optimizer._inspect import model_signature, op_counts
from edgefleet.optimizer._measure import FeedsReader, compare
from edgefleet.optimizer._profile import detect_task
from edgefleet.optimizer._prune import PruneStats, prune_model
from edgefleet.optimizer._runtime import (
    describe,
    load_model,
    preprocess,
    quantize_dynamic_int8,
    quantize_static_qdq,
    save_model,
)
from edgefleet.optimizer._samples import Samples
from edgefleet.optimizer._sensitivity import name_nodes, rank_nodes
from edgefleet.optimizer._types import OptimizationResult, OptimizeTarget

__all__ = ["optimize", "optimize_samples"]

Progress = Callable[[str], None]


def _silent(_: str) -> None:
    return None


class _Stages:
    """The stage in progress, so a failure says where it happened."""

    def __init__(self, say: Progress) -> None:
        self.name = "inspecting model"
        self._say = say

    def __call__(self, name: str) -> None:
        self.name = name
        self._say(name)


def _prepare(model: onnx.ModelProto, choice: MethodChoice, plan: list[str]
             ) -> tuple[onnx.ModelProto, bool]:
    """Make a graph quantizable; returns the model and whether per-channel is possible."""
    model, folded = fold_constants(model)
    if folded:
        plan.append(f"{folded} Constant node(s) folded into initializers, so their "
                    f"weights can be quantized")
    name_nodes(model)
    per_channel = True
    opset = default_opset(model)
    if choice.method == "static" and opset < QDQ_MIN_OPSET:
        try:
            model = upgrade_opset(model)
            plan.append(f"opset {opset} converted to {QDQ_MIN_OPSET} for per-channel QDQ")
        except OptimizationError as exc:
            per_channel = False
            plan.append(f"per-tensor QDQ: opset {opset} has no per-channel "
                        f"DequantizeLinear and could not be converted ({exc})")
    return model, per_channel


def _quantize(choice: MethodChoice, src: Path, dst: Path, calibration: Samples,
              per_channel: bool, exclude: list[str], stage: _Stages) -> None:
    if choice.method == "static":
        stage(f"calibrating on {min(calibration.count, 256)} samples and quantizing "
              f"(static QDQ, {'per-channel' if per_channel else 'per-tensor'}"
              f"{f', {len(exclude)} node(s) in float' if exclude else ''})")
        quantize_static_qdq(src, dst, FeedsReader(calibration), op_types=choice.op_types,
                            per_channel=per_channel, exclude=exclude)
    else:
        stage("quantizing (dynamic int8, MatMul/Gemm)")
        quantize_dynamic_int8(src, dst, op_types=choice.op_types or (), exclude=exclude)


def _fallback(choice: MethodChoice, prepared: Path, candidate: Path, calibration: Samples,
              evalset: Samples, signature: dict[str, Any], task: str, target: OptimizeTarget,
              per_channel: bool, work: Path, stage: _Stages
              ) -> tuple[list[str], list[dict[str, Any]], dict[str, Any] | None]:
    """Keep the most harmed nodes in float, 1, 2, 4… at a time, until quality holds.

    Returns:
        ``(nodes kept in float, the steps tried, the passing measurement or None)``;
        on success ``candidate`` holds the passing model.
    """
    stage("ranking nodes by the error quantization adds")
    calls = [f for _, f in calibration.batches(8, 8)]
    ranked = rank_nodes(prepared, candidate, calls, work)
    steps: list[dict[str, Any]] = []
    most = min(target.max_float_nodes, len(ranked))
    sizes = sorted({min(2 ** i, most) for i in range(8) if 2 ** i <= 2 * most} - {0})
    for k in sizes:
        # a node kept in float still reads quantized inputs unless their producers are
        # float too: each step keeps the k worst nodes and what feeds them
        exclude = list(dict.fromkeys(name for r in ranked[:k]
                                     for name in (r["node"], *r.get("feeders", []))))
        trial = work / f"fallback-{k}.onnx"
        _quantize(choice, prepared, trial, calibration, per_channel, exclude, stage)
        stage(f"measuring with {k} node(s) in float")
        measured = compare(prepared, trial, evalset, signature, task=task,
                           target=target, timing=False)
        steps.append({"float_nodes": exclude, "quality": measured["quality"],
                      "ok": measured["quality_ok"] and measured["finite"],
                      "why": measured["quality_why"]})
        if measured["quality_ok"] and measured["finite"]:
            atomic_write(candidate, trial.read_bytes())
            return exclude, steps, measured
    return [], steps, None


def _figures(measured: dict[str, Any], side: str) -> dict[str, Any]:
    figures = dict(measured[side])
    if measured["metric"] == "top1":
        q = measured["quality"]
        figures["accuracy"] = q["accuracy_fp32"] if side == "fp32" else q["accuracy"]
        if side != "fp32":
            figures["agreement"] = q["agreement"]
    else:
        figures["accuracy"] = None
    figures["finite"] = True if side == "fp32" else measured["finite"]
    return figures


def optimize_samples(model_path: str | Path, calibration: Samples, evalset: Samples,
                     out_dir: str | Path, target: OptimizeTarget | None = None,
                     progress: Progress | None = None) -> OptimizationResult:
    """Quantize a model (any inputs, any task) and gate what ships against fp32.

    Args:
        model_path: the fp32 ONNX model.
        calibration: calibration samples by input name (``edgefleet.optimizer.load_samples``).
        evalset: eval samples; with labels, a classifier is judged by top-1 accuracy.
        out_dir: folder for the output files (created if missing).
        target: method, budgets, gates and timing; defaults if ``None``.
        progress: called with short step descriptions.

    Returns:
        Which model ships, the files, and the report.

    Raises:
        FileNotFoundError: ``model_path`` does not exist.
        OptimizationError: a step failed; the message names the stage, the exception
            type and its message.
    """
    target = target or OptimizeTarget()
    stage = _Stages(progress or _silent)
    source, out = Path(model_path), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=out, prefix=".optimize-") as tmp:
            return _run(source, calibration, evalset, out, Path(tmp), target, stage)
    except EdgefleetError as exc:
        if str(exc).startswith(stage.name):
            raise
        raise OptimizationError(f"{stage.name}: {exc}", reason=exc.reason) from exc
    except (FileNotFoundError, ValueError):
        raise
    except Exception as exc:  # anything the tools raise, with its type and the stage
        raise OptimizationError(f"{stage.name}: {describe(exc)}",
                                reason="optimizer_error") from exc


def _run(source: Path, calibration: Samples, evalset: Samples, out: Path, work: Path,
         target: OptimizeTarget, stage: _Stages) -> OptimizationResult:
    model = load_model(source)
    refuse_quantized(model, str(source.name))
    signature = model_signature(model)
    task = target.task or detect_task(signature)
    choice = choose_method(op_counts(model), target.method)
    stage(f"method: {choice.method} ({choice.reason})")
    fp32_path = out / f"{source.stem}.fp32.onnx"
    atomic_write(fp32_path, source.read_bytes())
    plan: list[str] = []
    stats = PruneStats(0.0, 0.0, (), 0)
    if target.sparsity > 0:
        stage(f"pruning weights to {target.sparsity:.0%} sparsity")
        model, stats = prune_model(model, target.sparsity)
        save_model(model, out / f"{source.stem}.pruned.onnx")
    candidate_path = out / f"{source.stem}.pruned.onnx" if target.sparsity > 0 else fp32_path
    summary: dict[str, Any] = {}
    float_nodes: list[str] = []
    steps: list[dict[str, Any]] = []
    nothing = ""
    if choice.method != "none":
        model, per_channel = _prepare(model, choice, plan)
        prepared_src, prepared = work / "prepared.onnx", work / "preprocessed.onnx"
        save_model(model, prepared_src)
        stage("pre-processing")
        plan += preprocess(prepared_src, prepared, optimize=choice.method == "static")
        candidate_path = out / f"{source.stem}.int8.onnx"
        _quantize(choice, prepared, candidate_path, calibration, per_channel, [], stage)
        summary = quantized_summary(onnx.load(str(candidate_path)))
        if summary["quantized_nodes"] == 0 or summary["int8_weight_share"] < MIN_INT8_SHARE:
            nothing = (f"nothing to quantize: {summary['quantized_nodes']} node(s) run "
                       f"quantized and {summary['int8_weight_share']:.1%} of the weights "
                       f"are int8 after {choice.method} quantization")
    stage(f"measuring fp32 and the candidate ({'top-1' if evalset.labels is not None else ''}"
          f" quality, interleaved latency)")
    measured = compare(fp32_path, candidate_path, evalset, signature, task=task, target=target)
    if (choice.method != "none" and not nothing and target.fallback
            and measured["finite"] and not measured["quality_ok"]):
        float_nodes, steps, passing = _fallback(choice, prepared, candidate_path, calibration,
                                               evalset, signature, task, target, per_channel,
                                               work, stage)
        if passing is not None:
            plan.append(f"{len(float_nodes)} node(s) kept in float to meet the quality gate: "
                        f"{', '.join(float_nodes)}")
            summary = quantized_summary(onnx.load(str(candidate_path)))
            if summary["quantized_nodes"] == 0 or \
                    summary["int8_weight_share"] < MIN_INT8_SHARE:
                nothing = (f"nothing left quantized: the quality gate held only with "
                           f"{len(float_nodes)} node(s) in float, leaving "
                           f"{summary['int8_weight_share']:.1%} of the weights int8")
            stage("measuring the final candidate")
            measured = compare(fp32_path, candidate_path, evalset, signature, task=task,
                               target=target)
    speed = measured["speed"]
    quantized = choice.method != "none" and not nothing
    gates = {"quantized": bool(quantized) if choice.method != "none" else True,
             "finite": measured["finite"], "quality": measured["quality_ok"],
             "faster": bool(speed["faster"]) if target.require_faster and quantized else True}
    why = {"quantized": nothing, "finite": "the candidate produced NaN/Inf outputs",
           "quality": measured["quality_why"], "faster": speed["why"]}
    failed = [g for g, ok in gates.items() if not ok]
    ship = not failed and quantized
    shipped = "int8" if ship else "fp32"
    shipped_path = candidate_path if ship else fp32_path
    if choice.method == "none":
        reason = choice.reason
    elif failed:
        reason = "fp32 ships: " + "; ".join(f"{g} ({why[g]})" for g in failed)
    else:
        reason = f"int8 ships: {measured['quality_why']}; {speed['why']}"
    stage(f"{reason} ({shipped_path.name})")
    report = {
        "model": source.name, "task": task, "metric": measured["metric"],
        "method": choice.method, "method_reason": choice.reason,
        "op_types_quantized": list(choice.op_types) if choice.op_types else "all supported",
        "plan": plan, "quantization": summary, "float_nodes": float_nodes,
        "fallback_steps": steps, "sparsity": stats.to_dict(),
        "fp32": _figures(measured, "fp32"),
        "int8": _figures(measured, "candidate") if quantized else None,
        "quality": measured["quality"], "shapes": measured["shapes"], "speed": speed,
        "gates": gates, "failed_gates": failed, "shipped": shipped, "reason": reason,
        "accuracy_budget_pt": target.accuracy_budget_pt,
        "fidelity_gates": {"min_sqnr_db": target.min_sqnr_db, "min_cosine": target.min_cosine},
        "size_ratio": _ratio(measured["fp32"]["size_bytes"],
                             measured["candidate"]["size_bytes"]),
        "p50_ratio": speed["ratio"],
        "speedup": _ratio(measured["fp32"]["p50_ms"], measured["candidate"]["p50_ms"]),
        "accuracy_drop_pt": (measured["quality"]["accuracy_fp32"]
                             - measured["quality"]["accuracy"]) * 100.0
        if measured["metric"] == "top1" else None,
        "latency": {"runs": target.latency_runs, "warmup": target.warmup_runs,
                    "threads": target.threads, "batch": 1, "interleaved": True,
                    "provider": "CPUExecutionProvider"},
        "files": {"fp32": fp32_path.name, "candidate": candidate_path.name,
                  "shipped": shipped_path.name},
        "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }
    atomic_write(out / "report.json", (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    return OptimizationResult(shipped, shipped_path, candidate_path, choice.method, report)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def optimize(model_path: str | Path, calibration_x: np.ndarray, eval_x: np.ndarray,
             eval_y: np.ndarray, out_dir: str | Path, target: OptimizeTarget | None = None,
             progress: Progress | None = None) -> OptimizationResult:
    """``optimize_samples`` for a single-input model given as arrays (rows along the batch
    axis) with integer labels.

    Raises:
        ValueError: empty or mis-shaped arrays, labels that do not match.
        FileNotFoundError, OptimizationError: as ``optimize_samples``.
    """
    if eval_x.ndim < 2 or not len(eval_x) or calibration_x.ndim < 2 or not len(calibration_x):
        raise ValueError(f"calibration_x and eval_x must be non-empty [n, ...] arrays, got "
                         f"{calibration_x.shape} and {eval_x.shape}")
    if calibration_x.shape[1:] != eval_x.shape[1:]:
        raise ValueError(f"calibration samples {calibration_x.shape[1:]} and eval samples "
                         f"{eval_x.shape[1:]} have different shapes")
    if eval_y.ndim != 1 or len(eval_y) != len(eval_x) or eval_y.dtype.kind not in "iu":
        raise ValueError(f"eval_y must hold one integer label per eval sample "
                         f"({len(eval_x)} samples), got {eval_y.dtype} {eval_y.shape}")
    inputs = model_signature(load_model(Path(model_path)))["inputs"]
    if len(inputs) != 1:
        raise OptimizationError(f"optimize takes arrays for single-input models; this one has "
                                f"{len(inputs)} inputs: use optimize_samples",
                                reason="unsupported_model")
    name, shape = inputs[0]["name"], list(inputs[0]["shape"])
    free = not shape or not isinstance(shape[0], int)
    if len(shape) != eval_x.ndim or any(isinstance(d, int) and d != n
                                        for d, n in zip(shape[1:], eval_x.shape[1:],
                                                        strict=True)):
        raise ValueError(f"samples of shape {list(eval_x.shape[1:])} do not fit the model's "
                         f"input {name!r} {shape}")

    def samples(x: np.ndarray, y: np.ndarray | None) -> Samples:
        x = x.astype(np.float32, copy=False)
        return Samples({name: x}, {name: False}, y, len(x), free)
    return optimize_samples(model_path, samples(calibration_x, None), samples(eval_x, eval_y),
                            out_dir, target, progress)
