"""Applications on the device talk to the agent with the ecosystem's own clients: Triton's
``tritonclient.http`` (JSON and binary tensors) and ``tritonclient.grpc``, against a real
agent serving models deployed over a real Mosquitto; and malformed requests get a 400
(INVALID_ARGUMENT over gRPC), never a dropped connection."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from _support import ASSETS, register_digits, wait_deployment, wait_devices_known

from edgefleet.simulations.zoo import build_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo"), ["text-encoder", "text-detector",
                                                      "vad-rnn"])


@pytest.fixture
def served(controller, make_fleet, zoo):
    """Agents serving digits, the text encoder (int64 ids + mask), the detector (dynamic
    H/W) and the stateful VAD; returns ``{model: agent}``."""
    fleet = make_fleet(4, max_request_bytes=8 * 1024 * 1024, grpc_port=0)
    wait_devices_known(controller, fleet.ids)
    agents = dict(zip(["digits", "text-encoder", "text-detector", "vad-rnn"],
                      fleet.agents.values(), strict=True))
    deps = [controller.deploy("digits", register_digits(controller)["version"],
                              devices=[agents["digits"].config.device_id])["id"]]
    for name in ("text-encoder", "text-detector", "vad-rnn"):
        row = controller.registry.register(name, zoo[name].file.read_bytes(),
                                           eval_npz=zoo[name].eval_npz.read_bytes())
        deps.append(controller.deploy(name, row["version"],
                                      devices=[agents[name].config.device_id])["id"])
    for dep in deps:
        assert wait_deployment(controller, dep, 120)["state"] == "succeeded"
    return agents


def _client(agent) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(agent.server.url.removeprefix("http://"))


def _input(name: str, arr: np.ndarray, binary: bool) -> triton.InferInput:
    dtype = {"float32": "FP32", "int64": "INT64"}[arr.dtype.name]
    tensor = triton.InferInput(name, list(arr.shape), dtype)
    tensor.set_data_from_numpy(arr, binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_talks_to_the_agent_and_gets_what_onnxruntime_computes(
        served, zoo, binary):
    import onnxruntime as ort

    agent = served["digits"]
    client = _client(agent)
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.is_model_ready("digits")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("digits")
    assert meta["inputs"][0]["shape"] == [-1, 64]

    x = np.load(ASSETS / "eval.npz")["x"][:5].astype(np.float32)
    result = client.infer("digits", [_input("pixels", x, binary)], request_id="r-17",
                          outputs=[triton.InferRequestedOutput("probs", binary_data=binary)])
    want = ort.InferenceSession(str(ASSETS / "digits.onnx")).run(None, {"pixels": x})[0]
    np.testing.assert_allclose(result.as_numpy("probs"), want, rtol=1e-6, atol=1e-7)
    assert result.get_response()["id"] == "r-17"

    # two inputs, int64 ids and mask; one of two outputs asked for, binary both ways
    encoder = served["text-encoder"]
    feeds = zoo["text-encoder"].feeds(2, seed=3)
    got = _client(encoder).infer(
        "text-encoder", [_input(k, v, binary) for k, v in feeds.items()],
        outputs=[triton.InferRequestedOutput("pooled", binary_data=binary)])
    response = got.get_response()
    assert [o["name"] for o in response["outputs"]] == ["pooled"]
    np.testing.assert_allclose(got.as_numpy("pooled"),
                               zoo["text-encoder"].run_raw(feeds)["pooled"], rtol=1e-5,
                               atol=1e-6)


def test_a_640x640_image_travels_as_binary_and_is_answered_as_binary(served, zoo):
    agent = served["text-detector"]
    image = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    result = _client(agent).infer(
        "text-detector", [_input("x", image, True)],
        outputs=[triton.InferRequestedOutput("maps", binary_data=True)])
    np.testing.assert_allclose(result.as_numpy("maps"),
                               zoo["text-detector"].run_raw({"x": image})["maps"],
                               rtol=1e-5, atol=1e-6)
    # as JSON the same image is about 4x bigger than this agent's 8 MiB cap
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 3, 640, 640], "datatype": "FP32",
                                   "data": image.ravel().tolist()}]})
    resp = httpx.post(f"{agent.server.url}/v2/models/text-detector/infer", content=body,
                      timeout=30)
    assert resp.status_code == 413 and "cap" in resp.json()["error"]


def _binary_request(url: str, head: dict, data: bytes, header_length: int | None = None):
    raw = json.dumps(head).encode()
    length = len(raw) if header_length is None else header_length
    return httpx.post(url, content=raw + data, timeout=10,
                      headers={"Inference-Header-Content-Length": str(length)})


@pytest.mark.parametrize("case", ["header past the body", "too few bytes", "bytes left over",
                                  "not JSON", "unknown output", "negative size"])
def test_malformed_binary_requests_get_a_400_and_the_agent_keeps_serving(served, case):
    agent = served["digits"]
    url = f"{agent.server.url}/v2/models/digits/infer"
    x = np.zeros((1, 64), np.float32).tobytes()
    tensor = {"name": "pixels", "shape": [1, 64], "datatype": "FP32",
              "parameters": {"binary_data_size": len(x)}}
    if case == "header past the body":
        resp = _binary_request(url, {"inputs": [tensor]}, x, header_length=10_000)
    elif case == "too few bytes":
        resp = _binary_request(url, {"inputs": [{**tensor, "parameters": {
            "binary_data_size": 100}}]}, x[:100])
    elif case == "bytes left over":
        resp = _binary_request(url, {"inputs": [tensor]}, x + b"\0\0\0\0")
    elif case == "not JSON":  # binary body sent without the header length
        resp = httpx.post(url, content=b"\xff\xfe" + x, timeout=10)
    elif case == "unknown output":
        resp = _binary_request(url, {"inputs": [tensor], "outputs": [{"name": "boxes"}]}, x)
    else:
        resp = _binary_request(url, {"inputs": [{**tensor, "parameters": {
            "binary_data_size": -4}}]}, x)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]
    assert _client(agent).is_model_ready("digits")  # still serving


def test_versions_routes_and_input_caused_failures(served, zoo):
    agent = served["vad-rnn"]
    base = agent.server.url
    version = agent.active.version
    assert httpx.get(f"{base}/v2/models/vad-rnn/versions/{version}/ready").status_code == 200
    assert httpx.get(f"{base}/v2/models/vad-rnn/versions/{version + 7}").status_code == 404
    feeds = zoo["vad-rnn"].feeds(1)
    short = {**feeds, "input": feeds["input"][:, :100]}  # not whole 64-sample frames
    body = {"inputs": [{"name": k, "shape": list(v.shape),
                        "datatype": "INT64" if v.dtype == np.int64 else "FP32",
                        "data": v.ravel().tolist()} for k, v in short.items()]}
    resp = httpx.post(f"{base}/v2/models/vad-rnn/versions/{version}/infer", json=body,
                      timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]
    body["inputs"] = [{**t, "data": v.ravel().tolist(), "shape": list(v.shape)}
                      for t, v in zip(body["inputs"], feeds.values(), strict=True)]
    ok = httpx.post(f"{base}/v2/models/vad-rnn/infer", json=body, timeout=10)
    assert ok.status_code == 200
    assert httpx.get(f"{base}/v2/models/digits").status_code == 404  # not this agent's


def test_tritonclient_grpc_talks_to_the_agent_and_gets_what_onnxruntime_computes(served, zoo):
    import onnxruntime as ort
    import tritonclient.grpc as tgrpc

    agent = served["digits"]
    with tgrpc.InferenceServerClient(agent.grpc.target) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert "binary_tensor_data" in client.get_server_metadata().extensions
        assert client.is_model_ready("digits")
        assert client.is_model_ready("digits", str(agent.active.version))
        assert not client.is_model_ready("nope")
        meta = client.get_model_metadata("digits", as_json=True)
        assert meta["inputs"][0]["shape"] == ["-1", "64"]  # int64 as JSON strings
        assert meta["platform"] == "onnxruntime"

        x = np.load(ASSETS / "eval.npz")["x"][:5].astype(np.float32)
        pixels = tgrpc.InferInput("pixels", list(x.shape), "FP32")
        pixels.set_data_from_numpy(x)
        result = client.infer("digits", [pixels], request_id="g-9",
                              outputs=[tgrpc.InferRequestedOutput("probs")])
        want = ort.InferenceSession(str(ASSETS / "digits.onnx")).run(None, {"pixels": x})[0]
        np.testing.assert_allclose(result.as_numpy("probs"), want, rtol=1e-6, atol=1e-7)
        assert result.get_response().id == "g-9"
        with pytest.raises(tgrpc.InferenceServerException) as err:
            client.infer("text-encoder", [pixels])
        assert err.value.status() == "StatusCode.NOT_FOUND"

    encoder = served["text-encoder"]
    feeds = zoo["text-encoder"].feeds(2, seed=3)
    with tgrpc.InferenceServerClient(encoder.grpc.target) as client:
        inputs = []
        for name, arr in feeds.items():
            tensor = tgrpc.InferInput(name, list(arr.shape), "INT64")
            tensor.set_data_from_numpy(arr)
            inputs.append(tensor)
        got = client.infer("text-encoder", inputs,
                           outputs=[tgrpc.InferRequestedOutput("pooled")])
        assert [o.name for o in got.get_response().outputs] == ["pooled"]
        np.testing.assert_allclose(got.as_numpy("pooled"),
                                   zoo["text-encoder"].run_raw(feeds)["pooled"], rtol=1e-5,
                                   atol=1e-6)

    detector = served["text-detector"]
    image = np.random.default_rng(1).random((1, 3, 640, 640), dtype=np.float32)
    with tgrpc.InferenceServerClient(detector.grpc.target) as client:
        x = tgrpc.InferInput("x", list(image.shape), "FP32")
        x.set_data_from_numpy(image)
        got = client.infer("text-detector", [x], outputs=[tgrpc.InferRequestedOutput("maps")])
    np.testing.assert_allclose(got.as_numpy("maps"),
                               zoo["text-detector"].run_raw({"x": image})["maps"],
                               rtol=1e-5, atol=1e-6)


# one agent for all the cases (each deployment costs seconds)
_BAD_GRPC = ["too few bytes", "raw for one of two inputs", "contents count", "unknown output",
             "FP16 as contents", "negative dim"]


def _bad_grpc_request(case: str):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="digits")
    pixels = request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    x = np.zeros((1, 64), np.float32).tobytes()
    if case == "too few bytes":
        request.raw_input_contents.append(x[:100])
    elif case == "raw for one of two inputs":
        request.inputs.add(name="extra", datatype="FP32", shape=[1])
        request.raw_input_contents.append(x)
    elif case == "contents count":
        pixels.contents.fp32_contents.extend([0.0] * 63)
    elif case == "unknown output":
        request.raw_input_contents.append(x)
        request.outputs.add(name="boxes")
    elif case == "FP16 as contents":
        pixels.datatype = "FP16"
    else:
        pixels.shape[0] = -1
        request.raw_input_contents.append(x)
    return request


def test_malformed_grpc_requests_are_invalid_argument_and_the_agent_keeps_serving(served):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    agent = served["digits"]
    with grpc.insecure_channel(agent.grpc.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for case in _BAD_GRPC:
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(_bad_grpc_request(case), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err.value)
            assert err.value.details(), case
            ready = stub.ModelReady(service_pb2.ModelReadyRequest(name="digits"), timeout=10)
            assert ready.ready, case  # still serving


def test_grpc_is_off_unless_configured_and_a_missing_extra_is_named(tmp_path, monkeypatch):
    import importlib.util
    import subprocess
    import sys

    from edgefleet.agent import AgentConfig

    # `edgefleet agent run` without grpc_port imports neither grpcio and protobuf nor the
    # rest of the command line (typer, click, rich, pydantic)
    code = ("import sys, edgefleet.cli, edgefleet.cli._agent_run, edgefleet.agent.agent; "
            "print(sorted(m for m in ('grpc', 'google.protobuf', 'typer', 'click', 'rich', "
            "'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"

    base = {"device_id": "pi-1", "state_dir": tmp_path, "trust_root": tmp_path / "root.json"}
    with pytest.raises(ValueError, match="grpc_port must be 0..65535"):
        AgentConfig(**base, grpc_port=70000)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "grpc" else real(name, *a))
    with pytest.raises(ValueError, match=r"edgefleet\[grpc\]"):
        AgentConfig(**base, grpc_port=8471)
    assert AgentConfig(**base).grpc_port is None


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_an_empty_output_a_detector_with_nothing_found_is_answered(binary):
    """[0, 6] boxes: no bytes as binary data, an empty list as JSON, and tritonclient reads
    it back as an empty array of that shape."""
    from edgefleet.agent._v2 import V2Request, encode_response

    outputs = {"boxes": np.zeros((0, 6), np.float32), "count": np.array([0], np.int64)}
    head, parts = encode_response("det", 1, V2Request({}, binary_default=binary), outputs)

    entry = json.loads(head)["outputs"][0]
    assert entry["shape"] == [0, 6] and entry["datatype"] == "FP32"
    assert (entry["parameters"]["binary_data_size"] == 0) if binary else (entry["data"] == [])
    body = head + b"".join(bytes(p) for p in parts)
    result = triton.InferResult.from_response_body(body, header_length=len(head) if parts
                                                   else None)
    boxes = result.as_numpy("boxes")
    assert boxes.shape == (0, 6) and boxes.dtype == np.float32
    assert result.as_numpy("count").tolist() == [0]
