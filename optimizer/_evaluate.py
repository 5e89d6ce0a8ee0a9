"""Measure a model: accuracy, agreement with a reference, latency, size.

Latency is the time of one ``session.run`` on one sample, the way a device serves
requests. When two models are compared they are timed interleaved, sample by
sample, alternating which goes first, so background load and CPU frequency
changes hit both equally.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgefleet.optimizer._runtime import open_session, run

__all__ = ["Evaluation", "check_eval_set", "evaluate", "evaluate_pair", "gzip_size", "score"]

_DEFAULT_BATCH = 256
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


@dataclass(frozen=True)
class Evaluation:
    """Measured figures for one model file.

    Attributes:
        size_bytes: file size on disk.
        size_gzip_bytes: size after gzip (level 9), what a sparse model saves.
        accuracy: top-1 accuracy on the eval set, in ``[0, 1]``.
        p50_ms: median single-sample latency in milliseconds.
        p95_ms: 95th percentile single-sample latency in milliseconds.
        finite: every output on the eval set was finite.
        agreement: top-1 match rate with the reference outputs (``None`` without).
        max_abs_diff: largest absolute output difference from the reference.
        runs: timed runs behind the latency figures.
    """

    size_bytes: int
    size_gzip_bytes: int
    accuracy: float
    p50_ms: float
    p95_ms: float
    finite: bool
    agreement: float | None = None
    max_abs_diff: float | None = None
    runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; reference fields are left out when there was none."""
        data = asdict(self)
        if self.agreement is None:
            data.pop("agreement")
            data.pop("max_abs_diff")
        return data


def gzip_size(path: Path) -> int:
    """Size of the file after gzip level 9 (deterministic: mtime 0)."""
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def check_eval_set(eval_x: np.ndarray, eval_y: np.ndarray) -> None:
    """Validate an eval set.

    Args:
        eval_x: samples, first axis is the sample axis.
        eval_y: integer labels, one per sample.

    Raises:
        ValueError: if the set is empty, labels are not 1-D integers, or the
            lengths differ.
    """
    if eval_x.ndim < 2 or len(eval_x) == 0:
        raise ValueError(f"eval_x must be a non-empty [n, ...] array, got shape {eval_x.shape}")
    if eval_y.ndim != 1 or not np.issubdtype(eval_y.dtype, np.integer):
        raise ValueError(f"eval_y must be 1-D integer labels, got {eval_y.dtype} {eval_y.shape}")
    if len(eval_x) != len(eval_y):
        raise ValueError(f"eval_x has {len(eval_x)} samples but eval_y has {len(eval_y)}")


