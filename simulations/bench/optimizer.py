"""What the optimizer's variants of the digits model buy: size, p50 latency, accuracy.

Variants of the committed digits model (``simulations/assets/digits``):

* ``onnx-int8``: ``edgefleet.optimizer.optimize`` on the calibration set (dynamic int8
  for this MatMul net); its gate decision is kept in the JSON.
* ``tflite-fp32`` and ``tflite-int8``: ``onnx_to_tflite`` and ``quantize_tflite``
  (LiteRT, int8 weights), when ``ai-edge-litert`` and ``ai-edge-quantizer`` are
  installed; otherwise the JSON says why they are missing.

Baseline: the fp32 ONNX model in the same run. Size is the file's bytes; accuracy is
top-1 on the 450-sample eval set; latency is the p50 of single-sample runs cycling
through the eval set, one intra-op thread (onnxruntime ``session.run``, LiteRT
``set_tensor``/``invoke``/``get_tensor``), timed in blocks that alternate between all
the variants so they share the machine's state.

Targets (the int8 variants): size ≤ 0.35× fp32 (int8 weights are a quarter of fp32,
plus scales and graph), p50 ≤ 1.0× fp32 for int8 ONNX (the optimizer's own "faster"
gate; ``.tflite`` latency is informative here: it is chosen per hardware class), and
every variant within the optimizer's default accuracy budget (1 point).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import make_result
from ._digits import ASSETS, MODEL

__all__ = ["SIZES", "run"]

SIZES = {"tiny": 300, "small": 3_000, "medium": 10_000, "large": 30_000,
         "full": 20_000}  # timed runs per variant
BLOCKS = 10
WARMUP = 50
SIZE_TARGET_RATIO = 0.35
LATENCY_TARGET_RATIO = 1.0
ACCURACY_BUDGET_PT = 1.0


def _onnx_timer(path: Path, x: np.ndarray) -> Callable[[int], np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feeds = [{name: x[i:i + 1]} for i in range(len(x))]
    for i in range(WARMUP):
        session.run(None, feeds[i % len(feeds)])

    def timed(runs: int) -> np.ndarray:
        clock, out = time.perf_counter, np.empty(runs)
        for i in range(runs):
            t0 = clock()
            session.run(None, feeds[i % len(feeds)])
            out[i] = (clock() - t0) * 1000.0
        return out
    return timed


def _tflite_timer(path: Path, x: np.ndarray) -> Callable[[int], np.ndarray]:
    from edgefleet.optimizer import time_tflite

    return lambda runs: time_tflite(path, x, runs=runs, warmup=WARMUP)


def _onnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    from edgefleet.agent.runtime import OnnxRuntime

    return OnnxRuntime(path).run({"pixels": x})["probs"]


def _tflite(fp32_onnx: Path, out: Path) -> tuple[dict[str, Path], str]:
    from edgefleet.contract import OptimizationError
    from edgefleet.optimizer import onnx_to_tflite, quantize_tflite

    try:
        fp32 = onnx_to_tflite(fp32_onnx, out / "digits.fp32.tflite")
        return {"tflite-fp32": fp32,
                "tflite-int8": quantize_tflite(fp32, out / "digits.int8.tflite")}, ""
    except OptimizationError as exc:
        return {}, str(exc)


def run(size: str = "full") -> list[dict[str, Any]]:
    """Rows ``optimizer.<variant>.<size|p50|accuracy>`` against fp32 ONNX.

    Raises:
        ValueError: an unknown size.
        OptimizationError: the optimizer failed on the digits model.
    """
    from edgefleet.optimizer import OptimizeTarget, optimize, run_tflite

    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    runs = SIZES[size]
    x = np.load(ASSETS / "eval.npz")["x"].astype(np.float32)
    y = np.load(ASSETS / "eval.npz")["y"]
    calibration = np.load(ASSETS / "calibration.npz")["x"].astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-optimizer-") as tmp:
        out = Path(tmp)
        result = optimize(MODEL, calibration, x, y, out / "onnx",
                          OptimizeTarget(latency_runs=200, warmup_runs=20))
        paths = {"fp32": MODEL, "onnx-int8": result.candidate_path}
        tflite, tflite_missing = _tflite(MODEL, out)
        paths.update(tflite)
        outputs = {k: (run_tflite(p, x) if k.startswith("tflite") else _onnx_outputs(p, x))
                   for k, p in paths.items()}
        timers = {k: (_tflite_timer if k.startswith("tflite") else _onnx_timer)(p, x)
                  for k, p in paths.items()}
        times: dict[str, list[np.ndarray]] = {k: [] for k in paths}
        names = list(paths)
        for block in range(BLOCKS):
            for k in names if block % 2 == 0 else names[::-1]:
                times[k].append(timers[k](max(1, runs // BLOCKS)))
        sizes = {k: p.stat().st_size for k, p in paths.items()}
    p50 = {k: float(np.percentile(np.concatenate(t), 50)) for k, t in times.items()}
    acc = {k: float((o.reshape(len(x), -1).argmax(axis=1) == y).mean())
           for k, o in outputs.items()}
    detail = {"runs": runs, "eval_samples": len(x), "threads": 1,
              "shipped_by_optimize": result.shipped, "method": result.method,
              "gates": result.report.get("gates"),
              "tflite": "measured" if tflite else f"not measured: {tflite_missing}"}
    rows = []
    for k in names[1:]:
        int8 = k.endswith("int8")
        ratio = sizes[k] / sizes["fp32"]
        rows.append(make_result(
            f"optimizer.{k}.size", figure=sizes[k], unit="bytes", baseline=sizes["fp32"],
            ratio=round(ratio, 4), target=f"<= {SIZE_TARGET_RATIO:g}x fp32" if int8 else "-",
            passed=ratio <= SIZE_TARGET_RATIO if int8 else None,
            target_value=SIZE_TARGET_RATIO if int8 else None, target_of="ratio",
            target_op="<=", why="only the weight matrices become int8; biases, scales and the "
                               "graph keep their size",
            **detail))
        ratio = p50[k] / p50["fp32"]
        timed = k == "onnx-int8"
        rows.append(make_result(
            f"optimizer.{k}.p50", figure=round(p50[k] * 1000, 2), unit="us",
            baseline=round(p50["fp32"] * 1000, 2), ratio=round(ratio, 3),
            target=f"<= {LATENCY_TARGET_RATIO:g}x fp32" if timed else "-",
            passed=ratio <= LATENCY_TARGET_RATIO if timed else None,
            target_value=LATENCY_TARGET_RATIO if timed else None, target_of="ratio",
            target_op="<=",
            why=(f"{result.method} quantization: " + (
                "activations are quantized on every call, which a model this small may "
                "not win back" if result.method == "dynamic" else "QDQ nodes around each "
                "operator")), p95_us=round(float(np.percentile(
                    np.concatenate(times[k]), 95)) * 1000, 2), **detail))
        floor = acc["fp32"] - ACCURACY_BUDGET_PT / 100
        rows.append(make_result(
            f"optimizer.{k}.accuracy", figure=round(acc[k], 4), unit="top-1",
            baseline=round(acc["fp32"], 4), ratio=round(acc[k] / acc["fp32"], 4),
            target=f">= fp32 - {ACCURACY_BUDGET_PT:g} pt", passed=acc[k] >= floor - 1e-9,
            target_value=round(floor, 4), target_of="figure", target_op=">=",
            why=f"{(acc['fp32'] - acc[k]) * 100:.1f} points lost to quantization",
            **detail))
    return rows
