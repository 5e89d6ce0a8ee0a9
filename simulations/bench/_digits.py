"""The committed example model and data, prepared the way the benchmarks use them."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np

from .._models import ASSETS

MODEL = ASSETS / "digits.onnx"


def labels() -> list[str]:
    return [str(x) for x in json.loads((ASSETS / "digits.json").read_text())["labels"]]


def eval_inputs() -> np.ndarray:
    return np.load(ASSETS / "eval.npz")["x"].astype(np.float32)


@lru_cache(maxsize=1)
def profile() -> dict[str, Any]:
    """The reference profile the registry puts into a digits bundle (calibration set)."""
    from edgefleet.agent.runtime import OnnxRuntime
    from edgefleet.optimizer import reference_profile

    x = np.load(ASSETS / "calibration.npz")["x"].astype(np.float32)
    preds = OnnxRuntime(MODEL).run({"pixels": x})["probs"].argmax(axis=1)
    return reference_profile(x, preds, labels=labels())


def manifest(version: int = 1, *, with_profile: bool = True) -> Any:
    from edgefleet.contract import Manifest, TensorSpec, sha256_file

    digest, length = sha256_file(str(MODEL))
    return Manifest(name="digits", version=version, runtime="onnxruntime",
                    model_file="model.onnx", model_sha256=digest, model_length=length,
                    inputs=[TensorSpec("pixels", "FP32", ["batch", 64])],
                    outputs=[TensorSpec("probs", "FP32", ["batch", 10])], labels=labels(),
                    reference_profile=profile() if with_profile else {})
