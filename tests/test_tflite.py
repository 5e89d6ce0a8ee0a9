"""`.tflite` models: written from ONNX without TensorFlow, quantized, deployed, served."""

from __future__ import annotations

import json

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _support import ASSETS, wait_deployment, wait_devices_known

from edgefleet.agent import available_runtimes
from edgefleet.contract import OptimizationError
from edgefleet.optimizer import onnx_to_tflite, quantize_tflite, run_tflite


@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    fp32 = onnx_to_tflite(ASSETS / "digits.onnx", folder / "digits.tflite")
    int8 = quantize_tflite(fp32, folder / "digits-int8.tflite")
    return fp32, int8


def test_the_written_tflite_computes_what_the_onnx_model_computes(tflite_models, evalset):
    fp32, int8 = tflite_models
    x = evalset["x"].astype(np.float32)
    sess = ort.InferenceSession(str(ASSETS / "digits.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"pixels": x})[0]
    assert np.abs(run_tflite(fp32, x) - want).max() < 1e-4
    # the int8-weight variant: much smaller, and as accurate within a point
    acc = {p.name: float(np.mean(run_tflite(p, x).argmax(1) == evalset["y"])) for p in (fp32,
                                                                                        int8)}
    assert int8.stat().st_size * 3 < fp32.stat().st_size
    assert acc[int8.name] >= acc[fp32.name] - 0.01


def test_graphs_beyond_dense_layers_are_refused_by_name(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Sigmoid", ["x"], ["y"])], "g",
                                   [x], [y])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "m.onnx")
    with pytest.raises(OptimizationError, match="Sigmoid"):
        onnx_to_tflite(tmp_path / "m.onnx", tmp_path / "m.tflite")


@pytest.mark.parametrize("which", [0, 1], ids=["fp32", "int8"])
def test_a_tflite_model_deploys_to_real_agents_and_serves_over_v2(controller, make_fleet,
                                                                 evalset, tflite_models, which):
    fleet = make_fleet(2)
    wait_devices_known(controller, fleet.ids)
    labels = json.loads((ASSETS / "digits.json").read_text())["labels"]
    row = controller.registry.register(
        "digits", tflite_models[which].read_bytes(), labels=labels,
        eval_npz=(ASSETS / "eval.npz").read_bytes())
    assert row["runtime"] == "litert" and row["file"].endswith("model.tflite")

    dep = wait_deployment(controller, controller.deploy("digits", row["version"])["id"])
    assert dep["state"] == "succeeded", dep["jobs"]
    x = evalset["x"][:32].astype(np.float32)
    for agent in fleet.agents.values():
        assert agent.active.version == row["version"]
        body = {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        resp = httpx.post(f"{agent.server.url}/v2/models/digits/infer", json=body, timeout=10)
        assert resp.status_code == 200, resp.text
        out = np.asarray(resp.json()["outputs"][0]["data"]).reshape(32, 10)
        assert np.mean(out.argmax(1) == evalset["y"][:32]) >= 0.9
        meta = httpx.get(f"{agent.server.url}/v2/models/digits", timeout=5).json()
        assert meta["platform"] == "litert" and meta["versions"] == [str(row["version"])]
    # what the agents reported in their birth: the runtimes they really have
    assert "litert:ai-edge-litert" in available_runtimes()
