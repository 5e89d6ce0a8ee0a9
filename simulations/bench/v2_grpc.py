"""The agent's v2 gRPC service vs raw onnxruntime ``session.run`` on the same input.

Rows: the digits input (1×64 float32) and a 1×3×640×640 float32 image (the zoo's text
detector), each sent as ``raw_input_contents`` (what Triton's and KServe's clients send)
and answered as ``raw_output_contents``. Figure: p50 of one ``ModelInfer`` call on a
kept-open channel to a running agent (the whole path: protobuf decode, checks, predict
with telemetry, encode); baseline: p50 of ``session.run`` on an onnxruntime session of
the same file and input, in blocks alternating with the calls. Targets as for REST:
small input ≤ raw + 0.5 ms, the image ≤ raw + 10 ms. The digits row also reports the
p50 of an empty call (``ServerLive``), what the transport costs before any tensor. Needs
the ``grpc`` extra; without it the rows say skipped.
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._digits import MODEL, eval_inputs, manifest
from .v2_rest import _agent, _row, alternate, detector_manifest

__all__ = ["SIZES", "run"]

SIZES = {"tiny": (60, 3), "small": (600, 10), "medium": (2_000, 20), "large": (5_000, 40),
         "full": (3_000, 30)}  # (digits calls, image calls) per side


def _time(agent: Any, model: str, name: str, x: np.ndarray, raw: Any,
          n: int) -> tuple[list[float], list[float]]:
    import grpc

    from edgefleet.agent._v2_messages import SERVICE, messages

    m = messages()
    request = m["ModelInferRequest"](model_name=model)
    request.inputs.add(name=name, datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    body = request.SerializeToString()
    with grpc.insecure_channel(agent.grpc.target, options=[
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1)]) as channel:
        call = channel.unary_unary(f"/{SERVICE}/ModelInfer",
                                   request_serializer=lambda b: b,
                                   response_deserializer=m["ModelInferResponse"].FromString)

        def infer() -> None:
            response = call(body, timeout=60)
            if len(response.raw_output_contents) != len(response.outputs):
                raise RuntimeError(f"{model}: an answer without its raw outputs")
        return alternate(infer, raw, {name: x}, n)


def _floor(agent: Any, n: int) -> float:
    """p50 seconds of an empty call (ServerLive) on a kept-open channel: what gRPC itself
    costs in Python on both ends, before any tensor."""
    import grpc

    from edgefleet.agent._v2_messages import SERVICE, messages

    m = messages()
    with grpc.insecure_channel(agent.grpc.target) as channel:
        call = channel.unary_unary(f"/{SERVICE}/ServerLive",
                                   request_serializer=m["ServerLiveRequest"].SerializeToString,
                                   response_deserializer=m["ServerLiveResponse"].FromString)
        request = m["ServerLiveRequest"]()
        for _ in range(20):
            call(request, timeout=60)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            call(request, timeout=60)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(size: str = "full") -> list[dict[str, Any]]:
    """Raises: ValueError for an unknown size."""
    from edgefleet.agent.runtime import OnnxRuntime
    from edgefleet.simulations.zoo import build_zoo

    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    if importlib.util.find_spec("grpc") is None:
        return [{"benchmark": f"v2_grpc.{n}", "skipped": "the grpc extra is not installed"}
                for n in ("digits", "image640")]
    small_n, image_n = SIZES[size]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-grpc-") as tmp:
        root = Path(tmp)
        x = eval_inputs()[:1]
        agent = _agent(root / "digits", MODEL, manifest(), grpc_port=0)
        try:
            rest, base = _time(agent, "digits", "pixels", x, OnnxRuntime(MODEL), small_n)
            floor_ms = _floor(agent, small_n) * 1e3
            rows.append(_row("digits", rest, base, 0.5, prefix="v2_grpc",
                             message_bytes=x.nbytes, empty_call_ms=round(floor_ms, 3)))
            rows[-1]["why"] += (f"; an empty call (ServerLive) alone takes {floor_ms:.3f} ms "
                                "with Python's grpcio on both ends")
        finally:
            agent.stop()
        det = build_zoo(root / "zoo", ["text-detector"])["text-detector"]
        image = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
        agent = _agent(root / "image", det.file, detector_manifest(det.file), grpc_port=0)
        try:
            rest, base = _time(agent, "text-detector", "x", image, OnnxRuntime(det.file),
                               image_n)
            rows.append(_row("image640", rest, base, 10.0, prefix="v2_grpc",
                             message_bytes=image.nbytes))
        finally:
            agent.stop()
    return rows
