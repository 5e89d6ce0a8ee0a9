"""Agent cold start and memory vs a bare onnxruntime process, both real processes.

Agent: ``edgefleet agent run --config agent.toml`` started as a device starts it (a
new interpreter, ``python -m edgefleet.cli``), with the digits model (bundle with its
reference profile) already installed and activated in its ``state_dir``, and no broker
(``broker_url`` points at a closed port: it serves offline and keeps retrying in the
background, as after a reboot without network). Cold start is the time from spawning
the process until its first ``POST /v2/models/digits/infer`` answers 200 with outputs
(the parent polls every 5 ms, so the figure includes one localhost HTTP round trip).
RSS (psutil) is read after ``predictions`` more inferences over that endpoint, with
telemetry on (records, windows, drift).

Baseline, measured the same way in the same run: a bare ``python`` process that imports
numpy and onnxruntime, opens one session of the same file (one intra-op thread, as
the agent does) and runs it on the same input; its cold start is spawn → first
``session.run`` returned (reported on its stdout), its RSS is read after the same
number of ``session.run`` calls. It is the floor for any process that serves this
model with onnxruntime from Python. Runs alternate (baseline, agent) ``rounds`` times;
the figures are medians.

Targets: cold start ≤ 2 s; RSS ≤ 90 MiB. A note breaks the cold start down: the imports
alone (``python -c "import edgefleet.cli, edgefleet.agent"``, spawn to exit) against
numpy and onnxruntime alone. The RSS row says where the memory goes: one interpreter
imports what the agent imports, group by group, and reports the RSS each group adds
(numpy and onnxruntime; paho-mqtt with ssl; python-tuf with cryptography; the agent's
own modules and the standard library they use); the rest is the running agent.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from . import make_result
from ._digits import MODEL, eval_inputs, manifest

__all__ = ["SIZES", "run"]

SIZES = {"tiny": (1, 50), "small": (2, 500), "medium": (3, 2_000), "large": (5, 5_000),
         "full": (5, 2_000)}  # (rounds, predictions after the first)
POLL_S = 0.005
COLD_START_S = 2.0  # until the first answer on the v2 endpoint
RSS_MIB = 90.0  # with the digits model, after inferences
DEADLINE_S = 120.0

# the baseline process: the least a Python process serving this model must do
_BARE = """\
import sys, time
import numpy as np
import onnxruntime as ort
so = ort.SessionOptions()
so.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = np.array(%s, dtype=np.float32).reshape(1, -1)
s.run(None, {s.get_inputs()[0].name: x})
print("ready", flush=True)
for _ in range(int(sys.argv[2])):
    s.run(None, {s.get_inputs()[0].name: x})
print("done", flush=True)
sys.stdin.read()
"""


def _rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _bare(x: list[float], predictions: int) -> tuple[float, int]:
    """Spawn the baseline; ``(seconds to its first result, RSS after predictions)``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _BARE % json.dumps(x), str(MODEL),
                             str(predictions)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the bare onnxruntime process failed (exit {proc.wait(10)})")
        cold = time.perf_counter() - start
        if proc.stdout.readline().strip() != b"done":
            raise RuntimeError("the bare onnxruntime process stopped before its predictions")
        return cold, _rss(proc.pid)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        _stop(proc)


# what the agent process imports, in the order it needs them
_GROUPS = {"numpy and onnxruntime": "numpy, onnxruntime",
           "paho-mqtt with ssl": "ssl, paho.mqtt.client",
           "python-tuf with cryptography": "tuf.ngclient",
           "the agent's modules and their stdlib": "edgefleet.cli._agent_run, "
                                                   "edgefleet.agent.agent"}


def _import_rss() -> tuple[float, dict[str, float]]:
    """MiB of a bare interpreter, and what each group of the agent's imports adds to it."""
    code = ("import sys, psutil\nrss = lambda: psutil.Process().memory_info().rss\n"
            "print(rss())\n" + "".join(f"import {mods}\nprint(rss())\n"
                                        for mods in _GROUPS.values()))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.split()
    mib = [int(v) / 2**20 for v in out]
    return mib[0], {k: mib[i + 1] - mib[i] for i, k in enumerate(_GROUPS)}


