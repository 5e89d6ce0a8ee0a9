"""The agent's v2 gRPC service vs raw onnxruntime ``session.run`` on the same input.

Rows: the digits input (1×64 float32) and a 1×3×640×640 float32 image (the zoo's text
detector), each sent as ``raw_input_contents`` (what Triton's and KServe's clients send)
and answered as ``raw_output_contents``. Figure: p50 of one ``ModelInfer`` call on a
kept-open channel to a running agent (the whole path: protobuf decode, checks, predict
with telemetry, encode); baseline: p50 of ``session.run`` on an onnxruntime session of
the same file and input, in blocks alternating with the calls.

Targets: the REST budgets (small input 0.5 ms, the image 10 ms) over raw plus what
grpcio itself takes to carry the same bytes, measured in the same run: a bare grpcio
server in the bench's process, set up as the agent's, answering a ready reply of the
answer's size to a request of the request's size, with no parsing and no work. With
Python's grpcio on both ends that floor is 0.4-0.6 ms for an empty call and ~4-5 ms for
the image's 4.9 MB up and 1.6 MB down: the whole small-input budget and half the image's; what is
the agent's to cut is the rest, and the row says how much that is. Needs the ``grpc``
extra; without it the rows say skipped.
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

_CHANNEL = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
SIZES = {"tiny": (60, 3), "small": (600, 10), "medium": (2_000, 20), "large": (5_000, 40),
         "full": (3_000, 30)}  # (digits calls, image calls) per side


def _time(agent: Any, model: str, name: str, x: np.ndarray, raw: Any,
          n: int) -> tuple[list[float], list[float], int, int]:
    """The call's and ``session.run``'s seconds, alternating; and the request's and the
    answer's sizes in bytes."""
    import grpc

    from edgefleet.agent._v2_messages import SERVICE, messages

    m = messages()
    request = m["ModelInferRequest"](model_name=model)
    request.inputs.add(name=name, datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    body = request.SerializeToString()
    answer = [0]
    with grpc.insecure_channel(agent.grpc.target, options=_CHANNEL) as channel:
        call = channel.unary_unary(f"/{SERVICE}/ModelInfer",
                                   request_serializer=lambda b: b,
                                   response_deserializer=m["ModelInferResponse"].FromString)

        def infer() -> None:
            response = call(body, timeout=60)
            if len(response.raw_output_contents) != len(response.outputs):
                raise RuntimeError(f"{model}: an answer without its raw outputs")
            answer[0] = response.ByteSize()
        timed, base = alternate(infer, raw, {name: x}, n)
    return timed, base, len(body), answer[0]


def _floor(request_bytes: int, answer_bytes: int, n: int) -> float:
    """p50 seconds of grpcio alone carrying the same bytes: a bare server in this process,
    set up as the agent's (thread pool, message limits), whose handler takes the request
    unparsed and returns a ready answer of the same size; the client as in ``_time``
    (Python's grpcio on both ends, kept-open channel). What gRPC costs before any work."""
    from concurrent import futures

    import grpc

    body, answer = b"\x00" * request_bytes, b"\x00" * answer_bytes
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=_CHANNEL)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor.Floor", {
        "Call": grpc.unary_unary_rpc_method_handler(lambda request, context: answer)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=_CHANNEL) as channel:
            call = channel.unary_unary("/floor.Floor/Call")
            for _ in range(max(2, n // 20)):
                call(body, timeout=60)
            times = []
            for _ in range(n):
                t = time.perf_counter()
                call(body, timeout=60)
                times.append(time.perf_counter() - t)
    finally:
        server.stop(grace=None)
    return statistics.median(times)


def _grpc_row(name: str, timed: list[float], base: list[float], sizes: tuple[int, int],
              budget_ms: float, n: int) -> dict[str, Any]:
    """A row whose target is raw + what grpcio alone takes for these bytes + the budget."""
    floor_ms = _floor(*sizes, n) * 1e3
    row = _row(name, timed, base, budget_ms, prefix="v2_grpc", request_bytes=sizes[0],
               answer_bytes=sizes[1], grpcio_floor_ms=round(floor_ms, 3))
    limit = row["baseline"] + floor_ms + budget_ms
    own = row["figure"] - row["baseline"] - floor_ms
    row.update(target=f"<= raw + grpcio + {budget_ms:g} ms", target_value=round(limit, 3),
               passed=row["figure"] <= limit,
               why=f"{row['overhead_ms']:.3f} ms over session.run, of which {floor_ms:.3f} ms "
                   f"is grpcio itself carrying the same {sizes[0]:,} B request and "
                   f"{sizes[1]:,} B answer with no work (Python on both ends); the rest, "
                   f"{own:.3f} ms, is the protobuf messages built and parsed around the "
                   f"tensors, the checks and predict with telemetry")
    return row


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
            timed, base, *sizes = _time(agent, "digits", "pixels", x, OnnxRuntime(MODEL),
                                        small_n)
            rows.append(_grpc_row("digits", timed, base, (sizes[0], sizes[1]), 0.5, small_n))
        finally:
            agent.stop()
        det = build_zoo(root / "zoo", ["text-detector"])["text-detector"]
        image = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
        agent = _agent(root / "image", det.file, detector_manifest(det.file), grpc_port=0)
        try:
            timed, base, *sizes = _time(agent, "text-detector", "x", image,
                                        OnnxRuntime(det.file), image_n)
            rows.append(_grpc_row("image640", timed, base, (sizes[0], sizes[1]), 10.0,
                                  image_n))
        finally:
            agent.stop()
    return rows
