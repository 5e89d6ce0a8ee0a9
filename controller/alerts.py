"""Alert rules and notification policy, pure: facts and a time in, alerts and messages out.

``evaluate`` turns a snapshot of the fleet (``Facts``: scored drift windows, latency
aggregates, devices, buffers, rollbacks) into the alerts that fire now. ``reconcile``
compares them with the stored alert states and decides what to send:

* an alert key fires → it becomes active and is sent, unless the same key was sent
  less than ``cooldown_s`` ago (then it is sent when the cooldown ends, if still active);
* while active, the same key is not sent again (de-duplication), except when its
  severity rises (``warn`` → ``alert``), which is sent at once;
* a key that stops firing is resolved, with a ``resolved`` message if its firing was
  sent and its kind has a meaningful end (not ``rollback`` or ``retrain``).

Kinds and keys:

=====================  ==========================================  ================
kind                   key                                         severity
=====================  ==========================================  ================
``drift_device``       ``drift:device:{device}``                   warn / alert
``drift_cohort``       ``drift:cohort:{model}:{version}[:{k}={v}]`` warn / alert
``retrain``            ``retrain:{model}:{version}[:{k}={v}]``     alert
``latency_regression`` ``latency:{model}:{version}``               alert
``device_offline``     ``offline:{device}``                        warn
``buffer_near_cap``    ``buffer:{device}``                         warn
``rollback``           ``rollback:{deployment}[:{device}]``        alert
=====================  ==========================================  ================
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .aggregate import ALPHA, TOP_FEATURES, Aggregate

__all__ = ["SEVERITIES", "Alert", "AlertRules", "AlertState", "Facts", "Notification",
           "evaluate", "reconcile", "webhook_payload"]

SEVERITIES = ("warn", "alert")  # ascending
QUIET_END = frozenset({"rollback", "retrain"})  # kinds that end without a message


@dataclasses.dataclass(frozen=True)
class AlertRules:
    """Thresholds (``Settings.alert_*``); ratios are fractions, times in seconds."""

    drift_warn: float = 0.1
    drift_alert: float = 0.25
    cohort_tags: tuple[str, ...] = ()  # cohorts by model version, and by these tag keys
    latency_ratio: float = 1.2  # p95 of a version / p95 of the previous one
    latency_min_count: int = 200  # inferences on each side before judging
    offline_after_s: float = 600.0
    buffer_ratio: float = 0.9  # buffer bytes / cap

    def __post_init__(self) -> None:
        if not 0 < self.drift_warn <= self.drift_alert:
            raise ValueError("drift thresholds: 0 < warn <= alert")
        if self.latency_ratio <= 1.0 or not 0 < self.buffer_ratio <= 1:
            raise ValueError("latency_ratio must be > 1 and buffer_ratio within (0, 1]")


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the rules look at, gathered by ``_alerting.AlertMonitor`` from the store.

    ``drift``: scored windows (``device, model, version, window_start, window_end,
    drift, drift_score``) received recently. ``latency_now`` / ``latency_base``:
    ``(model, version, device)`` → Aggregate, recent and over the baseline period.
    ``devices``: device rows (``id, online, last_seen, tags``). ``buffers``: device →
    its latest buffer report. ``rollbacks``: ``{deployment, device?, at, reason, model,
    version}``.
    """

    drift: Sequence[Mapping[str, Any]] = ()
    latency_now: Mapping[tuple[str, int, str], Aggregate] = dataclasses.field(
        default_factory=dict)
    latency_base: Mapping[tuple[str, int, str], Aggregate] = dataclasses.field(
        default_factory=dict)
    devices: Sequence[Mapping[str, Any]] = ()
    buffers: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    rollbacks: Sequence[Mapping[str, Any]] = ()


