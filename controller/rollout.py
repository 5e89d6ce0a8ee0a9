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
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from edgefleet.contract import InvalidRequest

__all__ = [
    "ACTIONS",
    "ACTIVE",
    "JOB_DONE",
    "JOB_SETTLED",
    "ON_BREACH",
    "SILENT",
    "STRATEGIES",
    "WAVE_STRATEGIES",
    "CohortMetrics",
    "Decision",
    "RolloutPolicy",
    "ShadowMetrics",
    "Strategy",
    "cohort_position",
    "evaluate_shadow",
    "action_applies",
    "evaluate_wave",
    "wave_failures",
    "needs_redrive",
    "plan_deployment",
    "plan_waves",
    "split_arms",
]

Strategy = Literal["all-at-once", "staged", "canary", "shadow", "ab"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
# the strategies that send the new version wave by wave (shadow and A/B have no waves)
WAVE_STRATEGIES: tuple[Strategy, ...] = ("all-at-once", "staged", "canary")
# Not finished: devices reserved, abort possible. ``pending_approval`` is not driven (nothing
# sent, no timeout running) until approved; approval starts its clock.
ACTIVE = ("running", "paused", "promoting", "rolling_back", "awaiting_decision",
          "pending_approval")
ACTIONS = ("pause", "resume", "abort", "rollback", "promote", "drop", "approve")
OnBreach = Literal["pause", "abort", "rollback"]
ON_BREACH: tuple[OnBreach, ...] = get_args(OnBreach)
Silent = Literal["failed", "skipped"]  # what a device silent at the wave timeout counts as
SILENT: tuple[Silent, ...] = get_args(Silent)
TERMINAL_OK = frozenset({"healthy"})
TERMINAL_BAD = frozenset({"failed", "rolled_back"})
# a job that ran to its end, controller side (a device "healthy" on a rollback job is
# "reverted", …); settled also counts the ends of shadow stops and holds
JOB_DONE = TERMINAL_OK | TERMINAL_BAD | {"reverted", "revert_failed"}
JOB_SETTLED = JOB_DONE | {"shadow_stopped", "shadow_stop_failed", "held", "hold_failed"}

_Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
_Above0 = Annotated[float, Field(gt=0, allow_inf_nan=False)]  # None switches its gate off
_Percent = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]


def _integral(value: Any) -> Any:
    """JSON counts 3.0 as an integer: take it as 3 (3.5, "3" and true stay refused)."""
    return int(value) if type(value) is float and value.is_integer() else value


def _summary(schema: dict[str, Any]) -> None:
    """A model's description in the API's schema: its docstring's first paragraph."""
    schema["description"] = str(schema.get("description", "")).split("\n\n")[0]


