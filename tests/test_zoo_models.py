"""The model zoo: built from nothing here, every model loads, runs and matches its data."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgefleet.simulations.zoo import ZOO_NAMES, ZooModel, build_zoo

Port = tuple[str, str, list[int | None]]  # name, dtype, dims (None = free)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, ZooModel], float]:
    out = tmp_path_factory.mktemp("zoo")
    started = time.perf_counter()
    zoo = build_zoo(out)
    return zoo, time.perf_counter() - started


@pytest.fixture(scope="module")
def zoo(built: tuple[dict[str, ZooModel], float]) -> dict[str, ZooModel]:
    return built[0]


def _onnx_ports(values: object, skip: set[str]) -> list[Port]:
    ports: list[Port] = []
    for v in values:  # type: ignore[attr-defined]
        if v.name in skip:
            continue
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        ports.append((v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims))
    return ports


def _interpreter(path: Path) -> object:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path))


def _signature(model: ZooModel) -> tuple[list[Port], list[Port]]:
    """Inputs and outputs as the file declares them, read with the runtimes' own tools."""
    if model.runtime == "litert":
        it = _interpreter(model.file)

        def ports(details: list[dict]) -> list[Port]:
            return [(d["name"], np.dtype(d["dtype"]).name,
                     [None if x == -1 else int(x) for x in d["shape_signature"]])
                    for d in details]
        return ports(it.get_input_details()), ports(it.get_output_details())  # type: ignore
    proto = onnx.load(str(model.file), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    return _onnx_ports(proto.graph.input, inits), _onnx_ports(proto.graph.output, set())


def _eval_calls(model: ZooModel, batch: int) -> Iterator[dict[str, np.ndarray]]:
    """The eval file cut into feeds: rows in batches where free, stacked feeds one by one."""
    inputs, _ = _signature(model)
    data = np.load(model.eval_npz)
    stacked = {name for name, _, dims in inputs if data[name].ndim == len(dims) + 1}
    free = all(dims[0] is None for name, _, dims in inputs if name not in stacked)
    step = batch if free and not stacked else 1
    total = len(data[inputs[0][0]])
    for i in range(0, total, step):
        yield {name: np.asarray(data[name][i]) if name in stacked else data[name][i:i + step]
               for name, _, _ in inputs}


def test_zoo_builds_all_twelve_models_in_seconds(built: tuple[dict[str, ZooModel], float]
                                                 ) -> None:
    zoo, seconds = built
    assert len(zoo) >= 12
    assert list(zoo) == list(ZOO_NAMES)
    assert seconds < 20.0, f"building the zoo took {seconds:.1f} s"
    for model in zoo.values():
        assert model.file.is_file() and model.eval_npz.is_file()
        assert model.file.suffix == (".tflite" if model.runtime == "litert" else ".onnx")
        assert model.file.stat().st_size <= 3_000_000
        assert model.notes and "\n" not in model.notes


def test_zoo_spans_legacy_and_current_opsets(zoo: dict[str, ZooModel]) -> None:
    opsets = {m.opset for m in zoo.values() if m.runtime == "onnxruntime"}
    assert {11, 12, 13, 17} <= opsets
    for model in zoo.values():
        if model.runtime != "onnxruntime":
            assert model.opset is None
            continue
        proto = onnx.load(str(model.file), load_external_data=False)
        declared = {o.domain: o.version for o in proto.opset_import}
        assert declared.get("", declared.get("ai.onnx")) == model.opset
        onnx.checker.check_model(str(model.file))


def test_vision_models_use_the_operators_their_families_export(zoo: dict[str, ZooModel]
                                                               ) -> None:
    def nodes(name: str) -> list[onnx.NodeProto]:
        return list(onnx.load(str(zoo[name].file), load_external_data=False).graph.node)

    mobile = nodes("mobilenet-opset11")
    clips = [n for n in mobile if n.op_type == "Clip"]
    assert clips and all(len(n.input) == 3 and not n.attribute for n in clips)
    groups = [a.i for n in mobile if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert max(groups) > 1 and any(n.op_type == "BatchNormalization" for n in mobile)
    unet = {n.op_type for n in nodes("unet-segmenter")}
    assert {"ConvTranspose", "Concat", "MaxPool"} <= unet
    resizes = [n for n in nodes("text-detector") if n.op_type == "Resize"]
    assert resizes and all(len(n.input) == 3 for n in resizes)  # X, roi, scales (opset 11)
    assert zoo["unet-segmenter"].labels and len(zoo["cnn-classifier"].labels) == 10


def test_detector_runs_at_two_image_sizes(zoo: dict[str, ZooModel]) -> None:
    detector = zoo["text-detector"]
    (name, dtype, dims), = _signature(detector)[0]
    assert (name, dtype) == ("x", "float32")
    assert dims[0] is None and dims[2] is None and dims[3] is None and dims[1] == 3
    proto = onnx.load(str(detector.file))
    assert {n.op_type for n in proto.graph.node} >= {"Resize", "Sigmoid", "Conv"}
    for height, width in ((256, 256), (160, 224)):
        x = detector.feeds(2, seed=3)["x"][:, :, :height, :width]
        maps = detector.run_raw({"x": np.ascontiguousarray(x)})["maps"]
        assert maps.shape == (2, 1, height, width)
        assert np.all((maps >= 0) & (maps <= 1)) and 0.05 < maps.mean() < 0.95


def test_recognizer_reads_lines_of_any_width(zoo: dict[str, ZooModel]) -> None:
    recognizer = zoo["crnn-recognizer"]
    (_, dtype, dims), = _signature(recognizer)[0]
    assert dtype == "float32" and dims[:3] == [None, 1, 32] and dims[3] is None
    assert len(recognizer.labels) == 37 and recognizer.labels[1:11] == list("0123456789")
    line = recognizer.feeds(3, seed=1)["x"]
    for width in (96, 160):
        x = np.ascontiguousarray(np.tile(line, (1, 1, 1, 2))[..., :width])
        logits = recognizer.run_raw({"x": x})["logits"]
        assert logits.shape == (width // 4, 3, 37)
        np.testing.assert_allclose(np.exp(logits).sum(axis=2), 1.0, rtol=1e-4)


def test_recognizer_head_weight_is_a_constant_node(zoo: dict[str, ZooModel]) -> None:
    proto = onnx.load(str(zoo["crnn-recognizer"].file))
    constants = {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    inits = {t.name for t in proto.graph.initializer}
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul"]
    assert matmuls and all(n.input[1] in constants and n.input[1] not in inits
                           for n in matmuls)
    assert any(n.op_type == "LSTM" for n in proto.graph.node)
    assert {"Shape", "Gather", "Concat", "Reshape", "Transpose"} <= {
        n.op_type for n in proto.graph.node}


def test_vad_threads_its_state_and_takes_a_scalar_rate(zoo: dict[str, ZooModel]) -> None:
    vad = zoo["vad-rnn"]
    inputs, outputs = _signature(vad)
    by_name = {name: (dtype, dims) for name, dtype, dims in inputs}
    assert by_name["sr"] == ("int64", [])
    assert by_name["state"] == ("float32", [2, 1, 64])
    assert by_name["input"] == ("float32", [1, None])
    assert {name: dims for name, _, dims in outputs} == {"output": [1, 1], "stateN": [2, 1, 64]}
    feeds = vad.feeds()
    first = vad.run_raw(feeds)
    second = vad.run_raw({**feeds, "state": first["stateN"]})
    assert 0.0 < first["output"].item() < 1.0
    assert not np.allclose(first["stateN"], second["stateN"])
    data = np.load(vad.eval_npz)
    assert data["input"].shape == (32, 1, 512) and data["sr"].shape == (32,)
    # the eval rows carry the state the model returned for the chunk before
    carried = vad.run_raw({"input": data["input"][0], "state": data["state"][0],
                           "sr": np.asarray(data["sr"][0])})["stateN"]
    np.testing.assert_allclose(carried, data["state"][1], atol=1e-5)


def test_encoder_ignores_tokens_behind_the_mask(zoo: dict[str, ZooModel]) -> None:
    encoder = zoo["text-encoder"]
    assert [(n, t, d) for n, t, d in _signature(encoder)[0]] == [
        ("input_ids", "int64", [None, None]), ("attention_mask", "int64", [None, None])]
    proto = onnx.load(str(encoder.file))
    assert {"LayerNormalization", "Erf", "Softmax", "Gather"} <= {
        n.op_type for n in proto.graph.node}
    feeds = encoder.feeds(4, seed=2)
    assert (feeds["attention_mask"] == 0).any(), "feeds should include padding"
    out = encoder.run_raw(feeds)
    width = _signature(encoder)[1][1][2][1]  # pooled: [batch, d_model]
    assert width >= 128, "a text encoder this small would not be worth quantizing"
    assert out["last_hidden_state"].shape == (4, 32, width)
    assert out["pooled"].shape == (4, width)
    noisy = feeds["input_ids"].copy()
    noisy[feeds["attention_mask"] == 0] = 999
    again = encoder.run_raw({**feeds, "input_ids": noisy})
    np.testing.assert_allclose(again["pooled"], out["pooled"], atol=1e-4)


def test_external_data_model_fails_without_its_data_file(zoo: dict[str, ZooModel],
                                                         tmp_path: Path) -> None:
    model = zoo["external-data"]
    data = model.file.with_name(model.file.name + ".data")
    assert data.is_file() and data.stat().st_size > 100_000
    proto = onnx.load(str(model.file), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert ort.InferenceSession(str(model.file), providers=["CPUExecutionProvider"])
    alone = tmp_path / model.file.name
    shutil.copy(model.file, alone)
    with pytest.raises(Exception, match=r"(?i)external data"):
        ort.InferenceSession(str(alone), providers=["CPUExecutionProvider"])


def test_tflite_batch_is_fixed_or_free_as_declared(zoo: dict[str, ZooModel]) -> None:
    fixed, dynamic = zoo["tflite-face-fixed"], zoo["tflite-seg-dynamic"]
    (_, _, fixed_in), = _signature(fixed)[0]
    assert fixed_in == [1, 64, 64, 3]
    assert {n: d for n, _, d in _signature(fixed)[1]} == {"boxes": [1, 16, 4], "scores": [1, 16]}
    it = _interpreter(fixed.file)
    assert list(it.get_input_details()[0]["shape_signature"]) == [1, 64, 64, 3]  # type: ignore
    with pytest.raises((ValueError, RuntimeError)):
        fixed.run_raw({"image": np.zeros((4, 64, 64, 3), np.float32)})
    it = _interpreter(dynamic.file)
    assert list(it.get_input_details()[0]["shape_signature"]) == [-1, 32, 32, 3]  # type: ignore
    for batch in (1, 4):
        probs = dynamic.run_raw(dynamic.feeds(batch))["probs"]
        assert probs.shape == (batch, 32, 32, 3)
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_eval_data_matches_the_model_signature(zoo: dict[str, ZooModel], name: str) -> None:
    model = zoo[name]
    inputs, _ = _signature(model)
    files = [model.eval_npz] + ([model.calibration_npz] if model.calibration_npz else [])
    for path in files:
        data = np.load(path, allow_pickle=False)
        assert set(data.files) - {n for n, _, _ in inputs} <= {"y"}
        sizes = set()
        for input_name, dtype, dims in inputs:
            array = data[input_name]
            assert array.dtype.name == dtype, (input_name, array.dtype)
            if array.ndim == len(dims):
                assert dims[0] in (None, 1), f"{input_name}: rows need a free or unit batch"
                rest, declared = array.shape[1:], dims[1:]
            else:
                assert array.ndim == len(dims) + 1, (input_name, array.shape, dims)
                rest, declared = array.shape[1:], dims
            assert all(d is None or d == a for a, d in zip(rest, declared, strict=True))
            assert np.isfinite(array).all()
            sizes.add(array.shape[0])
        assert len(sizes) == 1 and sizes.pop() >= 8
        if "y" in data.files:
            assert path == model.eval_npz and model.labels
            y = data["y"]
            assert y.dtype == np.int64 and y.shape == (len(data[inputs[0][0]]),)
            assert y.min() >= 0 and y.max() < len(model.labels)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_model_runs_on_eval_data_and_fresh_feeds(zoo: dict[str, ZooModel], name: str) -> None:
    model = zoo[name]
    _, outputs = _signature(model)
    for feeds in _eval_calls(model, batch=4):
        out = model.run_raw(feeds)
        assert set(out) == {n for n, _, _ in outputs}
        assert all(np.isfinite(v).all() for v in out.values())
    fresh = model.feeds(4, seed=5)
    out = model.run_raw(fresh)
    assert all(np.isfinite(v).all() and v.size for v in out.values())
    first = next(iter(fresh))
    rows = np.load(model.eval_npz)[first]
    fresh_rows = fresh[first] if rows.ndim == fresh[first].ndim else fresh[first][None]
    assert not any(np.array_equal(f, r) for f in fresh_rows for r in rows)
    assert not np.array_equal(model.feeds(1, seed=5)[first], model.feeds(1, seed=6)[first])


def test_classifier_labels_mostly_agree_with_the_model(zoo: dict[str, ZooModel]) -> None:
    for model in zoo.values():
        data = np.load(model.eval_npz)
        if "y" not in data.files:
            continue
        (inp, _, _), = _signature(model)[0]
        scores = next(iter(model.run_raw({inp: data[inp]}).values()))
        predicted = scores.argmax(axis=1)
        accuracy = float((predicted == data["y"]).mean())
        assert 0.7 <= accuracy < 1.0, (model.name, accuracy)
        assert len(np.unique(predicted)) >= 3, f"{model.name} predicts one class"


def _probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax of logits; probabilities (rows summing to 1) pass through."""
    if scores.min() >= 0 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-4):
        return scores
    z = np.exp(scores - scores.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_classifiers_answer_most_eval_rows_with_confidence(zoo: dict[str, ZooModel]) -> None:
    for model in zoo.values():
        data = np.load(model.eval_npz)
        if "y" not in data.files:
            continue
        (inp, _, _), = _signature(model)[0]
        probs = _probabilities(next(iter(model.run_raw({inp: data[inp]}).values())))
        top = probs.max(axis=1)
        assert np.mean(top > 0.8) >= 0.7, (model.name, np.mean(top > 0.8))
        assert np.mean(top < 0.5) <= 0.1, (model.name, np.mean(top < 0.5))


def test_classifiers_keep_their_answers_when_quantized_to_int8(zoo: dict[str, ZooModel],
                                                               tmp_path: Path) -> None:
    from edgefleet.optimizer import (
        OptimizeTarget,
        inline_external_data,
        inspect_model,
        load_samples,
        optimize_samples,
    )

    # static QDQ, per-channel weights, calibrated activations; no float fallback
    target = OptimizeTarget(method="static", fallback=False, latency_runs=2, warmup_runs=0,
                            require_faster=False)
    checked = []
    for model in zoo.values():
        if model.runtime != "onnxruntime" or "y" not in np.load(model.eval_npz).files:
            continue
        path = tmp_path / model.file.name
        path.write_bytes(inline_external_data(model.file))
        signature = inspect_model(path)
        evalset = load_samples(model.eval_npz.read_bytes(), signature)
        calibration = load_samples(model.calibration_npz.read_bytes(), signature) \
            if model.calibration_npz else evalset
        report = optimize_samples(path, calibration, evalset, tmp_path / model.name,
                                  target).report
        assert report["quantization"]["int8_weight_share"] > 0.9, model.name
        assert report["quality"]["agreement"] >= 0.99, (model.name, report["quality"])
        checked.append(model.name)
    assert len(checked) >= 4, checked


def test_image_eval_data_is_image_sized_and_structured(zoo: dict[str, ZooModel]) -> None:
    x = np.load(zoo["text-detector"].eval_npz)["x"]
    assert x.shape == (12, 3, 256, 256) and x.dtype == np.float32
    images = np.load(zoo["cnn-classifier"].eval_npz)["image"]
    assert images.shape == (64, 3, 64, 64) and images.min() >= 0.0 and images.max() <= 1.0
    left, right = images[..., :-1].ravel(), images[..., 1:].ravel()
    assert np.corrcoef(left, right)[0, 1] > 0.8, "neighbouring pixels should correlate"
    ids = np.load(zoo["text-encoder"].eval_npz)
    lengths = ids["attention_mask"].sum(axis=1)
    assert len(np.unique(lengths)) > 5
    assert ((ids["input_ids"] == 0) == (ids["attention_mask"] == 0)).all()


def test_building_twice_gives_identical_bytes(zoo: dict[str, ZooModel],
                                              tmp_path: Path) -> None:
    first_dir = next(iter(zoo.values())).file.parent
    build_zoo(tmp_path)
    first = sorted(p.name for p in first_dir.iterdir())
    assert first == sorted(p.name for p in tmp_path.iterdir())
    for name in first:
        assert (first_dir / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_unknown_model_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resnet-9000"):
        build_zoo(tmp_path, ["resnet-9000"])
    assert not list(tmp_path.iterdir())


def test_module_command_prints_the_table(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.simulations.zoo.__main__ import main

    assert main([str(tmp_path), "--only", "multi-head", "vad-rnn"]) == 0
    text = capsys.readouterr().out
    assert "multi-head" in text and "sr:int64[]" in text and "text-detector" not in text
    assert (tmp_path / "vad-rnn.onnx").is_file()
