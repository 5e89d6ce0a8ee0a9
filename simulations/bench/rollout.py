"""A rollout through the controller vs a raw MQTT fan-out of the same bundle.

Measured by ``edgefleet simulate`` (``edgefleet.simulations.simulate``), which runs a
simulated fleet; this benchmark only calls it and reports its figures, so there is one
fleet simulator. Expected of that module: ``run_scenario(devices: int, *, quick: bool,
progress: Callable[[str], None] | None) -> dict`` with at least ``rollout_s`` (the
signed bundle, offered through the controller, installed and serving on every device)
and ``raw_fanout_s`` (the same bytes published to the same devices over raw MQTT, no
controller, no verification), and optionally ``target_ratio`` (the rollout's budget as a
multiple of the raw fan-out). Anything else in the dict is kept in the JSON.

Where that module or function is missing, the row says ``skipped: edgefleet simulate not
available``; a module that fails to import is an error, not a skip.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from . import make_result

__all__ = ["SIZES", "run"]

SIZES = {"tiny": 10, "small": 50, "medium": 200, "large": 1_000, "full": 1_000}  # devices
SKIPPED = "edgefleet simulate not available"


def _scenario() -> Callable[..., dict[str, Any]] | None:
    name = "edgefleet.simulations.simulate"
    if importlib.util.find_spec(name) is None:
        return None
    module = importlib.import_module(name)  # a module that fails to import is an error
    fn = getattr(module, "run_scenario", None)
    return fn if callable(fn) else None


def run(size: str = "full", progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One row ``rollout``: rollout seconds vs raw fan-out seconds, or a skipped row.

    Raises:
        ValueError: an unknown size.
        RuntimeError: the scenario's report has no ``rollout_s`` (the rollout did not
            reach every device) or no ``raw_fanout_s``.
    """
    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    scenario = _scenario()
    if scenario is None:
        return {"benchmark": "rollout", "skipped": SKIPPED, "devices": SIZES[size]}
    report = dict(scenario(SIZES[size], quick=size == "tiny", progress=progress))
    if report.get("rollout_s") is None or not report.get("raw_fanout_s"):
        raise RuntimeError(f"the scenario measured no rollout_s/raw_fanout_s: rollout_s="
                           f"{report.get('rollout_s')}, raw_fanout_s={report.get('raw_fanout_s')}")
    rollout, raw = float(report.pop("rollout_s")), float(report.pop("raw_fanout_s"))
    target = report.pop("target_ratio", None)
    ratio = rollout / raw
    return make_result(
        "rollout", figure=round(rollout, 3), unit="s", baseline=round(raw, 3),
        ratio=round(ratio, 3), target=f"<= {target:g}x raw" if target else "-",
        passed=ratio <= target if target else None, target_value=target, target_of="ratio",
        target_op="<=", why=str(report.pop("why", "")), devices=SIZES[size],
        baseline_is="raw MQTT fan-out of the same bundle bytes", scenario=report)
