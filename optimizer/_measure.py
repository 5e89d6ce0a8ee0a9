"""Run fp32 and a candidate side by side on the eval samples: outputs, quality, latency.

Both models see the same calls (several rows per call where the batch axis is free,
one sample per call otherwise). Latency is the time of one single-sample call, the way
a device serves requests, measured in interleaved blocks (``_quality.speed_verdict``).
A model with dynamic dimensions besides the batch is also run at a second shape
(``second_shape``) so a candidate that only works at the calibration size does not ship.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edgefleet.contract.errors import OptimizationError
from edgefleet.optimizer._evaluate import gzip_size
from edgefleet.optimizer._quality import (
    classification_quality,
    fidelity,
    quality_verdict,
    speed_verdict,
)
from edgefleet.optimizer._runtime import open_session
from edgefleet.optimizer._samples import Samples
from edgefleet.optimizer._types import OptimizeTarget

__all__ = ["FeedsReader", "compare", "metric_for", "run_calls", "second_shape", "time_blocks"]

_MAX_EVAL_SAMPLES = 512
_BLOCKS = 8


class FeedsReader(CalibrationDataReader):
    """Calibration feeds by input name (every input, non-float ones pass through)."""

    def __init__(self, samples: Samples, limit: int = 256, batch: int = 16) -> None:
        self._feeds = [f for _, f in samples.batches(batch, limit)]
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def load_evaluator(spec: str) -> Callable[..., Any]:
    """The function a ``module:function`` names.

    Raises:
        OptimizationError: the module or the function cannot be found.
    """
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise OptimizationError(f"evaluator {spec!r} cannot be loaded: {type(exc).__name__}: "
                                f"{exc}", reason="evaluator_not_found") from exc
    if not callable(fn):
        raise OptimizationError(f"evaluator {spec!r} is not a function",
                                reason="evaluator_not_found")
    return fn  # type: ignore[no-any-return]


def _score(fn: Callable[..., Any], outputs: list[dict[str, np.ndarray]],
           evalset: Samples) -> float:
    """The evaluator's score of a model's outputs: each output concatenated over the
    calls (along the first axis), with the eval labels.

    Raises:
        OptimizationError: the evaluator fails or does not return a finite number.
    """
    joined: dict[str, Any] = {}
    for name in outputs[0]:
        parts = [o[name] for o in outputs]
        try:
            joined[name] = np.concatenate(parts) if parts[0].ndim else np.stack(parts)
        except ValueError:  # shapes differ per call: the evaluator gets the list
            joined[name] = parts
    try:
        value = float(fn(joined, evalset.labels))
    except Exception as exc:  # the user's code
        raise OptimizationError(f"the evaluator failed: {type(exc).__name__}: {exc}",
                                reason="evaluator_failed") from exc
    if not np.isfinite(value):
        raise OptimizationError(f"the evaluator returned {value}", reason="evaluator_failed")
    return value


def _runner(session: Any) -> Callable[[dict[str, np.ndarray]], Any]:
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: session.run(names, feeds)


def run_calls(session: Any, calls: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Outputs by name for each call.

    Raises:
        OptimizationError: a call fails (with onnxruntime's message).
    """
    names = [o.name for o in session.get_outputs()]
    results = []
    for feeds in calls:
        try:
            values = session.run(names, feeds)
        except Exception as exc:  # onnxruntime's own exception types
            raise OptimizationError(f"inference failed: {type(exc).__name__}: {exc}",
                                    reason="inference_failed") from exc
        results.append(dict(zip(names, (np.asarray(v) for v in values), strict=True)))
    return results


