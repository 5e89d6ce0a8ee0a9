"""The local inference endpoint: Open Inference Protocol (KServe v2) REST on localhost.

Standard library only (``socketserver``), so a device needs no web framework.

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
cannot compute on), 404 for an unknown model or version, 411 for a body without a
length, 413 for a body above ``max_request_bytes``, 503 while no model is installed;
never a dropped connection for a well-formed HTTP request.

HTTP/1.1 is spoken here directly, for the one client it serves (applications on the same
device): keep-alive, ``Content-Length`` bodies, ``Expect: 100-continue``; no chunked
bodies (411), no pipelining beyond reading requests in order. Parsing a request and
writing its answer costs a few tens of microseconds, where ``http.server`` spent
~0.2 ms of a small inference's ~0.6 ms in its e-mail-based header parser and separate
writes. The body is read once into one buffer; binary inputs are views of it. An idle or
stalled connection is closed after ``idle_timeout_s``; beyond ``max_connections`` a new
connection is answered 503 and closed, so stalled clients cannot pile up threads; a
client that goes away mid-answer is not an error worth a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import threading
from typing import Any

import numpy as np

import edgefleet
from edgefleet.contract import EdgefleetError, ModelError

from ._v2 import EXTENSIONS, Serving, decode_request, encode_response, error_kind, served

__all__ = ["EXTENSIONS", "InferenceServer", "decode_v2_inputs"]

log = logging.getLogger(__name__)
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a 1x3x640x640 float32 image as JSON fits
_STATUS = {"invalid": 400, "not_found": 404, "unavailable": 503, "internal": 500}
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable", 505: "HTTP Version Not Supported"}
_MAX_LINE = 8192
_MAX_HEADERS = 100
_COALESCE = 64 * 1024  # answers up to this size go out in one write


def decode_v2_inputs(body: Any) -> dict[str, np.ndarray]:
    """Turn a parsed v2 JSON infer request into named arrays.

    Raises:
        InputError: not a v2 request, or a tensor's data does not fit its shape.
    """
    return decode_request(json.dumps(body).encode()).feeds


class _BadRequest(Exception):
    """The HTTP request itself is malformed: answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str],
                 keep_alive: bool) -> None:
        self.method, self.path, self.headers = method, path, headers
        self.keep_alive = keep_alive
        self.body = bytearray()


