"""The smoke test a bundle carries: run its samples, compare every output.

The bundle's ``smoke.npz`` holds, per sample, the whole input of one call
(``input.{name}``, samples stacked on the first axis), the outputs the controller got
(``output.{name}``; for a big output only the flat positions in ``index.{name}``) and,
for classifiers, the labels (``labels``). The manifest's ``smoke`` says how close each
output must be (``atol``/``rtol`` for floats, the share of elements allowed to differ
for integers: ``mismatch``) and how many labels the model must get right. Bundles
signed before data moved into files carry one inline sample in ``smoke_test``. A
device running a reduced-precision provider (TensorRT FP16) widens float tolerances to
what FP16 can hold.
"""

from __future__ import annotations

import zipfile
from typing import Any

import numpy as np

from edgefleet.contract import InputError, ModelError, SmokeTestError
from edgefleet.contract.npz import load_npz

from .models import InstalledModel
from .runtime import V2_TO_NUMPY, Runtime

__all__ = ["smoke_test"]

_FP16_RTOL = 1e-2  # what an FP16 engine keeps of an fp32 model's outputs


def _load(installed: InstalledModel) -> dict[str, np.ndarray]:
    path = installed.data_path("smoke")
    if path is None:
        return {}
    try:
        return load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SmokeTestError(f"the bundle's smoke file cannot be read: {exc}") from exc


def _legacy(smoke: dict[str, Any], runtime: Runtime) -> dict[str, np.ndarray]:
    """Samples of bundles signed before data moved out of the manifest (first input,
    first output, inline lists)."""
    spec, out = runtime.inputs[0], runtime.outputs[0]
    x: np.ndarray = np.asarray(smoke["input"], dtype=V2_TO_NUMPY.get(spec.datatype, np.float32))
    data = {f"input.{spec.name}": x[:, None]}
    if "expected" in smoke:
        data[f"output.{out.name}"] = np.asarray(smoke["expected"], dtype=np.float64)[:, None]
    if "labels" in smoke:
        data["labels"] = np.asarray(smoke["labels"])
    return data


def _reduced_precision(runtime: Runtime) -> bool:
    report = getattr(runtime, "providers", None)
    active = getattr(report, "active", None) or []
    return any("Tensorrt" in str(p) for p in active)


def _compare(name: str, got: np.ndarray, want: np.ndarray, tol: dict[str, Any],
             fp16: bool, index: np.ndarray | None) -> None:
    if index is not None:  # a big output: the stored positions only
        if got.size <= int(index.max(initial=-1)):
            raise SmokeTestError(f"smoke test: output {name!r} has {got.size} elements, "
                                 f"fewer than expected")
        got = got.reshape(-1)[index]
    if got.shape != want.shape:
        raise SmokeTestError(f"smoke test: output {name!r} has shape {list(got.shape)}, "
                             f"expected {list(want.shape)}")
    if got.dtype.kind == "f" or want.dtype.kind == "f":
        g, w = got.astype(np.float64), want.astype(np.float64)
        if not np.all(np.isfinite(g)):
            raise SmokeTestError(f"smoke test: output {name!r} is not finite")
        scale = float(np.abs(w).max()) if w.size else 0.0
        rtol = max(float(tol.get("rtol", 1e-3)), _FP16_RTOL if fp16 else 0.0)
        atol = max(float(tol.get("atol", 1e-4)), rtol * scale if fp16 else 0.0)
        err = np.abs(g - w) - rtol * np.abs(w)
        if err.size and float(err.max()) > atol:
            worst = float(np.abs(g - w).max())
            raise SmokeTestError(f"smoke test: output {name!r} differs from the expected one "
                                 f"by up to {worst:.3g} (allowed {atol:.3g} + {rtol:g}·|x|)")
    else:
        wrong = float(np.mean(got != want)) if want.size else 0.0
        if wrong > float(tol.get("mismatch", 0.0)):
            raise SmokeTestError(f"smoke test: {wrong:.1%} of output {name!r} differs from "
                                 f"the expected values")


def smoke_test(installed: InstalledModel, runtime: Runtime) -> None:
    """Run the bundle's smoke samples; compare each output and the labels.

    Raises:
        SmokeTestError: an output not finite, not the expected one, or too few labels
            right; a sample the model refuses or fails on.
    """
    legacy = installed.manifest.smoke_test
    smoke = legacy if "input" in legacy else installed.manifest.smoke
    data = _legacy(legacy, runtime) if "input" in legacy else _load(installed)
    inputs = {k[len("input."):]: v for k, v in data.items() if k.startswith("input.")}
    if not inputs:
        return
    expected = {k[len("output."):]: v for k, v in data.items() if k.startswith("output.")}
    subsets = {k[len("index."):]: v for k, v in data.items() if k.startswith("index.")}
    tolerance = smoke.get("tolerance") or {}
    default = {"atol": float(smoke.get("atol", 1e-3)), "rtol": 0.0} if "atol" in smoke else {}
    fp16 = _reduced_precision(runtime)
    count = min(len(v) for v in inputs.values())
    label_output = smoke.get("label_output") or runtime.outputs[0].name
    labels = data.get("labels")
    hits = 0
    for i in range(count):
        try:
            outputs = runtime.run({n: np.asarray(v[i]) for n, v in inputs.items()})
        except (InputError, ModelError) as exc:
            raise SmokeTestError(f"smoke test: sample {i} failed: {exc}") from exc
        for name, got in outputs.items():
            got = np.asarray(got)
            if got.dtype.kind == "f" and not np.all(np.isfinite(got)):
                raise SmokeTestError(f"the model's smoke-test output {name!r} is not finite")
            if name in expected:
                _compare(name, got, expected[name][i], tolerance.get(name, default), fp16,
                         subsets.get(name))
        scores = outputs.get(label_output)
        if labels is not None and scores is not None and np.ndim(scores) >= 1 and scores.size:
            hits += int(int(np.asarray(scores).reshape(-1, scores.shape[-1])[0].argmax())
                        == int(labels[i]))
    if labels is not None and count:
        accuracy = hits / count
        if accuracy < float(smoke.get("min_accuracy", 0.0)):
            raise SmokeTestError(f"smoke-test accuracy {accuracy:.2f} is below "
                                 f"{smoke['min_accuracy']}")