def metric_for(task: str, outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> str:
    """``top1`` for a classifier with labels, ``fidelity`` for everything else."""
    first = next(iter(outputs.values()))
    classifier = task in ("", "classification") and first.ndim == 2 and first.shape[1] > 1 \
        and first.dtype.kind == "f"
    return "top1" if classifier and labels is not None else "fidelity"


def second_shape(signature: dict[str, Any], feeds: dict[str, np.ndarray]
                 ) -> dict[str, np.ndarray] | None:
    """The call cropped to about three quarters along every dynamic dimension other than
    the batch (dimensions sharing a name shrink together); None when there is none."""
    sizes: dict[str, int] = {}
    for spec in signature["inputs"]:
        for axis, dim in enumerate(spec["shape"]):
            arr = feeds.get(spec["name"])
            if axis == 0 or isinstance(dim, int) or arr is None or arr.ndim != len(spec["shape"]):
                continue
            size = int(arr.shape[axis])
            new = (size * 3 // 4) // 8 * 8 or size // 2
            if 0 < new < size:
                sizes[str(dim)] = new
    if not sizes:
        return None
    out = {}
    for spec in signature["inputs"]:
        arr = feeds[spec["name"]]
        index = tuple(slice(0, sizes[str(d)]) if axis and str(d) in sizes and
                      arr.ndim == len(spec["shape"]) else slice(None)
                      for axis, d in enumerate(spec["shape"]))
        out[spec["name"]] = np.ascontiguousarray(arr[index]) if arr.ndim else arr
    return out


def time_blocks(runs: list[Callable[[dict[str, np.ndarray]], Any]],
                feeds: list[dict[str, np.ndarray]], count: int, warmup: int
                ) -> list[list[np.ndarray]]:
    """Single-call latencies (ms) of each runner, in ``_BLOCKS`` interleaved blocks
    (alternating which goes first), for ``speed_verdict``."""
    per_block = max(2, count // _BLOCKS)
    times: list[list[np.ndarray]] = [[] for _ in runs]
    for run in runs:
        for i in range(warmup):
            run(feeds[i % len(feeds)])
    clock = time.perf_counter
    for block in range(_BLOCKS):
        block_times = [np.empty(per_block) for _ in runs]
        for i in range(per_block):
            order = range(len(runs)) if (block + i) % 2 == 0 else reversed(range(len(runs)))
            for k in order:
                t0 = clock()
                runs[k](feeds[(block * per_block + i) % len(feeds)])
                block_times[k][i] = (clock() - t0) * 1000.0
        for k, t in enumerate(block_times):
            times[k].append(t)
    return times


def compare(fp32_path: Path, cand_path: Path, evalset: Samples, signature: dict[str, Any], *,
            task: str, target: OptimizeTarget, timing: bool = True) -> dict[str, Any]:
    """Measure a candidate against fp32: quality by the model's kind, finiteness, a second
    shape for dynamic models, latency and size.

    Raises:
        OptimizationError: either model cannot be loaded or fails on the eval samples.
    """
    base = open_session(fp32_path, target.threads)
    cand = open_session(cand_path, target.threads)
    calls = [f for _, f in evalset.batches(32, _MAX_EVAL_SAMPLES)]
    ref_out, cand_out = run_calls(base, calls), run_calls(cand, calls)
    finite = all(np.all(np.isfinite(v)) for o in cand_out for v in o.values()
                 if v.dtype.kind == "f")
    metric = "evaluator" if target.evaluator else metric_for(task, ref_out[0], evalset.labels)
    if metric == "evaluator":
        score = load_evaluator(target.evaluator)
        values: dict[str, Any] = {"fp32": _score(score, ref_out, evalset),
                                  "candidate": _score(score, cand_out, evalset),
                                  "evaluator": target.evaluator}
    elif metric == "top1":
        first = next(iter(ref_out[0]))
        n = sum(len(o[first]) for o in ref_out)
        values = classification_quality(
            np.concatenate([o[first] for o in ref_out]),
            np.concatenate([o[first] for o in cand_out]), np.asarray(evalset.labels)[:n])
    else:
        values = {name: fidelity([o[name] for o in ref_out], [o[name] for o in cand_out])
                  for name, v in ref_out[0].items() if v.dtype.kind == "f"}
    ok, why = quality_verdict(metric, values, accuracy_budget_pt=target.accuracy_budget_pt,
                              min_sqnr_db=target.min_sqnr_db, min_cosine=target.min_cosine)
    shapes: dict[str, Any] = {"checked": [list(next(iter(calls[0].values())).shape)]}
    other = second_shape(signature, evalset.feed(0))
    if other is not None:
        try:
            (ref2,) = run_calls(base, [other])
        except OptimizationError as exc:  # the model itself needs that size
            shapes["second"] = f"fp32 does not run at a second shape: {exc}"
        else:
            (cand2,) = run_calls(cand, [other])
            fid = {n: fidelity([v], [cand2[n]]) for n, v in ref2.items() if v.dtype.kind == "f"}
            ok2, why2 = quality_verdict("fidelity", fid, accuracy_budget_pt=0.0,
                                        min_sqnr_db=target.min_sqnr_db,
                                        min_cosine=target.min_cosine)
            finite = finite and all(np.all(np.isfinite(v)) for v in cand2.values()
                                    if v.dtype.kind == "f")
            shapes["checked"].append(list(next(iter(other.values())).shape))
            shapes["second"] = {"fidelity": fid, "ok": ok2}
            if metric == "fidelity" and not ok2:
                ok, why = False, f"at a second input shape: {why2}"
    result = {"metric": metric, "quality": values, "quality_ok": ok, "quality_why": why,
              "finite": bool(finite), "shapes": shapes}
    if not timing:
        return result
    singles = [evalset.feed(i) for i in range(min(evalset.count, 32))]
    base_t, cand_t = time_blocks([_runner(base), _runner(cand)], singles,
                                 target.latency_runs, target.warmup_runs)
    for side, path, t in (("fp32", fp32_path, base_t), ("candidate", cand_path, cand_t)):
        flat = np.concatenate(t)
        result[side] = {"size_bytes": path.stat().st_size, "size_gzip_bytes": gzip_size(path),
                        "p50_ms": float(np.percentile(flat, 50)),
                        "p95_ms": float(np.percentile(flat, 95))}
    result["speed"] = speed_verdict(base_t, cand_t)
    return result
