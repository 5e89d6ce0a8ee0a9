"""The Open Inference Protocol (KServe v2) on the wire, as pure functions: request bytes in,
named arrays out, and back.

A request is a JSON object, or, with the binary tensor data extension, a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw bytes of the inputs that
say ``"parameters": {"binary_data_size": n}``, in the order they are listed (row-major,
little-endian; a ``BYTES`` element is a 4-byte little-endian length and its bytes).
Binary inputs become numpy views of the body (no copy). Responses carry every output,
or those the request lists, as JSON ``data`` or, when asked (per output
``binary_data``, or ``binary_data_output`` for all), as raw bytes after the header.

Everything a client can get wrong raises ``InputError`` with what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgefleet.contract import EdgefleetError, InputError, Manifest, ModelError, ModelRef, datatypes

from ._signature import v2_shape

if TYPE_CHECKING:
    from ._loaded import Prediction

__all__ = ["DTYPES", "EXTENSIONS", "Serving", "V2Request", "decode_bytes", "decode_request",
           "encode_response", "error_kind", "metadata_of", "raw_bytes", "select_outputs", "served",
           "v2_datatype"]

EXTENSIONS = ["binary_tensor_data", "edgefleet_agent_status"]
DTYPES = datatypes.NUMPY


def v2_datatype(arr: np.ndarray) -> str:
    """An array's v2 datatype name (``BYTES`` for strings and bytes)."""
    if arr.dtype.kind in "OSU":
        return "BYTES"
    return datatypes.from_numpy(arr.dtype)


@dataclasses.dataclass
class V2Request:
    """A decoded infer request."""

    feeds: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[str] | None = None  # requested, in order (None: all)
    binary: dict[str, bool] = dataclasses.field(default_factory=dict)  # per output
    binary_default: bool = False
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)


def decode_bytes(raw: memoryview | bytes, count: int, where: str) -> np.ndarray:
    """``count`` BYTES elements, each a 4-byte little-endian length and its bytes."""
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise InputError(f"{where}: BYTES data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise InputError(f"{where}: a BYTES element of {n} bytes runs past its data")
        out.append(bytes(raw[pos:pos + n]))
        pos += n
    if pos != len(raw):
        raise InputError(f"{where}: {len(raw) - pos} bytes left after {count} BYTES elements")
    return np.array(out, dtype=object)


def _tensor(i: int, tensor: Any, body: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    where = f"inputs[{i}]"
    if not isinstance(tensor, dict):
        raise InputError(f"{where} must be an object")
    name, shape, dtype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(name, str) or not isinstance(shape, list) or \
            (dtype not in DTYPES and dtype != "BYTES"):
        raise InputError(f"{where} needs name, shape (list) and a datatype in "
                         f"{sorted([*DTYPES, 'BYTES'])}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InputError(f"{where} ({name}): shape must be non-negative integers")
    where = f"input {name!r}"
    count = math.prod(shape)
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError(f"{where}: binary_data_size must be a non-negative integer")
        if offset + size > len(body):
            raise InputError(f"{where}: its {size} bytes of binary data run past the body "
                             f"({len(body) - offset} left)")
        raw = body[offset:offset + size]
        if dtype == "BYTES":
            return name, decode_bytes(raw, count, where).reshape(shape), offset + size
        need = count * DTYPES[dtype].itemsize
        if size != need:
            raise InputError(f"{where}: {size} bytes of binary data, but shape {shape} of "
                             f"{dtype} needs {need}")
        return name, np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape), offset + size
    if "data" not in tensor:
        raise InputError(f"{where} has neither data nor parameters.binary_data_size")
    try:
        if dtype == "BYTES":
            items = np.asarray(tensor["data"], dtype=object).ravel()
            arr = np.array([s.encode() if isinstance(s, str) else bytes(s) for s in items],
                           dtype=object)
        else:
            arr = np.asarray(tensor["data"], dtype=DTYPES[dtype])
        return name, arr.reshape(shape), offset
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"{where}: data does not fit shape {shape} as {dtype}: {exc}") from exc


def decode_request(body: bytes | bytearray | memoryview,
                   header_length: int | None = None) -> V2Request:
    """Decode an infer request (JSON, or JSON header + binary tensors).

    Args:
        body: the whole request body.
        header_length: ``Inference-Header-Content-Length`` (None: all of it is JSON).

    Raises:
        InputError: malformed JSON, a header length past the body, binary data that does
            not match its shape, bytes left over, unknown or malformed fields.
    """
    view = memoryview(body)
    n = len(view) if header_length is None else header_length
    if not 0 <= n <= len(view):
        raise InputError(f"Inference-Header-Content-Length {header_length} is not within the "
                         f"body's {len(view)} bytes")
    try:
        head = json.loads(bytes(view[:n]))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting too
        hint = ("; binary tensors need the Inference-Header-Content-Length header"
                if header_length is None else "")
        raise InputError(f"the request header is not JSON: {exc}{hint}") from exc
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list) or \
            not head["inputs"]:
        raise InputError('body must be {"inputs": [{"name", "shape", "datatype", "data"}]}')
    feeds: dict[str, np.ndarray] = {}
    offset = n
    for i, tensor in enumerate(head["inputs"]):
        name, arr, offset = _tensor(i, tensor, view, offset)
        if name in feeds:
            raise InputError(f"input {name!r} is given twice")
        feeds[name] = arr
    if offset != len(view):
        raise InputError(f"{len(view) - offset} bytes follow the last input's binary data")
    req = V2Request(feeds, id=str(head["id"]) if head.get("id") is not None else None)
    params = head.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError("parameters must be an object")
    req.parameters = params
    req.binary_default = bool(params.get("binary_data_output", False))
    wanted = head.get("outputs")
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and
                                                   isinstance(o.get("name"), str)
                                                   for o in wanted):
            raise InputError('outputs must be [{"name": ..., "parameters": {...}}]')
        req.outputs = [o["name"] for o in wanted]
        for o in wanted:
            p = o.get("parameters") or {}
            if isinstance(p, dict) and "binary_data" in p:
                req.binary[o["name"]] = bool(p["binary_data"])
    return req


