"""The device endpoint's HTTP/1.1 on a raw socket: what curl and odd clients send
(Expect: 100-continue, chunked bodies, bad request lines, undecodable or deeply nested
JSON) gets an answer, idle or stalled connections are closed, and stalled clients cannot
pile up threads past the connection cap."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
from _support import ASSETS

from edgefleet.agent import Agent, AgentConfig, InferenceServer
from edgefleet.contract import Manifest, TensorSpec, sha256_file


@pytest.fixture
def agent(tmp_path, trust_root):
    """An offline agent serving the digits model (installed straight into its store)."""
    digest, length = sha256_file(str(ASSETS / "digits.onnx"))
    m = Manifest(name="digits", version=1, runtime="onnxruntime", model_file="model.onnx",
                 model_sha256=digest, model_length=length,
                 inputs=[TensorSpec("pixels", "FP32", ["batch", 64])],
                 outputs=[TensorSpec("probs", "FP32", ["batch", 10])])
    a = Agent(AgentConfig(device_id="http-1", state_dir=tmp_path / "state",
                          trust_root=trust_root, broker_url="mqtt://127.0.0.1:1", api_port=0,
                          trust_check_interval_s=0))
    a.store.activate(a.store.install(m, m.encode(), ASSETS / "digits.onnx").ref)
    a.start()
    yield a
    a.stop()


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    f = sock.makefile("rb")
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return status, headers, body


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}"
            f"\r\n").encode() + body


BODY = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                               "data": [0.0] * 64}]}).encode()


def test_expect_100_continue_gets_its_interim_answer_then_the_result(agent):
    with _connect(agent.server.url) as sock:
        head = _post("/v2/models/digits/infer", b"", "Expect: 100-continue\r\n")
        sock.sendall(head.replace(b"Content-Length: 0", f"Content-Length: {len(BODY)}".encode()))
        f = sock.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 100")
        assert f.readline() == b"\r\n"
        sock.sendall(BODY)
        status, _, body = _read_answer(sock)
        assert status == 200 and json.loads(body)["outputs"][0]["name"] == "probs"


@pytest.mark.parametrize("raw, status", [
    (b"POST /v2/models/digits/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello"
     b"\r\n0\r\n\r\n", 411),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /v2 HTTP/2.0\r\n\r\n", 505),
    (b"GET /v2 HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /v2 HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (_post("/v2/models/digits/infer", b"\xff\xfe{not utf-8"), 400),
    (_post("/v2/models/digits/infer", b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"), 400),
    (b"DELETE /v2 HTTP/1.1\r\n\r\n", 405),
    (b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 413),
])
def test_malformed_http_gets_an_answer_never_a_dropped_connection(agent, raw, status):
    with _connect(agent.server.url) as sock:
        sock.sendall(raw)
        got, _, body = _read_answer(sock)
        assert got == status, body
        assert json.loads(body)["error"]
    with _connect(agent.server.url) as sock:  # and the next client is served
        sock.sendall(_post("/v2/models/digits/infer", BODY))
        assert _read_answer(sock)[0] == 200


def test_keep_alive_serves_requests_in_order_and_http_1_0_closes(agent):
    with _connect(agent.server.url) as sock:
        for _ in range(3):
            sock.sendall(_post("/v2/models/digits/infer", BODY))
            status, headers, body = _read_answer(sock)
            assert status == 200 and "connection" not in headers
        sock.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        assert _read_answer(sock)[0] == 200
        assert sock.recv(1) == b""  # closed after an HTTP/1.0 request


def test_idle_connections_are_closed_and_the_cap_answers_503(agent):
    server = InferenceServer(agent, idle_timeout_s=0.5, max_connections=2)
    server.start()
    try:
        idle = _connect(server.url)
        assert idle.recv(1) == b""  # closed by the server after its idle timeout
        idle.close()
        held = [_connect(server.url) for _ in range(2)]
        for sock in held:  # each one is served, so each holds a slot
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n\r\n")
            assert _read_answer(sock)[0] == 200
        with _connect(server.url) as third:
            status, _, body = _read_answer(third)
            assert status == 503 and b"too many" in body
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while True:  # the slots free up as the server sees the closes
            with _connect(server.url) as sock:
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n\r\n")
                if _read_answer(sock)[0] == 200:
                    break
            assert time.monotonic() < deadline, "closed connections never gave slots back"
    finally:
        server.stop()


def test_a_large_binary_answer_arrives_whole(agent):
    x = np.zeros((200, 64), np.float32)
    head = json.dumps({"inputs": [{"name": "pixels", "shape": [200, 64], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    with _connect(agent.server.url) as sock:
        sock.sendall(_post("/v2/models/digits/infer", head + x.tobytes(),
                           f"Inference-Header-Content-Length: {len(head)}\r\n"))
        status, headers, body = _read_answer(sock)
        assert status == 200
        n = int(headers["inference-header-content-length"])
        assert len(body) - n == 200 * 10 * 4
