"""Rollout decisions, pure: policies, cohorts, wave gates, shadow verdicts, reconciliation.

Nothing here does I/O or reads a clock; the orchestrator feeds in job states,
telemetry aggregates and ``now`` and acts on what comes back. That keeps the rules
small enough to test exhaustively.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ACTIONS",
    "ACTIVE",
    "BOUNDS",
    "JOB_DONE",
    "JOB_SETTLED",
    "ON_BREACH",
    "OPTIONAL",
    "SILENT",
    "STRATEGIES",
    "CohortMetrics",
    "Decision",
    "RolloutPolicy",
    "ShadowMetrics",
    "cohort_position",
    "evaluate_shadow",
    "action_applies",
    "evaluate_wave",
    "wave_failures",
    "needs_redrive",
    "plan_waves",
    "split_arms",
]

STRATEGIES = ("all-at-once", "staged", "canary", "shadow", "ab")
# Not finished: devices reserved, abort possible. ``pending_approval`` is not driven (nothing
# sent, no timeout running) until approved; approval starts its clock.
ACTIVE = ("running", "paused", "promoting", "rolling_back", "awaiting_decision",
          "pending_approval")
ACTIONS = ("pause", "resume", "abort", "rollback", "promote", "drop", "approve")
ON_BREACH = ("pause", "abort", "rollback")
SILENT = ("failed", "skipped")  # what a device silent at the wave timeout counts as
# the numeric fields' bounds (JSON Schema's words): RolloutPolicy checks them and the
# API's schema states them
BOUNDS: dict[str, dict[str, float]] = {
    "health_window_s": {"ge": 0}, "wave_timeout_s": {"ge": 0}, "duration_s": {"ge": 0},
    "max_failure_rate": {"ge": 0, "le": 1}, "device_max_error_rate": {"ge": 0, "le": 1},
    "min_agreement": {"ge": 0, "le": 1}, "sample": {"gt": 0, "le": 1},
    "split": {"gt": 0, "lt": 100}, "min_samples": {"ge": 1},
    "max_p95_regression": {"gt": 0}, "max_error_rate": {"gt": 0},
    "max_latency_ratio": {"gt": 0}, "device_max_latency_ratio": {"gt": 0},
}
OPTIONAL = frozenset({"max_p95_regression", "max_error_rate", "max_latency_ratio",
                      "device_max_latency_ratio"})  # null switches the gate off
_HOLDS = {"ge": lambda v, x: v >= x, "gt": lambda v, x: v > x, "le": lambda v, x: v <= x,
          "lt": lambda v, x: v < x}
_SAYS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
TERMINAL_OK = frozenset({"healthy"})
TERMINAL_BAD = frozenset({"failed", "rolled_back"})
# a job that ran to its end, controller side (a device "healthy" on a rollback job is
# "reverted", …); settled also counts the ends of shadow stops and holds
JOB_DONE = TERMINAL_OK | TERMINAL_BAD | {"reverted", "revert_failed"}
JOB_SETTLED = JOB_DONE | {"shadow_stopped", "shadow_stop_failed", "held", "hold_failed"}


@dataclasses.dataclass(frozen=True)
class RolloutPolicy:
    """How a deployment proceeds and what stops it. Rates are fractions (0.02 = 2%).

    Raises:
        ValueError: from ``__post_init__`` for inconsistent settings.
    """

    strategy: str = "all-at-once"
    waves: tuple[float, ...] = (100.0,)  # cumulative % of the targets per wave
    health_window_s: float = 0.0  # device-side watch after activation
    max_failure_rate: float = 0.0  # per wave
    max_p95_regression: float | None = None  # new cohort p95 vs old, e.g. 0.2
    max_error_rate: float | None = None  # inference errors in the new cohort
    wave_timeout_s: float = 600.0  # no wave waits longer for its devices
    on_breach: str = "rollback"  # pause | abort | rollback
    silent: str = "failed"  # devices silent at the wave timeout count as failed | skipped
    min_samples: int = 50  # inferences per cohort before a metric gate is judged
    device_max_latency_ratio: float | None = 3.0
    device_max_error_rate: float = 0.05
    sample: float = 0.2  # shadow: fraction of live inputs mirrored
    min_agreement: float = 0.98  # shadow: top-1 agreement needed to promote
    max_latency_ratio: float | None = None  # shadow: candidate / active latency
    duration_s: float = 0.0  # shadow and A/B
    auto_promote: bool = True  # shadow
    split: float = 50.0  # A/B: % of the targets on the new version

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("strategy", "on_breach", "silent", "waves", "auto_promote"):
                continue
            if value is None and "None" in str(f.type):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number")
        if not isinstance(self.auto_promote, bool):
            raise ValueError("auto_promote must be true or false")
        try:
            waves = tuple(float(w) for w in self.waves)
        except (TypeError, ValueError):
            raise ValueError("waves must be a list of percentages") from None
        if self.strategy == "canary" and waves == (100.0,):
            waves = (10.0, 100.0)  # a canary is two waves; 10% unless told
        object.__setattr__(self, "waves", waves)
        if not waves or waves[-1] != 100.0 or any(
                not 0 < w <= 100 for w in waves) or list(waves) != sorted(set(waves)):
            raise ValueError("waves must be increasing percentages ending at 100, e.g. 5,25,100")
        if self.strategy == "all-at-once" and waves != (100.0,):
            raise ValueError("all-at-once has a single wave")
        if self.on_breach not in ON_BREACH:
            raise ValueError(f"on_breach must be one of {ON_BREACH}")
        if self.silent not in SILENT:
            raise ValueError(f"silent must be one of {SILENT}")
        for name, bounds in BOUNDS.items():
            value = getattr(self, name)
            if value is None:  # a gate switched off (only optional fields get here)
                continue
            for op, limit in bounds.items():
                if not _HOLDS[op](value, limit):
                    off = " (or null to switch it off)" if name in OPTIONAL else ""
                    raise ValueError(f"{name} must be {_SAYS[op]} {limit:g}{off}")

    @property
    def gates_on_metrics(self) -> bool:
        """Whether a wave's outcome depends on its cohort's telemetry (p95, error rate)."""
        return self.max_p95_regression is not None or self.max_error_rate is not None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["waves"] = list(self.waves)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPolicy:
        """Raises: ValueError for unknown keys or bad values."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown policy fields {sorted(unknown)}")
        values = dict(data)
        if "waves" in values:
            if not isinstance(values["waves"], (list, tuple)):
                raise ValueError("waves must be a list of percentages")
            values["waves"] = tuple(values["waves"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def device_health(self) -> dict[str, Any]:
        """The on-device health policy shipped in each desired state."""
        return {"window_s": self.health_window_s, "max_error_rate": self.device_max_error_rate,
                "max_latency_ratio": self.device_max_latency_ratio,
                "min_samples": min(self.min_samples, 20)}


def cohort_position(device_id: str, deployment_id: str) -> float:
    """A stable point in [0, 1) for a device within a deployment (same on every restart)."""
    digest = hashlib.sha256(f"{deployment_id}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def plan_waves(devices: Sequence[str], deployment_id: str,
               waves: Sequence[float]) -> list[list[str]]:
    """Split targets into waves by stable hash; wave i holds up to ``waves[i]``% in total.

    Every wave with a share gets at least one device while devices remain.
    """
    ordered = sorted(set(devices), key=lambda d: (cohort_position(d, deployment_id), d))
    n, taken, plan = len(ordered), 0, []
    for pct in waves:
        upto = min(n, max(math.ceil(n * pct / 100.0 - 1e-9), taken + 1))
        if upto > taken:  # a share too small for the devices left adds no empty wave
            plan.append(ordered[taken:upto])
        taken = upto
    return plan


def split_arms(devices: Sequence[str], deployment_id: str,
               split: float) -> tuple[list[str], list[str]]:
    """A/B arms by stable hash: ``(new_arm, control_arm)``; both non-empty when n ≥ 2."""
    ordered = sorted(set(devices), key=lambda d: (cohort_position(d, deployment_id), d))
    k = round(len(ordered) * split / 100.0)
    if len(ordered) >= 2:
        k = min(max(k, 1), len(ordered) - 1)
    return ordered[:k], ordered[k:]


@dataclasses.dataclass(frozen=True)
class CohortMetrics:
    """Telemetry of a cohort on one model version."""

    count: int = 0
    errors: int = 0
    p95_ms: float | None = None


@dataclasses.dataclass(frozen=True)
class ShadowMetrics:
    samples: int = 0
    agree: int = 0
    distance_sum: float = 0.0
    candidate_ms_sum: float = 0.0
    active_ms_sum: float = 0.0

    @property
    def agreement(self) -> float | None:
        return self.agree / self.samples if self.samples else None

    @property
    def latency_ratio(self) -> float | None:
        return self.candidate_ms_sum / self.active_ms_sum if self.active_ms_sum > 0 else None


@dataclasses.dataclass(frozen=True)
class Decision:
    outcome: str  # running | passed | breached  (shadow: running | promote | reject)
    reason: str = ""
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    detail: str = ""


def evaluate_wave(states: Mapping[str, int], *, started_at: float, now: float,
                  policy: RolloutPolicy, new: CohortMetrics | None = None,
                  base: CohortMetrics | None = None) -> Decision:
    """Judge one wave from how many of its devices' jobs are in each state
    (``collections.Counter(state per device)``) and its cohort's telemetry."""
    timed_out = now - started_at >= policy.wave_timeout_s
    devices = sum(states.values())
    healthy = sum(n for s, n in states.items() if s in TERMINAL_OK)
    bad = sum(n for s, n in states.items() if s in TERMINAL_BAD)
    silent = devices - healthy - bad if timed_out else 0
    pending = devices - healthy - bad - silent
    counts = {"devices": devices, "healthy": healthy, "failed": bad, "silent": silent,
              "pending": pending}
    failed, judged = wave_failures(counts, policy)
    if judged == 0 and devices and timed_out:
        return Decision("breached", "no_device_answered", counts)
    if judged and failed / judged > policy.max_failure_rate:
        return Decision("breached", "failure_rate", counts,
                        f"{failed} of {judged} devices failed (max {policy.max_failure_rate:.0%})")
    gate, detail = _metric_gates(policy, new, base)
    if gate:
        return Decision("breached", gate, counts, detail)
    if pending:
        return Decision("running", "", counts)
    if detail == "waiting" and not timed_out:
        return Decision("running", "waiting_for_telemetry", counts)
    note = "metric gates not judged: too little traffic" if detail == "waiting" else detail
    return Decision("passed", "", counts, note)


def wave_failures(counts: Mapping[str, int], policy: RolloutPolicy) -> tuple[int, int]:
    """``(failed, judged)`` devices of a wave from its ``evaluate_wave`` counts: silent
    devices count as failed, or are left out of the judgement (``policy.silent``)."""
    silent = counts.get("silent", 0)
    failed = counts.get("failed", 0) + (silent if policy.silent == "failed" else 0)
    judged = counts.get("devices", 0) - (silent if policy.silent == "skipped" else 0)
    return failed, judged


def _metric_gates(policy: RolloutPolicy, new: CohortMetrics | None,
                  base: CohortMetrics | None) -> tuple[str, str]:
    """``(breach reason or "", detail)``; detail ``waiting`` when a gate needs more data."""
    if not policy.gates_on_metrics:
        return "", ""
    if new is None or new.count < policy.min_samples:
        return "", "waiting"
    if policy.max_error_rate is not None and new.errors / new.count > policy.max_error_rate:
        return "error_rate", f"{new.errors}/{new.count} inferences failed"
    if policy.max_p95_regression is not None:
        if base is None or base.count < policy.min_samples or not base.p95_ms or \
                new.p95_ms is None:
            return "", "waiting"
        limit = base.p95_ms * (1 + policy.max_p95_regression)
        if new.p95_ms > limit:
            return "p95_regression", (f"p95 {new.p95_ms:.3f} ms vs {base.p95_ms:.3f} ms on the "
                                      f"previous version (limit {limit:.3f} ms)")
        return "", f"p95 {new.p95_ms:.3f} ms vs {base.p95_ms:.3f} ms"
    return "", ""


def evaluate_shadow(m: ShadowMetrics, *, started_at: float, now: float,
                    policy: RolloutPolicy) -> Decision:
    """After ``duration_s``: promote when agreement and latency held, else reject."""
    figures = {"samples": m.samples}
    elapsed = now - started_at
    if elapsed < policy.duration_s or (m.samples < policy.min_samples
                                       and elapsed < policy.wave_timeout_s):
        return Decision("running", "", figures)  # (too few samples: wait, up to the timeout)
    if m.samples < policy.min_samples:
        return Decision("reject", "too_few_samples", figures,
                        f"{m.samples} shadow samples (need {policy.min_samples})")
    assert m.agreement is not None
    if m.agreement < policy.min_agreement:
        return Decision("reject", "disagreement", figures,
                        f"agreement {m.agreement:.3f} < {policy.min_agreement:.3f}")
    ratio = m.latency_ratio
    if policy.max_latency_ratio is not None and ratio is not None and \
            ratio > policy.max_latency_ratio:
        return Decision("reject", "latency", figures,
                        f"candidate/active latency {ratio:.2f} > {policy.max_latency_ratio:.2f}")
    return Decision("promote", "", figures, f"agreement {m.agreement:.3f}")


def needs_redrive(*, desired_model: str, desired_version: int, mode: str,
                  reported: tuple[str, int] | None, job_state: str | None) -> bool:
    """Whether to send a device its desired state again when it (re)appears.

    A device whose job already ended (healthy, failed, rolled back) is left alone: its
    outcome stands until the controller decides something new. An unfinished job is
    re-sent even when the device already runs the version: the agent then reports how
    the job stands (its last status may have been lost with a broker restart).
    Without a job, only a device that runs something else is re-driven.
    """
    if job_state in TERMINAL_OK | TERMINAL_BAD:
        return False
    if job_state is not None or mode == "shadow":
        return True
    return reported != (desired_model, desired_version)


def action_applies(action: str, strategy: str, state: str) -> bool:
    """Whether an operator's ``action`` applies to a ``strategy`` deployment in ``state``
    (the orchestrator refuses the others; the console offers only these)."""
    if action == "pause":
        return state == "running"
    if action == "resume":
        return state == "paused"
    if action == "abort":
        return state in ACTIVE
    if action == "approve":
        return state == "pending_approval"
    if action == "rollback":  # (pending: nothing was sent; abort it instead)
        return state not in ("rolling_back", "rolled_back", "dropped", "pending_approval")
    if action in ("promote", "drop"):
        return strategy in ("shadow", "ab") and state in ("running", "paused",
                                                          "awaiting_decision")
    return False
