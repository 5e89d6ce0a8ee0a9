"""Make models smaller and faster for devices, and prove it before shipping.

``optimize`` prunes (optional) and quantizes an fp32 ONNX model to int8 — static
QDQ per-channel for conv nets, dynamic for MatMul/Gemm nets — then measures fp32
and int8 side by side and ships int8 only if its outputs are finite, its accuracy
stays within budget and it is actually faster. Otherwise fp32 ships, and the report
names the gate that failed. ``optimize_for_classes`` does that for a list of hardware
classes and picks each one's variant (int8 or fp32, ONNX or ``.tflite``, TensorRT FP16
for Jetson), measured on this machine for its own class and by rule for the others.

Failures of onnx/onnxruntime surface as
:class:`edgefleet.contract.errors.OptimizationError`; caller mistakes as
``ValueError``.
"""

from edgefleet.optimizer._classes import Candidate, ClassChoice, choose_for_class
from edgefleet.optimizer._decisions import GateDecision, MethodChoice, choose_method, decide_gates
from edgefleet.optimizer._evaluate import Evaluation, evaluate
from edgefleet.optimizer._graph import refuse_quantized
from edgefleet.optimizer._inspect import inspect_model
from edgefleet.optimizer._pipeline import optimize, optimize_samples
from edgefleet.optimizer._profile import (
    TASKS,
    detect_task,
    input_kind,
    profile_model,
    reference_profile,
)
from edgefleet.optimizer._prune import PruneStats, prune_array, prune_model
from edgefleet.optimizer._runtime import external_data_files, inline_external_data
from edgefleet.optimizer._samples import Samples, load_samples
from edgefleet.optimizer._tflite import (
    TfliteRunner,
    inspect_tflite,
    is_tflite,
    onnx_to_tflite,
    quantize_tflite,
    run_tflite,
    time_tflite,
)
from edgefleet.optimizer._tflite_optimize import optimize_tflite
from edgefleet.optimizer._types import OptimizationResult, OptimizeTarget
from edgefleet.optimizer._variants import ClassPlan, optimize_for_classes

__all__ = [
    "Candidate",
    "ClassChoice",
    "ClassPlan",
    "Evaluation",
    "GateDecision",
    "MethodChoice",
    "OptimizationResult",
    "OptimizeTarget",
    "PruneStats",
    "Samples",
    "TASKS",
    "TfliteRunner",
    "choose_for_class",
    "choose_method",
    "decide_gates",
    "detect_task",
    "evaluate",
    "external_data_files",
    "inline_external_data",
    "input_kind",
    "load_samples",
    "profile_model",
    "inspect_model",
    "inspect_tflite",
    "is_tflite",
    "onnx_to_tflite",
    "optimize",
    "optimize_for_classes",
    "optimize_samples",
    "optimize_tflite",
    "prune_array",
    "prune_model",
    "quantize_tflite",
    "refuse_quantized",
    "reference_profile",
    "run_tflite",
    "time_tflite",
]