def raw_bytes(arr: np.ndarray) -> bytes | memoryview:
    """An array's bytes on the wire (row-major; BYTES elements length-prefixed)."""
    if arr.dtype.kind in "OSU":
        parts = []
        for item in arr.ravel():
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    if arr.size == 0:  # a detector with nothing to report: [0, 6] boxes, no bytes
        return b""
    return np.ascontiguousarray(arr).data.cast("B")


def select_outputs(model: str, wanted: list[str] | None,
                   outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs a request asks for, in its order (all when it names none).

    Raises:
        InputError: the request named an output the model does not have.
    """
    if wanted is None:
        return outputs
    missing = [n for n in wanted if n not in outputs]
    if missing:
        raise InputError(f"requested outputs {missing} are not outputs of {model} "
                         f"({sorted(outputs)})")
    return {n: outputs[n] for n in wanted}


def error_kind(exc: EdgefleetError) -> str:
    """What a failed call was, for a transport's status: ``invalid`` (the request's
    fault: 400, INVALID_ARGUMENT), ``not_found``, ``unavailable`` (no model yet) or
    ``internal``."""
    if isinstance(exc, InputError):
        return "invalid"
    return {"unknown_model": "not_found", "no_model": "unavailable",
            "inference_failed": "invalid"}.get(exc.reason, "internal")


class Serving(Protocol):
    """What the v2 endpoints (REST and gRPC) ask of the agent behind them."""

    @property
    def active(self) -> ModelRef | None:
        """The model served, if any."""

    def predict(self, feeds: dict[str, np.ndarray], *,
                model: str | None = None) -> Prediction:
        """Run the served model (raises ``InputError``, ``ModelError``)."""

    def model_metadata(self, name: str) -> dict[str, Any] | None:
        """The v2 metadata of ``name`` while it is served (``None``: it is not)."""

    def status(self) -> dict[str, Any]:
        """The agent's own status (the ``edgefleet_agent_status`` extension)."""


def metadata_of(m: Manifest) -> dict[str, Any]:
    """A model's v2 metadata: name, versions, platform and its tensors (``-1`` for
    dynamic dimensions)."""
    return {"name": m.name, "versions": [str(m.version)], "platform": m.runtime,
            "inputs": [{**i.to_dict(), "shape": v2_shape(i.shape)} for i in m.inputs],
            "outputs": [{**o.to_dict(), "shape": v2_shape(o.shape)} for o in m.outputs]}


def served(agent: Serving, model: str, version: str | int | None) -> ModelRef:
    """The ``ModelRef`` ``agent`` serves if it is ``model`` (at ``version``, when given);
    cheap enough for every call (metadata is built only where it is asked for).

    Raises:
        ModelError: ``no_model`` while nothing is installed, ``unknown_model`` for another
            model or version.
    """
    ref = agent.active
    if ref is None:
        raise ModelError("no model is installed yet", reason="no_model")
    if ref.name != model:
        raise ModelError(f"model {model!r} is not served here", reason="unknown_model")
    if version not in (None, "") and str(version) != str(ref.version):
        raise ModelError(f"{model} version {version} is not served here "
                         f"(serving {ref.version})", reason="unknown_model")
    return ref


def encode_response(model: str, version: int, req: V2Request,
                    outputs: dict[str, np.ndarray]) -> tuple[bytes, list[bytes | memoryview]]:
    """The response: ``(JSON header, binary parts)``; no parts means plain JSON.

    Raises:
        InputError: the request named an output the model does not have.
    """
    entries, parts = [], []
    for name, arr in select_outputs(model, req.outputs, outputs).items():
        entry: dict[str, Any] = {"name": name, "datatype": v2_datatype(arr),
                                 "shape": list(arr.shape)}
        if req.binary.get(name, req.binary_default):
            raw = raw_bytes(arr)
            entry["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        elif arr.dtype.kind in "OSU":
            entry["data"] = [x.decode(errors="replace") if isinstance(x, bytes) else str(x)
                             for x in arr.ravel()]
        else:
            entry["data"] = arr.ravel().tolist()
        entries.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": str(version),
                            "outputs": entries}
    if req.id is not None:
        head["id"] = req.id
    return json.dumps(head).encode(), parts
