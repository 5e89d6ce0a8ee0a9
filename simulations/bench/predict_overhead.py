"""Agent.predict p50 with telemetry on vs raw onnxruntime ``session.run``, same model and input.

Figure: p50 of ``Agent.predict(x)`` in process, on a running (offline) agent serving
the committed digits model from a bundle with a reference profile, so everything the
inference path does is on: input check, top label, the telemetry record with the
copied input row for drift, health-window and shadow bookkeeping. Baseline: p50 of
``session.run`` on an onnxruntime session of the same file (same options, one thread)
with the same input. Blocks of each alternate to share the machine's state. Detail:
the same ``predict`` with the telemetry record replaced by a no-op, to show what
telemetry itself costs. Target: ≤ 1.10× the baseline.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import make_result
from ._digits import MODEL, eval_inputs, manifest

__all__ = ["SIZES", "run"]

SIZES = {"tiny": 300, "small": 5_000, "medium": 20_000, "large": 50_000, "full": 30_000}
TARGET_RATIO = 1.10
ROUNDS = 5


def _timings(fn: Callable[[], Any], n: int) -> list[float]:
    clock = time.perf_counter
    out = []
    for _ in range(n):
        t = clock()
        fn()
        out.append(clock() - t)
    return out


def _agent(root: Path) -> Any:
    from edgefleet.agent import Agent, AgentConfig
    from edgefleet.controller import init_keys

    trust_root = init_keys(root / "keys")
    agent = Agent(AgentConfig(device_id="bench", state_dir=root / "state",
                              trust_root=trust_root, broker_url="mqtt://127.0.0.1:1",
                              api_port=0, trust_check_interval_s=0))
    m = manifest()
    agent.store.activate(agent.store.install(m, m.encode(), MODEL).ref)
    agent.start()
    return agent


def run(size: str = "full") -> dict[str, Any]:
    """Raises: ValueError for an unknown size."""
    from edgefleet.agent.runtime import OnnxRuntime

    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    n = SIZES[size] // ROUNDS
    x = eval_inputs()[:1]
    raw = OnnxRuntime(MODEL, intra_op_threads=1)
    feeds = {"pixels": x}
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-predict-") as tmp:
        agent = _agent(Path(tmp))
        try:
            assert agent._active is not None and agent._active.drift is not None
            for _ in range(2):  # warm both paths up
                _timings(lambda: raw.run_unchecked(feeds), 200)
                _timings(lambda: agent.predict(x), 200)
            base, on, off = [], [], []
            record = agent.buffer.record
            for _ in range(ROUNDS):
                base += _timings(lambda: raw.run_unchecked(feeds), n)
                on += _timings(lambda: agent.predict(x), n)
                agent.buffer.record = lambda *a, **k: True  # type: ignore[method-assign]
                try:
                    off += _timings(lambda: agent.predict(x), n)
                finally:
                    agent.buffer.record = record  # type: ignore[method-assign]
            agent.buffer.flush()
            stats = agent.buffer.stats()
        finally:
            agent.stop()
    p50 = {k: statistics.median(v) * 1e6 for k, v in
           (("raw", base), ("on", on), ("off", off))}
    ratio = p50["on"] / p50["raw"]
    return make_result(
        "predict_overhead", figure=round(p50["on"], 2), unit="us", baseline=round(p50["raw"], 2),
        ratio=round(ratio, 3), target=f"<= {TARGET_RATIO:.2f}x", passed=ratio <= TARGET_RATIO,
        target_value=TARGET_RATIO, target_of="ratio", target_op="<=",
        why=(f"of {p50['on'] - p50['raw']:.1f} us added per call, telemetry costs "
             f"{p50['on'] - p50['off']:.1f} us; the rest is the agent's own path "
             "(input check, top label, health bookkeeping)"),
        calls=n * ROUNDS, telemetry_off_p50_us=round(p50["off"], 2),
        telemetry_cost_us=round(p50["on"] - p50["off"], 2),
        agent_overhead_us=round(p50["on"] - p50["raw"], 2),
        p99_us={k: round(sorted(v)[int(len(v) * 0.99)] * 1e6, 2) for k, v in
                (("raw", base), ("on", on))},
        records_dropped=stats["dropped"], drift=True)
