"""The models a simulation deploys: the bundled digits MLP, a tiny one, or a file.

``tiny`` is a linear classifier over the same 8x8 digits (about 3 KB), fitted here
by least squares on the example eval set: for runs where the bundle's size should not
matter (10,000 devices connected and reporting). ``release`` makes a new version of a
model that behaves the same but has other bytes (a release note in its metadata), so a
rollout from v1 to v2 really moves a new file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ASSETS", "load_model", "release", "tiny_model"]

ASSETS = Path(__file__).parent / "assets" / "digits"


def tiny_model() -> bytes:
    """A 64→10 linear softmax classifier of the digits, as ONNX bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    data = np.load(ASSETS / "eval.npz")
    x = np.hstack([data["x"].astype(np.float64), np.ones((len(data["x"]), 1))])
    target = np.eye(10)[data["y"].astype(int)] * 8.0 - 4.0  # logits that a softmax sharpens
    coef, *_ = np.linalg.lstsq(x, target, rcond=None)
    weights = numpy_helper.from_array(coef[:-1].astype(np.float32), "weights")
    bias = numpy_helper.from_array(coef[-1].astype(np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["pixels", "weights"], ["scores"]),
         helper.make_node("Add", ["scores", "bias"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        "digits-linear",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        initializer=[weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def release(model: bytes, n: int) -> bytes:
    """The same model with a release note in its metadata: other bytes, same behaviour."""
    import onnx

    proto = onnx.load_from_string(model)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "edgefleet.simulation.release", str(n)
    return bytes(proto.SerializeToString())


def load_model(source: str, relative_to: Path | None = None) -> tuple[str, bytes, dict[str, Any]]:
    """``digits``, ``tiny`` or a path to an ``.onnx`` file → (name, bytes, register kwargs).

    The digits eval and calibration sets go with the built-in models, so their bundles
    carry a smoke test and a drift reference, as a registered production model would.

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    if source in ("digits", "tiny"):
        labels = json.loads((ASSETS / "digits.json").read_text())["labels"]
        extra = {"labels": labels, "eval_npz": (ASSETS / "eval.npz").read_bytes(),
                 "calibration_npz": (ASSETS / "calibration.npz").read_bytes()}
        model = (ASSETS / "digits.onnx").read_bytes() if source == "digits" else tiny_model()
        return source, model, extra
    path = Path(source)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    return path.stem.replace(" ", "-")[:64], path.read_bytes(), {}