@dataclasses.dataclass(frozen=True)
class Alert:
    """One alert firing now."""

    key: str
    kind: str
    severity: str
    subject: str
    text: str
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AlertState:
    """A key's stored state (table ``alerts``)."""

    key: str
    kind: str
    severity: str
    subject: str
    text: str
    detail: dict[str, Any]
    active: bool
    notify_resolved: bool
    first_at: float
    last_at: float
    resolved_at: float | None = None
    notified_at: float | None = None  # last message sent for this key (cooldown)
    notified_severity: str | None = None  # what this episode was sent as (None: not yet)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Notification:
    status: str  # firing | resolved
    alert: AlertState
    at: float


# -- rules --------------------------------------------------------------------------------
def evaluate(facts: Facts, rules: AlertRules, now: float) -> list[Alert]:
    """Every alert that fires on these facts."""
    tags = {str(d["id"]): dict(d.get("tags") or {}) for d in facts.devices}
    out = _drift(facts.drift, tags, rules)
    out += _latency(facts.latency_now, facts.latency_base, rules)
    out += _offline(facts.devices, rules, now)
    out += _buffers(facts.buffers, rules)
    out += _rollbacks(facts.rollbacks)
    return out


def _severity(score: float, rules: AlertRules) -> str | None:
    if score >= rules.drift_alert:
        return "alert"
    return "warn" if score >= rules.drift_warn else None


class _DriftGroup:
    def __init__(self) -> None:
        self.sum = 0.0
        self.samples = 0
        self.per_device: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.top: dict[str, float] = {}
        self.first = math.inf
        self.last = -math.inf
        self.windows = 0

    def add(self, w: Mapping[str, Any]) -> None:
        n = int((w.get("drift") or {}).get("samples") or 1)
        score = float(w["drift_score"])
        self.sum += score * n
        self.samples += n
        acc = self.per_device[str(w["device"])]
        acc[0] += score * n
        acc[1] += n
        for f, v in ((w.get("drift") or {}).get("top") or {}).items():
            if isinstance(v, (int, float)):
                self.top[str(f)] = max(self.top.get(str(f), -math.inf), float(v))
        self.first = min(self.first, float(w["window_start"]))
        self.last = max(self.last, float(w["window_end"]))
        self.windows += 1

    @property
    def score(self) -> float:
        return self.sum / self.samples if self.samples else 0.0

    def evidence(self) -> dict[str, Any]:
        worst = sorted(self.top.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_FEATURES]
        return {"score": round(self.score, 4),
                "devices": {d: round(s / n, 4) for d, (s, n) in sorted(self.per_device.items())},
                "worst_features": dict(worst),
                "windows": {"count": self.windows, "from": self.first, "to": self.last},
                "samples": self.samples}


def _drift(windows: Sequence[Mapping[str, Any]], tags: Mapping[str, Mapping[str, str]],
           rules: AlertRules) -> list[Alert]:
    # a device is judged on the version of its latest scored window
    latest: dict[str, tuple[float, str, int]] = {}
    for w in windows:
        d = str(w["device"])
        if d not in latest or float(w["window_end"]) > latest[d][0]:
            latest[d] = (float(w["window_end"]), str(w["model"]), int(w["version"]))
    per_device: dict[str, _DriftGroup] = defaultdict(_DriftGroup)
    cohorts: dict[tuple[str, int, str, str], _DriftGroup] = defaultdict(_DriftGroup)
    for w in windows:
        d, model, version = str(w["device"]), str(w["model"]), int(w["version"])
        if (model, version) != latest[d][1:]:
            continue
        per_device[d].add(w)
        cohorts[(model, version, "", "")].add(w)
        for k in rules.cohort_tags:
            if k in tags.get(d, {}):
                cohorts[(model, version, k, str(tags[d][k]))].add(w)
    out = []
    for d, g in sorted(per_device.items()):
        sev = _severity(g.score, rules)
        if sev:
            model, version = latest[d][1:]
            out.append(Alert(
                f"drift:device:{d}", "drift_device", sev, d,
                f"input drift on {d} ({model}:{version}): PSI {g.score:.3f} ≥ "
                f"{rules.drift_alert if sev == 'alert' else rules.drift_warn}",
                {"device": d, "model": model, "version": version,
                 "thresholds": {"warn": rules.drift_warn, "alert": rules.drift_alert},
                 **g.evidence()}))
    for (model, version, k, v), g in sorted(cohorts.items()):
        sev = _severity(g.score, rules)
        if not sev:
            continue
        suffix = f":{k}={v}" if k else ""
        cohort = {"model": model, "version": version, "selector": {k: v} if k else {}}
        name = f"{model}:{version}" + (f" {k}={v}" if k else "")
        detail = {"model": model, "version": version, "cohort": cohort,
                  "thresholds": {"warn": rules.drift_warn, "alert": rules.drift_alert},
                  **g.evidence()}
        out.append(Alert(f"drift:cohort:{model}:{version}{suffix}", "drift_cohort", sev, name,
                         f"input drift on cohort {name} ({len(g.per_device)} devices): "
                         f"PSI {g.score:.3f}", detail))
        if sev == "alert":
            out.append(Alert(f"retrain:{model}:{version}{suffix}", "retrain", "alert", name,
                             f"retrain {model} (from version {version}): cohort {name} drifted, "
                             f"PSI {g.score:.3f} ≥ {rules.drift_alert}", detail))
    return out


