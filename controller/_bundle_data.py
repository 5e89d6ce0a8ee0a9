"""What a bundle carries besides its model, each as its own signed file.

- ``smoke.npz``: a few samples of the version's eval (or calibration) data, as whole
  call inputs, with the outputs this controller got from the model and, for
  classifiers, the labels. Its size is bounded: the first sample, then more (at most
  ``SMOKE_ROWS``) within ``smoke_budget(model_bytes)`` bytes (half the model, between
  256 KiB and 8 MiB); the compressed file never exceeds ``SMOKE_MAX_BYTES`` (8 MiB).
  Outputs above ``SMOKE_OUTPUT_ELEMENTS`` elements keep that many positions on a
  stride (with their indices). When even one sample cannot fit, or the model fails on
  it, the bundle has no smoke samples and the manifest says why.
- ``profile.json``: the drift reference profile (``edgefleet.optimizer.profile_model``).
- ``labels.json``: class names, when they would make the manifest big (an OCR
  charset of thousands of symbols); fewer stay inline.

The manifest names each file with its role, sha256 and length and says how close
each output must be (tolerances by variant: an int8 model's outputs may move further
from the reference than an fp32 model's on another CPU).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.contract import SMOKE_MAX_BYTES, BundleFile, OptimizationError
from edgefleet.optimizer import Samples, TfliteRunner, profile_model

__all__ = ["Runner", "bundle_data", "runner", "smoke_budget", "tolerance"]

log = logging.getLogger(__name__)
SMOKE_ROWS = 16
SMOKE_MIN_BUDGET = 256 * 1024
SMOKE_MIN_ACCURACY = 0.75
SMOKE_OUTPUT_ELEMENTS = 65536  # per output and sample; bigger outputs are sampled
LABELS_INLINE_MAX = 16 * 1024

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def runner(path: Path, runtime: str) -> Runner:
    """Run a model file on named inputs with its own runtime; outputs by name.

    Raises:
        OptimizationError: the runtime cannot load the file (the runner itself raises
            it for a failed run).
    """
    if runtime == "litert":
        return TfliteRunner(path)
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OptimizationError(f"onnxruntime cannot load {path.name}: {exc}") from exc
    names = [o.name for o in sess.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(names, (np.asarray(v) for v in sess.run(names, feeds)),
                            strict=True))
        except Exception as exc:
            raise OptimizationError(f"the model failed on this input: {exc}") from exc
    return run


def smoke_budget(model_bytes: int) -> int:
    """Bytes the smoke samples after the first may take: half the model, within
    [256 KiB, 8 MiB]."""
    return min(SMOKE_MAX_BYTES, max(SMOKE_MIN_BUDGET, model_bytes // 2))


def tolerance(variant: str, out: np.ndarray) -> dict[str, float]:
    """How close a device's output must be to this controller's, by variant: fp32 on
    another CPU differs in the last digits; FP16 and int8 move further."""
    scale = float(np.abs(out).max()) if out.size and out.dtype.kind == "f" else 1.0
    if "int8" in variant or "int4" in variant or "uint8" in variant:
        rtol, floor, mismatch = 0.05, 0.05, 0.1
    elif "fp16" in variant:
        rtol, floor, mismatch = 0.01, 0.01, 0.02
    else:
        rtol, floor, mismatch = 1e-3, 1e-4, 0.01
    return {"atol": round(max(floor * scale, 1e-6), 8), "rtol": rtol, "mismatch": mismatch}


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _numeric(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Numbers and booleans only: a string tensor would need pickling, which devices
    refuse to load."""
    return {k: v for k, v in arrays.items() if v.dtype.kind in "biuf"}


