"""Scenarios for edgefleet.optimizer, with real onnxruntime and the committed digits model."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.contract.errors import OptimizationError
from edgefleet.optimizer import (
    OptimizeTarget,
    decide_gates,
    evaluate,
    inspect_model,
    optimize,
)

DIGITS = Path(__file__).resolve().parents[1] / "simulations" / "assets" / "digits"
FAST = {"latency_runs": 20, "warmup_runs": 2}


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    calibration = np.load(DIGITS / "calibration.npz")
    eval_set = np.load(DIGITS / "eval.npz")
    return {"cal": calibration["x"], "x": eval_set["x"], "y": eval_set["y"]}


def _op_types(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _conv_net(path: Path) -> Path:
    """pixels [batch, 64] -> 8x8 image -> Conv 3x3 (4 filters) -> Relu -> Flatten -> MatMul."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "img_shape"),
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "conv.w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "conv.b"),
        numpy_helper.from_array(rng.normal(0, 0.1, (256, 10)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(np.zeros(10, dtype=np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Reshape", ["pixels", "img_shape"], ["img"]),
        helper.make_node("Conv", ["img", "conv.w", "conv.b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["act"]),
        helper.make_node("Flatten", ["act"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc.w"], ["mm"]),
        helper.make_node("Add", ["mm", "fc.b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_conv",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


def test_int8_model_is_at_least_3_5x_smaller_with_at_most_one_point_accuracy_drop(
    digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    steps: list[str] = []
    result = optimize(
        DIGITS / "digits.onnx",
        digits["cal"],
        digits["x"],
        digits["y"],
        tmp_path,
        progress=steps.append,
    )
    report = result.report
    print(json.dumps({k: report[k] for k in ("fp32", "int8", "speedup", "reason")}, indent=2))

    assert result.method == "dynamic"
    assert report["int8"]["size_bytes"] * 3.5 <= report["fp32"]["size_bytes"]
    assert report["size_ratio"] >= 3.5
    assert report["fp32"]["accuracy"] >= 0.95
    assert report["fp32"]["accuracy"] - report["int8"]["accuracy"] <= 0.01
    assert report["int8"]["agreement"] >= 0.98
    assert report["gates"]["finite"] and report["gates"]["quality"]
    # Whether int8 ships depends on the faster gate measured on this machine;
    # the decision must follow the gates either way.
    assert result.shipped == ("int8" if all(report["gates"].values()) else "fp32")
    assert result.candidate_path == tmp_path / "digits.int8.onnx"
    assert (
        result.shipped_path.read_bytes()
        == (
            result.candidate_path if result.shipped == "int8" else DIGITS / "digits.onnx"
        ).read_bytes()
    )
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert "pre-processing" in steps
    assert any(s.startswith("measuring fp32") for s in steps)


def test_auto_method_picks_dynamic_for_mlp_and_static_for_conv_net(
    digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    target = OptimizeTarget(require_faster=False, **FAST)
    mlp = optimize(
        DIGITS / "digits.onnx", digits["cal"], digits["x"], digits["y"], tmp_path / "mlp", target
    )
    conv = optimize(
        _conv_net(tmp_path / "conv.onnx"),
        digits["cal"],
        digits["x"],
        digits["y"],
        tmp_path / "conv",
        target,
    )

    assert mlp.method == "dynamic"
    assert "MatMulInteger" in _op_types(mlp.candidate_path)
    assert conv.method == "static"
    assert "Conv" in conv.report["method_reason"]
    graph = onnx.load(str(conv.candidate_path)).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    conv_nodes = [n for n in graph.node if n.op_type == "Conv"]
    assert len(conv_nodes) == 1
    # QDQ: the Conv reads dequantized activations and int8 weights...
    assert producers[conv_nodes[0].input[0]] == "DequantizeLinear"
    assert producers[conv_nodes[0].input[1]] == "DequantizeLinear"
    weight_dq = next(n for n in graph.node if n.output[0] == conv_nodes[0].input[1])
    weight = next(t for t in graph.initializer if t.name == weight_dq.input[0])
    assert weight.data_type == TensorProto.INT8
    assert len(weight_dq.input) > 1
    scale = next(t for t in graph.initializer if t.name == weight_dq.input[1])
    assert list(scale.dims) == [4]  # per-channel: one scale per output filter
    # ...and its result is re-quantized downstream.
    types = [n.op_type for n in graph.node]
    assert types.count("QuantizeLinear") >= 2
    assert "ConvInteger" not in types
    assert conv.report["int8"]["finite"]
    assert conv.report["int8"]["agreement"] > 0.8


def test_forced_dynamic_never_quantizes_conv(digits: dict[str, np.ndarray], tmp_path: Path) -> None:
    result = optimize(
        _conv_net(tmp_path / "conv.onnx"),
        digits["cal"],
        digits["x"],
        digits["y"],
        tmp_path / "out",
        OptimizeTarget(method="dynamic", require_faster=False, **FAST),
    )

    assert result.method == "dynamic"
    assert result.report["op_types_quantized"] == ["MatMul", "Gemm"]
    graph = onnx.load(str(result.candidate_path)).graph
    types = [n.op_type for n in graph.node]
    assert "ConvInteger" not in types
    conv = next(n for n in graph.node if n.op_type == "Conv")
    weight = next(t for t in graph.initializer if t.name == conv.input[1])
    assert weight.data_type == TensorProto.FLOAT
    assert "MatMulInteger" in types


def test_pruning_reaches_target_sparsity_and_shrinks_compressed_size(
    digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    args = (DIGITS / "digits.onnx", digits["cal"], digits["x"], digits["y"])
    dense = optimize(*args, tmp_path / "dense", OptimizeTarget(require_faster=False, **FAST))
    sparse = optimize(
        *args, tmp_path / "sparse", OptimizeTarget(sparsity=0.5, require_faster=False, **FAST)
    )

    pruned = onnx.load(str(tmp_path / "sparse" / "digits.pruned.onnx"))
    weights = [
        numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name.endswith(".weight")
    ]
    assert len(weights) == 3
    for w in weights:
        assert np.mean(w == 0) >= 0.5
    assert sparse.report["sparsity"]["achieved"] >= 0.5
    assert (
        "not" in sparse.report["sparsity"]["note"]
        and "latency" in sparse.report["sparsity"]["note"]
    )
    # The zeros survive symmetric int8 quantization: the int8 file compresses far better,
    # while its raw size does not change.
    dense_int8, sparse_int8 = dense.report["int8"], sparse.report["int8"]
    assert sparse_int8["size_bytes"] == dense_int8["size_bytes"]
    assert sparse_int8["size_gzip_bytes"] < 0.85 * dense_int8["size_gzip_bytes"]
    fp32_gzip = len(gzip.compress((DIGITS / "digits.onnx").read_bytes(), mtime=0))
    pruned_gzip = len(gzip.compress(pruned.SerializeToString(), mtime=0))
    assert pruned_gzip < 0.85 * fp32_gzip
    assert sparse.report["fp32"]["accuracy"] - sparse_int8["accuracy"] <= 0.01


def test_failed_accuracy_gate_ships_fp32(digits: dict[str, np.ndarray], tmp_path: Path) -> None:
    # Pruning 90% of every weight matrix wrecks this MLP: an honest accuracy failure.
    target = OptimizeTarget(sparsity=0.9, require_faster=False, **FAST)
    result = optimize(
        DIGITS / "digits.onnx", digits["cal"], digits["x"], digits["y"], tmp_path, target
    )

    assert result.shipped == "fp32"
    assert result.report["shipped"] == "fp32"
    assert result.report["gates"] == {"quantized": True, "finite": True, "quality": False,
                                      "faster": True}
    assert result.report["failed_gates"] == ["quality"]
    assert "accuracy" in result.report["reason"]
    assert result.report["accuracy_drop_pt"] > 1.0
    assert result.shipped_path == tmp_path / "digits.fp32.onnx"
    assert result.shipped_path.read_bytes() == (DIGITS / "digits.onnx").read_bytes()
    assert result.candidate_path == tmp_path / "digits.int8.onnx"
    assert result.candidate_path.is_file()


def test_int8_that_is_not_faster_fails_the_speed_gate() -> None:
    decision = decide_gates(
        candidate_finite=True,
        baseline_accuracy=0.98,
        candidate_accuracy=0.975,
        accuracy_budget_pt=1.0,
        baseline_p50_ms=0.020,
        candidate_p50_ms=0.021,
        require_faster=True,
    )

    assert decision.gates == {"finite": True, "accuracy": True, "faster": False}
    assert not decision.ship_candidate
    assert decision.failed == ["faster"]


def test_evaluate_reports_accuracy_agreement_and_latency(
    digits: dict[str, np.ndarray],
) -> None:
    model = DIGITS / "digits.onnx"
    first = evaluate(model, digits["x"], digits["y"], runs=30, warmup=3, threads=1)
    probs = np.tile(np.eye(10, dtype=np.float32)[0], (len(digits["y"]), 1))
    second = evaluate(
        model, digits["x"], digits["y"], runs=30, warmup=3, threads=1, reference_outputs=probs
    )

    meta = json.loads((DIGITS / "digits.json").read_text())
    assert first.accuracy == pytest.approx(meta["eval"]["accuracy"], abs=1e-6)
    assert first.finite and first.runs == 30
    assert 0 < first.p50_ms <= first.p95_ms
    assert first.size_bytes == model.stat().st_size
    assert first.agreement is None
    assert second.agreement == pytest.approx(np.mean(digits["y"] == 0))
    assert second.max_abs_diff is not None and second.max_abs_diff > 0.5


def test_inspect_model_reports_signature(tmp_path: Path) -> None:
    info = inspect_model(DIGITS / "digits.onnx")

    assert info["inputs"] == [{"name": "pixels", "shape": ["batch", 64], "datatype": "FP32"}]
    assert info["outputs"] == [{"name": "probs", "shape": ["batch", 10], "datatype": "FP32"}]
    assert info["ops"] == {"Add": 3, "MatMul": 3, "Relu": 2, "Softmax": 1}
    assert info["opset"] == 17

    graph = helper.make_graph(
        [helper.make_node("Cast", ["raw"], ["out"], to=TensorProto.INT64)],
        "cast",
        [helper.make_tensor_value_info("raw", TensorProto.UINT8, [1, 3])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, [1, 3])],
    )
    path = tmp_path / "cast.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    cast = inspect_model(path)
    assert cast["inputs"] == [{"name": "raw", "shape": [1, 3], "datatype": "UINT8"}]
    assert cast["outputs"][0]["datatype"] == "INT64"
    assert cast["opset"] == 13


@pytest.mark.parametrize(
    "content",
    [b"\x08\x07garbage that is not protobuf \xff\xfe", b"", b"onnx" * 10],
    ids=["garbage", "empty", "text"],
)
def test_bad_model_file_raises_optimization_error(
    content: bytes, digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)

    with pytest.raises(OptimizationError) as inspected:
        inspect_model(bad)
    assert inspected.value.__cause__ is not None
    assert inspected.value.reason == "optimization_failed"
    with pytest.raises(OptimizationError):
        optimize(bad, digits["cal"], digits["x"], digits["y"], tmp_path / "out")


def test_truncated_real_model_raises_optimization_error(
    digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes((DIGITS / "digits.onnx").read_bytes()[:5000])

    with pytest.raises(OptimizationError):
        optimize(bad, digits["cal"], digits["x"], digits["y"], tmp_path / "out")


def test_empty_calibration_set_or_mismatched_eval_is_a_caller_error(
    digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    model = DIGITS / "digits.onnx"
    with pytest.raises(ValueError, match="calibration_x"):
        optimize(model, digits["cal"][:0], digits["x"], digits["y"], tmp_path)
    with pytest.raises(ValueError, match="samples"):
        optimize(model, digits["cal"], digits["x"], digits["y"][:-1], tmp_path)
    with pytest.raises(ValueError, match="do not fit"):
        optimize(model, digits["cal"][:, :32], digits["x"][:, :32], digits["y"], tmp_path)
    with pytest.raises(ValueError, match="sparsity"):
        OptimizeTarget(sparsity=1.0)
    with pytest.raises(ValueError, match="method"):
        OptimizeTarget(method="int4")