def score(
    outputs: np.ndarray, labels: np.ndarray, reference: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy, finiteness and agreement of class scores.

    Args:
        outputs: ``[n, classes]`` scores or probabilities.
        labels: ``[n]`` integer labels.
        reference: optional ``[n, classes]`` outputs of the reference model.

    Returns:
        ``{"accuracy", "finite", "agreement", "max_abs_diff"}``; the last two are
        ``None`` without a reference.

    Raises:
        ValueError: if shapes do not line up.
    """
    if outputs.ndim != 2 or len(outputs) != len(labels):
        raise ValueError(f"outputs {outputs.shape} do not match {len(labels)} labels")
    top1 = np.argmax(outputs, axis=1)
    result: dict[str, Any] = {
        "accuracy": float(np.mean(top1 == labels)),
        "finite": bool(np.all(np.isfinite(outputs))),
        "agreement": None,
        "max_abs_diff": None,
    }
    if reference is not None:
        if reference.shape != outputs.shape:
            raise ValueError(f"reference {reference.shape} != outputs {outputs.shape}")
        result["agreement"] = float(np.mean(top1 == np.argmax(reference, axis=1)))
        diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
        result["max_abs_diff"] = float(np.max(diff)) if diff.size else 0.0
    return result


class _Model:
    """An open session plus how to feed it."""

    def __init__(self, path: Path, threads: int, sample_shape: tuple[int, ...]) -> None:
        self.session: ort.InferenceSession = open_session(path, threads)
        meta = self.session.get_inputs()[0]
        self.input_name = meta.name
        self.dtype = _NUMPY_TYPES.get(meta.type, np.float32)
        dims = list(meta.shape)
        first = dims[0] if dims else None
        # A model exported with a fixed batch size must be fed exactly that many rows.
        self.fixed_batch: int | None = first if isinstance(first, int) and first > 0 else None
        expected = [d if isinstance(d, int) else None for d in dims[1:]]
        got = list(sample_shape)
        if len(expected) != len(got) or any(
            e is not None and e != g for e, g in zip(expected, got, strict=True)
        ):
            raise ValueError(
                f"samples of shape {tuple(got)} do not fit input {meta.name!r} {meta.shape}"
            )

    def single(self, sample: np.ndarray) -> np.ndarray:
        """One sample as a feed (repeated if the model's batch size is fixed above 1)."""
        sample = sample.astype(self.dtype)
        if self.fixed_batch is not None and self.fixed_batch > 1:
            sample = np.repeat(sample, self.fixed_batch, axis=0)
        return sample

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs for every sample, as ``[n, -1]``."""
        x = x.astype(self.dtype, copy=False)
        batch = self.fixed_batch or _DEFAULT_BATCH
        parts = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            n = len(chunk)
            if self.fixed_batch is not None and n < batch:
                pad = np.zeros((batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(run(self.session, {self.input_name: chunk})[:n])
        return np.concatenate(parts).reshape(len(x), -1)


def _time_interleaved(
    models: Sequence[_Model], x: np.ndarray, runs: int, warmup: int
) -> list[np.ndarray]:
    """Single-sample latencies (ms) for each model, interleaved run by run."""
    samples = [x[i : i + 1] for i in range(len(x))]
    feeds = [[{m.input_name: m.single(s)} for s in samples] for m in models]
    for i in range(warmup):
        for m, f in zip(models, feeds, strict=True):
            run(m.session, f[i % len(samples)])
    times = [np.empty(runs) for _ in models]
    order = list(range(len(models)))
    clock = time.perf_counter
    for i in range(runs):
        k = i % len(samples)
        for j in order if i % 2 == 0 else order[::-1]:
            feed = feeds[j][k]
            t0 = clock()
            run(models[j].session, feed)
            times[j][i] = (clock() - t0) * 1000.0
    return times


def _validate_timing(runs: int, warmup: int, threads: int) -> None:
    if runs < 1 or warmup < 0 or threads < 1:
        raise ValueError(
            f"need runs >= 1, warmup >= 0, threads >= 1 (got {runs}, {warmup}, {threads})"
        )


def _evaluation(path: Path, scores: dict[str, Any], times: np.ndarray) -> Evaluation:
    return Evaluation(
        size_bytes=path.stat().st_size,
        size_gzip_bytes=gzip_size(path),
        accuracy=scores["accuracy"],
        p50_ms=float(np.percentile(times, 50)),
        p95_ms=float(np.percentile(times, 95)),
        finite=scores["finite"],
        agreement=scores["agreement"],
        max_abs_diff=scores["max_abs_diff"],
        runs=len(times),
    )


def evaluate(
    model_path: str | Path,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    *,
    runs: int,
    warmup: int,
    threads: int,
    reference_outputs: np.ndarray | None = None,
) -> Evaluation:
    """Measure one model on an eval set.

    Args:
        model_path: the ONNX file (one input, first output is class scores).
        eval_x: ``[n, ...]`` samples.
        eval_y: ``[n]`` integer labels.
        runs: timed single-sample runs (cycling through the samples).
        warmup: untimed runs before timing.
        threads: onnxruntime intra-op threads (inter-op is 1, sequential).
        reference_outputs: ``[n, classes]`` outputs of a reference model, for
            agreement and max abs diff.

    Returns:
        The measured figures.

    Raises:
        ValueError: if the eval set or arguments are malformed.
        FileNotFoundError: if the model file does not exist.
        OptimizationError: if onnxruntime cannot load or run the model.
    """
    path = Path(model_path)
    check_eval_set(eval_x, eval_y)
    _validate_timing(runs, warmup, threads)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    model = _Model(path, threads, tuple(eval_x.shape[1:]))
    scores = score(model.predict(eval_x), eval_y, reference_outputs)
    (times,) = _time_interleaved([model], eval_x, runs, warmup)
    return _evaluation(path, scores, times)


def evaluate_pair(
    baseline_path: Path,
    candidate_path: Path,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    *,
    runs: int,
    warmup: int,
    threads: int,
) -> tuple[Evaluation, Evaluation]:
    """Measure a baseline and a candidate under identical conditions.

    The candidate's agreement is against the baseline's outputs; latencies are
    timed interleaved.

    Args:
        baseline_path: the fp32 model.
        candidate_path: the optimized model.
        eval_x: ``[n, ...]`` samples.
        eval_y: ``[n]`` integer labels.
        runs: timed single-sample runs per model.
        warmup: untimed runs per model.
        threads: onnxruntime intra-op threads.

    Returns:
        ``(baseline, candidate)`` evaluations.

    Raises:
        ValueError: if the eval set or arguments are malformed.
        OptimizationError: if onnxruntime cannot load or run a model.
    """
    check_eval_set(eval_x, eval_y)
    _validate_timing(runs, warmup, threads)
    shape = tuple(eval_x.shape[1:])
    base, cand = _Model(baseline_path, threads, shape), _Model(candidate_path, threads, shape)
    base_out = base.predict(eval_x)
    base_scores = score(base_out, eval_y)
    cand_scores = score(cand.predict(eval_x), eval_y, base_out)
    base_times, cand_times = _time_interleaved([base, cand], eval_x, runs, warmup)
    return (
        _evaluation(baseline_path, base_scores, base_times),
        _evaluation(candidate_path, cand_scores, cand_times),
    )
