"""The agent's v2 REST endpoint against KServe's Python model server, same file, same run.

Peer: ``kserve`` (its ``ModelServer`` with a ``Model`` that runs the ONNX file through
an onnxruntime session, one intra-op thread, as the agent does; the script is
``simulations/peers/kserve_server.py``) in its own process. edgefleet: ``edgefleet agent
run`` in its own process with the same file installed, offline, telemetry on. Both are
asked the same requests over kept-alive HTTP/1.1 connections from this process, in
blocks alternating between the two.

Rows (figure: edgefleet; baseline: KServe; target: ratio ≤ 1, at least as fast and no
bigger): p50 of the digits input as JSON and as binary tensors, p50 of a 1×3×640×640
float32 image as binary tensors (the zoo's text detector), and each server's RSS after
the digits requests.

KServe needs its own environment (it pins psutil and brings kubernetes, pandas and
grpcio-tools): ``pip install 'edgefleet[bench-peers]'`` in this one, or point
``EDGEFLEET_KSERVE_PYTHON`` at another environment's ``python`` that has ``kserve``,
``onnxruntime`` and ``numpy``. Without either the rows say skipped.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import make_result
from ._digits import MODEL, eval_inputs
from .agent_footprint import _install, _rss, _stop
from .v2_rest import _bodies, detector_manifest

__all__ = ["SIZES", "run"]

SIZES = {"tiny": (60, 2), "small": (600, 6), "medium": (2_000, 10), "large": (5_000, 20),
         "full": (3_000, 12)}  # (digits requests, image requests) per server
_BLOCKS = 3
_READY_S = 120.0
_SCRIPT = Path(__file__).resolve().parents[1] / "peers" / "kserve_server.py"
_ROWS = ("digits-json", "digits-binary", "image640-binary", "rss")


def _peer_python() -> str | None:
    configured = os.environ.get("EDGEFLEET_KSERVE_PYTHON")
    if configured:
        return configured
    return sys.executable if importlib.util.find_spec("kserve") is not None else None


class _Server:
    """A server process and a kept-alive connection to it."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, ready: str) -> None:
        self.name, self.port = name, port
        with log.open("wb") as out:  # a file, not a pipe: a chatty server never blocks
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out)
        deadline = time.monotonic() + _READY_S
        while not self._ready(ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _stop(self.proc)
                tail = log.read_text(errors="replace")[-600:]
                raise RuntimeError(f"{name} did not get ready: {tail}")
            time.sleep(0.05)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def _ready(self, path: str) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", path)
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        self.conn.request("POST", path, body, headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{self.name} {path}: {resp.status} {data[:300]!r}")

    def close(self) -> None:
        self.conn.close()
        _stop(self.proc)


def _poster(server: _Server, path: str, body: bytes,
            headers: dict[str, str]) -> Callable[[], None]:
    return lambda: server.post(path, body, headers)


def _alternate(a: Callable[[], None], b: Callable[[], None],
               n: int) -> tuple[list[float], list[float]]:
    clock = time.perf_counter
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(2):
        a()
        b()
    for _ in range(_BLOCKS):
        for fn, out in ((a, ta), (b, tb)):
            for _ in range(max(1, n // _BLOCKS)):
                t = clock()
                fn()
                out.append(clock() - t)
    return ta, tb


def _row(name: str, ours: float, theirs: float, unit: str, **detail: Any) -> dict[str, Any]:
    ratio = round(ours / theirs, 3)
    return make_result(
        f"kserve_peer.{name}", figure=round(ours, 4), unit=unit, baseline=round(theirs, 4),
        ratio=ratio, target="<= 1.0x KServe", passed=ratio <= 1.0, target_value=1.0,
        target_of="ratio", target_op="<=",
        why=f"edgefleet {ours:.4g} {unit} against KServe's {theirs:.4g} {unit}", **detail)


def _pair(root: Path, model: Path, m: Any, peer: str) -> tuple[_Server, _Server]:
    """The agent and KServe serving ``model`` (its name from manifest ``m``)."""
    import tomllib

    from edgefleet.simulations.brokers import free_port

    config = _install(root, model, m)
    port = int(tomllib.loads(config.read_text())["api_port"])
    agent = _Server("edgefleet", [sys.executable, "-m", "edgefleet.cli", "agent", "run",
                                  "--config", str(config)], port, root / "agent.log",
                    f"/v2/models/{m.name}/ready")
    try:
        kport = free_port()
        kserve = _Server("kserve", [peer, str(_SCRIPT), str(model), "--name", m.name,
                                    "--http-port", str(kport)], kport, root / "kserve.log",
                         f"/v2/models/{m.name}/ready")
    except BaseException:
        agent.close()
        raise
    return agent, kserve


def run(size: str = "full") -> list[dict[str, Any]]:
    """Raises: ValueError for an unknown size; RuntimeError if a server fails."""
    from edgefleet.simulations.bench._digits import manifest

    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    peer = _peer_python()
    if peer is None or not _SCRIPT.is_file():
        why = ("kserve is not installed here (pip install 'edgefleet[bench-peers]', or set "
               "EDGEFLEET_KSERVE_PYTHON)" if peer is None else
               "simulations/peers is not in this installation (run from a source checkout)")
        return [{"benchmark": f"kserve_peer.{r}", "skipped": why} for r in _ROWS]
    small_n, image_n = SIZES[size]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-kserve-") as tmp:
        root = Path(tmp)
        x = eval_inputs()[:1]
        agent, kserve = _pair(root / "digits", MODEL, manifest(), peer)
        try:
            path = "/v2/models/digits/infer"
            for kind, (body, headers) in _bodies("pixels", x, "probs").items():
                ours, theirs = _alternate(_poster(agent, path, body, headers),
                                          _poster(kserve, path, body, headers), small_n)
                rows.append(_row(f"digits-{kind}", statistics.median(ours) * 1e3,
                                 statistics.median(theirs) * 1e3, "ms", calls=len(ours),
                                 body_bytes=len(body)))
            rss = {s.name: _rss(s.proc.pid) / 2**20 for s in (agent, kserve)}
            rows.append(_row("rss", rss["edgefleet"], rss["kserve"], "MiB",
                             measured=f"RSS after {2 * (small_n // _BLOCKS * _BLOCKS + 2)} "
                                      "digits requests"))
        finally:
            agent.close()
            kserve.close()
        from edgefleet.simulations.zoo import build_zoo

        det = build_zoo(root / "zoo", ["text-detector"])["text-detector"]
        image = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
        agent, kserve = _pair(root / "image", det.file, detector_manifest(det.file), peer)
        try:
            path = "/v2/models/text-detector/infer"
            body, headers = _bodies("x", image, "maps")["binary"]
            ours, theirs = _alternate(_poster(agent, path, body, headers),
                                      _poster(kserve, path, body, headers), image_n)
            rows.append(_row("image640-binary", statistics.median(ours) * 1e3,
                             statistics.median(theirs) * 1e3, "ms", calls=len(ours),
                             body_bytes=len(body)))
        finally:
            agent.close()
            kserve.close()
    return rows
