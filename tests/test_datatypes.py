"""One datatype table (``contract.datatypes``) for the optimizer, the registry and the
agent: what a signature says is what a device decodes, and the registry refuses a model
whose inputs no device can be fed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _operators import offline_controller
from onnx import TensorProto, helper

from edgefleet.contract import datatypes
from edgefleet.controller import init_keys
from edgefleet.optimizer import inspect_model


def test_every_name_means_the_same_in_onnx_numpy_and_onnxruntime():
    for onnx_name, v2 in datatypes.ONNX.items():
        assert datatypes.from_onnx(onnx_name) == v2
        assert datatypes.from_onnx(f"tensor({onnx_name})") == v2  # onnxruntime's spelling
        assert datatypes.from_onnx(onnx_name.upper()) == v2  # TensorProto's spelling
        if v2 in datatypes.SERVED:
            assert datatypes.from_numpy(datatypes.NUMPY[v2]) == v2
    assert set(datatypes.NUMPY) == datatypes.SERVED <= set(datatypes.ONNX.values())
    assert {"BYTES", "BF16"}.isdisjoint(datatypes.SERVED)
    assert datatypes.from_numpy(np.float32) == "FP32" and datatypes.from_numpy("int64") == "INT64"
    assert datatypes.from_onnx("tensor(float8e4m3fn)") == "FLOAT8E4M3FN"  # never another's


def _model(elem_type: int, path) -> str:
    x = helper.make_tensor_value_info("x", elem_type, [1, 4])
    y = helper.make_tensor_value_info("y", elem_type, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize(("elem_type", "v2"), [(TensorProto.FLOAT, "FP32"),
                                               (TensorProto.INT16, "INT16"),
                                               (TensorProto.STRING, "BYTES"),
                                               (TensorProto.BFLOAT16, "BF16")])
def test_the_registry_takes_only_inputs_a_device_can_be_fed(tmp_path, elem_type, v2):
    path = _model(elem_type, tmp_path / "m.onnx")
    assert inspect_model(path)["inputs"][0]["datatype"] == v2
    ctl = offline_controller(tmp_path, init_keys(tmp_path / "keys"))
    data = (tmp_path / "m.onnx").read_bytes()
    if v2 in datatypes.SERVED:
        assert ctl.registry.register("ident", data)["signature"]["inputs"][0]["datatype"] == v2
    else:
        with pytest.raises(ValueError, match=rf"inputs x \({v2}\): devices cannot be fed"):
            ctl.registry.register("ident", data)
        assert ctl.store.list_models() == []
