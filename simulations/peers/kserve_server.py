"""Bench peer: one ONNX file served by KServe's Python model server (Open Inference Protocol v2).

A benchmark peer only, never imported by edgefleet: a standalone script in its own venv::

    python3 -m venv .venv-kserve
    .venv-kserve/bin/pip install kserve==0.21.0 onnxruntime numpy
    .venv-kserve/bin/python simulations/peers/kserve_server.py M.onnx --name M --http-port 8080

It serves M.onnx as model M through an onnxruntime CPU session with one intra-op and one
inter-op thread (as the agent runs), v2 REST only (gRPC off) on 127.0.0.1, one process;
``GET /v2/models/M/ready`` answers 200 once it serves, SIGTERM/SIGINT stop it. Every input is
fed by name; all outputs come back, or only those the request lists. kserve's own rules for
the body: a JSON request needs ``Content-Type: application/json``, a binary one
``Inference-Header-Content-Length``; an output comes back binary when the request asks
(``"binary_data": true`` on it, or ``"binary_data_output": true`` on the request).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import onnxruntime as ort

# kserve parses sys.argv on import; these flags (hyphens) match none of its (underscores).
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.errors import InvalidInput
from kserve.utils.numpy_codec import from_np_dtype
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

_V2 = {"float": "FP32", "float16": "FP16", "double": "FP64", "bool": "BOOL", "string": "BYTES"}


def _signature(args: list[ort.NodeArg]) -> list[dict[str, Any]]:
    """v2 metadata (name, datatype, shape with -1 for free axes) of session inputs/outputs."""
    specs = []
    for arg in args:
        kind = arg.type.removeprefix("tensor(").removesuffix(")")
        shape = [d if isinstance(d, int) else -1 for d in arg.shape]
        specs.append({"name": arg.name, "datatype": _V2.get(kind, kind.upper()), "shape": shape})
    return specs


class OnnxModel(Model):
    """A kserve Model that runs one ONNX file with onnxruntime on the CPU, one thread."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = _signature(self._session.get_inputs())
        self._outputs = _signature(self._session.get_outputs())
        self.ready = True

    def get_input_types(self) -> list[dict[str, Any]]:
        return self._inputs

    def get_output_types(self) -> list[dict[str, Any]]:
        return self._outputs

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        """Run the session on the request's inputs; kserve encodes the outputs (JSON or binary).

        Raises:
            InvalidInput: an input is missing or unknown, an output is unknown, or
                onnxruntime rejects a tensor (dtype, shape) — kserve answers 400.
        """
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        expected = {spec["name"] for spec in self._inputs}
        if feeds.keys() != expected:
            raise InvalidInput(f"inputs {sorted(feeds)} differ from the model's {sorted(expected)}")
        all_outputs = [spec["name"] for spec in self._outputs]
        wanted = [out.name for out in payload.request_outputs or []] or all_outputs
        if unknown := set(wanted) - set(all_outputs):
            raise InvalidInput(f"unknown outputs {sorted(unknown)}; the model has {all_outputs}")
        try:
            arrays = self._session.run(wanted, feeds)
        except InvalidArgument as exc:
            raise InvalidInput(f"onnxruntime rejected the inputs: {exc}") from exc
        outputs = [
            InferOutput(name=n, shape=list(a.shape), datatype=from_np_dtype(a.dtype), data=a)
            for n, a in zip(wanted, arrays, strict=True)
        ]
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


class LoopbackModelServer(ModelServer):
    """kserve's ModelServer with its uvicorn bound to 127.0.0.1 instead of 0.0.0.0."""

    def setup_event_loop(self) -> None:
        # Called by start() after the REST server is built and before it binds.
        if self._rest_server is not None:
            self._rest_server.config.host = "127.0.0.1"
        super().setup_event_loop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve one ONNX file with KServe, v2 REST.")
    parser.add_argument("model", type=Path, help="the .onnx file to serve")
    parser.add_argument("--name", required=True, help="model name in the v2 URLs")
    parser.add_argument("--http-port", type=int, required=True, help="v2 REST port on 127.0.0.1")
    args = parser.parse_args()
    server = LoopbackModelServer(
        http_port=args.http_port, workers=1, enable_grpc=False, enable_latency_logging=False
    )
    server.start([OnnxModel(args.name, args.model)])


if __name__ == "__main__":
    main()
