"""Pure decisions: which variant each hardware class gets, and why.

The optimizer makes candidate files (fp32 and int8 ONNX, fp32 and int8 ``.tflite``)
and measures them on the machine it runs on. ``choose_for_class`` picks one per class:

- the class of this machine is decided by the measurements (the fastest candidate of
  its runtime that keeps accuracy within budget): ``basis = "measured"``;
- any other class is decided by ``CLASS_TRAITS``: int8 where the CPU has int8
  dot-product instructions and int8 kept accuracy here, fp32 where it has none, the
  fp32 model with a TensorRT FP16 engine built on the device for Jetson classes, a
  ``.tflite`` file where the class prefers LiteRT: ``basis = "rule"``.

Accuracy does not depend on the machine, so the accuracy gate is measured for every
class; speed is measured only where it can be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edgefleet.contract.hardware import CLASS_TRAITS, ClassTraits

__all__ = ["Candidate", "ClassChoice", "choose_for_class"]

_UNKNOWN = ClassTraits("unknown class: nothing known about its CPU", False)


@dataclass(frozen=True)
class Candidate:
    """A file the optimizer made and measured on this machine.

    Attributes:
        variant: ``"fp32"`` (the version's own file), ``"int8"``, ``"tflite-fp32"`` or
            ``"tflite-int8"``.
        runtime: ``"onnxruntime"`` or ``"litert"``.
        precision: ``"fp32"`` or ``"int8"``.
        accuracy: top-1 accuracy on the eval set, in ``[0, 1]``.
        accuracy_ok: outputs finite and the drop from fp32 ONNX within budget.
        p50_ms: median single-sample latency here.
        size_bytes: the file's size.
    """

    variant: str
    runtime: str
    precision: str
    accuracy: float
    accuracy_ok: bool
    p50_ms: float
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClassChoice:
    """The variant a hardware class gets.

    Attributes:
        hardware_class: the class.
        variant: the candidate's variant name (``"fp32"`` is the version's own file).
        runtime: the runtime the device serves it with.
        precision: ``"fp32"``, ``"int8"``, or ``"fp16"`` (a TensorRT engine built from
            the fp32 model on the device).
        basis: ``"measured"`` (benchmarked on this machine) or ``"rule"``.
        why: one sentence for the report.
    """

    hardware_class: str
    variant: str
    runtime: str
    precision: str
    basis: str
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pool(candidates: Mapping[str, Candidate], runtime: str) -> tuple[list[Candidate], str]:
    """The candidates of the class's preferred runtime, else the ONNX ones."""
    pool = [c for c in candidates.values() if c.runtime == runtime]
    if pool:
        return pool, ""
    note = f" ({runtime} preferred, but no {runtime} candidate was made)" if runtime else ""
    return [c for c in candidates.values() if c.runtime == "onnxruntime"], note


def _measured(name: str, pool: list[Candidate], note: str) -> ClassChoice:
    fp32 = next(c for c in pool if c.precision == "fp32")
    good = [c for c in pool if c.accuracy_ok]
    best = min(good, key=lambda c: c.p50_ms) if good else fp32
    timings = ", ".join(f"{c.variant} p50 {c.p50_ms:.4f} ms" for c in sorted(
        pool, key=lambda c: c.p50_ms))
    failed = [c.variant for c in pool if not c.accuracy_ok]
    rejected = f"; {', '.join(failed)} failed the accuracy gate" if failed else ""
    why = f"measured on this machine: {timings}{rejected}; fastest within budget: {best.variant}"
    return ClassChoice(name, best.variant, best.runtime, best.precision, "measured",
                       why + note)


def _by_rule(name: str, traits: ClassTraits, pool: list[Candidate], note: str) -> ClassChoice:
    fp32 = next(c for c in pool if c.precision == "fp32")
    int8 = next((c for c in pool if c.precision == "int8"), None)
    if not traits.int8_dot_product:
        why = f"by rule: {traits.cpu}: int8 is not faster there, so fp32"
        return ClassChoice(name, fp32.variant, fp32.runtime, "fp32", "rule", why + note)
    if int8 is None:
        why = f"by rule: {traits.cpu} would run int8 faster, but no int8 candidate was made"
        return ClassChoice(name, fp32.variant, fp32.runtime, "fp32", "rule", why + note)
    if not int8.accuracy_ok:
        why = (f"by rule: {traits.cpu} would run int8 faster, but {int8.variant} failed the "
               f"accuracy gate here ({int8.accuracy:.4f} vs fp32 {fp32.accuracy:.4f}); fp32")
        return ClassChoice(name, fp32.variant, fp32.runtime, "fp32", "rule", why + note)
    why = (f"by rule: {traits.cpu}: int8 dot-product instructions make int8 faster; accuracy "
           f"measured here: {int8.accuracy:.4f} vs fp32 {fp32.accuracy:.4f}")
    return ClassChoice(name, int8.variant, int8.runtime, "int8", "rule", why + note)


def choose_for_class(hardware_class: str, candidates: Mapping[str, Candidate], *,
                     measured_class: str) -> ClassChoice:
    """The variant for one hardware class.

    Args:
        hardware_class: the class to choose for.
        candidates: variant name -> candidate; must hold the ``"fp32"`` ONNX one.
        measured_class: this machine's class: its choice is decided by the timings.

    Raises:
        ValueError: no fp32 ONNX candidate.
    """
    if "fp32" not in candidates or candidates["fp32"].runtime != "onnxruntime":
        raise ValueError("the candidates must include the fp32 ONNX model as 'fp32'")
    traits = CLASS_TRAITS.get(hardware_class, _UNKNOWN)
    if traits.accelerator == "tensorrt":
        why = ("by rule: onnxruntime's TensorRT provider builds an FP16 engine from the fp32 "
               "model on the device and caches it in the state directory (CUDA, then CPU, "
               "if it cannot); not measurable here (no GPU)")
        return ClassChoice(hardware_class, "fp32", "onnxruntime", "fp16", "rule", why)
    pool, note = _pool(candidates, traits.runtime)
    if hardware_class == measured_class:
        return _measured(hardware_class, pool, note)
    return _by_rule(hardware_class, traits, pool, note)