class RolloutPolicy(BaseModel):
    """How a deployment proceeds and what stops it. Rates are fractions (0.02 = 2%).

    The API takes it as the ``policy`` of a deployment, so its schema is this one; the
    strategy is the deployment's own field there, beside the policy. Strict like every
    API body: 0 is not false, "1" is not 1.

    Raises:
        pydantic.ValidationError: (a ``ValueError``) naming each field that is wrong and
            what it takes, or waves that do not fit the strategy.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True,
                              json_schema_extra=_summary)

    strategy: SkipJsonSchema[Strategy] = "all-at-once"
    waves: tuple[_Percent, ...] = Field(
        default=(100.0,), min_length=1, max_length=100, validate_default=True,
        description="cumulative % of the targets per wave, increasing and ending at 100 "
                    "(a canary's default is 10, 100; all-at-once has the one wave 100)")
    health_window_s: _Seconds = Field(
        default=0.0, description="a device watches the new model this long after activating it")
    max_failure_rate: _Fraction = Field(
        default=0.0, description="failed devices tolerated per wave")
    max_p95_regression: _Above0 | None = Field(
        default=None, description="new cohort p95 vs the previous version's, e.g. 0.2 "
                                  "(null: off)")
    max_error_rate: _Above0 | None = Field(
        default=None, description="inference errors in the new cohort (null: off)")
    wave_timeout_s: _Seconds = Field(
        default=600.0, description="no wave waits longer for its devices")
    on_breach: OnBreach = "rollback"
    silent: Silent = Field(
        default="failed", description="what devices silent at the wave timeout count as")
    min_samples: Annotated[int, BeforeValidator(_integral)] = Field(
        default=50, ge=1, description="inferences per cohort before a metric gate is judged")
    device_max_latency_ratio: _Above0 | None = Field(
        default=3.0, description="a device's p95 latency vs its previous model's, judged in "
                                 "its health window (null: off)")
    device_max_error_rate: _Fraction = Field(
        default=0.05, description="a device's inference errors, judged in its health window")
    sample: float = Field(
        default=0.2, gt=0, le=1, allow_inf_nan=False,
        description="shadow: fraction of live inputs mirrored")
    min_agreement: _Fraction = Field(
        default=0.98, description="shadow: top-1 agreement needed to promote")
    max_latency_ratio: _Above0 | None = Field(
        default=None, description="shadow: candidate / active latency allowed (null: off)")
    duration_s: _Seconds = Field(default=0.0, description="shadow and A/B")
    auto_promote: bool = Field(
        default=True, description="shadow: promote when the thresholds hold")
    split: float = Field(
        default=50.0, gt=0, lt=100, allow_inf_nan=False,
        description="A/B: % of the targets on the new version")

    @field_validator("waves", mode="before")
    @classmethod
    def _waves_as_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value  # JSON has lists

    @field_validator("waves")
    @classmethod
    def _waves_fit(cls, waves: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        strategy = info.data.get("strategy")  # (absent when it was refused itself)
        if strategy == "canary" and waves == (100.0,):
            waves = (10.0, 100.0)  # a canary is two waves; 10% unless told
        if waves[-1] != 100.0 or list(waves) != sorted(set(waves)):
            raise PydanticCustomError(
                "value_error", "must be increasing percentages ending at 100, e.g. 5,25,100")
        if strategy == "all-at-once" and waves != (100.0,):
            raise PydanticCustomError("value_error", "all-at-once has a single wave")
        return waves

    @property
    def gates_on_metrics(self) -> bool:
        """Whether a wave's outcome depends on its cohort's telemetry (p95, error rate)."""
        return self.max_p95_regression is not None or self.max_error_rate is not None

    def to_dict(self) -> dict[str, Any]:
        """The stored form (JSON: waves as a list), which ``from_dict`` reads back."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPolicy:
        """A policy from its stored form (``to_dict``, also what earlier releases
        stored), a console form or a scenario file; fields left out keep their defaults.

        Raises:
            InvalidRequest: for unknown keys or bad values, naming each field.
        """
        unknown = set(data) - set(cls.model_fields)
        if unknown:
            raise InvalidRequest(f"unknown policy fields {sorted(unknown)}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise InvalidRequest("; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )) from exc

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


def plan_deployment(deployment_id: str, targets: Sequence[str], policy: RolloutPolicy,
                    running: Mapping[str, Mapping[str, Any]],
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A new deployment's plan and its job rows.

    Args:
        targets: the devices it reaches.
        running: each device's active model (``{"name", "version"}``; missing or empty when
            it runs none): where a rollback sends it back to.

    Returns:
        ``(plan, rows)``: the plan holds ``targets`` and ``waves`` (wave strategies) or
        ``arms`` (A/B); one row per target with its wave, arm and previous version.

    Raises:
        InvalidRequest: an A/B deployment on fewer than two devices.
    """
    plan: dict[str, Any] = {"targets": list(targets)}
    wave_of: dict[str, int] = {}
    new_arm: set[str] = set()
    if policy.strategy in WAVE_STRATEGIES:
        waves = policy.waves if policy.strategy != "all-at-once" else (100.0,)
        plan["waves"] = plan_waves(targets, deployment_id, waves)
        wave_of = {d: i for i, ds in enumerate(plan["waves"]) for d in ds}
    elif policy.strategy == "ab":
        if len(set(targets)) < 2:
            raise InvalidRequest("an A/B deployment needs at least two devices")
        new, control = split_arms(targets, deployment_id, policy.split)
        plan["arms"] = {"new": new, "control": control}
        new_arm = set(new)
    rows = []
    for device in targets:
        active = running.get(device) or {}
        rows.append({"device": device, "wave": wave_of.get(device, 0),
                     "arm": ("new" if device in new_arm else "control") if "arms" in plan
                     else "",
                     "from_model": active.get("name"), "from_version": active.get("version")})
    return plan, rows


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
