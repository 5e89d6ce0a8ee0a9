"""A model's signature on the device: datatypes and the check every call's feeds pass."""

from __future__ import annotations

from typing import NoReturn

import numpy as np

from edgefleet.contract import InputError, TensorSpec, datatypes

__all__ = ["V2_TO_NUMPY", "check_feeds", "signature_text", "v2_shape"]

V2_TO_NUMPY = {name: dtype.type for name, dtype in datatypes.NUMPY.items()}
_DTYPES = datatypes.NUMPY


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


