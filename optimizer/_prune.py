"""Unstructured magnitude pruning of weight initializers.

Zeroing the smallest-magnitude weights makes the file compress better (the zeros
survive int8 quantization because weights are quantized symmetrically, zero point
0). It does not make inference faster: onnxruntime's CPU kernels are dense and
multiply the zeros like any other value. The report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

__all__ = ["PruneStats", "prunable_weights", "prune_array", "prune_model"]

# op type -> input positions that hold weights worth pruning.
_WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "MatMul": (0, 1),
    "Gemm": (0, 1),
    "Conv": (1,),
    "ConvTranspose": (1,),
}
_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE})

SPARSITY_NOTE = (
    "unstructured magnitude pruning: zeros shrink the compressed (gzip) size of the "
    "model file, not its raw size or latency (onnxruntime CPU kernels are dense)"
)


@dataclass(frozen=True)
class PruneStats:
    """What pruning did.

    Attributes:
        target: requested fraction of zero weights per tensor.
        achieved: zero weights / all weights, over the pruned tensors.
        tensors: names of the pruned initializers.
        weights: number of weights in those tensors.
    """

    target: float
    achieved: float
    tensors: tuple[str, ...]
    weights: int

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for the optimization report."""
        return {
            "target": self.target,
            "achieved": round(self.achieved, 6),
            "tensors": list(self.tensors),
            "weights": self.weights,
            "note": SPARSITY_NOTE,
        }


def prune_array(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the smallest-magnitude entries so at least ``sparsity`` of them are 0.

    Args:
        weights: any float array.
        sparsity: fraction in ``[0, 1)`` of entries to set to zero.

    Returns:
        A new array of the same shape and dtype.

    Raises:
        ValueError: if ``sparsity`` is outside ``[0, 1)``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    flat = np.array(weights, copy=True).reshape(-1)
    k = math.ceil(sparsity * flat.size - 1e-9)
    if k > 0:
        smallest = np.argpartition(np.abs(flat), k - 1)[:k]
        flat[smallest] = 0
    return flat.reshape(np.shape(weights))


def prunable_weights(model: onnx.ModelProto) -> list[str]:
    """Names of float initializers with 2+ dims that feed MatMul/Gemm/Conv weights.

    Args:
        model: a loaded model.

    Returns:
        Initializer names in graph order.
    """
    inits = {
        t.name: t
        for t in model.graph.initializer
        if t.data_type in _FLOAT_TYPES and len(t.dims) >= 2
    }
    names: list[str] = []
    for node in model.graph.node:
        for pos in _WEIGHT_INPUTS.get(node.op_type, ()):
            if pos < len(node.input) and node.input[pos] in inits and node.input[pos] not in names:
                names.append(node.input[pos])
    return names


def prune_model(model: onnx.ModelProto, sparsity: float) -> tuple[onnx.ModelProto, PruneStats]:
    """Magnitude-prune every prunable weight tensor to ``sparsity``.

    Each tensor is pruned to the same fraction (layer-wise), so no layer is wiped
    out by a global threshold.

    Args:
        model: a loaded model (left unchanged).
        sparsity: fraction in ``[0, 1)`` of weights to zero in each tensor.

    Returns:
        The pruned copy and its statistics.

    Raises:
        ValueError: if ``sparsity`` is outside ``[0, 1)``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    names = prunable_weights(pruned)
    zeros = total = 0
    by_name = {t.name: t for t in pruned.graph.initializer}
    for name in names:
        tensor = by_name[name]
        array = prune_array(numpy_helper.to_array(tensor), sparsity)
        tensor.CopyFrom(numpy_helper.from_array(array, name))
        zeros += int(np.count_nonzero(array == 0))
        total += int(array.size)
    achieved = zeros / total if total else 0.0
    return pruned, PruneStats(sparsity, achieved, tuple(names), total)
