"""Read an ONNX model's signature and op mix."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from edgefleet.contract import datatypes
from edgefleet.optimizer._runtime import load_model

__all__ = ["inspect_model", "model_signature", "op_counts"]

def _datatype(elem_type: int) -> str:
    return datatypes.from_onnx(TensorProto.DataType.Name(elem_type))


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    dims: list[int | str] = []
    for i, dim in enumerate(value.type.tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_value"):  # -1: exporters' way of saying dynamic
            dims.append(f"dim{i}")
        else:
            dims.append(dim.dim_param or f"dim{i}")
    return dims


def _io(value: onnx.ValueInfoProto) -> dict[str, Any]:
    return {
        "name": value.name,
        "shape": _shape(value),
        "datatype": _datatype(value.type.tensor_type.elem_type),
    }


def model_signature(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """The graph's real inputs (initializers excluded) and outputs.

    Args:
        model: a loaded model.

    Returns:
        ``{"inputs": [...], "outputs": [...]}``, each ``{"name", "shape", "datatype"}``.
    """
    initializers = {init.name for init in model.graph.initializer}
    return {
        "inputs": [_io(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [_io(v) for v in model.graph.output],
    }


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Count op types in the main graph and every subgraph.

    Args:
        model: a loaded model.

    Returns:
        op type -> number of nodes, sorted by op type.
    """
    counts: Counter[str] = Counter()
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)
    return dict(sorted(counts.items()))


def _default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return 0


def inspect_model(path: str | Path) -> dict[str, Any]:
    """Describe an ONNX model file: signature, op mix and opset.

    Args:
        path: the ONNX file.

    Returns:
        ``{"inputs": [{"name", "shape", "datatype"}], "outputs": [...],
        "ops": {op_type: count}, "opset": int}``. Symbolic dims are strings and
        datatypes use KServe v2 names (``"FP32"``, ``"INT64"``...).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        OptimizationError: if the file is not a valid ONNX model.
    """
    model = load_model(Path(path))
    return {
        **model_signature(model),
        "ops": op_counts(model),
        "opset": _default_opset(model),
    }
