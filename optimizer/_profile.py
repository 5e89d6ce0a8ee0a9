"""Reference profiles for drift detection: what describes a model's data, by its kind.

``profile_model`` reads the model's signature and task, picks for each input and
output what describes it (``edgefleet.contract.features``: per-channel statistics,
brightness and contrast for images; energy and zero-crossing rate for audio; length
and unknown-token rate for token ids; values at fixed positions for tabular rows;
score statistics, or class areas, for outputs), computes those features over the
reference samples (eval and calibration sets) and bins each at its reference
deciles. The profile ships in the bundle as ``profile.json``; devices compute the
same features on their traffic and compare each telemetry window by PSI
(``edgefleet.agent.drift``). Tensors that do not describe the data (an RNN's state,
a scalar sample rate, a mask) are listed under ``skipped`` with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from edgefleet.contract.features import INPUT_KINDS, extract, feature_names

from ._samples import Samples

__all__ = ["PROFILE_VERSION", "TASKS", "detect_task", "input_kind", "profile_model",
           "reference_profile"]

PROFILE_VERSION = 2
TASKS = ("classification", "detection", "segmentation", "sequence", "embedding", "other")
_STATE_WORDS = ("state", "hidden", "cache", "past", "h0", "c0", "hn", "cn")
_AUDIO_WORDS = ("audio", "wav", "pcm", "speech", "waveform", "input_values", "signal")
_MAX_VOCAB = 65536
log = logging.getLogger(__name__)

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _is_float(spec: dict[str, Any]) -> bool:
    return str(spec["datatype"]).startswith(("FP", "BF"))


def input_kind(spec: dict[str, Any]) -> tuple[str, str]:
    """``(kind, why)`` for an input the user did not describe: a feature kind, ``mask``
    or ``skip``. Decided from its name, dtype and shape."""
    name, shape = spec["name"].lower(), list(spec["shape"])
    if any(w in name for w in _STATE_WORDS):
        return "skip", "recurrent state: it changes with every call by design"
    if not _is_float(spec) and "mask" in name:
        return "mask", "attention mask: used for the token length"
    if not shape or all(isinstance(d, int) for d in shape) and int(np.prod(shape)) <= 1:
        return "skip", "a scalar (e.g. a sample rate) does not describe the data"
    if spec["datatype"] == "BOOL":
        return "stats", "flags: the share set, per sample"
    if len(shape) == 4:  # float, or uint8 pixels of a quantized model
        if shape[1] in (1, 3, 4):
            return "image", "NCHW image: per-channel mean/std, brightness, contrast"
        if shape[3] in (1, 3, 4):
            return "image", "NHWC image: per-channel mean/std, brightness, contrast"
    if not _is_float(spec):
        if name in ("token_type_ids", "position_ids"):
            return "skip", f"{name} follow from the text's layout"
        if len(shape) <= 2:
            return "tokens", "integer ids: token length and unknown-token rate"
        return "stats", "mean, std, min and max of each sample"
    if any(w in name for w in _AUDIO_WORDS) or (len(shape) in (2, 3)
                                                 and not isinstance(shape[-1], int)):
        return "audio", "waveform: energy, zero-crossing rate, peak"
    if len(shape) == 2 and isinstance(shape[1], int):
        return "tabular", "feature rows: values at up to 256 positions"
    return "stats", "mean, std, min and max of each sample"


def _class_axis(shape: list[Any]) -> int:
    """The class axis of a ``[batch, C, H, W]`` or ``[batch, H, W, C]`` map: the last one
    when it is fixed and smaller than axis 1 (NHWC, as LiteRT writes them), else 1."""
    last, second = shape[-1], shape[1]
    if isinstance(last, int) and (not isinstance(second, int) or last < second):
        return -1
    return 1


def detect_task(signature: dict[str, Any]) -> str:
    """The task when it is obvious from the first output: class scores ``[batch, C]`` →
    classification; ``[batch, C>1, H, W]`` → segmentation; one map → detection; else
    ``other``."""
    outputs = signature.get("outputs") or []
    if not outputs or not _is_float(outputs[0]):
        return "other"
    shape = list(outputs[0]["shape"])
    if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1:
        return "classification"
    if len(shape) == 4:
        classes = shape[_class_axis(shape)]
        if isinstance(classes, int):
            return "segmentation" if classes > 1 else "detection"
    return "other"


def _batched(spec: dict[str, Any], samples: Samples | None) -> bool:
    if samples is not None and spec["name"] in samples.stacked:
        return not samples.stacked[spec["name"]]
    shape = list(spec["shape"])
    return bool(shape) and (not isinstance(shape[0], int) or shape[0] == 1)


def _input_specs(signature: dict[str, Any], sets: list[Samples],
                 kinds: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    samples = sets[0]
    specs, skipped = [], {}
    decided = {s["name"]: ((kinds[s["name"]], "named at register") if s["name"] in kinds
                           else input_kind(s)) for s in signature["inputs"]}
    mask = next((n for n, (k, _) in decided.items() if k == "mask"), None)
    for s in signature["inputs"]:
        name, shape = s["name"], list(s["shape"])
        kind, why = decided[name]
        if kind not in INPUT_KINDS:
            skipped[name] = why
            continue
        if kind == "image" and len(shape) != 4:
            skipped[name] = f"an image input has four axes, this one {shape}"
            continue
        spec: dict[str, Any] = {"source": "input", "tensor": name, "kind": kind,
                                "batched": _batched(s, samples), "why": why}
        if kind == "image":
            nhwc = not (len(shape) == 4 and shape[1] in (1, 3, 4))
            spec["layout"] = "NHWC" if nhwc else "NCHW"
            spec["channels"] = int(shape[3] if nhwc else shape[1]) if isinstance(
                shape[3 if nhwc else 1], int) else 3
        elif kind == "tokens":
            ids = np.unique(np.concatenate([s.arrays[name].ravel() for s in sets]))
            spec.update(mask=mask, pad=0, unk=None,
                        vocab=[int(i) for i in ids[:_MAX_VOCAB]])
        elif kind == "tabular":
            width = int(np.prod(samples.feed(0)[name].shape[1:])) if spec["batched"] else \
                int(np.prod(samples.feed(0)[name].shape))
            spec["index"] = [int(i) for i in np.unique(
                np.linspace(0, width - 1, min(width, 256)).round().astype(int))]
        specs.append(spec)
    return specs, skipped


def _output_specs(signature: dict[str, Any], task: str, outputs: dict[str, np.ndarray],
                  batched_inputs: set[Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    specs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for o in signature["outputs"]:
        name, shape = o["name"], list(o["shape"])
        if not _is_float(o) or any(w in name.lower() for w in _STATE_WORDS):
            skipped[name] = "not a float score output (state, ids or counts)"
            continue
        if len(specs) == 2:
            skipped[name] = "two outputs are profiled at most"
            continue
        batched = bool(shape) and shape[0] in batched_inputs
        if task == "segmentation" and len(shape) == 4 and not specs:
            axis = _class_axis(shape)
            classes = shape[axis]
            if isinstance(classes, int) and classes > 1:
                specs.append({"source": "output", "tensor": name, "kind": "segmentation",
                              "axis": axis, "classes": classes, "batched": batched,
                              "why": "segmentation: share of pixels per class"})
                continue
        values = np.asarray(outputs.get(name, np.zeros(1)), dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        unit = values.size and values.min() >= 0.0 and values.max() <= 1.0
        threshold = 0.5 if unit or not values.size else float(np.quantile(values, 0.9))
        specs.append({"source": "output", "tensor": name, "kind": "scores",
                      "threshold": round(threshold, 6), "batched": batched,
                      "why": "scores: mean, max and share above the threshold"})
    return specs, skipped


def _bin(matrix: np.ndarray, bins: int) -> dict[str, Any]:
    """Cut each feature at its reference deciles. A feature the reference holds constant
    (a softmax's mean, an unknown-token rate of zero) gets a narrow band around its
    value instead: the same value scores nothing, any departure from it scores high."""
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    edges, expected = [], []
    for col in matrix.T:
        low, high = float(col.min()), float(col.max())
        band = 1e-6 * max(1.0, abs(low), abs(high))
        if high - low <= band:
            cuts = np.array([low - band, high + band])
        else:
            cuts = np.unique(np.quantile(col, qs))
        counts = np.bincount(np.searchsorted(cuts, col, side="right"), minlength=len(cuts) + 1)
        edges.append([round(float(c), 6) for c in cuts])
        expected.append([round(float(c) / len(col), 6) for c in counts])
    return {"edges": edges, "expected": expected,
            "min": [round(float(v), 6) for v in matrix.min(axis=0)],
            "max": [round(float(v), 6) for v in matrix.max(axis=0)]}


def _predictions(preds: np.ndarray, labels: list[str] | None) -> dict[str, Any]:
    preds = np.asarray(preds).astype(int).ravel()
    k = max(int(preds.max()) + 1, len(labels or []))
    names = list(labels or []) + [str(i) for i in range(len(labels or []), k)]
    share = np.bincount(preds, minlength=k) / len(preds)
    return {"labels": names[:k], "expected": [round(float(s), 6) for s in share]}


def profile_model(samples: list[Samples], run: Runner, signature: dict[str, Any], *,
                  task: str = "", input_kinds: dict[str, str] | None = None,
                  labels: list[str] | None = None, bins: int = 10,
                  max_samples: int = 512) -> dict[str, Any]:
    """Profile a model's reference data (inputs and the model's outputs on them).

    Args:
        samples: the reference sets (eval, calibration), validated for this model.
        run: runs one call (feeds by input name) and returns the outputs by name.
        signature: the registry's signature (``inputs``, ``outputs``).
        task: one of ``TASKS`` ("": detected from the outputs).
        input_kinds: input name -> a kind of ``INPUT_KINDS``, ``mask`` or ``skip``,
            where the user said what an input is.
        labels: class names (classification).
        bins: bins per feature (cut at the reference deciles).
        max_samples: profile at most this many samples.

    Returns:
        The profile (``{}`` when no feature has enough samples); ``extractors`` lists
        each tensor's kind, features and bins, ``skipped`` the tensors left out.

    Raises:
        ValueError: fewer than ``2 * bins`` samples in all.
    """
    total = sum(s.count for s in samples)
    if total < 2 * bins:
        raise ValueError(f"a reference profile needs at least {2 * bins} samples, got {total}")
    task = task or detect_task(signature)
    in_specs, skipped = _input_specs(signature, samples, dict(input_kinds or {}))
    batched_dims = {s["shape"][0] for s in signature["inputs"]
                    if s["shape"] and _batched(s, samples[0])}
    first_out = run(samples[0].feed(0))
    out_specs, out_skipped = _output_specs(signature, task, first_out, batched_dims)
    specs = in_specs + out_specs
    per_call = not all(s["batched"] for s in out_specs)
    columns: list[list[np.ndarray]] = [[] for _ in specs]
    preds: list[np.ndarray] = []
    seen = 0
    for data in samples:
        limit = max_samples - seen
        if limit <= 0:
            break
        calls = ((slice(i, i + 1), data.feed(i)) for i in range(min(limit, data.count))) \
            if per_call else data.batches(32, limit)
        for part, feeds in calls:
            try:
                done = [(feeds, run(feeds))]
            except Exception:  # a model that takes one row at a time despite its signature
                if part.stop - part.start <= 1:
                    raise
                done = [(data.feed(i), run(data.feed(i))) for i in range(part.start, part.stop)]
            for call, outputs in done:
                for j, spec in enumerate(specs):
                    m = extract(spec, call, outputs)
                    if m is not None and np.all(np.isfinite(m)):
                        columns[j].append(m)
                first = next(iter(outputs.values()))
                if task == "classification" and first.ndim == 2 and first.shape[1] > 1:
                    preds.append(first.argmax(axis=1))
        seen += min(limit, data.count)
    extractors = []
    for spec, parts in zip(specs, columns, strict=True):
        matrix = np.concatenate(parts) if parts else np.zeros((0, 0))
        if len(matrix) < 2 * bins:
            skipped[spec["tensor"]] = f"{len(matrix)} reference samples, {2 * bins} needed"
            continue
        extractors.append({**spec, "features": feature_names(spec), **_bin(matrix, bins)})
    if not extractors:
        log.warning("no drift reference: %s", skipped)
        return {}
    profile: dict[str, Any] = {"version": PROFILE_VERSION, "bins": bins, "samples": seen,
                               "task": task, "extractors": extractors,
                               "skipped": {**skipped, **out_skipped}}
    if preds:
        profile["predictions"] = _predictions(np.concatenate(preds), labels)
    return profile


def reference_profile(x: np.ndarray, predictions: np.ndarray | None = None, *,
                      labels: list[str] | None = None, bins: int = 10,
                      max_features: int = 256) -> dict[str, Any]:
    """Profile tabular rows (the first input, values at up to ``max_features``
    evenly spaced positions) and optionally the predicted class per row.

    Raises:
        ValueError: fewer than ``2 * bins`` samples, or non-finite inputs.
    """
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if flat.shape[0] < 2 * bins:
        raise ValueError(f"a reference profile needs at least {2 * bins} samples")
    if not np.all(np.isfinite(flat)):
        raise ValueError("reference inputs must be finite")
    n = flat.shape[1]
    index = [int(i) for i in np.unique(np.linspace(0, n - 1, min(n, max_features))
                                       .round().astype(int))]
    spec = {"source": "input", "tensor": None, "kind": "tabular", "batched": True,
            "index": index}
    profile: dict[str, Any] = {
        "version": PROFILE_VERSION, "bins": bins, "samples": int(flat.shape[0]),
        "extractors": [{**spec, "features": feature_names(spec),
                        **_bin(flat[:, index], bins)}]}
    if predictions is not None:
        profile["predictions"] = _predictions(predictions, labels)
    return profile
