"""The agent's v2 REST endpoint vs raw onnxruntime ``session.run`` on the same input.

Rows: the digits input (1×64 float32) as JSON and as binary tensors, and a 1×3×640×640
float32 image (the zoo's text detector, dynamic H/W) as binary and as JSON. Figure: p50
of one request over a kept-alive HTTP/1.1 connection to a running agent (the whole path:
decode, checks, predict with telemetry, encode); baseline: p50 of ``session.run`` on an
onnxruntime session of the same file and input, in blocks alternating with the requests.
Targets: small input ≤ raw + 0.5 ms; the image as binary ≤ raw + 10 ms; the image as
JSON has none (it is what binary tensors are for: ~20 MB of text).
"""

from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import make_result
from ._digits import MODEL, eval_inputs, manifest

__all__ = ["SIZES", "run"]

SIZES = {"tiny": (60, 3), "small": (600, 10), "medium": (2_000, 20), "large": (5_000, 40),
         "full": (3_000, 30)}  # (digits calls, image calls) per side
_BLOCKS = 3


def _agent(root: Path, model: Path, m: Any, **config: Any) -> Any:
    """A running, offline agent serving ``model`` (installed from manifest ``m``)."""
    from edgefleet.agent import Agent, AgentConfig
    from edgefleet.controller import init_keys

    agent = Agent(AgentConfig(device_id="bench", state_dir=root / "state",
                              trust_root=init_keys(root / "keys"),
                              broker_url="mqtt://127.0.0.1:1", api_port=0,
                              trust_check_interval_s=0, **config))
    agent.store.activate(agent.store.install(m, m.encode(), model).ref)
    agent.start()
    return agent


def _bodies(name: str, x: np.ndarray, out: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    tensor = {"name": name, "shape": list(x.shape), "datatype": "FP32"}
    as_json = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}],
                          "outputs": [{"name": out}]}).encode()
    head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": out, "parameters": {"binary_data": True}}]}).encode()
    return {"json": (as_json, {"Content-Type": "application/json"}),
            "binary": (head + x.tobytes(),
                       {"Inference-Header-Content-Length": str(len(head))})}


def alternate(call: Any, raw: Any, feeds: dict[str, np.ndarray],
              n: int) -> tuple[list[float], list[float]]:
    """Seconds of ``call()`` and of ``raw.run_unchecked(feeds)``, each ``n`` times in
    ``_BLOCKS`` blocks alternating between the two, after two warm-up rounds."""
    clock = time.perf_counter
    timed: list[float] = []
    base: list[float] = []
    for _ in range(2):
        call()
        raw.run_unchecked(feeds)
    for _ in range(_BLOCKS):
        for fn, out in ((call, timed), (lambda: raw.run_unchecked(feeds), base)):
            for _ in range(max(1, n // _BLOCKS)):
                t = clock()
                fn()
                out.append(clock() - t)
    return timed, base


def _time(agent: Any, path: str, body: bytes, headers: dict[str, str], raw: Any,
          feeds: dict[str, np.ndarray], n: int) -> tuple[list[float], list[float]]:
    host, port = agent.server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def post() -> None:
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status}")
    try:
        return alternate(post, raw, feeds, n)
    finally:
        conn.close()


def detector_manifest(path: Path) -> Any:
    """The manifest of the zoo's text detector (dynamic batch, height and width)."""
    from edgefleet.contract import Manifest, TensorSpec, sha256_file

    digest, length = sha256_file(str(path))
    return Manifest(name="text-detector", version=1, runtime="onnxruntime",
                    model_file="model.onnx", model_sha256=digest, model_length=length,
                    inputs=[TensorSpec("x", "FP32", ["batch", 3, "height", "width"])],
                    outputs=[TensorSpec("maps", "FP32", ["batch", 1, "height", "width"])])


def _row(name: str, rest: list[float], base: list[float], budget_ms: float | None, *,
         prefix: str = "v2_rest", **detail: Any) -> dict[str, Any]:
    # microsecond resolution, and the ratio of the figures as reported
    p50, raw = round(statistics.median(rest) * 1e3, 4), round(statistics.median(base) * 1e3, 4)
    limit = raw + budget_ms if budget_ms is not None else None
    return make_result(
        f"{prefix}.{name}", figure=p50, unit="ms", baseline=raw, ratio=round(p50 / raw, 3),
        target=f"<= raw + {budget_ms:g} ms" if budget_ms is not None else "none",
        passed=p50 <= limit if limit is not None else None,
        target_value=round(limit, 3) if limit is not None else None, target_op="<=",
        why=f"{p50 - raw:.3f} ms over session.run: the transport, decoding, checks, "
            "telemetry",
        overhead_ms=round(p50 - raw, 3), calls=len(rest), **detail)


def run(size: str = "full") -> list[dict[str, Any]]:
    """Raises: ValueError for an unknown size."""
    from edgefleet.agent.runtime import OnnxRuntime
    from edgefleet.simulations.zoo import build_zoo

    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    small_n, image_n = SIZES[size]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-v2-") as tmp:
        root = Path(tmp)
        x = eval_inputs()[:1]
        agent = _agent(root / "digits", MODEL, manifest())
        try:
            raw = OnnxRuntime(MODEL, intra_op_threads=1)
            for kind, (body, headers) in _bodies("pixels", x, "probs").items():
                rest, base = _time(agent, "/v2/models/digits/infer", body, headers, raw,
                                   {"pixels": x}, small_n)
                rows.append(_row(f"digits-{kind}", rest, base, 0.5, body_bytes=len(body)))
        finally:
            agent.stop()
        det = build_zoo(root / "zoo", ["text-detector"])["text-detector"]
        image = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
        agent = _agent(root / "image", det.file, detector_manifest(det.file))
        try:
            raw = OnnxRuntime(det.file, intra_op_threads=1)
            for kind, (body, headers) in _bodies("x", image, "maps").items():
                rest, base = _time(agent, "/v2/models/text-detector/infer", body, headers,
                                   raw, {"x": image}, image_n)
                rows.append(_row(f"image640-{kind}", rest, base,
                                 10.0 if kind == "binary" else None, body_bytes=len(body)))
        finally:
            agent.stop()
    return rows
