"""The figures a deployment is judged and shown by: its cohort's telemetry against a base.

A wave's or an arm's devices on the new version are compared with devices on the version
they ran before (the deployment's other devices, or, when none is left on it, the cohort's
own recent past). The rules that judge the figures are pure (``rollout``); this module
reads them from the store and keeps the ones only shown, not gated on, for a few seconds:
reading a wave's telemetry costs the controller more than the rest of a tick.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any

from edgefleet.contract import Clock

from .rollout import CohortMetrics, RolloutPolicy
from .store import Store

__all__ = ["DISPLAY_EVERY_S", "CohortFigures"]

DISPLAY_EVERY_S = 5.0  # cohort figures a policy does not gate on are read this often
_BASE_LOOKBACK_S = 600.0  # the cohort's own past, when no other device runs the old version
_SHOWN_MAX = 1000  # deployments whose shown figures are kept (older ones ended long ago)

Jobs = Mapping[str, Mapping[str, Any]]  # device -> its job row (from_model, from_version)


def _previous_version(jobs: Jobs, devices: list[str]) -> tuple[str, int] | None:
    """The version most of ``devices`` ran before the deployment."""
    olds = collections.Counter((jobs[d]["from_model"], jobs[d]["from_version"])
                               for d in devices if jobs[d]["from_version"])
    return olds.most_common(1)[0][0] if olds else None


class CohortFigures:
    """Reads cohort figures for the orchestrator.

    Args:
        store: the controller store (its ``cohort_metrics``).
        clock: when figures were read (how long shown ones are kept).
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        # (deployment, wave) -> (when, new, base), read again after DISPLAY_EVERY_S
        self._shown: dict[tuple[str, int], tuple[float, CohortMetrics, CohortMetrics]] = {}

    def compare(self, dep: Mapping[str, Any], jobs: Jobs, cohort: list[str],
                others: list[str], since: float) -> tuple[CohortMetrics, CohortMetrics]:
        """``(new, base)``: the cohort on the deployment's version, and the version it ran
        before (on ``others``, else on the cohort itself before ``since``)."""
        new = self.store.cohort_metrics(cohort, dep["model"], dep["version"], since)
        previous = _previous_version(jobs, cohort)
        if previous is None:
            return new, CohortMetrics()
        old_model, old_version = previous
        base = self.store.cohort_metrics(others, old_model, old_version, since)
        if base.count == 0:  # nobody left on the old version: the cohort's own recent past
            base = self.store.cohort_metrics(cohort, old_model, old_version,
                                             since - _BASE_LOOKBACK_S)
        return new, base

    def wave(self, dep: Mapping[str, Any], policy: RolloutPolicy, jobs: Callable[[], Jobs],
             cohort: list[str], others: list[str]) -> tuple[CohortMetrics, CohortMetrics]:
        """A wave's ``compare``: every tick when the policy gates on the figures, else (shown
        on the deployment only) at most every ``DISPLAY_EVERY_S``. ``jobs`` reads the job
        rows, only when the figures are read (thousands of rows, every tick, otherwise)."""
        key, now = (dep["id"], int(dep.get("wave") or 0)), self.clock.time()
        shown = self._shown.get(key)
        if not policy.gates_on_metrics and shown is not None and \
                now - shown[0] < DISPLAY_EVERY_S:
            return shown[1], shown[2]
        new, base = self.compare(dep, jobs(), cohort, others, dep["phase_started_at"])
        if len(self._shown) > _SHOWN_MAX:
            self._shown.clear()
        self._shown[key] = (now, new, base)
        return new, base

    def arms(self, dep: Mapping[str, Any], jobs: Jobs) -> dict[str, Any]:
        """Per-arm figures of an A/B deployment since it started (inferences, errors, p95,
        versions); an arm with no previous version to show is left out."""
        out = {}
        since = dep["phase_started_at"] or dep["created_at"]
        for arm, devices in dep["plan"]["arms"].items():
            if arm == "new":
                model, version = dep["model"], dep["version"]
            else:
                previous = _previous_version(jobs, devices)
                if previous is None:
                    continue
                model, version = previous
            m = self.store.cohort_metrics(devices, model, version, since)
            out[arm] = {"devices": len(devices), "model": model, "version": version,
                        "inferences": m.count, "errors": m.errors, "p95_ms": m.p95_ms,
                        "error_rate": m.errors / m.count if m.count else None}
        return out
