"""The local inference endpoint: Open Inference Protocol (KServe v2) REST on localhost.

Standard library only (``http.server``), so a device needs no web framework.

- ``GET  /v2`` — server metadata (name, version, extensions)
- ``GET  /v2/health/live``, ``GET /v2/health/ready``
- ``GET  /v2/models/{name}[/versions/{v}]`` — model metadata (``-1`` for dynamic dims)
- ``GET  /v2/models/{name}[/versions/{v}]/ready``
- ``POST /v2/models/{name}[/versions/{v}]/infer`` — JSON, or the binary tensor data
  extension both ways (``Inference-Header-Content-Length``, ``binary_data``,
  ``binary_data_output``); ``outputs`` filters the answer, ``id`` is echoed
- ``GET  /v2/agent/status`` — edgefleet extension: active model, buffer, connection

Errors come back as ``{"error": "..."}``: 400 for anything the request got wrong
(malformed JSON or binary data, a shape the model fixes otherwise, an input the model
cannot compute on), 404 for an unknown model or version, 413 for a body above
``max_request_bytes``, 503 while no model is installed; never a dropped connection.
The body is read once into one buffer; binary inputs are views of it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import numpy as np

import edgefleet
from edgefleet.contract import EdgefleetError, ModelError

from ._v2 import EXTENSIONS, decode_request, encode_response, error_kind, served

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["EXTENSIONS", "InferenceServer", "decode_v2_inputs"]

log = logging.getLogger(__name__)
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a 1x3x640x640 float32 image as JSON fits
_STATUS = {"invalid": 400, "not_found": 404, "unavailable": 503, "internal": 500}


def decode_v2_inputs(body: Any) -> dict[str, np.ndarray]:
    """Turn a parsed v2 JSON infer request into named arrays.

    Raises:
        InputError: not a v2 request, or a tensor's data does not fit its shape.
    """
    return decode_request(json.dumps(body).encode()).feeds


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle's algorithm
        # and the client's delayed ACK hold every small answer back ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        self._reply(status, json.dumps(body).encode(), [])

    def _reply(self, status: int, head: bytes, parts: list[bytes | memoryview]) -> None:
        self.send_response(status)
        if parts:
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Inference-Header-Content-Length", str(len(head)))
        else:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(head) + sum(len(p) for p in parts)))
        self.end_headers()
        self.wfile.write(head)
        for part in parts:
            self.wfile.write(part)

    def _route(self) -> tuple[str | None, int | None, str]:
        """``(model, version, action)`` of a ``/v2/models/…`` path (model None: other)."""
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 3 or parts[:2] != ["v2", "models"]:
            return None, None, "/".join(parts)
        model, rest = parts[2], parts[3:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            if not rest[1].isdigit():
                return model, -1, ""
            version, rest = int(rest[1]), rest[2:]
        return model, version, "/".join(rest)

    def _served(self, model: str, version: int | None) -> bool:
        """Whether this agent serves ``model`` (at ``version``); if not, a 404 or 503 is
        sent."""
        try:
            served(self.server.agent, model, version)
        except ModelError as exc:
            self._fail(exc)
            return False
        return True

    def _fail(self, exc: EdgefleetError) -> None:
        self._send(_STATUS[error_kind(exc)], {"error": str(exc)})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        agent = self.server.agent
        model, version, action = self._route()
        if model is None:
            if action == "v2":
                self._send(200, {"name": "edgefleet-agent", "version": edgefleet.__version__,
                                 "extensions": EXTENSIONS})
            elif action == "v2/health/live":
                self._send(200, {"live": True})
            elif action == "v2/health/ready":
                ready = agent.active is not None
                self._send(200 if ready else 503, {"ready": ready})
            elif action == "v2/agent/status":
                self._send(200, agent.status())
            else:
                self._send(404, {"error": f"no route {self.path}"})
            return
        if version == -1 or action not in ("", "ready"):
            self._send(404, {"error": f"no route {self.path}"})
            return
        if not self._served(model, version):
            return
        meta = agent.model_metadata(model) if action != "ready" else None
        if action == "ready" or meta is not None:
            self._send(200, meta or {"name": model, "ready": True})
        else:  # switched to another model since
            self._send(404, {"error": f"model {model!r} is not served here"})

    def _read_body(self) -> bytearray | None:
        """The body in one buffer, or None after answering why not."""
        cap = self.server.max_request_bytes
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length > cap:
            self._send(413, {"error": f"the body is {length} bytes, above the {cap}-byte "
                                      f"cap (binary tensors are ~4x smaller than JSON)"})
            self.close_connection = True
            return None
        if length <= 0:
            self._send(400, {"error": "Content-Length must be a positive number of bytes"})
            self.close_connection = True
            return None
        body = bytearray(length)
        view, got = memoryview(body), 0
        while got < length:
            n = self.rfile.readinto(view[got:])
            if not n:
                self.close_connection = True
                return None  # the client went away mid-body: nobody to answer
            got += n
        return body

    def do_POST(self) -> None:  # noqa: N802
        model, version, action = self._route()
        if model is None or version == -1 or action != "infer":
            self._send(404, {"error": f"no route {self.path}"})
            return
        body = self._read_body()
        if body is None:
            return
        header = self.headers.get("Inference-Header-Content-Length")
        agent = self.server.agent
        try:
            req = decode_request(body, int(header) if header is not None else None)
            if not self._served(model, version):
                return
            result = agent.predict(req.feeds, model=model)
            head, parts = encode_response(result.model.name, result.model.version, req,
                                          result.outputs)
        except ValueError as exc:  # a header length that is not a number
            self._send(400, {"error": f"Inference-Header-Content-Length: {exc}"})
            return
        except EdgefleetError as exc:
            self._fail(exc)
            return
        self._reply(200, head, parts)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    agent: Agent
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES


class InferenceServer:
    """Serves the v2 endpoint for an agent on ``host:port`` (port 0 picks a free one).

    Args:
        max_request_bytes: the largest request body accepted (413 above it).
    """

    def __init__(self, agent: Agent, host: str = "127.0.0.1", port: int = 0, *,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.agent = agent
        self._server.max_request_bytes = max_request_bytes
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

