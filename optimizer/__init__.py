"""Make models smaller and faster for devices, and prove it before shipping.

``optimize`` prunes (optional) and quantizes an fp32 ONNX model to int8 — static
QDQ per-channel for conv nets, dynamic for MatMul/Gemm nets — then measures fp32
and int8 side by side and ships int8 only if its outputs are finite, its accuracy
stays within budget and it is actually faster. Otherwise fp32 ships, and the report
names the gate that failed.

Failures of onnx/onnxruntime surface as
:class:`edgefleet.contract.errors.OptimizationError`; caller mistakes as
``ValueError``.
"""

from edgefleet.optimizer._decisions import GateDecision, MethodChoice, choose_method, decide_gates
from edgefleet.optimizer._evaluate import Evaluation, evaluate
from edgefleet.optimizer._inspect import inspect_model
from edgefleet.optimizer._pipeline import optimize
from edgefleet.optimizer._profile import reference_profile
from edgefleet.optimizer._prune import PruneStats, prune_array, prune_model
from edgefleet.optimizer._tflite import (
    inspect_tflite,
    is_tflite,
    onnx_to_tflite,
    quantize_tflite,
    run_tflite,
)
from edgefleet.optimizer._types import OptimizationResult, OptimizeTarget

__all__ = [
    "Evaluation",
    "GateDecision",
    "MethodChoice",
    "OptimizationResult",
    "OptimizeTarget",
    "PruneStats",
    "choose_method",
    "decide_gates",
    "evaluate",
    "inspect_model",
    "inspect_tflite",
    "is_tflite",
    "onnx_to_tflite",
    "optimize",
    "prune_array",
    "prune_model",
    "quantize_tflite",
    "reference_profile",
    "run_tflite",
]
