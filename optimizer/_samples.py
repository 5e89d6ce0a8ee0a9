"""Evaluation and calibration data in the model's own terms: named inputs and samples.

An ``.npz`` upload holds one array per model input, keyed by the input's name (a
single-input model may use ``x`` instead), and optional labels ``y`` (integers, one per
sample). Every array stacks the same number of samples, in one of two layouts:

- **rows**: the array has the input's rank and axis 0 is the input's batch axis
  (dynamic, or fixed at 1); each row is one sample, e.g. ``[S, 3, 224, 224]`` for an
  input ``[batch, 3, 224, 224]``;
- **feeds**: the array has one axis more than the input; ``array[i]`` is the whole
  tensor of one call, for inputs without a batch axis: an RNN state ``[2, 1, 128]``
  given as ``[S, 2, 1, 128]``, a scalar sample rate as ``[S]``.

``load_samples`` checks names, dtypes (exactly the model's), ranks and fixed
dimensions against the model's signature and raises ``InvalidRequest`` (a ``ValueError``)
naming the input and what was expected, so bad data is refused when it is registered,
not when a bundle is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgefleet.contract import InvalidRequest
from edgefleet.contract.npz import load_npz

__all__ = ["Samples", "load_samples", "signature_text"]

_NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
          "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8,
          "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_}


def signature_text(inputs: list[dict[str, Any]]) -> str:
    """``name: FP32[batch, 3, 224, 224], …`` for messages."""
    return ", ".join(f"{i['name']}: {i['datatype']}{list(i['shape'])}" for i in inputs)


@dataclasses.dataclass(frozen=True)
class Samples:
    """Validated samples keyed by input name.

    Attributes:
        arrays: input name -> the uploaded array.
        stacked: input name -> True for the *feeds* layout, False for *rows*.
        labels: one integer label per sample, or None.
        count: number of samples.
        batchable: every input is in rows with a free batch axis, so rows can be run
            several at a time.
    """

    arrays: dict[str, np.ndarray]
    stacked: dict[str, bool]
    labels: np.ndarray | None
    count: int
    batchable: bool

    def feed(self, i: int) -> dict[str, np.ndarray]:
        """The inputs of one call for sample ``i`` (a batch of one for rows)."""
        # np.asarray: a scalar input's sample must stay a 0-d array, not a numpy scalar
        return {n: (np.asarray(a[i]) if self.stacked[n] else a[i:i + 1])
                for n, a in self.arrays.items()}

    def batches(self, max_rows: int = 32, limit: int | None = None
                ) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
        """``(sample slice, feeds)`` for calls covering the first ``limit`` samples:
        several rows per call when the batch axis is free, else one sample per call."""
        end = self.count if limit is None else min(limit, self.count)
        step = max_rows if self.batchable else 1
        for start in range(0, end, step):
            part = slice(start, min(start + step, end))
            if self.batchable:
                yield part, {n: a[part] for n, a in self.arrays.items()}
            else:
                yield part, self.feed(start)

    def single_input(self) -> np.ndarray | None:
        """The array of a single-input model whose data is in rows (what the optimizer
        takes today); None for any other layout."""
        if len(self.arrays) != 1 or any(self.stacked.values()):
            return None
        return next(iter(self.arrays.values()))


def _npz(data: bytes, what: str) -> dict[str, np.ndarray]:
    try:
        return load_npz(data)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidRequest(f"{what}: not a valid .npz file ({exc})") from exc
    except Exception as exc:  # zipfile raises BadZipFile and friends
        raise InvalidRequest(f"{what}: not a valid .npz file ({exc})") from exc


def _check_input(what: str, spec: dict[str, Any], arr: np.ndarray) -> bool:
    """Validate one input's array; returns whether it is in the feeds layout.

    Raises:
        InvalidRequest: naming the input and what was expected.
    """
    name, shape, datatype = spec["name"], list(spec["shape"]), spec["datatype"]
    want = _NUMPY.get(datatype)
    where = f"{what}: input {name!r}"
    if want is not None and arr.dtype != np.dtype(want):  # load_samples(cast=True) cast it
        raise InvalidRequest(f"{where} is {arr.dtype}; the model takes {datatype} "
                         f"({np.dtype(want).name}): convert it, e.g. "
                         f"array.astype(np.{np.dtype(want).name})")
    rank = len(shape)
    if arr.ndim == rank + 1:
        stacked, per_sample = True, list(arr.shape[1:])
    elif arr.ndim == rank and rank >= 1:
        first = shape[0]
        if isinstance(first, int) and first != 1:
            raise InvalidRequest(f"{where} has a fixed first axis of {first} ({shape}), so it "
                             f"has no batch axis to put samples on: stack whole inputs on "
                             f"a new first axis, shape [samples, {', '.join(map(str, shape))}]")
        stacked, per_sample = False, [1, *arr.shape[1:]]
    else:
        layouts = f"{rank + 1} axes (whole inputs stacked on a new first axis)"
        if rank >= 1:
            layouts = f"{rank} axes (samples along the batch axis) or " + layouts
        raise InvalidRequest(f"{where} has {arr.ndim} axes {list(arr.shape)}; the model's input "
                         f"is {shape}: give {layouts}")
    if arr.shape[0] == 0:
        raise InvalidRequest(f"{where} holds no samples")
    for axis, (want_dim, got) in enumerate(zip(shape, per_sample, strict=True)):
        if isinstance(want_dim, int) and want_dim >= 0 and got != want_dim:
            if not stacked and axis == 0:
                continue  # rows: the batch axis is the samples axis
            raise InvalidRequest(f"{where}: axis {axis} is {got} but the model fixes it at "
                             f"{want_dim} (input shape {shape}, sample shape {per_sample})")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise InvalidRequest(f"{where} holds {bad} NaN or infinite values")
    return stacked


def load_samples(data: bytes, signature: dict[str, Any], *, what: str = "eval set",
                 need_labels: bool = False, cast: bool = False) -> Samples:
    """Read and check an ``.npz`` of samples against a model's input signature.

    Args:
        data: the ``.npz`` bytes.
        signature: ``{"inputs": [{"name", "datatype", "shape"}], …}`` (the registry's).
        what: how messages name the data ("eval set", "calibration set").
        need_labels: refuse data without ``y``.
        cast: convert arrays of another dtype of the same kind (float64 for an FP32
            input), as data stored by earlier releases may be; new data is refused.

    Raises:
        InvalidRequest: not an ``.npz``; an unknown, missing or mis-shaped input; a dtype
            other than the model's; differing sample counts; bad labels.
    """
    arrays = _npz(data, what)
    inputs = list(signature.get("inputs") or [])
    names = [i["name"] for i in inputs]
    expected = signature_text(inputs)
    if "x" in arrays and "x" not in names:
        if len(inputs) != 1:
            raise InvalidRequest(f"{what}: 'x' stands for the only input of a single-input model; "
                             f"this one takes {expected}: key the arrays by input name")
        arrays[names[0]] = arrays.pop("x")
    labels = arrays.pop("y", None) if "y" not in names else None
    unknown = sorted(set(arrays) - set(names))
    if unknown:
        raise InvalidRequest(f"{what}: {unknown} are not inputs of the model; it takes {expected} "
                         f"('y' holds labels)")
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InvalidRequest(f"{what}: input {missing[0]!r} is missing; the model takes {expected}")
    if cast:
        for spec in inputs:
            want = _NUMPY.get(spec["datatype"])
            arr = arrays[spec["name"]]
            if want is not None and arr.dtype != want and np.can_cast(arr.dtype, want,
                                                                       "same_kind"):
                arrays[spec["name"]] = arr.astype(want)
    stacked = {spec["name"]: _check_input(what, spec, arrays[spec["name"]]) for spec in inputs}
    counts = {n: int(a.shape[0]) for n, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise InvalidRequest(f"{what}: inputs hold different numbers of samples: {counts}")
    count = next(iter(counts.values()), 0)
    if count == 0:
        raise InvalidRequest(f"{what}: no samples (the model takes {expected})")
    if labels is None and need_labels:
        raise InvalidRequest(f"{what}: labels 'y' are needed, one integer per sample")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != count:
            raise InvalidRequest(f"{what}: 'y' must hold one label per sample ({count}), "
                             f"got shape {list(labels.shape)}")
        if labels.dtype.kind not in "iu":
            raise InvalidRequest(f"{what}: labels 'y' must be integers (class indices), "
                             f"got {labels.dtype}")
    batchable = all(not stacked[s["name"]] and not isinstance(s["shape"][0], int)
                    for s in inputs)
    return Samples(arrays, stacked, labels, count, batchable)