class _Connection(socketserver.StreamRequestHandler):
    """One client connection: requests in order, each answered before the next is read."""

    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout_s)  # idle or stalled: closed
        # answers go out as one write, but a large one as several: without this, Nagle's
        # algorithm and the client's delayed ACK would hold the tail back ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        try:
            while True:
                try:
                    req = self._read_request()
                except _BadRequest as exc:
                    self._send(exc.status, {"error": str(exc)}, close=True)
                    return
                if req is None:
                    return
                keep = self._answer(req)
                if not keep:
                    return
        except (OSError, ValueError) as exc:  # timeouts, resets, a client gone mid-answer
            log.debug("v2 connection from %s ended: %s", self.client_address[0], exc)

    # -- reading --------------------------------------------------------------------
    def _line(self) -> bytes:
        line = self.rfile.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise _BadRequest(431, f"a request line or header is longer than {_MAX_LINE} "
                                   "bytes")
        return line

    def _read_request(self) -> _Request | None:
        line = self._line()
        while line in (b"\r\n", b"\n"):  # tolerated before a request (RFC 9112 2.2)
            line = self._line()
        if not line:
            return None  # the client closed the connection between requests
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _BadRequest(400, f"malformed request line {line[:80]!r}")
        method, path, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _BadRequest(505, f"{version} is not served; use HTTP/1.1")
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            raw = self._line()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep or not name.strip() or name != name.rstrip():
                raise _BadRequest(400, f"malformed header line {raw[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        else:
            raise _BadRequest(431, f"more than {_MAX_HEADERS} header fields")
        conn = headers.get("connection", "").lower()
        keep = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
        return _Request(method, path, headers, keep)

    def _read_body(self, req: _Request) -> bool:
        """Read the body into ``req.body``; False after answering why not (the
        connection is then closed: what is left of the body is not read)."""
        if "chunked" in req.headers.get("transfer-encoding", "").lower():
            self._send(411, {"error": "chunked bodies are not accepted; send "
                                      "Content-Length"}, close=True)
            return False
        cap = self.server.max_request_bytes
        text = req.headers.get("content-length", "")
        length = int(text) if text.isdigit() else -1
        if length > cap:
            self._send(413, {"error": f"the body is {length} bytes, above the {cap}-byte "
                                      f"cap (binary tensors are ~4x smaller than JSON)"},
                       close=True)
            return False
        if length <= 0:
            self._send(400, {"error": "Content-Length must be a positive number of bytes"},
                       close=True)
            return False
        if req.headers.get("expect", "").lower() == "100-continue":
            self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = req.body = bytearray(length)
        view, got = memoryview(body), 0
        while got < length:
            n = self.rfile.readinto(view[got:])
            if not n:
                return False  # the client went away mid-body: nobody to answer
            got += n
        return True

    # -- writing --------------------------------------------------------------------
    def _send(self, status: int, body: dict[str, Any], *, close: bool = False) -> None:
        self._reply(status, json.dumps(body).encode(), [], close=close)

    def _reply(self, status: int, head: bytes, parts: list[bytes | memoryview], *,
               close: bool = False) -> None:
        length = len(head) + sum(len(p) for p in parts)
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
                 f"Content-Length: {length}"]
        if parts:
            lines += ["Content-Type: application/octet-stream",
                      f"Inference-Header-Content-Length: {len(head)}"]
        else:
            lines.append("Content-Type: application/json")
        if close:
            lines.append("Connection: close")
        start = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sock = self.connection
        if length <= _COALESCE:
            sock.sendall(b"".join([start, head, *parts]))
            return
        sock.sendall(start + head)
        for part in parts:
            sock.sendall(part)

    def _fail(self, exc: EdgefleetError, *, close: bool = False) -> None:
        self._send(_STATUS[error_kind(exc)], {"error": str(exc)}, close=close)

    # -- routes -----------------------------------------------------------------------
    def _answer(self, req: _Request) -> bool:
        """Answer one request; whether the connection stays open."""
        model, version, action = _route(req.path)
        if req.method == "POST":
            if model is None or version == -1 or action != "infer":
                self._send(404, {"error": f"no route {req.path}"}, close=True)
                return False  # the body is not read: start afresh
            if not self._read_body(req):
                return False
            self._infer(req, model, version)
        elif req.method == "GET":
            self._get(req, model, version, action)
        else:
            self._send(405, {"error": f"{req.method} is not served; GET or POST"},
                       close=True)
            return False
        return req.keep_alive

    def _get(self, req: _Request, model: str | None, version: int | None,
             action: str) -> None:
        agent = self.server.agent
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
                self._send(404, {"error": f"no route {req.path}"})
            return
        if version == -1 or action not in ("", "ready"):
            self._send(404, {"error": f"no route {req.path}"})
            return
        try:
            served(agent, model, version)
        except ModelError as exc:
            self._fail(exc)
            return
        meta = agent.model_metadata(model) if action != "ready" else None
        if action == "ready" or meta is not None:
            self._send(200, meta or {"name": model, "ready": True})
        else:  # switched to another model since
            self._send(404, {"error": f"model {model!r} is not served here"})

    def _infer(self, req: _Request, model: str, version: int | None) -> None:
        header = req.headers.get("inference-header-content-length")
        agent = self.server.agent
        try:
            if header is not None and not header.isdigit():
                self._send(400, {"error": f"Inference-Header-Content-Length must be a "
                                          f"byte count, got {header[:40]!r}"})
                return
            decoded = decode_request(req.body, int(header) if header is not None else None)
            served(agent, model, version)
            result = agent.predict(decoded.feeds, model=model)
            head, parts = encode_response(result.model.name, result.model.version, decoded,
                                          result.outputs)
        except EdgefleetError as exc:
            self._fail(exc)
            return
        self._reply(200, head, parts)


def _route(path: str) -> tuple[str | None, int | None, str]:
    """``(model, version, action)`` of a ``/v2/models/…`` path (model None: another
    path, given back as ``action``; version -1: not a number)."""
    parts = path.split("?")[0].strip("/").split("/")
    if len(parts) < 3 or parts[:2] != ["v2", "models"]:
        return None, None, "/".join(parts)
    model, rest = parts[2], parts[3:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions":
        if not rest[1].isdigit() or len(rest[1]) > 18:
            return model, -1, ""
        version, rest = int(rest[1]), rest[2:]
    return model, version, "/".join(rest)


_TOO_MANY = b'{"error": "too many open connections; try again"}'


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], agent: Serving, *, max_request_bytes: int,
                 idle_timeout_s: float, max_connections: int) -> None:
        self.agent = agent
        self.max_request_bytes = max_request_bytes
        self.idle_timeout_s = idle_timeout_s
        self._open = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Connection)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._open.acquire(blocking=False):
            with contextlib.suppress(OSError):  # too many at once: say so and close
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                                b"Content-Type: application/json\r\nContent-Length: "
                                + str(len(_TOO_MANY)).encode() + b"\r\n\r\n" + _TOO_MANY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: nobody else will release the slot
            self._open.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._open.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("v2 connection from %s failed", client_address[0], exc_info=True)


class InferenceServer:
    """Serves the v2 endpoint for an agent on ``host:port`` (port 0 picks a free one).

    Args:
        agent: what the endpoint serves (the ``Agent``; see ``Serving``).
        max_request_bytes: the largest request body accepted (413 above it).
        idle_timeout_s: a connection idle (or stalled mid-request) this long is closed.
        max_connections: connections served at once; more are answered 503.
    """

    def __init__(self, agent: Serving, host: str = "127.0.0.1", port: int = 0, *,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 idle_timeout_s: float = 30.0, max_connections: int = 64) -> None:
        self._server = _Server((host, port), agent, max_request_bytes=max_request_bytes,
                               idle_timeout_s=idle_timeout_s, max_connections=max_connections)
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
