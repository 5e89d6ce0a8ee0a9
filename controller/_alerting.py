"""The alert monitor: gathers facts from the store, applies the rules, sends messages.

Thin: ``alerts.evaluate`` decides what fires and ``alerts.reconcile`` what to send;
this module reads the store, writes the alert states back and hands payloads to the
webhook sender. ``FleetController`` runs ``evaluate`` every ``alert_interval_s``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from edgefleet.contract import Clock

from ._webhook import WebhookSender
from .aggregate import Aggregate
from .alerts import AlertRules, Facts, Notification, evaluate, reconcile, webhook_payload
from .settings import Settings

if TYPE_CHECKING:
    from .store import Store

__all__ = ["AlertMonitor", "rules_from"]

log = logging.getLogger(__name__)
LatencyKey = tuple[str, int, str]  # (model, version, device)


def rules_from(settings: Settings) -> AlertRules:
    return AlertRules(drift_warn=settings.alert_drift_warn,
                      drift_alert=settings.alert_drift_alert,
                      cohort_tags=tuple(settings.alert_cohort_tags),
                      latency_ratio=settings.alert_latency_ratio,
                      latency_min_count=settings.alert_latency_min_count,
                      offline_after_s=settings.alert_offline_after_s,
                      buffer_ratio=settings.alert_buffer_ratio)


class AlertMonitor:
    """Evaluates the alert rules over the store.

    Args:
        store: the controller store.
        settings: thresholds, windows, the webhook URL.
        clock: the controller's clock.
    """

    def __init__(self, store: Store, settings: Settings, clock: Clock) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.rules = rules_from(settings)
        self.sender: WebhookSender | None = None
        if settings.alert_webhook_url:
            self.sender = WebhookSender(settings.alert_webhook_url,
                                        queue_max=settings.alert_webhook_queue_max,
                                        max_attempts=settings.alert_webhook_max_attempts,
                                        backoff_s=settings.alert_webhook_backoff_s)
        self.counters = {"evaluations": 0, "notifications": 0}
        self._latency_facts: tuple[dict[LatencyKey, Aggregate],
                                   dict[LatencyKey, Aggregate]] | None = None
        self._latency_due = 0.0

    def start(self) -> None:
        if self.sender is not None:
            self.sender.start()

    def stop(self) -> None:
        if self.sender is not None:
            self.sender.stop()

    def facts(self, now: float) -> Facts:
        s, tel = self.settings, self.store.telemetry
        latency_now, latency_base = self._latency(now)
        return Facts(
            drift=tel.drift_windows(now - s.alert_drift_window_s),
            latency_now=latency_now, latency_base=latency_base,
            devices=self.store.list_devices(("id", "online", "last_seen", "tags")),
            buffers=tel.latest_buffers(),
            rollbacks=self.store.alerts.rollbacks(now - s.alert_rollback_window_s))

    def _latency(self, now: float) -> tuple[dict[LatencyKey, Aggregate],
                                            dict[LatencyKey, Aggregate]]:
        """Per-device aggregates of the versions seen lately and of the version before
        each; recomputed every ``alert_latency_interval_s`` (it reads a day of sketches)."""
        if self._latency_facts is not None and now < self._latency_due:
            return self._latency_facts
        s, tel = self.settings, self.store.telemetry
        group = ("model", "version", "device")
        current = {_key(k): a for k, a in tel.aggregate(
            group_by=group, received_since=now - s.alert_latency_window_s).items()}
        seen = tel.versions_since(now - s.alert_latency_baseline_s)
        base: dict[LatencyKey, Aggregate] = {}
        for model, version in {(m, v) for m, v, _d in current}:
            prev = max((v for m, v in seen if m == model and v < version), default=None)
            if prev is not None:
                base.update({_key(k): a for k, a in tel.aggregate(
                    group_by=group, model=model, version=prev,
                    received_since=now - s.alert_latency_baseline_s).items()})
        self._latency_facts = (current, base)
        self._latency_due = now + s.alert_latency_interval_s
        return self._latency_facts

    def evaluate(self) -> list[Notification]:
        """One round: fire, de-duplicate, resolve; returns what was sent (or queued)."""
        now = self.clock.time()
        firing = evaluate(self.facts(now), self.rules, now)
        states = self.store.alerts.states(a.key for a in firing)
        changed, notes = reconcile(states, firing, now=now,
                                   cooldown_s=self.settings.alert_cooldown_s)
        self.store.alerts.save(changed)
        for note in notes:
            log.info("alert %s %s: %s", note.status, note.alert.key, note.alert.text)
            if self.sender is not None:
                self.sender.send(webhook_payload(note))
        self.counters["evaluations"] += 1
        self.counters["notifications"] += len(notes)
        return notes

    def active(self, *, include_resolved: bool = False) -> list[dict[str, Any]]:
        return self.store.alerts.rows(active_only=not include_resolved)

    def prune(self, now: float) -> int:
        return self.store.alerts.prune(now - self.settings.telemetry_rollup_retention_s)


def _key(k: tuple[Any, ...]) -> LatencyKey:
    return (str(k[0]), int(k[1]), str(k[2]))
