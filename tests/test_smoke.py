"""The smoke test a device runs before switching: it fails for every way a model can be
wrong on its samples, and it still reads bundles signed before data moved into files."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from _support import ASSETS

from edgefleet.agent import InstalledModel, OnnxRuntime
from edgefleet.agent._smoke import smoke_test
from edgefleet.contract import BundleFile, Manifest, SmokeTestError, TensorSpec, sha256_file

MODEL = ASSETS / "digits.onnx"


@pytest.fixture(scope="module")
def runtime():
    return OnnxRuntime(MODEL)


@pytest.fixture(scope="module")
def reference(runtime, evalset_module):
    x = evalset_module["x"][:8].astype(np.float32)
    probs = np.stack([runtime.run({"pixels": x[i:i + 1]})["probs"] for i in range(8)])
    return x, probs, evalset_module["y"][:8]


@pytest.fixture(scope="module")
def evalset_module():
    data = np.load(ASSETS / "eval.npz")
    return {"x": data["x"], "y": data["y"]}


def _installed(tmp_path, arrays: dict[str, np.ndarray] | None, smoke=None,
               smoke_test=None) -> InstalledModel:
    shutil.copyfile(MODEL, tmp_path / "model.onnx")
    digest, length = sha256_file(str(tmp_path / "model.onnx"))
    files = []
    if arrays is not None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        (tmp_path / "smoke.npz").write_bytes(buf.getvalue())
        files.append(BundleFile("smoke.npz", "smoke", *sha256_file(str(tmp_path / "smoke.npz"))))
    m = Manifest(name="digits", version=1, runtime="onnxruntime", model_file="model.onnx",
                 model_sha256=digest, model_length=length,
                 inputs=[TensorSpec("pixels", "FP32", ["batch", 64])],
                 outputs=[TensorSpec("probs", "FP32", ["batch", 10])], files=files,
                 smoke=smoke or {"samples": 8, "tolerance": {"probs": {"atol": 1e-4,
                                                                        "rtol": 1e-3}}},
                 smoke_test=smoke_test or {})
    return InstalledModel(m, tmp_path)


def _arrays(x, probs, y=None):
    arrays = {"input.pixels": x[:, None], "output.probs": probs}
    if y is not None:
        arrays["labels"] = np.asarray(y, np.int64)
    return arrays


def test_a_model_matching_its_samples_passes(tmp_path, runtime, reference):
    x, probs, y = reference
    smoke_test(_installed(tmp_path, _arrays(x, probs, y),
                          smoke={"tolerance": {"probs": {"atol": 1e-4, "rtol": 1e-3}},
                                 "label_output": "probs", "min_accuracy": 0.75}), runtime)


def test_an_output_beyond_its_tolerance_fails_naming_the_output(tmp_path, runtime, reference):
    x, probs, _ = reference
    moved = probs.copy()
    moved[3, 0, 0] += 0.01
    with pytest.raises(SmokeTestError, match="output 'probs' differs .* by up to 0.01"):
        smoke_test(_installed(tmp_path, _arrays(x, moved)), runtime)


def test_a_sample_the_model_cannot_run_fails_the_smoke_test(tmp_path, runtime, reference):
    x, probs, _ = reference
    arrays = {"input.pixels": x[:, None, :32], "output.probs": probs}  # half the features
    with pytest.raises(SmokeTestError, match="sample 0 failed"):
        smoke_test(_installed(tmp_path, arrays), runtime)


def test_too_few_labels_right_fails_the_smoke_test(tmp_path, runtime, reference):
    x, probs, y = reference
    wrong = (np.asarray(y) + 1) % 10
    with pytest.raises(SmokeTestError, match="accuracy 0.00 is below 0.75"):
        smoke_test(_installed(tmp_path, _arrays(x, probs, wrong),
                              smoke={"tolerance": {}, "label_output": "probs",
                                     "min_accuracy": 0.75}), runtime)


def test_a_big_output_is_compared_at_its_stored_positions(tmp_path, runtime, reference):
    x, probs, _ = reference
    index = np.array([0, 3, 7], dtype=np.int64)
    arrays = {"input.pixels": x[:, None], "output.probs": probs.reshape(8, -1)[:, index],
              "index.probs": index}
    smoke_test(_installed(tmp_path, arrays), runtime)
    arrays["output.probs"] = arrays["output.probs"] + 0.5
    with pytest.raises(SmokeTestError, match="output 'probs' differs"):
        smoke_test(_installed(tmp_path, arrays), runtime)


def test_bundles_with_their_sample_inline_are_still_checked(tmp_path, runtime, reference):
    x, probs, y = reference
    inline = {"input": x.tolist(), "expected": probs[:, 0].tolist(), "atol": 1e-3,
              "labels": [int(v) for v in y], "min_accuracy": 0.75}
    smoke_test(_installed(tmp_path, None, smoke_test=inline), runtime)
    inline["expected"] = (probs[:, 0] + 0.1).tolist()
    with pytest.raises(SmokeTestError, match="differs"):
        smoke_test(_installed(tmp_path, None, smoke_test=inline), runtime)
