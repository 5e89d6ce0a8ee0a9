"""Tensor datatypes: the Open Inference Protocol (KServe v2) names, and how ONNX, numpy
and onnxruntime say the same thing. The one table the optimizer, the registry and the
agent read, so a model the registry takes is a model a device can be fed.

A device decodes a v2 request into numpy arrays, so the datatypes it serves are those
with a numpy type (``SERVED``). ``BYTES`` (strings) and ``BF16`` are v2 names a model's
signature can carry but devices cannot be fed; the registry refuses such inputs.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing  # noqa: F401  (np.typing)

__all__ = ["NUMPY", "ONNX", "SERVED", "from_numpy", "from_onnx", "unserved_inputs"]

# v2 name -> numpy dtype of the values devices decode and feed
NUMPY: Final[dict[str, np.dtype]] = {name: np.dtype(kind) for name, kind in (
    ("BOOL", np.bool_), ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32),
    ("UINT64", np.uint64), ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32),
    ("INT64", np.int64), ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64))}
SERVED: Final = frozenset(NUMPY)

# ONNX element type name (``TensorProto.DataType.Name(t).lower()``, also what onnxruntime
# writes inside ``tensor(…)``) -> v2 name
ONNX: Final[dict[str, str]] = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
    "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float": "FP32", "double": "FP64", "string": "BYTES",
    "bfloat16": "BF16"}
_FROM_NUMPY: Final = {dtype: name for name, dtype in NUMPY.items()}


def from_onnx(name: str) -> str:
    """The v2 name of an ONNX element type name or an onnxruntime ``tensor(…)`` type;
    an unknown one comes back upper-cased (its own name), never silently as another."""
    bare = name[7:-1] if name.startswith("tensor(") and name.endswith(")") else name
    return ONNX.get(bare.lower(), bare.upper())


def from_numpy(dtype: np.typing.DTypeLike) -> str:
    """The v2 name of a numpy dtype (or its name); an unknown one comes back upper-cased."""
    kind = np.dtype(dtype)
    return str(_FROM_NUMPY.get(kind, kind.name.upper()))


def unserved_inputs(inputs: list[dict[str, object]]) -> list[str]:
    """``"name (DATATYPE)"`` of each signature input a device cannot be fed."""
    return [f"{i['name']} ({i['datatype']})" for i in inputs if i["datatype"] not in SERVED]