def _latency(now_: Mapping[tuple[str, int, str], Aggregate],
             base: Mapping[tuple[str, int, str], Aggregate], rules: AlertRules) -> list[Alert]:
    current: dict[tuple[str, int], dict[str, Aggregate]] = defaultdict(dict)
    for (m, v, d), a in now_.items():
        current[(m, v)][d] = a
    before: dict[tuple[str, int], dict[str, Aggregate]] = defaultdict(dict)
    for (m, v, d), a in base.items():
        before[(m, v)][d] = a
    out = []
    for (model, version), devs in sorted(current.items()):
        new = _merged(devs.values())
        older = sorted(v for (m, v) in before if m == model and v < version)
        if new.count < rules.latency_min_count or not older:
            continue
        prev = older[-1]
        same = _merged(a for d, a in before[(model, prev)].items() if d in devs)
        baseline, kind = (same, "same_devices") if same.count >= rules.latency_min_count \
            else (_merged(before[(model, prev)].values()), "fleet")
        p_new, p_old = new.quantile(0.95), baseline.quantile(0.95)
        if baseline.count < rules.latency_min_count or not p_old or p_new is None:
            continue
        ratio = p_new / p_old
        if ratio >= rules.latency_ratio:
            out.append(Alert(
                f"latency:{model}:{version}", "latency_regression", "alert", f"{model}:{version}",
                f"p95 latency of {model}:{version} is {p_new:.3f} ms, {ratio:.2f}× version "
                f"{prev}'s {p_old:.3f} ms ({kind.replace('_', ' ')})",
                {"model": model, "version": version, "previous_version": prev,
                 "p95_ms": round(p_new, 6), "baseline_p95_ms": round(p_old, 6),
                 "ratio": round(ratio, 4), "limit": rules.latency_ratio, "baseline": kind,
                 "alpha": ALPHA, "devices": sorted(devs), "count": new.count,
                 "baseline_count": baseline.count}))
    return out


def _merged(aggs: Iterable[Aggregate]) -> Aggregate:
    out = Aggregate()
    for a in aggs:
        out.merge(a)
    return out


def _offline(devices: Sequence[Mapping[str, Any]], rules: AlertRules,
             now: float) -> list[Alert]:
    out = []
    for d in devices:
        seen = d.get("last_seen")
        if d.get("online") or seen is None or now - seen < rules.offline_after_s:
            continue
        out.append(Alert(f"offline:{d['id']}", "device_offline", "warn", str(d["id"]),
                         f"{d['id']} offline for {_human(now - seen)}",
                         {"device": d["id"], "last_seen": seen,
                          "offline_s": round(now - seen, 1),
                          "limit_s": rules.offline_after_s}))
    return out


