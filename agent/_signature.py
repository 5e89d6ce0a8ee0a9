"""A model's signature on the device: datatypes and the check every call's feeds pass."""

from __future__ import annotations

from typing import NoReturn

import numpy as np

from edgefleet.contract import InputError, TensorSpec

__all__ = ["V2_TO_NUMPY", "check_feeds", "signature_text", "v2_shape"]

_ORT_TO_V2 = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16",
    "tensor(int8)": "INT8", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL",
}
V2_TO_NUMPY = {
    "FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
    "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8,
    "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_,
}
_DTYPES = {k: np.dtype(v) for k, v in V2_TO_NUMPY.items()}


def v2_shape(shape: list[int | str]) -> list[int]:
    """A shape as the Open Inference Protocol writes it: ``-1`` for a dynamic dimension."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def signature_text(specs: list[TensorSpec]) -> str:
    return ", ".join(f"{s.name}: {s.datatype}{list(s.shape)}" for s in specs)


def check_feeds(specs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> None:
    """Raise ``InputError`` naming the expected signature unless ``feeds`` match it."""
    # on every inference: plain loops, and the signature text only when it fails
    if len(feeds) != len(specs):
        _names_error(specs, feeds)
    for spec in specs:
        arr = feeds.get(spec.name)
        if arr is None:
            _names_error(specs, feeds)
        want = _DTYPES.get(spec.datatype)
        if want is not None and arr.dtype != want:
            raise InputError(f"input {spec.name!r} must be {spec.datatype}, got {arr.dtype}; "
                             f"expected {{{signature_text(specs)}}}")
        shape = arr.shape
        bad = len(shape) != len(spec.shape)
        if not bad:
            for d, n in zip(spec.shape, shape):  # noqa: B905 - lengths checked above
                if d != n and isinstance(d, int):
                    bad = True
        if bad:
            raise InputError(f"input {spec.name!r} has shape {list(shape)}; "
                             f"expected {{{signature_text(specs)}}}")


def _names_error(specs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> NoReturn:
    raise InputError(f"expected inputs {{{signature_text(specs)}}}, got names {sorted(feeds)}")


