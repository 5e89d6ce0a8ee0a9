"""Pure decisions: which quantization method to use, and whether a candidate ships.

Nothing here touches files or onnxruntime; the pipeline measures, these functions
decide, so the rules are testable with plain numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CONV_OPS",
    "DYNAMIC_OP_TYPES",
    "METHODS",
    "GateDecision",
    "MethodChoice",
    "choose_method",
    "decide_gates",
]

METHODS = ("auto", "static", "dynamic", "none")
CONV_OPS = frozenset({"Conv", "ConvTranspose"})
MATMUL_OPS = frozenset({"MatMul", "Gemm"})
# Dynamic quantization is only ever asked for these: a dynamically quantized Conv
# (ConvInteger) is slow on CPU and loses accuracy, so conv layers stay fp32 there.
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")


@dataclass(frozen=True)
class MethodChoice:
    """The quantization method and the op types it is applied to.

    Attributes:
        method: ``"static"``, ``"dynamic"`` or ``"none"``.
        reason: one sentence for the report.
        op_types: op types handed to the quantizer (``None`` means every op type
            the static quantizer supports).
    """

    method: str
    reason: str
    op_types: tuple[str, ...] | None


def _count(ops: Mapping[str, int], names: frozenset[str]) -> int:
    return sum(n for op, n in ops.items() if op in names)


def choose_method(ops: Mapping[str, int], requested: str = "auto") -> MethodChoice:
    """Pick a quantization method from the graph's op mix.

    ``auto``: any Conv/ConvTranspose -> static QDQ (activation ranges from
    calibration); otherwise MatMul/Gemm -> dynamic; otherwise nothing to quantize.
    A forced ``dynamic`` never includes Conv.

    Args:
        ops: op type -> count, as returned by ``inspect_model``.
        requested: ``"auto"``, ``"static"``, ``"dynamic"`` or ``"none"``.

    Returns:
        The chosen method, why, and the op types to quantize.

    Raises:
        ValueError: if ``requested`` is not a known method.
    """
    if requested not in METHODS:
        raise ValueError(f"unknown method {requested!r}; expected one of {METHODS}")
    n_conv = _count(ops, CONV_OPS)
    n_mm = _count(ops, MATMUL_OPS)
    if requested == "none":
        return MethodChoice("none", "quantization disabled by target", None)
    if requested == "static":
        return MethodChoice("static", "static requested by target", None)
    if requested == "dynamic":
        note = f"; {n_conv} Conv op(s) left in fp32" if n_conv else ""
        return MethodChoice("dynamic", f"dynamic requested by target{note}", DYNAMIC_OP_TYPES)
    if n_conv:
        return MethodChoice(
            "static",
            f"graph has {n_conv} Conv op(s): static QDQ per-channel with calibrated activations",
            None,
        )
    if n_mm:
        return MethodChoice(
            "dynamic",
            f"graph has {n_mm} MatMul/Gemm op(s) and no Conv: dynamic int8 weights",
            DYNAMIC_OP_TYPES,
        )
    return MethodChoice("none", "no Conv, MatMul or Gemm op to quantize", None)


@dataclass(frozen=True)
class GateDecision:
    """Whether the candidate ships, and why.

    Attributes:
        gates: gate name -> passed (``finite``, ``accuracy``, ``faster``).
        ship_candidate: ``True`` when every gate passed.
        reason: one sentence for the report, naming any failed gate.
    """

    gates: dict[str, bool]
    ship_candidate: bool
    reason: str

    @property
    def failed(self) -> list[str]:
        """Names of the gates that failed, in gate order."""
        return [name for name, ok in self.gates.items() if not ok]


def decide_gates(
    *,
    candidate_finite: bool,
    baseline_accuracy: float,
    candidate_accuracy: float,
    accuracy_budget_pt: float,
    baseline_p50_ms: float,
    candidate_p50_ms: float,
    require_faster: bool,
) -> GateDecision:
    """Apply the shipping gates to measured numbers.

    Args:
        candidate_finite: every candidate output on the eval set was finite.
        baseline_accuracy: fp32 top-1 accuracy in ``[0, 1]``.
        candidate_accuracy: candidate top-1 accuracy in ``[0, 1]``.
        accuracy_budget_pt: allowed drop in percentage points.
        baseline_p50_ms: fp32 median single-sample latency.
        candidate_p50_ms: candidate median single-sample latency.
        require_faster: the candidate must have a strictly lower p50.

    Returns:
        The gate results and the verdict.
    """
    drop_pt = (baseline_accuracy - candidate_accuracy) * 100.0
    gates = {
        "finite": bool(candidate_finite),
        # A tiny epsilon keeps an exactly-on-budget drop from failing on float noise.
        "accuracy": drop_pt <= accuracy_budget_pt + 1e-9,
        "faster": (candidate_p50_ms < baseline_p50_ms) if require_faster else True,
    }
    why = {
        "finite": "candidate produced NaN/Inf outputs",
        "accuracy": f"accuracy drop {drop_pt:.2f} pt exceeds budget {accuracy_budget_pt:g} pt",
        "faster": (
            f"candidate p50 {candidate_p50_ms:.4f} ms is not below fp32 p50 "
            f"{baseline_p50_ms:.4f} ms"
        ),
    }
    failed = [name for name, ok in gates.items() if not ok]
    if failed:
        reason = "gate failed: " + "; ".join(f"{n} ({why[n]})" for n in failed)
        return GateDecision(gates, False, reason)
    speed = "" if not require_faster else f", p50 {candidate_p50_ms:.4f} < {baseline_p50_ms:.4f} ms"
    reason = f"all gates passed (accuracy drop {drop_pt:.2f} pt{speed})"
    return GateDecision(gates, True, reason)
