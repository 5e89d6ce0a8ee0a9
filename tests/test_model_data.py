"""Eval and calibration data are the model's own: checked at register against its inputs,
carried to devices as signed files beside the model (never inside the manifest), and
used for a smoke test of every input and output."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _support import TOKEN, wait_deployment, wait_devices_known
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.contract import MANIFEST_MAX_BYTES, Manifest, TargetTrust, TensorSpec, bundle_paths
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _stateful_model() -> bytes:
    """A voice-activity-like model: audio [1, N] (frames of 128 samples), state [2, 1, 8],
    sample rate (int64 scalar), channel flags (bool [1, 4]) -> probability [1, 1] and the
    next state."""
    nodes = [
        helper.make_node("Reshape", ["audio", "frame"], ["frames"]),
        helper.make_node("ReduceMean", ["frames"], ["level"], axes=[0, 1], keepdims=1),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "rate"], ["scale"]),
        helper.make_node("Mul", ["level", "scale"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p"]),
        helper.make_node("Cast", ["flags"], ["on"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["on"], ["share"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["p", "share"], ["prob"]),
        helper.make_node("Mul", ["state", "half"], ["decayed"]),
        helper.make_node("Add", ["decayed", "level"], ["stateN"]),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, "samples"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 8]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, []),
         helper.make_tensor_value_info("flags", TensorProto.BOOL, [1, 4])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, 1, 8])],
        [numpy_helper.from_array(np.array([-1, 128], np.int64), "frame"),
         numpy_helper.from_array(np.array(16000.0, np.float32), "rate"),
         numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _data(n: int = 24, **override: np.ndarray | None) -> bytes:
    rng = np.random.default_rng(0)
    arrays = {"audio": rng.normal(0, 0.1, (n, 1, 512)).astype(np.float32),
              "state": rng.normal(0, 1, (n, 2, 1, 8)).astype(np.float32),
              "sr": np.full(n, 16000, dtype=np.int64),
              "flags": rng.random((n, 1, 4)) < 0.7}
    arrays.update(override)
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
    return buf.getvalue()


BAD = {
    "unknown input name": ({"audio": None, "wave": np.zeros((24, 1, 512), np.float32)},
                           "'wave'"),
    "wrong dtype": ({"sr": np.full(24, 16000.0, np.float32)}, "input 'sr' is float32"),
    "wrong rank": ({"state": np.zeros((24, 16), np.float32)}, "input 'state' has 2 axes"),
    "wrong fixed dim": ({"state": np.zeros((24, 2, 1, 7), np.float32)},
                        "input 'state': axis 2 is 7"),
    "missing input": ({"sr": None}, "input 'sr' is missing"),
    "x on a multi-input model": ({"audio": None, "x": np.zeros((24, 1, 512), np.float32)},
                                 "'x' stands for the only input"),
    "different sample counts": ({"sr": np.full(5, 16000, np.int64)}, "different numbers"),
    "non-finite values": ({"audio": np.full((24, 1, 512), np.nan, np.float32)},
                          "input 'audio' holds"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_eval_data_is_refused_at_register_naming_the_input(controller, case):
    override, message = BAD[case]
    with pytest.raises(ValueError, match="eval set") as err:
        controller.registry.register("vad", _stateful_model(), eval_npz=_data(**override))
    assert message in str(err.value)
    # nothing half-registered: no version, no files
    assert controller.store.list_models() == []
    assert not list((controller.settings.data_dir / "models").glob("vad/*"))


def test_calibration_data_is_checked_too_and_a_model_that_fails_on_it_is_refused(controller):
    with pytest.raises(ValueError, match="calibration set: input 'state'"):
        controller.registry.register("vad", _stateful_model(), eval_npz=_data(),
                                     calibration_npz=_data(state=np.zeros((24, 3), np.float32)))
    # names, dtypes and ranks fit, but the model cannot run it: refused now, not at deploy
    short = _data(audio=np.zeros((24, 1, 100), np.float32))  # not whole frames
    with pytest.raises(ValueError, match="the model fails on sample 0"):
        controller.registry.register("vad", _stateful_model(), eval_npz=short)


def test_bad_eval_data_is_a_422_naming_the_input_over_http(controller):
    with TestClient(create_app(controller), raise_server_exceptions=False) as client:
        resp = client.post("/v1/models", headers=AUTH, data={"name": "vad"},
                           files={"model": ("vad.onnx", _stateful_model()),
                                  "eval_set": ("eval.npz", _data(sr=None))})
        assert resp.status_code == 422
        assert "input 'sr' is missing" in resp.json()["detail"]
        assert "sr: INT64[]" in resp.json()["detail"]  # and what the model takes
        resp = client.post("/v1/models", headers=AUTH, data={"name": "vad", "task": "magic"},
                           files={"model": ("vad.onnx", _stateful_model())})
        assert resp.status_code == 422 and "task 'magic'" in resp.json()["detail"]


def test_cli_errors_under_json_are_json_and_register_help_names_tflite(controller, tmp_path):
    server = ApiServer(create_app(controller))
    server.start()
    try:
        (tmp_path / "vad.onnx").write_bytes(_stateful_model())
        (tmp_path / "eval.npz").write_bytes(_data(sr=None))
        env = {"EDGEFLEET_URL": server.url, "EDGEFLEET_TOKEN": TOKEN, "COLUMNS": "200"}
        result = CliRunner().invoke(app, ["model", "register", "vad", str(tmp_path / "vad.onnx"),
                                          "--eval", str(tmp_path / "eval.npz"), "--json"],
                                    env=env)
        assert result.exit_code == 1
        error = json.loads(result.stdout)
        assert error["status"] == 422 and "input 'sr' is missing" in error["error"]
        helped = CliRunner().invoke(app, ["model", "register", "--help"], env=env)
        assert ".tflite" in helped.stdout and "input name" in helped.stdout
    finally:
        server.stop()


def test_a_three_input_stateful_model_deploys_with_its_smoke_test_and_serves(
        controller, make_fleet):
    fleet = make_fleet(1)
    wait_devices_known(controller, fleet.ids)
    row = controller.registry.register("vad", _stateful_model(), eval_npz=_data(),
                                       calibration_npz=_data(40))
    dep = wait_deployment(controller, controller.deploy("vad", row["version"])["id"])
    assert dep["state"] == "succeeded", dep["jobs"]

    (agent,) = fleet.agents.values()
    installed = agent.store.get(agent.store.read_state()["active"])
    manifest = installed.manifest
    assert {f.role for f in manifest.files} == {"smoke", "profile"}
    assert len(Manifest.encode(manifest)) < 8 * 1024
    with np.load(installed.data_path("smoke")) as smoke:  # whole feeds, every input
        assert {k for k in smoke.files} == {"input.audio", "input.state", "input.sr",
                                            "input.flags", "output.prob", "output.stateN"}
        assert smoke["input.flags"].dtype == np.bool_
        assert smoke["input.sr"].dtype == np.int64 and smoke["input.state"].shape[1:] == (2, 1, 8)
    profile = installed.profile()
    kinds = {e["tensor"]: e["kind"] for e in profile["extractors"]}
    assert kinds["audio"] == "audio"  # energy and zero-crossing rate, not raw samples
    assert kinds["flags"] == "stats"  # the share of flags set
    assert {"state", "sr"} <= set(profile["skipped"])

    rng = np.random.default_rng(7)
    feeds = {"audio": rng.normal(0, 0.2, (1, 1024)).astype(np.float32),
             "state": rng.normal(0, 1, (2, 1, 8)).astype(np.float32),
             "sr": np.array(8000, dtype=np.int64),
             "flags": np.array([[True, False, True, True]])}
    body = {"inputs": [{"name": k, "shape": list(v.shape),
                        "datatype": {"float32": "FP32", "int64": "INT64",
                                     "bool": "BOOL"}[v.dtype.name],
                        "data": v.ravel().tolist()} for k, v in feeds.items()]}
    resp = httpx.post(f"{agent.server.url}/v2/models/vad/infer", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    got = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"])
           for o in resp.json()["outputs"]}
    raw = ort.InferenceSession(_stateful_model(), providers=["CPUExecutionProvider"])
    want = dict(zip(["prob", "stateN"], raw.run(["prob", "stateN"], feeds), strict=True))
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7)


def _image_model(side: int) -> bytes:
    """A 1x1 convolution over a [batch, 3, side, side] image: one channel out."""
    w = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.3, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["map"])], "conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info("map", TensorProto.FLOAT, ["batch", 1, side, side])],
        [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_sample_too_big_for_the_smoke_file_is_left_out_and_the_manifest_says_why(
        controller):
    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 1024, 1024), dtype=np.float32)  # 12 MiB each, incompressible
    buf = io.BytesIO()
    np.savez(buf, image=images)
    row = controller.registry.register("big", _image_model(1024), eval_npz=buf.getvalue())
    path = controller.registry.ensure_bundle("big", row["version"])
    base = path.rsplit("/", 1)[0]
    targets = controller.repo.targets.signed.targets
    assert f"{base}/smoke.npz" not in targets
    stored = controller.repo.targets_dir / base / f"{targets[path].hashes['sha256']}.manifest.json"
    manifest = Manifest.decode(stored.read_bytes())
    assert "above the 8,388,608-byte cap" in manifest.smoke["skipped"]
    assert targets[path].length < 8 * 1024


def test_data_stored_by_an_earlier_release_is_read_as_the_model_takes_it(controller):
    """Earlier releases stored float64 arrays for FP32 inputs; they still make bundles."""
    from _support import ASSETS

    row = controller.registry.register("digits", (ASSETS / "digits.onnx").read_bytes())
    data = np.load(ASSETS / "eval.npz")
    buf = io.BytesIO()
    np.savez(buf, x=data["x"].astype(np.float64), y=data["y"])
    (controller.settings.data_dir / "models" / "digits" / "1" / "eval.npz").write_bytes(
        buf.getvalue())
    samples = controller.registry.dataset("digits", row["version"], "eval")
    assert samples is not None and samples.arrays["pixels"].dtype == np.float32
    path = controller.registry.ensure_bundle("digits", row["version"])
    assert f"{path.rsplit('/', 1)[0]}/smoke.npz" in controller.repo.targets.signed.targets


def test_a_bundle_signed_with_its_data_inline_is_signed_again_with_data_files(controller):
    from _support import ASSETS, register_digits

    row = register_digits(controller)
    path, model_target = bundle_paths("digits", row["version"], "model.onnx")
    x = np.load(ASSETS / "eval.npz")["x"]
    inline = Manifest(name="digits", version=1, runtime="onnxruntime", model_file="model.onnx",
                      model_sha256=row["sha256"], model_length=row["size_bytes"],
                      inputs=[TensorSpec("pixels", "FP32", ["batch", 64])],
                      outputs=[TensorSpec("probs", "FP32", ["batch", 10])],
                      smoke_test={"input": x[:1024].tolist()})
    trust = TargetTrust(model="digits", version=1).custom()
    controller.repo.add_targets({path: inline.encode(), model_target: b"x"},
                                custom={path: trust, model_target: trust})
    controller.store.mark_bundled("digits", 1)
    assert controller.repo.targets.signed.targets[path].length > MANIFEST_MAX_BYTES

    assert controller.registry.ensure_bundle("digits", 1) == path
    targets = controller.repo.targets.signed.targets
    assert targets[path].length < 8 * 1024
    assert targets[model_target].length == row["size_bytes"]
    assert f"{path.rsplit('/', 1)[0]}/smoke.npz" in targets


def test_a_bundle_that_cannot_be_made_fails_the_deployment_instead_of_stalling_it(
        controller, make_fleet, monkeypatch):
    from _support import register_digits

    from edgefleet.contract import RegistryError

    fleet = make_fleet(2)
    wait_devices_known(controller, fleet.ids)
    row = register_digits(controller)

    def cannot(*_a, **_k):
        raise RegistryError("the manifest would be 70,000 bytes, above the cap",
                            reason="manifest_too_large")

    monkeypatch.setattr(controller.registry, "manifest_for", cannot)
    dep = wait_deployment(controller, controller.deploy("digits", row["version"])["id"], 20)
    assert dep["state"] == "failed"
    event = next(e for e in dep["events"] if e["kind"] == "bundle_failed")
    assert "above the cap" in event["detail"]["reason"]
    assert all(j["job"] is None for j in dep["jobs"])  # nothing was sent
    assert all(a.active is None for a in fleet.agents.values())