def _import_s(code: str) -> float:
    """Seconds from spawn to exit of ``python -c code``: what the imports cost."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def _install(root: Path, model: Path = MODEL, m: Any = None) -> Path:
    """A device's state: trust root, a bundle (digits unless given) installed and active;
    its config (offline, v2 REST on a free port)."""
    from edgefleet.agent.models import ModelStore
    from edgefleet.controller import init_keys
    from edgefleet.simulations.brokers import free_port

    trust_root = init_keys(root / "keys")
    store = ModelStore(root / "state")
    m = m or manifest()
    store.activate(store.install(m, m.encode(), model).ref)
    config = root / "agent.toml"
    config.write_text(
        f'device_id = "bench-cold"\nstate_dir = {json.dumps(str(root / "state"))}\n'
        f'trust_root = {json.dumps(str(trust_root))}\nbroker_url = "mqtt://127.0.0.1:1"\n'
        f"api_port = {free_port()}\ntrust_check_interval_s = 0\n")
    return config


def _infer(port: int, body: bytes) -> bool:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/digits/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status == 200 and bool(json.loads(resp.read())["outputs"])
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _agent(config: Path, body: bytes, predictions: int) -> tuple[float, int]:
    """Spawn ``edgefleet agent run``; ``(seconds to its first answer, RSS after predictions)``."""
    import tomllib

    port = int(tomllib.loads(config.read_text())["api_port"])
    log = config.with_name("agent.log")
    start = time.perf_counter()
    with log.open("wb") as out:  # a file, not a pipe: a chatty agent never blocks on it
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "agent", "run",
                                 "--config", str(config)], stdout=out, stderr=out)
    try:
        while not _infer(port, body):
            if proc.poll() is not None:
                err = log.read_text(errors="replace")[-500:]
                raise RuntimeError(f"the agent exited ({proc.returncode}) before serving: {err}")
            if time.perf_counter() - start > DEADLINE_S:
                raise RuntimeError(f"the agent did not serve within {DEADLINE_S:.0f} s")
            time.sleep(POLL_S)
        cold = time.perf_counter() - start
        failed = sum(not _infer(port, body) for _ in range(predictions))
        if failed:
            raise RuntimeError(f"{failed} of {predictions} inferences failed")
        return cold, _rss(proc.pid)
    finally:
        _stop(proc)


def run(size: str = "full") -> list[dict[str, Any]]:
    """Two rows: ``agent_cold_start`` and ``agent_rss``.

    Raises:
        ValueError: an unknown size.
        RuntimeError: a process failed to start or to serve.
    """
    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    rounds, predictions = SIZES[size]
    x = [float(v) for v in eval_inputs()[0]]
    body = json.dumps({"inputs": [{"name": "pixels", "shape": [1, len(x)], "datatype": "FP32",
                                   "data": x}]}).encode()
    bare: list[tuple[float, int]] = []
    agent: list[tuple[float, int]] = []
    imports: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-agent-") as tmp:
        root = Path(tmp)
        for i in range(rounds):  # a fresh state each round: nothing carried over
            bare.append(_bare(x, predictions))
            agent.append(_agent(_install(root / f"round-{i}"), body, predictions))
            imports.append((_import_s("import numpy, onnxruntime"),
                            _import_s("import edgefleet.cli, edgefleet.agent")))
    cold = statistics.median(c for c, _ in agent)
    cold_base = statistics.median(c for c, _ in bare)
    rss = statistics.median(r for _, r in agent) / 2**20
    rss_base = statistics.median(r for _, r in bare) / 2**20
    common: dict[str, Any] = {"rounds": rounds, "predictions": predictions,
                              "python": sys.version.split()[0]}
    cold_ratio, rss_ratio = cold / cold_base, rss / rss_base
    python_mib, groups = _import_rss()
    imp_base = statistics.median(b for b, _ in imports)
    imp = statistics.median(a for _, a in imports)
    return [
        make_result(
            "agent_cold_start", figure=round(cold, 3), unit="s", baseline=round(cold_base, 3),
            ratio=round(cold_ratio, 3), target=f"<= {COLD_START_S:g} s",
            passed=cold <= COLD_START_S, target_value=COLD_START_S, target_op="<=",
            notes=[f"{cold - cold_base:.2f} s more than bare onnxruntime; imports measured "
                   f"apart (spawn to exit): edgefleet.cli and the agent {imp:.2f} s, numpy and "
                   f"onnxruntime {imp_base:.2f} s; the agent also sets up its state, checks "
                   "and loads the bundle, opens its telemetry store and starts its server"],
            import_s={"numpy_onnxruntime": round(imp_base, 3), "edgefleet": round(imp, 3)},
            agent_s=[round(c, 3) for c, _ in agent], bare_s=[round(c, 3) for c, _ in bare],
            measured="spawn -> first 200 from POST /v2/models/digits/infer (5 ms polling)",
            baseline_is="bare python: import onnxruntime, one session.run", **common),
        make_result(
            "agent_rss", figure=round(rss, 1), unit="MiB", baseline=round(rss_base, 1),
            ratio=round(rss_ratio, 3), target=f"<= {RSS_MIB:g} MiB", passed=rss <= RSS_MIB,
            target_value=RSS_MIB, target_op="<=",
            why=(f"{rss - rss_base:.1f} MiB over bare onnxruntime; imports, measured apart: "
                 + ", ".join(f"{k} {v:.1f}" for k, v in groups.items())
                 + f" MiB; the rest ({rss - sum(groups.values()) - python_mib:.1f} MiB over "
                 f"a {python_mib:.1f} MiB interpreter) is the running agent: model session, "
                 "threads, SQLite stores, buffers. python-tuf with cryptography verifies "
                 "every control message and update, so it stays loaded"),
            imports_mib={k: round(v, 1) for k, v in groups.items()},
            agent_mib=[round(r / 2**20, 1) for _, r in agent],
            bare_mib=[round(r / 2**20, 1) for _, r in bare],
            measured=f"RSS after {predictions} inferences over the v2 endpoint",
            baseline_is=f"bare python after {predictions} session.run", **common),
    ]
