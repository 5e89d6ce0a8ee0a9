"""What the caller asks for (``OptimizeTarget``) and what it gets (``OptimizationResult``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.optimizer._decisions import METHODS

__all__ = ["OptimizationResult", "OptimizeTarget"]


@dataclass(frozen=True)
class OptimizeTarget:
    """How to optimize and what the result must satisfy to ship.

    Attributes:
        method: ``"auto"`` (static for conv nets, dynamic for MatMul/Gemm nets),
            ``"static"``, ``"dynamic"`` or ``"none"`` (no quantization).
        sparsity: magnitude-pruning target, fraction of zero weights in ``[0, 1)``.
        accuracy_budget_pt: largest allowed top-1 accuracy drop, in percentage points.
        latency_runs: timed single-sample runs per model.
        warmup_runs: untimed runs per model before timing.
        threads: onnxruntime intra-op threads used when timing (match the device).
        require_faster: the int8 model ships only if it is faster than fp32 beyond the
            timing noise (a 95 % bound over interleaved blocks).
        min_sqnr_db: fidelity gate for models other than classifiers: every float
            output's SQNR against fp32, in dB (20 dB: error energy 1 % of the signal).
        min_cosine: fidelity gate: every float output's cosine similarity to fp32.
        task: what the model is (``classification``… ; "" detects it): classifiers with
            labels are judged by top-1 accuracy, everything else by fidelity.
        fallback: when int8 misses the quality gate, keep the most sensitive nodes in
            float, step by step, until it holds.
        max_float_nodes: the most nodes the fallback may keep in float.
        evaluator: ``module:function`` scoring a model's outputs against the eval labels
            (higher is better, e.g. mAP or IoU as a fraction); when given it replaces
            the built-in quality measure, and the candidate may lose at most
            ``accuracy_budget_pt / 100`` of the fp32 model's score.
    """

    method: str = "auto"
    sparsity: float = 0.0
    accuracy_budget_pt: float = 1.0
    latency_runs: int = 200
    warmup_runs: int = 20
    threads: int = 1
    require_faster: bool = True
    min_sqnr_db: float = 20.0
    min_cosine: float = 0.995
    task: str = ""
    fallback: bool = True
    max_float_nodes: int = 16
    evaluator: str = ""

    def __post_init__(self) -> None:
        """Reject impossible settings.

        Raises:
            ValueError: if any field is out of range.
        """
        if self.evaluator and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.evaluator):
            raise ValueError(f"evaluator must be 'module:function', got {self.evaluator!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not (math.isfinite(self.accuracy_budget_pt) and self.accuracy_budget_pt >= 0):
            raise ValueError(
                f"accuracy_budget_pt must be a finite number >= 0, got {self.accuracy_budget_pt}"
            )
        if self.latency_runs < 1 or self.warmup_runs < 0 or self.threads < 1:
            raise ValueError(
                "need latency_runs >= 1, warmup_runs >= 0, threads >= 1, got "
                f"{self.latency_runs}, {self.warmup_runs}, {self.threads}"
            )


@dataclass
class OptimizationResult:
    """The outcome of :func:`~edgefleet.optimizer.optimize`.

    Attributes:
        shipped: ``"int8"`` if the quantized model passed every gate, else ``"fp32"``.
        shipped_path: the file to register as the optimized version (a copy of the
            fp32 model when a gate failed).
        candidate_path: the optimized candidate (the int8 file, even when it did
            not ship; the pruned fp32 file when ``method == "none"``).
        method: ``"static"``, ``"dynamic"`` or ``"none"``.
        report: JSON-serializable figures, gates and reasons (also written to
            ``report.json`` in the output folder).
    """

    shipped: str
    shipped_path: Path
    candidate_path: Path
    method: str
    report: dict[str, Any] = field(default_factory=dict)
