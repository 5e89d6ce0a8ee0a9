"""Graph work before and after quantization: make real graphs quantizable, then count
what the quantizer really did.

- ``fold_constants``: weights held in ``Constant`` nodes (what some exporters write)
  become initializers, which is where onnxruntime's quantizers look for weights.
- ``upgrade_opset``: per-channel QDQ needs ``DequantizeLinear``'s ``axis`` (opset 13);
  an older model is converted with onnx's version converter.
- ``quantized_summary``: op types that run quantized, and the share of weight elements
  stored as 8-bit integers, read from the quantized file itself, so a label "int8"
  is a claim about the file.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgefleet.contract.errors import OptimizationError

__all__ = ["MIN_INT8_SHARE", "QDQ_MIN_OPSET", "default_opset",
           "fold_constants", "quantized_summary", "refuse_quantized",
           "upgrade_opset"]

QDQ_MIN_OPSET = 13  # DequantizeLinear's axis (per-channel scales) arrived in opset 13
MIN_INT8_SHARE = 0.05  # below this share of weights in int8, nothing was really quantized
_INT8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
_QUANTIZED_OPS = {"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul",
                  "DynamicQuantizeLSTM", "QGemm", "QAttention", "DynamicQuantizeMatMul",
                  "MatMulIntegerToFloat"}
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
_MIN_WEIGHT_ELEMENTS = 16  # smaller float tensors are biases, scales, shapes: not weights


def default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return 0


def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Move float ``Constant`` node values of the main graph into initializers.

    Returns:
        The model (changed in place) and how many constants moved.
    """
    graph = model.graph
    keep, moved = [], 0
    for node in graph.node:
        attr = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 \
            else None
        if attr is None or attr.name != "value" or attr.t.data_type not in _FLOAT:
            keep.append(node)
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return model, moved


def upgrade_opset(model: onnx.ModelProto, opset: int = QDQ_MIN_OPSET) -> onnx.ModelProto:
    """The model converted to ``opset``.

    Raises:
        OptimizationError: the converter cannot convert some node (named in the message).
    """
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
        return converted
    except Exception as exc:  # the converter raises plain RuntimeErrors and asserts
        raise OptimizationError(f"cannot convert from opset {default_opset(model)} to "
                                f"{opset}: {type(exc).__name__}: {exc}",
                                reason="opset_conversion_failed") from exc


def _weights(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def refuse_quantized(model: onnx.ModelProto, what: str) -> None:
    """Refuse a model that is quantized already: integer ops, or Quantize/DequantizeLinear
    nodes (a QDQ model, e.g. one this optimizer made, or one exported after
    quantization-aware training). Quantizing it again would fail deep inside the
    quantizer, or quantize what was quantized.

    Raises:
        OptimizationError: naming the ops found (reason ``already_quantized``).
    """
    ops = Counter(n.op_type for n in model.graph.node
                  if n.op_type in _QUANTIZED_OPS or n.op_type in _QDQ_OPS)
    if ops:
        held = ", ".join(f"{n} {op}" for op, n in sorted(ops.items()))
        raise OptimizationError(f"{what} is quantized already ({held}): optimize the float "
                                "model it came from, or deploy this one as it is",
                                reason="already_quantized")


def quantized_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """What in a model runs quantized.

    Returns:
        ``{"quantized_ops": {op_type: n}, "ops_total", "quantized_nodes", "weights_int8",
        "weights_float", "int8_weight_share"}``; a node counts as quantized when it is
        an integer op, or when one of its inputs comes from a ``DequantizeLinear``
        whose input is an 8-bit weight (QDQ format). Weight shares count elements of
        tensors of at least 16 elements.
    """
    inits = _weights(model)
    producers = {out: n for n in model.graph.node for out in n.output}
    counted: Counter[str] = Counter()
    total = 0
    for node in model.graph.node:
        if node.op_type in _QDQ_OPS:
            continue
        total += 1
        quantized = node.op_type in _QUANTIZED_OPS
        for name in node.input:
            src = producers.get(name)
            if src is not None and src.op_type == "DequantizeLinear":
                w = inits.get(src.input[0])
                if w is not None and w.data_type in _INT8:
                    quantized = True
        if quantized:
            counted[node.op_type] += 1
    int8 = sum(int(np.prod(t.dims)) for t in inits.values()
               if t.data_type in _INT8 and int(np.prod(t.dims)) >= _MIN_WEIGHT_ELEMENTS)
    flt = sum(int(np.prod(t.dims)) for t in inits.values()
              if t.data_type in _FLOAT and int(np.prod(t.dims)) >= _MIN_WEIGHT_ELEMENTS)
    return {"quantized_ops": dict(sorted(counted.items())), "ops_total": total,
            "quantized_nodes": sum(counted.values()), "weights_int8": int8,
            "weights_float": flt,
            "int8_weight_share": round(int8 / (int8 + flt), 4) if int8 + flt else 0.0}


def weight_array(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """An initializer as an array (None when there is none of that name)."""
    t = _weights(model).get(name)
    return numpy_helper.to_array(t) if t is not None else None
