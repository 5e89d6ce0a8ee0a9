"""The one adapter between the optimizer and onnx / onnxruntime.

Every call into ``onnx``, ``onnxruntime`` and ``onnxruntime.quantization`` that can
fail goes through this module, and every failure leaves it as
:class:`~edgefleet.contract.errors.OptimizationError` raised ``from`` the original
exception, so logs keep the cause. onnxruntime's exceptions derive straight from
``Exception`` and its quantization tools raise assorted built-in types, which is why
the handlers here catch ``Exception``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from edgefleet.contract.errors import OptimizationError
from edgefleet.contract.files import atomic_write

__all__ = [
    "ArrayReader",
    "describe",
    "external_data_files",
    "has_symbolic_shape_inference",
    "inline_external_data",
    "load_model",
    "open_session",
    "preprocess",
    "quantize_dynamic_int8",
    "quantize_static_qdq",
    "run",
    "save_model",
]


def load_model(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file.

    Args:
        path: the model file.

    Returns:
        The parsed model.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        OptimizationError: if the file is not a valid ONNX model.
    """
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    missing = [f for f in external_data_files(path) if not (path.parent / f).is_file()]
    if missing:
        raise OptimizationError(
            f"{path.name} keeps its weights in external data files {missing}, which are not "
            f"here: send one self-contained file (`edgefleet model register` inlines them; "
            f"or onnx.load the model beside its data and onnx.save it without external data)")
    try:
        model = onnx.load_model(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise OptimizationError(f"{path.name} is not a valid ONNX model: {exc}") from exc
    return model


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _tensors(g)


def external_data_files(path: Path) -> list[str]:
    """The external data files an ONNX file refers to (relative to its folder; [] when
    it is self-contained).

    Raises:
        OptimizationError: not an ONNX file.
    """
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise OptimizationError(f"{path.name} is not a valid ONNX model: {exc}") from exc
    found = {entry.value for t in _tensors(model.graph)
             if t.data_location == onnx.TensorProto.EXTERNAL
             for entry in t.external_data if entry.key == "location"}
    return sorted(found)


def inline_external_data(path: Path) -> bytes:
    """An ONNX file with its external data files (beside it) folded in: one
    self-contained model, as the registry takes it.

    Raises:
        OptimizationError: the data files are missing, or the model would exceed
            protobuf's 2 GiB limit.
    """
    try:
        model = onnx.load_model(str(path))
        return bytes(model.SerializeToString())
    except Exception as exc:
        raise OptimizationError(f"cannot fold the external data of {path.name} into one file "
                                f"(models over 2 GiB cannot be): {exc}") from exc


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write a model atomically (temp file, fsync, rename).

    Args:
        model: the model to write.
        path: destination file.

    Raises:
        OptimizationError: if the model cannot be serialized.
    """
    try:
        data = model.SerializeToString()
    except Exception as exc:
        raise OptimizationError(f"cannot serialize model for {path.name}: {exc}") from exc
    atomic_write(path, data)


def open_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """Open a CPU inference session the way the agent runs models.

    Args:
        path: the ONNX file.
        threads: intra-op threads; inter-op is 1 and execution is sequential.

    Returns:
        The session.

    Raises:
        OptimizationError: if onnxruntime refuses the model.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OptimizationError(f"onnxruntime cannot load {path.name}: {exc}") from exc


def run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> np.ndarray:
    """Run a session and return its first output.

    Args:
        session: an open session.
        feed: input name to array.

    Returns:
        The first output as a numpy array.

    Raises:
        OptimizationError: if the run fails.
    """
    try:
        return np.asarray(session.run(None, feed)[0])
    except Exception as exc:
        raise OptimizationError(f"inference failed: {exc}") from exc


class ArrayReader(CalibrationDataReader):
    """Feeds calibration samples to onnxruntime's calibrator in fixed-size batches."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int) -> None:
        """Prepare the batches.

        Args:
            input_name: the model's input tensor name.
            x: calibration samples, first axis is the sample axis.
            batch: samples per feed (1 for models with a fixed batch of 1).
        """
        self._batches = [x[i : i + batch] for i in range(0, len(x), batch)]
        self._input_name = input_name
        self._it: Iterator[np.ndarray] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Return the next feed, or ``None`` when the samples are exhausted."""
        item = next(self._it, None)
        return None if item is None else {self._input_name: item}

    def rewind(self) -> None:
        """Start over from the first batch."""
        self._it = iter(self._batches)


def describe(exc: BaseException) -> str:
    """``Type: message`` (never empty: some tools raise bare assertions)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _call(step: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as exc:
        raise OptimizationError(f"{step} failed: {describe(exc)}",
                                reason=step.replace(" ", "_") + "_failed") from exc


_SYMBOLIC_LEFTOVERS = ("sym_shape_infer_temp.onnx", "sym_shape_infer_temp.onnx.data")
# the temp model's weights go to a file named by a uuid, in the working directory too
_UUID_DATA = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.data$")


def _leftovers() -> dict[Path, float]:
    found = {Path(p): Path(p).stat().st_mtime for p in _SYMBOLIC_LEFTOVERS if Path(p).exists()}
    with contextlib.suppress(OSError):  # an unreadable cwd: nothing of ours to find there
        found.update({p: p.stat().st_mtime for p in Path(".").iterdir()
                      if _UUID_DATA.match(p.name)})
    return found


def preprocess(src: Path, dst: Path, *, optimize: bool) -> list[str]:
    """Run onnxruntime's quantization pre-processing (shape inference, optimization).

    Symbolic shape inference fails on some real graphs (an assertion on a Concat,
    "incomplete symbolic shape inference"); pre-processing is then run again without
    it, and the returned notes say so. The file onnxruntime leaves in the working
    directory when it gives up is removed.

    Args:
        src: input model.
        dst: output model.
        optimize: also run onnxruntime's basic graph optimizations. Leave it off
            for dynamic quantization: they fuse MatMul+Add into Gemm, which the
            dynamic quantizer does not handle.

    Returns:
        What changed from the plan (empty when nothing did).

    Raises:
        OptimizationError: if pre-processing fails even without symbolic inference.
    """
    symbolic = has_symbolic_shape_inference()
    notes = [] if symbolic else ["symbolic shape inference unavailable (no sympy)"]
    before = _leftovers()
    try:
        quant_pre_process(str(src), str(dst), skip_optimization=not optimize,
                          skip_symbolic_shape=not symbolic)
        return notes
    except Exception as exc:
        if not symbolic:
            raise OptimizationError(f"pre-processing failed: {describe(exc)}",
                                    reason="preprocessing_failed") from exc
        first = describe(exc)
    finally:  # written to the cwd when inference gives up: not ours to keep
        for path, mtime in _leftovers().items():
            if before.get(path) != mtime:
                path.unlink(missing_ok=True)
    _call("pre-processing", quant_pre_process, str(src), str(dst),
          skip_optimization=not optimize, skip_symbolic_shape=True)
    return [f"symbolic shape inference failed ({first}): pre-processed without it"]


def has_symbolic_shape_inference() -> bool:
    """Whether onnxruntime's symbolic shape inference can run (it needs sympy).

    Without it, pre-processing falls back to onnx's own shape inference, which is
    enough for models whose shapes do not depend on symbolic arithmetic.
    """
    return importlib.util.find_spec("sympy") is not None


def quantize_static_qdq(
    src: Path,
    dst: Path,
    reader: ArrayReader,
    *,
    op_types: Sequence[str] | None,
    activation_signed: bool = False,
    per_channel: bool = True,
    exclude: Sequence[str] = (),
) -> None:
    """Static int8: QDQ format, per-channel symmetric int8 weights, MinMax calibration.

    Args:
        src: a pre-processed fp32 model.
        dst: output model.
        reader: the calibration samples.
        op_types: op types to quantize, or ``None`` for every supported one.
        activation_signed: QInt8 activations instead of QUInt8.
        per_channel: per-channel weight scales (needs opset 13), else per-tensor.
        exclude: names of nodes to keep in float.

    Raises:
        OptimizationError: if calibration or quantization fails.
    """
    _call(
        "static quantization",
        quantize_static,
        str(src),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types) if op_types is not None else None,
        per_channel=per_channel,
        nodes_to_exclude=list(exclude),
        activation_type=QuantType.QInt8 if activation_signed else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )


def quantize_dynamic_int8(
    src: Path, dst: Path, *, op_types: Sequence[str], per_channel: bool = False,
    exclude: Sequence[str] = (),
) -> None:
    """Dynamic int8: symmetric int8 weights, activations quantized at run time.

    Args:
        src: the fp32 model.
        dst: output model.
        op_types: op types to quantize (only MatMul/Gemm are ever passed).
        per_channel: per-output-channel weight scales.

    Raises:
        OptimizationError: if quantization fails.
    """
    _call(
        "dynamic quantization",
        quantize_dynamic,
        str(src),
        str(dst),
        op_types_to_quantize=list(op_types),
        per_channel=per_channel,
        nodes_to_exclude=list(exclude),
        weight_type=QuantType.QInt8,
        extra_options={"WeightSymmetric": True},
    )
