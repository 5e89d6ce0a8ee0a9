"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``).

Optional: it needs ``grpcio`` and ``protobuf`` (``pip install 'edgefleet[grpc]'``) and runs
only when ``grpc_port`` is set in ``agent.toml``, so a device that does not want gRPC
neither imports nor pays for it. It answers what the REST endpoint answers, from the same
helpers: ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelInfer.

Inputs come as ``raw_input_contents`` (what Triton's and KServe's clients send; each a
row-major little-endian buffer, BYTES elements length-prefixed) or as typed ``contents``;
outputs always go back as ``raw_output_contents``. Errors are gRPC statuses with the same
messages as REST's: INVALID_ARGUMENT for what the request got wrong (REST's 400),
NOT_FOUND, UNAVAILABLE while no model is installed, INTERNAL for the agent's own failures.
"""

from __future__ import annotations

import logging
import math
from concurrent import futures
from typing import Any

import grpc
import numpy as np

import edgefleet
from edgefleet.contract import EdgefleetError, InputError, ModelError

from ._v2 import (
    DTYPES,
    EXTENSIONS,
    Serving,
    V2Request,
    decode_bytes,
    error_kind,
    raw_bytes,
    select_outputs,
    served,
    v2_datatype,
)
from ._v2_messages import SERVICE, messages

__all__ = ["GrpcServer", "decode_infer_request"]

log = logging.getLogger(__name__)
_CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
          "unavailable": grpc.StatusCode.UNAVAILABLE, "internal": grpc.StatusCode.INTERNAL}
# where each datatype's values sit in InferTensorContents (FP16 and BF16: raw only)
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
             "BYTES": "bytes_contents"}


def _input(i: int, tensor: Any, raw: bytes | None) -> np.ndarray:
    name, dtype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    where = f"input {name!r}" if name else f"inputs[{i}]"
    if not name or (dtype not in DTYPES and dtype != "BYTES"):
        raise InputError(f"{where} needs a name and a datatype in "
                         f"{sorted([*DTYPES, 'BYTES'])}, got {dtype!r}")
    if any(d < 0 for d in shape):
        raise InputError(f"{where}: shape must be non-negative integers, got {shape}")
    count = math.prod(shape)
    if raw is not None:
        if dtype == "BYTES":
            return decode_bytes(raw, count, where).reshape(shape)
        need = count * DTYPES[dtype].itemsize
        if len(raw) != need:
            raise InputError(f"{where}: {len(raw)} bytes of raw_input_contents, but shape "
                             f"{shape} of {dtype} needs {need}")
        return np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape)
    field = _CONTENTS.get(dtype)
    if field is None:
        raise InputError(f"{where}: {dtype} travels only in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InputError(f"{where}: {len(values)} values in contents.{field}, but shape "
                         f"{shape} holds {count}")
    if dtype == "BYTES":
        return np.array(list(values), dtype=object).reshape(shape)
    try:
        return np.array(values, dtype=DTYPES[dtype]).reshape(shape)
    except OverflowError as exc:
        raise InputError(f"{where}: a value does not fit {dtype}: {exc}") from exc


def decode_infer_request(request: Any) -> V2Request:
    """A ``ModelInferRequest`` as named arrays (raw inputs are views of its buffers).

    Raises:
        InputError: a malformed tensor, a byte or value count that does not fit its shape,
            raw contents for some inputs but not others, an input given twice.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"raw_input_contents has {len(raw)} entries for "
                         f"{len(request.inputs)} inputs; give one per input or none")
    if not request.inputs:
        raise InputError("the request has no inputs")
    feeds: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in feeds:
            raise InputError(f"input {tensor.name!r} is given twice")
        feeds[tensor.name] = _input(i, tensor, raw[i] if raw else None)
    wanted = [o.name for o in request.outputs] or None
    return V2Request(feeds, id=request.id or None, outputs=wanted)


class _Service:
    """The six calls; each answers from the agent or aborts with a status."""

    def __init__(self, agent: Serving) -> None:
        self.agent = agent
        self.m = messages()

    def _abort(self, context: grpc.ServicerContext, exc: EdgefleetError) -> None:
        context.abort(_CODES[error_kind(exc)], str(exc))

    def server_live(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.m["ServerLiveResponse"](live=True)

    def server_ready(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.m["ServerReadyResponse"](ready=self.agent.active is not None)

    def server_metadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.m["ServerMetadataResponse"](name="edgefleet-agent",
                                                version=edgefleet.__version__,
                                                extensions=EXTENSIONS)

    def model_ready(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            served(self.agent, request.name, request.version)
        except ModelError:
            return self.m["ModelReadyResponse"](ready=False)
        return self.m["ModelReadyResponse"](ready=True)

    def model_metadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            served(self.agent, request.name, request.version)
            meta = self.agent.model_metadata(request.name)
            if meta is None:  # switched to another model since
                raise ModelError(f"model {request.name!r} is not served here",
                                 reason="unknown_model")
        except ModelError as exc:
            self._abort(context, exc)  # raises
            raise
        tensor = self.m["TensorMetadata"]
        return self.m["ModelMetadataResponse"](
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                    for t in meta["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                     for t in meta["outputs"]])

    def model_infer(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            req = decode_infer_request(request)
            served(self.agent, request.model_name, request.model_version)
            result = self.agent.predict(req.feeds, model=request.model_name)
            chosen = select_outputs(request.model_name, req.outputs, result.outputs)
        except EdgefleetError as exc:
            self._abort(context, exc)  # raises
            raise
        response = self.m["ModelInferResponse"](
            model_name=result.model.name, model_version=str(result.model.version),
            id=request.id)
        for name, arr in chosen.items():
            response.outputs.add(name=name, datatype=v2_datatype(arr), shape=arr.shape)
            response.raw_output_contents.append(bytes(raw_bytes(arr)))
        return response


class GrpcServer:
    """Serves ``inference.GRPCInferenceService`` for an agent on ``host:port``.

    Args:
        port: 0 picks a free one (``port`` tells which after construction).
        max_message_bytes: the largest request accepted (RESOURCE_EXHAUSTED above it).
        workers: calls served at once.

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, agent: Serving, host: str = "127.0.0.1", port: int = 0, *,
                 max_message_bytes: int = 64 * 1024 * 1024, workers: int = 4) -> None:
        m, service = messages(), _Service(agent)
        calls = {"ServerLive": service.server_live, "ServerReady": service.server_ready,
                 "ServerMetadata": service.server_metadata, "ModelReady": service.model_ready,
                 "ModelMetadata": service.model_metadata, "ModelInfer": service.model_infer}
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=m[f"{method}Request"].FromString,
                response_serializer=m[f"{method}Response"].SerializeToString)
            for method, fn in calls.items()}
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="v2-grpc"),
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0)])  # a second agent must not share the port
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot serve gRPC on {address}: {exc}") from exc
        if not self.port:
            raise OSError(f"cannot serve gRPC on {address}")
        self.host = host

    @property
    def target(self) -> str:
        """``host:port``, as gRPC clients take it."""
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=1.0).wait(5.0)
