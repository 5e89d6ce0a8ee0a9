"""Prometheus metrics: the fleet as gauges, ingest as counters, latency per model.

``FleetCollector`` is a prometheus-client custom collector: it reads the store when
Prometheus scrapes (``GET /metrics``), so the figures are never stale and the
controller keeps no second copy of its state. It registers in its own
``CollectorRegistry``, so several controllers in one process (tests) do not collide.

Metrics (all prefixed ``edgefleet_``):

* ``devices`` {state="online"|"offline"} — gauge
* ``devices_by_model`` {model, version} — devices whose active model is that version
* ``deployments`` {state} — deployments per state (running, paused, succeeded…)
* ``controller_events_total`` {event} — the controller's counters (summaries stored,
  duplicates, chunks served, malformed messages…)
* ``model_latency_seconds`` {model, version, percentile="50"|"95"|"99"} — over the
  last ``latency_window_s`` of telemetry, from merged sketches where the store offers
  them (a gauge: promtool reserves the ``quantile`` label for summaries)
* ``model_inferences`` / ``model_errors`` {model, version} — over the same window
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .service import FleetController

__all__ = ["CONTENT_TYPE", "FleetCollector", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FleetCollector(Collector):
    """Reads fleet figures from a controller at scrape time.

    Args:
        ctl: the controller.
        latency_window_s: how much recent telemetry the latency quantiles cover.
        latency: optional ``(since) -> {(model, version): {"p50", "p95", "p99",
            "count", "errors"}}``; by default computed from the summaries' reported
            percentiles (count-weighted), which the telemetry store replaces with
            merged sketches.
    """

    def __init__(self, ctl: FleetController, *, latency_window_s: float = 300.0,
                 latency: Callable[[float], dict[tuple[str, int], dict[str, Any]]] | None = None
                 ) -> None:
        self.ctl = ctl
        self.latency_window_s = latency_window_s
        self.latency = latency

    def collect(self) -> Iterator[Metric]:
        devices = self.ctl.store.list_devices(("online", "active"))  # not every JSON column
        online = sum(1 for d in devices if d["online"])
        g = GaugeMetricFamily("edgefleet_devices", "Devices known to the controller",
                              labels=["state"])
        g.add_metric(["online"], online)
        g.add_metric(["offline"], len(devices) - online)
        yield g

        by_model: collections.Counter[tuple[str, str]] = collections.Counter(
            (d["active"]["name"], str(d["active"]["version"])) for d in devices if d["active"])
        g = GaugeMetricFamily("edgefleet_devices_by_model",
                              "Devices whose active model is this version",
                              labels=["model", "version"])
        for (name, version), n in sorted(by_model.items()):
            g.add_metric([name, version], n)
        yield g

        states = collections.Counter(d["state"] for d in self.ctl.store.list_deployments())
        g = GaugeMetricFamily("edgefleet_deployments", "Deployments per state",
                              labels=["state"])
        for state, n in sorted(states.items()):
            g.add_metric([state], n)
        yield g

        c = CounterMetricFamily("edgefleet_controller_events",
                                "Controller counters since start (ingest, chunks, malformed)",
                                labels=["event"])
        counters = dict(self.ctl.counters)
        if self.ctl.link is not None:
            counters["malformed"] = counters.get("malformed", 0) + self.ctl.link.malformed
        for name, value in sorted(counters.items()):
            c.add_metric([name], float(value))
        yield c

        yield from self._latency()

    def _latency(self) -> Iterator[Metric]:
        since = time.time() - self.latency_window_s
        figures = self.latency(since) if self.latency else self._reported(since)
        q = GaugeMetricFamily("edgefleet_model_latency_seconds",
                              f"Inference latency percentiles over the last "
                              f"{self.latency_window_s:.0f}s",
                              labels=["model", "version", "percentile"])
        n = GaugeMetricFamily("edgefleet_model_inferences",
                              f"Inferences over the last {self.latency_window_s:.0f}s",
                              labels=["model", "version"])
        e = GaugeMetricFamily("edgefleet_model_errors",
                              f"Failed inferences over the last {self.latency_window_s:.0f}s",
                              labels=["model", "version"])
        for (model, version), f in sorted(figures.items()):
            for quantile in ("p50", "p95", "p99"):
                if f.get(quantile) is not None:
                    q.add_metric([model, str(version), quantile[1:]],
                                 float(f[quantile]) / 1000.0)
            n.add_metric([model, str(version)], float(f.get("count", 0)))
            e.add_metric([model, str(version)], float(f.get("errors", 0)))
        yield from (q, n, e)

    def _reported(self, since: float) -> dict[tuple[str, int], dict[str, Any]]:
        """Count-weighted percentiles the devices reported (a fallback, not exact)."""
        acc: dict[tuple[str, int], dict[str, float]] = {}
        for row in self.ctl.store.summaries(limit=10_000):
            if row.get("window_end", 0) < since or not row.get("model"):
                continue
            key = (row["model"], int(row["version"]))
            a = acc.setdefault(key, {"count": 0.0, "errors": 0.0, "p50": 0.0, "p95": 0.0,
                                     "p99": 0.0})
            count = float(row.get("count") or 0)
            a["count"] += count
            a["errors"] += float(row.get("errors") or 0)
            lat = (row.get("payload") or {}).get("latency_ms") or {}
            for quantile in ("p50", "p95", "p99"):
                a[quantile] += float(lat.get(quantile) or 0.0) * count
        return {k: {**v, **{q: v[q] / v["count"] for q in ("p50", "p95", "p99")}}
                for k, v in acc.items() if v["count"]}


def render(ctl: FleetController, collector: FleetCollector | None = None) -> bytes:
    """The exposition-format text for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector or FleetCollector(ctl))
    return generate_latest(registry)
