"""``optimize_for_classes``: one variant per hardware class, and a report saying why.

It runs ``optimize`` (fp32 vs int8 ONNX, interleaved timing, gates), makes ``.tflite``
variants when a class prefers LiteRT and the model converts, measures those too, then
lets ``choose_for_class`` pick per class. Files written to ``out_dir`` besides
``optimize``'s: ``<stem>.fp32.tflite`` and ``<stem>.int8.tflite`` (when made) and
``classes.json``, the per-class report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.contract.errors import InvalidRequest, OptimizationError
from edgefleet.contract.files import atomic_write
from edgefleet.contract.hardware import CLASS_TRAITS, detect
from edgefleet.contract.names import NAME
from edgefleet.optimizer._classes import Candidate, ClassChoice, choose_for_class
from edgefleet.optimizer._decisions import decide_gates
from edgefleet.optimizer._evaluate import score
from edgefleet.optimizer._pipeline import optimize
from edgefleet.optimizer._tflite import onnx_to_tflite, quantize_tflite, run_tflite, time_tflite
from edgefleet.optimizer._types import OptimizationResult, OptimizeTarget

__all__ = ["ClassPlan", "optimize_for_classes"]

_BLOCKS = 4  # the two .tflite files are timed in alternating blocks


@dataclass
class ClassPlan:
    """The outcome of :func:`optimize_for_classes`.

    Attributes:
        choices: one per requested class, in the order asked.
        files: variant name -> file, for every variant some class got (``"fp32"`` is the
            fp32 ONNX model, the version's own file).
        classes: variant name -> the classes that get it, for every variant but ``"fp32"``.
        optimization: the ONNX run (fp32 vs int8) underneath.
        report: JSON-serializable; also written to ``classes.json``.
    """

    choices: list[ClassChoice]
    files: dict[str, Path]
    classes: dict[str, list[str]]
    optimization: OptimizationResult
    report: dict[str, Any] = field(default_factory=dict)


def _onnx_candidates(result: OptimizationResult) -> dict[str, Candidate]:
    rep = result.report
    fp32 = rep["fp32"]
    out = {"fp32": Candidate("fp32", "onnxruntime", "fp32", fp32["accuracy"], True,
                             fp32["p50_ms"], fp32["size_bytes"])}
    if rep.get("int8"):
        ok = bool(rep["gates"]["finite"] and rep["gates"]["quality"])
        out["int8"] = Candidate("int8", "onnxruntime", "int8", rep["int8"]["accuracy"], ok,
                                rep["int8"]["p50_ms"], rep["int8"]["size_bytes"])
    return out


def _time_alternating(paths: Sequence[Path], x: np.ndarray, runs: int,
                      warmup: int) -> list[np.ndarray]:
    per_block = max(1, runs // _BLOCKS)
    parts: list[list[np.ndarray]] = [[] for _ in paths]
    for block in range(_BLOCKS):
        order = range(len(paths)) if block % 2 == 0 else reversed(range(len(paths)))
        for i in order:
            parts[i].append(time_tflite(paths[i], x, runs=per_block, warmup=warmup))
    return [np.concatenate(p) for p in parts]


def _tflite_candidates(fp32_onnx: Path, out: Path, eval_x: np.ndarray, eval_y: np.ndarray,
                       base_accuracy: float, target: OptimizeTarget,
                       say: Callable[[str], None]) -> tuple[dict[str, Candidate],
                                                            dict[str, Path], dict[str, Any]]:
    stem = fp32_onnx.name.removesuffix(".fp32.onnx")
    try:
        say("writing the .tflite variant (LiteRT flatbuffer)")
        fp32 = onnx_to_tflite(fp32_onnx, out / f"{stem}.fp32.tflite")
        say("quantizing the .tflite variant (ai-edge-quantizer, int8 weights)")
        int8 = quantize_tflite(fp32, out / f"{stem}.int8.tflite")
        say("measuring the .tflite variants' accuracy and latency")
        outputs = [run_tflite(p, eval_x) for p in (fp32, int8)]
    except OptimizationError as exc:
        return {}, {}, {"made": False, "why": str(exc)}
    times = _time_alternating([fp32, int8], eval_x, target.latency_runs, target.warmup_runs)
    cands: dict[str, Candidate] = {}
    for variant, precision, path, y_hat, t in zip(
            ("tflite-fp32", "tflite-int8"), ("fp32", "int8"), (fp32, int8), outputs, times,
            strict=True):
        s = score(y_hat.reshape(len(eval_x), -1), eval_y)
        gates = decide_gates(candidate_finite=s["finite"], baseline_accuracy=base_accuracy,
                             candidate_accuracy=s["accuracy"],
                             accuracy_budget_pt=target.accuracy_budget_pt,
                             baseline_p50_ms=0.0, candidate_p50_ms=0.0,
                             require_faster=False).gates
        ok = gates["finite"] and gates["accuracy"]
        cands[variant] = Candidate(variant, "litert", precision, s["accuracy"], bool(ok),
                                   float(np.percentile(t, 50)), path.stat().st_size)
    return cands, {"tflite-fp32": fp32, "tflite-int8": int8}, {"made": True}


def optimize_for_classes(
    model_path: str | Path,
    calibration_x: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    out_dir: str | Path,
    classes: Sequence[str],
    target: OptimizeTarget | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    machine_class: str | None = None,
) -> ClassPlan:
    """Make and gate a variant per hardware class.

    Args:
        model_path, calibration_x, eval_x, eval_y, target, progress: as for ``optimize``.
        out_dir: folder for the files and ``classes.json``.
        classes: the hardware classes the version is for (``rpi4``, ``jetson-orin``…).
        machine_class: this machine's class (default: detected); the one class whose
            choice the timings decide.

    Raises:
        InvalidRequest: no classes, a malformed class name, or bad data (as ``optimize``).
        OptimizationError: as ``optimize``.
    """
    wanted = list(dict.fromkeys(classes))
    if not wanted:
        raise InvalidRequest("give at least one hardware class")
    bad = [c for c in wanted if not NAME.valid(c)]
    if bad:
        raise InvalidRequest(f"hardware class names {bad}: expected {NAME.expected}")
    target = target or OptimizeTarget()
    say = progress or (lambda _: None)
    machine = machine_class or detect().hardware_class
    out = Path(out_dir)
    result = optimize(model_path, calibration_x, eval_x, eval_y, out, target, progress=say)
    candidates = _onnx_candidates(result)
    files = {"fp32": out / result.report["files"]["fp32"], "int8": result.candidate_path}
    tflite: dict[str, Any] = {"made": False, "why": "no class prefers LiteRT"}
    if any(CLASS_TRAITS[c].runtime == "litert" for c in wanted if c in CLASS_TRAITS):
        more, paths, tflite = _tflite_candidates(files["fp32"], out, eval_x, eval_y,
                                                 candidates["fp32"].accuracy, target, say)
        candidates.update(more)
        files.update(paths)
    choices = [choose_for_class(c, candidates, measured_class=machine) for c in wanted]
    by_variant: dict[str, list[str]] = {}
    for choice in choices:
        by_variant.setdefault(choice.variant, []).append(choice.hardware_class)
    report = {
        "machine_class": machine,
        "classes": [c.to_dict() for c in choices],
        "variants": {v: {"file": files[v].name, "classes": cs} for v, cs in by_variant.items()},
        "candidates": {k: c.to_dict() for k, c in candidates.items()},
        "tflite": tflite,
        "onnx": result.report,
    }
    atomic_write(out / "classes.json", (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    return ClassPlan(choices, {v: files[v] for v in by_variant},
                     {v: cs for v, cs in by_variant.items() if v != "fp32"}, result, report)