def _buffers(buffers: Mapping[str, Mapping[str, Any]], rules: AlertRules) -> list[Alert]:
    out = []
    for device, buf in sorted(buffers.items()):
        used, cap = buf.get("bytes"), buf.get("cap_bytes")
        if not isinstance(used, (int, float)) or not isinstance(cap, (int, float)) or cap <= 0:
            continue
        if used / cap >= rules.buffer_ratio:
            out.append(Alert(f"buffer:{device}", "buffer_near_cap", "warn", device,
                             f"{device}'s telemetry buffer is {used / cap:.0%} full "
                             f"({int(used):,} of {int(cap):,} bytes)",
                             {"device": device, "ratio": round(used / cap, 4),
                              "limit": rules.buffer_ratio, "buffer": dict(buf)}))
    return out


def _rollbacks(rollbacks: Sequence[Mapping[str, Any]]) -> list[Alert]:
    out = []
    for r in rollbacks:
        dep, device = str(r["deployment"]), r.get("device")
        ref = f"{r.get('model')}:{r.get('version')}"
        if device:
            out.append(Alert(f"rollback:{dep}:{device}", "rollback", "alert", str(device),
                             f"{device} rolled back from {ref} by itself ({r.get('reason')})",
                             dict(r)))
        else:
            out.append(Alert(f"rollback:{dep}", "rollback", "alert", dep,
                             f"deployment {dep} of {ref} was rolled back ({r.get('reason')})",
                             dict(r)))
    return out


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


# -- notification policy ------------------------------------------------------------------
def _rank(severity: str | None) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def reconcile(states: Mapping[str, AlertState], firing: Iterable[Alert], *, now: float,
              cooldown_s: float) -> tuple[list[AlertState], list[Notification]]:
    """New states for the keys that changed, and the messages to send."""
    changed: list[AlertState] = []
    notes: list[Notification] = []
    seen = set()
    for a in firing:
        if a.key in seen:
            continue
        seen.add(a.key)
        old = states.get(a.key)
        if old is None or not old.active:
            s = AlertState(a.key, a.kind, a.severity, a.subject, a.text, a.detail, True,
                           a.kind not in QUIET_END, now, now,
                           notified_at=old.notified_at if old else None)
        else:
            s = dataclasses.replace(old, severity=a.severity, subject=a.subject, text=a.text,
                                    detail=a.detail, last_at=now)
        due = s.notified_severity is None and (
            s.notified_at is None or now - s.notified_at >= cooldown_s)
        if due or (s.notified_severity is not None and
                   _rank(a.severity) > _rank(s.notified_severity)):
            s = dataclasses.replace(s, notified_at=now, notified_severity=a.severity)
            notes.append(Notification("firing", s, now))
        changed.append(s)
    for key, old in states.items():
        if key in seen or not old.active:
            continue
        s = dataclasses.replace(old, active=False, resolved_at=now, last_at=now)
        if old.notify_resolved and old.notified_severity is not None:
            s = dataclasses.replace(s, notified_at=now)
            notes.append(Notification("resolved", s, now))
        changed.append(s)
    return changed, notes


# -- webhook payload ----------------------------------------------------------------------
_ICON = {"warn": ":warning:", "alert": ":rotating_light:", "resolved": ":white_check_mark:",
         "retrain": ":arrows_counterclockwise:"}


def webhook_payload(note: Notification) -> dict[str, Any]:
    """Slack-compatible JSON (``text`` + ``blocks``) with the structured alert under
    ``edgefleet`` (``event``: ``alert`` or ``retrain``)."""
    a = note.alert
    event = "retrain" if a.kind == "retrain" else "alert"
    if note.status == "resolved":
        icon, head = _ICON["resolved"], f"[RESOLVED] {a.kind}: {a.subject}"
    else:
        icon = _ICON["retrain"] if event == "retrain" else _ICON.get(a.severity, "")
        head = f"[{a.severity.upper()}] {a.kind}: {a.subject}"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(note.at))
    return {
        "text": f"{icon} {head} — {a.text}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *{head}*\n{a.text}"}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"edgefleet · `{a.key}` · {stamp}"}]},
        ],
        "edgefleet": {"event": event, "status": note.status, "key": a.key, "kind": a.kind,
                      "severity": a.severity, "subject": a.subject, "text": a.text,
                      "first_at": a.first_at, "at": note.at, "detail": a.detail},
    }
