"""A rollout through the controller vs a raw MQTT fan-out of the same bundle.

Measured by ``edgefleet simulate`` (``simulate.run_scenario``), which runs a simulated
fleet; this benchmark only calls it and reports its figures, so there is one fleet
simulator: ``rollout_s`` (the signed bundle, offered through the controller, installed
and serving on every device), ``raw_fanout_s`` (the same bytes published to the same
devices over raw MQTT, no controller, no verification) and ``target_ratio`` (the
rollout's budget as a multiple of the raw fan-out). The rest is kept in the JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import make_result

__all__ = ["SIZES", "run"]

SIZES = {"tiny": 10, "small": 50, "medium": 200, "large": 1_000, "full": 1_000}  # devices


def run(size: str = "full", progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One row ``rollout``: rollout seconds vs raw fan-out seconds.

    Raises:
        ValueError: an unknown size.
        RuntimeError: the scenario's report has no ``rollout_s`` (the rollout did not
            reach every device) or no ``raw_fanout_s``.
    """
    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    from ..simulate import run_scenario  # (imports the controller: only when it runs)

    report = run_scenario(SIZES[size], quick=size == "tiny", progress=progress)
    if report.get("rollout_s") is None or not report.get("raw_fanout_s"):
        raise RuntimeError(f"the scenario measured no rollout_s/raw_fanout_s: rollout_s="
                           f"{report.get('rollout_s')}, raw_fanout_s={report.get('raw_fanout_s')}")
    rollout, raw = float(report.pop("rollout_s")), float(report.pop("raw_fanout_s"))
    target = float(report.pop("target_ratio"))
    ratio = rollout / raw
    return make_result(
        "rollout", figure=round(rollout, 3), unit="s", baseline=round(raw, 3),
        ratio=round(ratio, 3), target=f"<= {target:g}x raw",
        passed=ratio <= target, target_value=target, target_of="ratio",
        target_op="<=", why=str(report.pop("why", "")), devices=SIZES[size],
        baseline_is="raw MQTT fan-out of the same bundle bytes", scenario=report)
