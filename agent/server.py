"""The local inference endpoint: Open Inference Protocol (KServe v2) REST on localhost.

Standard library only (``http.server``), so a device needs no web framework.

- ``GET  /v2/health/live``, ``GET /v2/health/ready``
- ``GET  /v2/models/{name}`` — metadata: versions, platform, inputs, outputs
- ``POST /v2/models/{name}/infer`` — ``{"inputs": [{"name", "shape", "datatype", "data"}]}``
- ``GET  /v2/agent/status`` — edgefleet extension: active model, buffer, connection

Errors come back as ``{"error": "..."}`` with 400 (bad input), 404 (unknown model) or
503 (no model installed yet), never a dropped connection.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.contract import EdgefleetError, InputError, ModelError

from .runtime import V2_TO_NUMPY

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["InferenceServer", "decode_v2_inputs"]

log = logging.getLogger(__name__)
_MAX_BODY = 16 * 1024 * 1024


def decode_v2_inputs(body: Any) -> dict[str, np.ndarray]:
    """Turn a v2 infer request body into named arrays.

    Raises:
        InputError: the body is not a v2 request or a tensor's data does not fit its shape.
    """
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise InputError('body must be {"inputs": [{"name", "shape", "datatype", "data"}]}')
    feeds = {}
    for i, tensor in enumerate(body["inputs"]):
        if not isinstance(tensor, dict):
            raise InputError(f"inputs[{i}] must be an object")
        name, shape, dtype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        if not isinstance(name, str) or not isinstance(shape, list) or dtype not in V2_TO_NUMPY:
            raise InputError(f"inputs[{i}] needs name, shape (list) and a datatype in "
                             f"{sorted(V2_TO_NUMPY)}")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InputError(f"inputs[{i}].shape must be non-negative integers")
        try:
            arr: np.ndarray = np.asarray(tensor.get("data"), dtype=V2_TO_NUMPY[dtype])
            feeds[name] = arr.reshape(shape)
        except (TypeError, ValueError) as exc:
            raise InputError(f"inputs[{i}] data does not fit shape {shape} as {dtype}: "
                             f"{exc}") from exc
    return feeds


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        agent = self.server.agent
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts == ["v2", "health", "live"]:
            self._send(200, {"live": True})
        elif parts == ["v2", "health", "ready"]:
            ready = agent.active is not None
            self._send(200 if ready else 503, {"ready": ready})
        elif parts == ["v2", "agent", "status"]:
            self._send(200, agent.status())
        elif len(parts) in (3, 5) and parts[:2] == ["v2", "models"]:
            meta = agent.model_metadata(parts[2])
            if meta is None:
                self._send(404, {"error": f"model {parts[2]!r} is not served here"})
            else:
                self._send(200, meta)
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        parts = self.path.split("?")[0].strip("/").split("/")
        if not (len(parts) in (4, 6) and parts[:2] == ["v2", "models"] and parts[-1] == "infer"):
            self._send(404, {"error": f"no route {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= _MAX_BODY:
            self._send(400, {"error": f"Content-Length must be 1..{_MAX_BODY}"})
            self.close_connection = True
            return
        raw = self.rfile.read(length)
        agent = self.server.agent
        try:
            body = json.loads(raw)
            feeds = decode_v2_inputs(body)
            result = agent.predict(feeds, model=parts[2])
        except json.JSONDecodeError as exc:
            self._send(400, {"error": f"body is not JSON: {exc}"})
            return
        except InputError as exc:
            self._send(400, {"error": str(exc)})
            return
        except ModelError as exc:
            status = {"unknown_model": 404, "no_model": 503}.get(exc.reason, 500)
            self._send(status, {"error": str(exc)})
            return
        except EdgefleetError as exc:
            self._send(500, {"error": str(exc)})
            return
        outputs = [{"name": k, "datatype": _v2_type(v), "shape": list(v.shape),
                    "data": v.ravel().tolist()} for k, v in result.outputs.items()]
        self._send(200, {"model_name": result.model.name,
                         "model_version": str(result.model.version),
                         "id": body.get("id", ""), "outputs": outputs})


def _v2_type(arr: np.ndarray) -> str:
    for name, dt in V2_TO_NUMPY.items():
        if arr.dtype == dt:
            return name
    return str(arr.dtype).upper()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    agent: Agent


class InferenceServer:
    """Serves the v2 endpoint for an agent on ``host:port`` (port 0 picks a free one)."""

    def __init__(self, agent: Agent, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.agent = agent
        self._thread = threading.Thread(target=self._server.serve_forever, name="v2-http",
                                        daemon=True, kwargs={"poll_interval": 0.2})

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)


