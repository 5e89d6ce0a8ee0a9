"""What the agent publishes about itself: its birth, and telemetry summaries (with their acks).

A birth goes out on every connect and whenever the model served or the trust state
changes. Each turn of the agent loop (``Agent.tick``) publishes the summaries the buffer has due,
at most ``publish_batch``, flagged ``historical`` when they are more than a window late,
and stops at the first one the link refuses. The controller's ``telemetry/ack`` marks
them acknowledged; after a reconnect every unacknowledged summary is due again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import edgefleet
from edgefleet.contract import FEATURE_BATCH_SIGNED, Ack, Birth, DeviceTopic, ModelRef

from ._mqtt import AgentLink
from ._system import SystemMetrics
from .config import AgentConfig
from .runtime import Runtime, available_runtimes
from .telemetry import TelemetryBuffer

__all__ = ["TelemetryUplink", "birth"]


def birth(bd_seq: int, *, now: float, hw: dict[str, Any], serving: Runtime | None,
          state: Mapping[str, ModelRef | None], trust: dict[str, Any], api_url: str) -> Birth:
    """A birth message: this device (``hw``, its class and tags), the runtimes it has,
    what its model runs on, its models (``state``), trust state and v2 endpoint."""
    providers = getattr(serving, "providers", None) if serving else None
    return Birth(bd_seq=bd_seq, agent_version=edgefleet.__version__, ts=now,
                 hw={**hw, "providers": providers.to_dict() if providers is not None else {}},
                 runtimes=available_runtimes(), active=state["active"],
                 last_good=state["last_good"], trust=dict(trust), api_url=api_url,
                 features=[FEATURE_BATCH_SIGNED])


class TelemetryUplink:
    """The telemetry buffer, its summaries to the controller and the acks back into it.

    Args:
        system_metrics: what windows report about the system (``None``: psutil's figures).
        shadow_stats: takes the shadow comparison figures when a window closes.
    """

    def __init__(self, config: AgentConfig, *,
                 system_metrics: Callable[[], dict[str, float]] | None,
                 shadow_stats: Callable[[], dict[str, Any]]) -> None:
        state = config.state_dir
        self.buffer = TelemetryBuffer(
            state / "telemetry.db", window_s=config.summary_window_s,
            queue_max=config.telemetry_queue_max, max_bytes=config.max_buffer_bytes,
            max_raw_rows=config.max_raw_rows, flush_interval_s=config.telemetry_flush_interval_s,
            system_metrics=system_metrics or SystemMetrics(state), shadow_stats=shadow_stats)
        self._window_s = config.summary_window_s
        self._resend_after_s = config.resend_after_s
        self._batch = config.publish_batch

    def publish_due(self, link: AgentLink, now: float) -> None:
        """Publish what is due, while ``link`` is connected and takes it."""
        if not link.connected.is_set():
            return
        due = self.buffer.pending(now, resend_after_s=self._resend_after_s, limit=self._batch)
        sent = []
        for summary in due:
            late = now - summary.window_end > self._window_s
            payload = dataclasses.replace(summary, historical=late).encode()
            if not link.publish(DeviceTopic.TELEMETRY, payload):
                break
            sent.append(summary.seq)
        if sent:
            self.buffer.mark_sent(sent, now)

    def on_ack(self, payload: bytes) -> None:
        """The controller stored these summaries (``telemetry/ack``, paho's thread)."""
        self.buffer.ack(Ack.decode(payload).seqs)

    def on_connected(self) -> None:
        """A new session: every unacknowledged summary is due again."""
        self.buffer.reset_sent()
