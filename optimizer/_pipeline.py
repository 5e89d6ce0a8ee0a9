"""``optimize``: prune, quantize, measure, gate, and pick the file that ships.

Files written to ``out_dir`` (``<stem>`` is the input file's stem):

- ``<stem>.fp32.onnx``: a copy of the input, what ships when a gate fails;
- ``<stem>.pruned.onnx``: the pruned fp32 model, when ``sparsity > 0``;
- ``<stem>.int8.onnx``: the quantized candidate, when a method was applied;
- ``report.json``: the optimization report.

Models must keep their weights inside the ``.onnx`` file (no external data), which
holds for anything small enough to ship to a device.
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

from edgefleet.contract.errors import OptimizationError
from edgefleet.contract.files import atomic_write
from edgefleet.optimizer._decisions import GateDecision, MethodChoice, choose_method, decide_gates
from edgefleet.optimizer._evaluate import Evaluation, check_eval_set, evaluate_pair
from edgefleet.optimizer._inspect import model_signature, op_counts
from edgefleet.optimizer._prune import PruneStats, prune_model
from edgefleet.optimizer._runtime import (
    ArrayReader,
    has_symbolic_shape_inference,
    load_model,
    preprocess,
    quantize_dynamic_int8,
    quantize_static_qdq,
    save_model,
)
from edgefleet.optimizer._types import OptimizationResult, OptimizeTarget

__all__ = ["optimize"]

Progress = Callable[[str], None]
_CALIBRATION_BATCH = 32


def _silent(_: str) -> None:
    return None


def _check_calibration(calibration_x: np.ndarray, eval_x: np.ndarray) -> None:
    if calibration_x.ndim < 2 or len(calibration_x) == 0:
        raise ValueError(
            f"calibration_x must be a non-empty [n, ...] array, got shape {calibration_x.shape}"
        )
    if calibration_x.shape[1:] != eval_x.shape[1:]:
        raise ValueError(
            f"calibration samples {calibration_x.shape[1:]} and eval samples "
            f"{eval_x.shape[1:]} have different shapes"
        )


def _single_input(model: onnx.ModelProto) -> dict[str, Any]:
    inputs = model_signature(model)["inputs"]
    if len(inputs) != 1:
        raise OptimizationError(
            f"optimize supports single-input models; this one has {len(inputs)} inputs",
            reason="unsupported_model",
        )
    return inputs[0]


def _calibration_batches(x: np.ndarray, shape: list[int | str]) -> tuple[np.ndarray, int]:
    """Samples and batch size for the calibrator, honouring a fixed batch dimension."""
    x = x.astype(np.float32, copy=False)
    first = shape[0] if shape else None
    if not isinstance(first, int) or first <= 0:
        return x, _CALIBRATION_BATCH
    if len(x) < first:
        x = np.resize(x, (first, *x.shape[1:]))
    return x[: len(x) - len(x) % first], first


def _quantize(
    choice: MethodChoice,
    src: Path,
    dst: Path,
    calibration_x: np.ndarray,
    input_meta: dict[str, Any],
    work: Path,
    progress: Progress,
) -> None:
    """Run the chosen quantizer from ``src`` into ``dst`` (via files in ``work``)."""
    pre = work / "preprocessed.onnx"
    out = work / "quantized.onnx"
    progress("pre-processing")
    preprocess(src, pre, optimize=choice.method == "static")
    if choice.method == "static":
        x, batch = _calibration_batches(calibration_x, input_meta["shape"])
        progress(f"calibrating on {len(x)} samples and quantizing (static QDQ, per-channel)")
        reader = ArrayReader(input_meta["name"], x, batch)
        quantize_static_qdq(pre, out, reader, op_types=choice.op_types)
    else:
        progress("quantizing (dynamic int8, MatMul/Gemm only)")
        quantize_dynamic_int8(pre, out, op_types=choice.op_types or ())
    atomic_write(dst, out.read_bytes())


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _report(
    *,
    source: Path,
    choice: MethodChoice,
    stats: PruneStats,
    base: Evaluation,
    cand: Evaluation,
    decision: GateDecision,
    shipped: str,
    shipped_path: Path,
    candidate_path: Path,
    target: OptimizeTarget,
) -> dict[str, Any]:
    quantized = choice.method != "none"
    cand_dict = cand.to_dict()
    return {
        "model": source.name,
        "method": choice.method,
        "method_reason": choice.reason,
        "op_types_quantized": list(choice.op_types) if choice.op_types else "all supported",
        "preprocessing": {
            "graph_optimization": choice.method == "static",
            "symbolic_shape_inference": quantized and has_symbolic_shape_inference(),
        },
        "sparsity": stats.to_dict(),
        "fp32": {k: v for k, v in base.to_dict().items() if k not in ("agreement", "max_abs_diff")},
        "int8": cand_dict if quantized else None,
        "candidate": {"precision": "int8" if quantized else "fp32", **cand_dict},
        "accuracy_drop_pt": (base.accuracy - cand.accuracy) * 100.0,
        "accuracy_budget_pt": target.accuracy_budget_pt,
        "gates": decision.gates,
        "failed_gates": decision.failed,
        "faster_gate_applied": quantized and target.require_faster,
        "shipped": shipped,
        "reason": decision.reason,
        "size_ratio": _ratio(base.size_bytes, cand.size_bytes),
        "gzip_size_ratio": _ratio(base.size_gzip_bytes, cand.size_gzip_bytes),
        "speedup": _ratio(base.p50_ms, cand.p50_ms),
        "latency": {
            "runs": target.latency_runs,
            "warmup": target.warmup_runs,
            "threads": target.threads,
            "batch": 1,
            "interleaved": True,
            "provider": "CPUExecutionProvider",
        },
        "files": {
            "fp32": f"{source.stem}.fp32.onnx",
            "candidate": candidate_path.name,
            "shipped": shipped_path.name,
        },
        "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }


def optimize(
    model_path: str | Path,
    calibration_x: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    out_dir: str | Path,
    target: OptimizeTarget | None = None,
    progress: Callable[[str], None] | None = None,
) -> OptimizationResult:
    """Prune and quantize a model, measure it against fp32, and gate what ships.

    Args:
        model_path: the fp32 ONNX model (one input; first output is class scores).
        calibration_x: ``[n, ...]`` unlabeled samples for static calibration.
        eval_x: ``[m, ...]`` eval samples, same sample shape as ``calibration_x``.
        eval_y: ``[m]`` integer labels.
        out_dir: folder for the output files (created if missing).
        target: method, sparsity, budgets and timing settings; defaults if ``None``.
        progress: called with short human-readable step descriptions.

    Returns:
        Which model ships, the files, and the report.

    Raises:
        ValueError: if the calibration or eval data is empty or mis-shaped.
        FileNotFoundError: if ``model_path`` does not exist.
        OptimizationError: if the model is invalid or unsupported, or onnx /
            onnxruntime fails while quantizing or measuring.
    """
    target = target or OptimizeTarget()
    say = progress or _silent
    source = Path(model_path)
    out = Path(out_dir)
    check_eval_set(eval_x, eval_y)
    _check_calibration(calibration_x, eval_x)

    say("inspecting model")
    model = load_model(source)
    input_meta = _single_input(model)
    choice = choose_method(op_counts(model), target.method)
    say(f"method: {choice.method} ({choice.reason})")

    out.mkdir(parents=True, exist_ok=True)
    fp32_path = out / f"{source.stem}.fp32.onnx"
    atomic_write(fp32_path, source.read_bytes())

    working_path = fp32_path
    if target.sparsity > 0:
        say(f"pruning weights to {target.sparsity:.0%} sparsity")
        pruned, stats = prune_model(model, target.sparsity)
        working_path = out / f"{source.stem}.pruned.onnx"
        save_model(pruned, working_path)
    else:
        stats = PruneStats(0.0, 0.0, (), 0)

    candidate_path = working_path
    if choice.method != "none":
        candidate_path = out / f"{source.stem}.int8.onnx"
        with tempfile.TemporaryDirectory(dir=out, prefix=".quantize-") as tmp:
            _quantize(
                choice, working_path, candidate_path, calibration_x, input_meta, Path(tmp), say
            )

    label = "int8" if choice.method != "none" else "candidate"
    say(f"measuring fp32 and {label} accuracy and latency (interleaved)")
    base, cand = evaluate_pair(
        fp32_path,
        candidate_path,
        eval_x,
        eval_y,
        runs=target.latency_runs,
        warmup=target.warmup_runs,
        threads=target.threads,
    )
    decision = decide_gates(
        candidate_finite=cand.finite,
        baseline_accuracy=base.accuracy,
        candidate_accuracy=cand.accuracy,
        accuracy_budget_pt=target.accuracy_budget_pt,
        baseline_p50_ms=base.p50_ms,
        candidate_p50_ms=cand.p50_ms,
        require_faster=target.require_faster and choice.method != "none",
    )
    shipped_path = candidate_path if decision.ship_candidate else fp32_path
    # With method "none" the candidate is the pruned fp32 model: it ships as fp32 too.
    shipped = "int8" if decision.ship_candidate and choice.method != "none" else "fp32"
    say(f"{decision.reason}; shipping {shipped} ({shipped_path.name})")

    report = _report(
        source=source,
        choice=choice,
        stats=stats,
        base=base,
        cand=cand,
        decision=decision,
        shipped=shipped,
        shipped_path=shipped_path,
        candidate_path=candidate_path,
        target=target,
    )
    atomic_write(out / "report.json", (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    return OptimizationResult(shipped, shipped_path, candidate_path, choice.method, report)
