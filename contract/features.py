"""Drift features: numbers that describe a model's data, computed the same way on the
controller (for the reference profile) and on the device (for every telemetry window).

An *extractor* is a small JSON object in the reference profile. It names one tensor
(an input or an output of the model), a kind, and whether the tensor's first axis
holds samples (``batched``) or the whole tensor is one sample. ``extract`` turns the
tensor of one call into a ``[samples, features]`` matrix, one column per name in
``feature_names(spec)``. Kinds:

- ``image``: per-channel mean and standard deviation (first four channels),
  brightness (mean of all pixels) and contrast (their standard deviation); layout
  ``NCHW`` or ``NHWC``. Pixels are read on a grid so at most ``max_pixels`` per
  channel are touched, whatever the resolution.
- ``audio``: RMS energy, zero-crossing rate and peak amplitude of the waveform.
- ``tokens``: sequence length (the attention mask's sum, or the ids that are not
  ``pad``) and the unknown-token rate (ids equal to ``unk`` when it is given, else ids
  the reference data never contained: ``vocab``).
- ``tabular``: the values at fixed positions (``index``) of the flattened sample.
- ``stats``: mean, standard deviation, minimum and maximum of the sample.
- ``scores`` (outputs): mean, maximum and the share of values above ``threshold``.
- ``segmentation`` (outputs): the share of pixels given to each class (first eight).

This module needs numpy, as the sketch does (every device runtime and the controller have
it); the contract's package does not import it, only what reads drift features does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["INPUT_KINDS", "OUTPUT_KINDS", "extract", "feature_names"]

INPUT_KINDS = ("image", "audio", "tokens", "tabular", "stats")
OUTPUT_KINDS = ("scores", "segmentation", "stats")
_MAX_ELEMENTS = 65536  # per sample, for the kinds that read a flattened sample


def feature_names(spec: dict[str, Any]) -> list[str]:
    """The names of the columns ``extract`` returns for ``spec``, prefixed by the tensor.

    Raises:
        ValueError: an unknown kind.
    """
    kind, t = spec["kind"], spec.get("tensor") or "input"
    if kind == "image":
        c = min(int(spec.get("channels", 3)), 4)
        names = [f"mean[{i}]" for i in range(c)] + [f"std[{i}]" for i in range(c)]
        names += ["brightness", "contrast"]
    elif kind == "audio":
        names = ["energy", "zero_crossing_rate", "peak"]
    elif kind == "tokens":
        names = ["length", "unknown_rate"]
    elif kind == "tabular":
        return [f"{t}[{int(i)}]" for i in spec["index"]]
    elif kind == "stats":
        names = ["mean", "std", "min", "max"]
    elif kind == "scores":
        names = ["mean", "max", "above_threshold"]
    elif kind == "segmentation":
        names = [f"area[{i}]" for i in range(min(int(spec.get("classes", 2)), 8))]
    else:
        raise ValueError(f"unknown feature kind {kind!r}")
    return [f"{t}.{n}" for n in names]


def _samples(arr: np.ndarray, batched: bool) -> np.ndarray:
    return arr if batched and arr.ndim >= 1 else arr[None]


def _flat(x: np.ndarray) -> np.ndarray:
    """``[n, elements]`` float64, at most ``_MAX_ELEMENTS`` per sample (on a stride)."""
    flat = x.reshape(len(x), -1)
    step = max(1, math.ceil(flat.shape[1] / _MAX_ELEMENTS))
    return np.asarray(flat[:, ::step], dtype=np.float64)


def _image(x: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    if x.ndim != 4:
        raise ValueError("an image tensor has four axes")
    c = min(int(spec.get("channels", 3)), 4)
    nhwc = spec.get("layout", "NCHW") == "NHWC"
    h, w = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
    if x.shape[3 if nhwc else 1] < c:
        raise ValueError("fewer channels than profiled")
    step = max(1, math.ceil(math.sqrt(h * w / int(spec.get("max_pixels", 4096)))))
    if nhwc:  # read the grid in memory order, then put channels first
        grid = np.asarray(x[:, ::step, ::step, :c], dtype=np.float64)
        px = grid.reshape(len(x), -1, c).transpose(0, 2, 1)
    else:
        px = np.asarray(x[:, :c, ::step, ::step], dtype=np.float64).reshape(len(x), c, -1)
    mean, std = px.mean(axis=2), px.std(axis=2)
    whole = px.reshape(len(x), -1)
    return np.column_stack([mean, std, whole.mean(axis=1), whole.std(axis=1)])


def _audio(x: np.ndarray) -> np.ndarray:
    flat = np.asarray(x.reshape(len(x), -1)[:, :_MAX_ELEMENTS], dtype=np.float64)
    if flat.shape[1] < 2:
        raise ValueError("a waveform needs two samples or more")
    energy = np.sqrt(np.mean(np.square(flat), axis=1))
    signs = np.signbit(flat)
    zcr = np.mean(signs[:, 1:] != signs[:, :-1], axis=1)
    return np.column_stack([energy, zcr, np.abs(flat).max(axis=1)])


def _tokens(ids: np.ndarray, mask: np.ndarray | None, spec: dict[str, Any]) -> np.ndarray:
    ids = ids.reshape(len(ids), -1)
    if mask is not None and mask.size == ids.size:
        valid = mask.reshape(ids.shape) != 0
    else:
        valid = ids != int(spec.get("pad", 0))
    length = valid.sum(axis=1)
    unk = spec.get("unk")
    if unk is not None:
        unknown = (ids == int(unk)) & valid
    else:
        vocab = spec.get("_vocab")  # sorted, prepared once by the device
        if vocab is None:
            vocab = np.unique(np.asarray(spec.get("vocab", []), dtype=np.int64))
        if vocab.size:
            at = np.minimum(np.searchsorted(vocab, ids), vocab.size - 1)
            unknown = (vocab[at] != ids) & valid
        else:
            unknown = valid
    rate = unknown.sum(axis=1) / np.maximum(length, 1)
    return np.column_stack([length.astype(np.float64), rate])


def _segmentation(x: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    if x.ndim != 4:
        raise ValueError("a segmentation output has four axes")
    if int(spec.get("axis", 1)) in (-1, 3):
        x = x.transpose(0, 3, 1, 2)
    k = min(int(spec.get("classes") or x.shape[1]), 8)
    step = max(1, math.ceil(math.sqrt(x.shape[2] * x.shape[3] / 4096)))
    winner = x[:, :, ::step, ::step].argmax(axis=1).reshape(len(x), -1)
    return np.column_stack([(winner == c).mean(axis=1) for c in range(k)])


def extract(spec: dict[str, Any], feeds: dict[str, np.ndarray],
            outputs: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
    """The features of one call's tensor: ``[samples, len(feature_names(spec))]``.

    Args:
        spec: the extractor (its ``tensor`` of ``None`` means the first input).
        feeds: the call's inputs by name.
        outputs: the call's outputs by name (for output extractors).

    Returns:
        The matrix, or None when the call does not hold the tensor or its shape does
        not fit the extractor (a model served with another input shape).
    """
    source = feeds if spec.get("source", "input") == "input" else (outputs or {})
    name = spec.get("tensor")
    arr = source.get(name) if name else next(iter(source.values()), None)
    if arr is None:
        return None
    try:
        x = _samples(np.asarray(arr), bool(spec.get("batched", True)))
        if not len(x):
            return None
        kind = spec["kind"]
        if kind == "image":
            return _image(x, spec)
        if kind == "audio":
            return _audio(x)
        if kind == "tokens":
            mask = feeds.get(spec["mask"]) if spec.get("mask") else None
            return _tokens(x, mask, spec)
        if kind == "tabular":  # on every call of a tabular model: kept lean
            flat = x.reshape(len(x), -1)
            index = spec.get("_index")  # prepared once by the device (see DriftSpec)
            if index is None:
                index = np.asarray(spec["index"], dtype=np.intp)
            top = spec.get("_top", int(index.max()) if index.size else -1)
            if top < 0 or flat.shape[1] <= top:
                return None
            if spec.get("_whole") and flat.shape[1] == len(index):
                return flat.copy()  # every position: the row itself
            return flat[:, index]
        if kind == "segmentation":
            return _segmentation(x, spec)
        flat = _flat(x)
        if kind == "scores":
            above = (flat > float(spec.get("threshold", 0.5))).mean(axis=1)
            return np.column_stack([flat.mean(axis=1), flat.max(axis=1), above])
        if kind == "stats":
            return np.column_stack([flat.mean(axis=1), flat.std(axis=1), flat.min(axis=1),
                                    flat.max(axis=1)])
    except (ValueError, IndexError, TypeError, KeyError):
        return None
    return None