def _expected(name: str, outs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """An output's expected values: all of them, or, for a big output (a detector's
    map), ``SMOKE_OUTPUT_ELEMENTS`` positions on a stride with their flat indices."""
    stacked = np.stack([o[name] for o in outs])
    size = stacked[0].size
    if size <= SMOKE_OUTPUT_ELEMENTS:
        return {f"output.{name}": stacked}
    index = np.arange(0, size, -(-size // SMOKE_OUTPUT_ELEMENTS), dtype=np.int64)
    return {f"output.{name}": stacked.reshape(len(outs), -1)[:, index],
            f"index.{name}": index}


def _smoke(samples: Samples, run: Runner, *, model_bytes: int, variant: str,
           task: str) -> tuple[bytes | None, dict[str, Any]]:
    budget = smoke_budget(model_bytes)
    feeds: list[dict[str, np.ndarray]] = []
    outs: list[dict[str, np.ndarray]] = []
    used = 0
    if len(_numeric(samples.feed(0))) != len(samples.arrays):
        return None, {"skipped": "string inputs cannot travel in the smoke file"}
    for i in range(min(SMOKE_ROWS, samples.count)):
        feed = samples.feed(i)
        out = _numeric(run(feed))
        size = sum(a.nbytes for a in feed.values()) + sum(
            min(a.nbytes, SMOKE_OUTPUT_ELEMENTS * a.itemsize) for a in out.values())
        if feeds and (used + size > budget or any(o.shape != outs[0][k].shape
                                                  for k, o in out.items())):
            break
        feeds.append(feed)
        outs.append(out)
        used += size
    while True:
        arrays = {f"input.{n}": np.stack([f[n] for f in feeds]) for n in feeds[0]}
        for name in outs[0]:
            arrays.update(_expected(name, outs))
        data = _npz(arrays)
        if len(data) <= SMOKE_MAX_BYTES:
            break
        if len(feeds) == 1:
            why = (f"one sample makes a {len(data):,}-byte smoke file, above the "
                   f"{SMOKE_MAX_BYTES:,}-byte cap")
            log.warning("no smoke samples: %s", why)
            return None, {"skipped": why}
        feeds, outs = feeds[:1], outs[:1]
    params: dict[str, Any] = {
        "samples": len(feeds),
        "tolerance": {n: tolerance(variant, outs[0][n]) for n in outs[0]}}
    first = next(iter(outs[0]), None)
    scores = outs[0][first] if first is not None else None
    per_sample_classes = scores is not None and scores.dtype.kind == "f" and (
        scores.ndim == 1 or (scores.ndim == 2 and scores.shape[0] == 1)) and \
        scores.shape[-1] > 1
    if samples.labels is not None and task == "classification" and per_sample_classes:
        arrays["labels"] = np.asarray(samples.labels[:len(feeds)], dtype=np.int64)
        params.update(label_output=first, min_accuracy=SMOKE_MIN_ACCURACY)
        data = _npz(arrays)
    return data, params


def _entry(name: str, role: str, data: bytes) -> BundleFile:
    return BundleFile(name=name, role=role, sha256=hashlib.sha256(data).hexdigest(),
                      length=len(data))


def bundle_data(*, run: Runner | None, smoke_samples: Samples | None, reference: list[Samples],
                signature: dict[str, Any], variant: str, model_bytes: int, task: str,
                input_kinds: dict[str, str], labels: list[str]
                ) -> tuple[dict[str, bytes], list[BundleFile], dict[str, Any], list[str]]:
    """The data files of one bundle.

    Returns:
        ``(files by name, their manifest entries, the smoke test's parameters, the
        labels to keep inline)``.
    """
    files: dict[str, bytes] = {}
    smoke: dict[str, Any] = {}
    if run is None:  # the controller cannot run this file (another provider's ops)
        smoke = {"skipped": "this controller cannot run the model file"}
    elif smoke_samples is not None:
        try:
            data, smoke = _smoke(smoke_samples, run, model_bytes=model_bytes,
                                 variant=variant, task=task)
        except Exception as exc:  # the bundle ships without samples, and says why
            log.warning("no smoke samples: %s", exc)
            data, smoke = None, {"skipped": f"the model failed on its smoke samples: {exc}"}
        if data is not None:
            files["smoke.npz"] = data
    if reference and run is not None:
        try:
            profile = profile_model(reference, run, signature, task=task,
                                    input_kinds=input_kinds, labels=labels or None)
        except Exception as exc:  # too few samples, a model failing on them
            log.warning("no drift reference: %s", exc)
            profile = {}
        if profile:
            files["profile.json"] = json.dumps(profile, separators=(",", ":"),
                                               sort_keys=True).encode()
    inline = list(labels)
    if len(json.dumps(labels)) > LABELS_INLINE_MAX:
        files["labels.json"] = json.dumps(labels).encode()
        inline = []
    roles = {"smoke.npz": "smoke", "profile.json": "profile", "labels.json": "labels"}
    entries = [_entry(name, roles[name], data) for name, data in files.items()]
    return files, entries, smoke, inline
