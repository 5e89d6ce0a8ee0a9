"""The simulation report: figures from the samples, and a page of charts to look at.

``summarize`` turns what a run saw (timeline samples, fault events, every device's final
state, the controller's deployment) into the report dict; ``write_report`` writes it as
``report.json`` and ``report.html``: one self-contained page (inline SVG, no script, no
network) with rollout progress, versions in the fleet, telemetry delivered and bytes
moved over time, faults shaded where they happened. ``summary_rows`` gives the short
table the CLI prints.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from .scenario import Plan, Scenario

__all__ = ["render_html", "summarize", "summary_rows", "write_report"]

_SPAN_COLORS = {"broker_restart": "#f4a3a3", "partition": "#f7d08a", "crash": "#c9b3e6",
                "flaky": "#b5d8f0", "disk_full": "#d6d6d6", "clock_skew": "#d6d6d6"}
_PALETTE = ("#2f6db5", "#e0752d", "#3a9a5b", "#b83b5e", "#7a5cc2", "#8c6d31", "#4aa3a6")


def _outcome(snap: dict[str, Any] | None, target: int | None, job: dict[str, Any] | None
             ) -> str:
    if snap is None:
        return "down"
    version = snap["version"]
    if target is not None and version == target and not snap["on_trial"]:
        return "healthy on target"
    if job is not None and job.get("state") in ("failed", "rolled_back"):
        return f"{job['state']}, serving v{version}" if version else f"{job['state']}, no model"
    return f"on v{version}" if version else "no model"


def summarize(*, scenario: Scenario, plan: Plan, samples: list[dict[str, Any]],
              events: list[dict[str, Any]], final: dict[str, Any],
              deployment: dict[str, Any] | None, target: int | None,
              deployed_wall: float | None, fanout: dict[str, Any] | None,
              setup: dict[str, Any], settled_at: float | None, counters: dict[str, Any],
              model: str, bundle_bytes: int) -> dict[str, Any]:
    """The report of one run (see ``docs/simulations.md``)."""
    n = len(plan.devices)
    per_device: dict[str, Any] = final.get("per_device", {})
    jobs = {j["device"]: j for j in (deployment or {}).get("jobs", [])}
    faults_of: dict[str, list[str]] = {}
    for i, picked in plan.picked.items():
        for device_id in picked:
            faults_of.setdefault(device_id, []).append(scenario.faults[i].kind)
    devices = []
    for d in plan.devices:
        snap, job = per_device.get(d.id), jobs.get(d.id)
        devices.append({"id": d.id, "profile": d.profile.name,
                        "version": snap["version"] if snap else None,
                        "outcome": _outcome(snap, target, job),
                        "job_state": (job or {}).get("state"),
                        "reason": (job or {}).get("reason", ""),
                        "detail": (job or {}).get("detail", "")[:200],
                        "faults": faults_of.get(d.id, []), "clock_skew_s": d.clock_skew_s,
                        "inferences": snap["inferences"] if snap else 0})
    figures: dict[str, Any] = {"devices": n, "shards": plan.shards}
    conv: dict[str, float] = final.get("converged_at", {})
    if deployed_wall is not None:
        cut = plan.faulted("partition", scenario.faults) | plan.faulted("crash", scenario.faults)
        full = plan.faulted("disk_full", scenario.faults)
        gone = plan.never_restarted(scenario.faults)
        expected = [d.id for d in plan.devices if d.id not in full | gone]
        reachable = [d for d in expected if d not in cut]

        def took(ids: list[str]) -> float | None:
            if not ids or any(d not in conv for d in ids):
                return None
            return round(max(conv[d] for d in ids) - deployed_wall, 2)
        figures["time_to_all_healthy_s"] = took(expected)
        figures["time_to_reachable_converged_s"] = took(reachable)
        for row in devices:
            at = conv.get(row["id"])
            row["converged_after_s"] = None if at is None else round(at - deployed_wall, 2)
    if fanout is not None:
        figures["fanout_baseline_s"] = fanout["seconds"]
        healthy_s = figures.get("time_to_all_healthy_s")
        figures["ratio_to_fanout"] = round(healthy_s / fanout["seconds"], 2) \
            if healthy_s is not None and fanout["seconds"] > 0 else None
    last = samples[-1] if samples else {}
    if target is not None:
        figures["converged_pct"] = round(100.0 * sum(
            x["outcome"] == "healthy on target" for x in devices) / max(n, 1), 1)
        figures["reachable_converged_pct"] = round(
            100.0 * last.get("reachable_converged", 0) / max(last.get("reachable", 0), 1), 1)
    shards = final.get("shards", [])
    grown = sum(max(s["rss_bytes"] - s["rss_base_bytes"], 0) for s in shards)
    running = max(final.get("running", 0), 1)
    figures.update({
        "rss_per_device_bytes": int(grown / running),
        "rss_shards_per_device_bytes": int(sum(s["rss_bytes"] for s in shards) / running),
        "rss_shards_total_bytes": int(sum(s["rss_bytes"] for s in shards)),
        "rss_controller_bytes": int(final.get("rss_self", 0)),
        "rss_broker_bytes": int(final.get("rss_broker", 0)),
        "threads_per_shard": round(sum(s["threads"] for s in shards) / max(len(shards), 1)),
        "sessions_per_shard": round(sum(s["sessions"] for s in shards) / max(len(shards), 1),
                                    1),
        "connected_at_end": final.get("connected", 0),
        "bytes_fetched": final.get("fetched_bytes", 0),
        "bytes_fetched_per_device": int(final.get("fetched_bytes", 0) / max(n, 1)),
        # what devices took from the broadcast (the same bundle bytes, not pulled)
        "bytes_from_broadcast_per_device": int(final.get("from_broadcast_bytes", 0)
                                               / max(n, 1)),
        "chunks_served": counters.get("chunks_served", 0),
        # job statuses the controller read (steps paced, ends always): messages per update
        "job_statuses": counters.get("job_statuses", 0),
        # what left the controller for the bundle: each file broadcast once, the blocks
        # devices pulled (with broadcast: repairs), and TUF metadata
        "transport": counters.get("transport", "pull"),
        "bytes_broadcast": counters.get("broadcast_bytes", 0),
        "bytes_broadcast_metadata": counters.get("broadcast_metadata_bytes", 0),
        "bytes_repaired": counters.get("target_bytes_served", 0)
        if counters.get("transport") == "broadcast" else 0,
        "bytes_bundle_pulled": counters.get("target_bytes_served", 0),
        "bytes_metadata_served": counters.get("metadata_bytes_served", 0),
        "bytes_out_of_controller": counters.get("broadcast_bytes", 0)
        + counters.get("target_bytes_served", 0) + counters.get("metadata_bytes_served", 0),
        "chunks_lost": final.get("chunks_lost", 0),
        "connects": final.get("connects", 0), "connect_failures": final.get("connect_failures", 0),
        "commands_rejected": dict(final.get("rejected", {})),
        "inferences": final.get("inferences", 0),
        "cpu_s_timed_part": final.get("cpu_s", {}),
        "controller_cpu_by_thread_s": final.get("controller_threads_cpu_s", {}),
        "controller_cpu_ms_per_device": round(
            1000.0 * final.get("cpu_s", {}).get("controller", 0.0) / max(n, 1), 2),
    })
    produced, acked = final.get("summaries_produced", 0), final.get("summaries_acked", 0)
    figures["telemetry"] = {
        "summaries_produced": produced, "summaries_acked": acked,
        "summaries_stored_by_controller": counters.get("summaries_stored", 0),
        "duplicates_at_controller": counters.get("summaries_duplicate", 0),
        "completeness_pct": round(100.0 * acked / produced, 2) if produced else None}
    figures["targets"] = targets(figures, n)
    outcomes = Counter(d["outcome"] for d in devices)
    dep = None
    if deployment is not None:
        dep = {"id": deployment["id"], "state": deployment["state"],
               "waves": len((deployment.get("plan") or {}).get("waves") or ()) or 1,
               "jobs": dict(Counter(j["state"] for j in deployment.get("jobs", [])))}
    return {
        "scenario": {"name": scenario.name, "description": scenario.description,
                     "source": scenario.source, "seed": scenario.seed,
                     "profiles": dict(Counter(d.profile.name for d in plan.devices)),
                     "faults": [{"kind": f.kind, "start": f.start, "end": f.end,
                                 "devices": len(plan.picked.get(i, ())),
                                 **({"loss": f.loss} if f.kind == "flaky" else {}),
                                 **({"seconds": f.seconds} if f.kind == "clock_skew" else {})}
                                for i, f in enumerate(scenario.faults)]},
        "model": {"name": model, "bundle_bytes": bundle_bytes, "target_version": target,
                  "first_version": setup.get("first_version")},
        "setup": setup, "fanout_baseline": fanout, "figures": figures,
        "settled": settled_at is not None,
        "settled_at_s": None if settled_at is None else round(settled_at, 2),
        "deployment": dep, "outcomes": dict(outcomes), "events": events,
        "devices": devices, "timeline": samples,
    }


# The scale targets for a rollout (docs/simulations.md): all healthy within a
# minute, and at most three times what the broker alone needs to fan out the same bytes.
HEALTHY_WITHIN_S = 60.0
MAX_RATIO_TO_FANOUT = 3.0
def fanout_why(figures: dict[str, Any], devices: int) -> str:
    """Why a rollout takes longer than the raw fan-out, from the run's own figures: how
    the bundle travelled, what left the controller, and whose CPU the time went to."""
    cpu = figures.get("cpu_s_timed_part") or {}
    n = max(devices, 1)
    total = sum(float(v) for v in cpu.values())
    cores = os.cpu_count() or 1
    if figures.get("transport") == "broadcast":
        moved = (f"the bundle was broadcast once ({_fmt_bytes(figures.get('bytes_broadcast', 0))}"
                 f", {_fmt_bytes(figures.get('bytes_repaired', 0))} repaired by pulls), so "
                 f"the bytes are not what takes the time")
    else:
        moved = (f"each device pulled its bundle chunk by chunk from the controller "
                 f"({_fmt_bytes(figures.get('bytes_bundle_pulled', 0))} through it)")
    return (f"{moved}; {_fmt_bytes(figures.get('bytes_out_of_controller', 0))} left the "
            f"controller in all (TUF metadata: "
            f"{_fmt_bytes(figures.get('bytes_metadata_served', 0))}); CPU in the rollout: "
            f"devices {1000 * cpu.get('shards', 0.0) / n:.1f} ms per update (TUF refresh and "
            f"verification, install, model load, smoke test, statuses), controller "
            f"{1000 * cpu.get('controller', 0.0) / n:.1f} ms per device ({_by_thread(figures, n)})"
            f", broker {cpu.get('broker', 0.0):.1f} s: {total:.1f} CPU-seconds in all, "
            f"{total / cores:.1f} s of this machine's {cores} cores; while the raw fan-out is "
            f"one publish the broker copies to every subscriber")


def _by_thread(figures: dict[str, Any], n: int) -> str:
    """The controller's CPU per device by thread, largest first."""
    threads = figures.get("controller_cpu_by_thread_s") or {}
    # the rest of the controller's figure is the deploy call, on the caller's thread
    call = float((figures.get("cpu_s_timed_part") or {}).get("controller", 0.0)) \
        - sum(threads.values())
    parts = sorted([*threads.items(), ("deploy-call", call)], key=lambda kv: -kv[1])
    named = ", ".join(f"{_THREADS.get(_thread_kind(k), k)} {1000 * v / n:.1f}"
                      for k, v in parts if 1000 * v / n >= 0.05)
    return named or "statuses, births, desired states, metadata requests"


def _thread_kind(name: str) -> str:
    return "mqtt" if name.startswith("paho-mqtt-client-") else name


# what each of the controller's threads does in a rollout
_THREADS = {"mqtt": "MQTT: receiving, sending, answering pulls",
            "device-records": "births and statuses",
            "rollouts": "rollout steps", "ingest": "telemetry", "broadcast": "broadcast",
            "telemetry-upkeep": "upkeep",
            "deploy-call": "the deploy call (each device's desired state stored and sent)"}


def targets(figures: dict[str, Any], devices: int) -> list[dict[str, Any]]:
    """Each rollout target with the measured figure, pass or missed, and by how much."""
    out: list[dict[str, Any]] = []
    healthy = figures.get("time_to_all_healthy_s")
    if "time_to_all_healthy_s" in figures:
        ok = healthy is not None and healthy <= HEALTHY_WITHIN_S
        out.append({"target": f"all {devices} devices healthy within {HEALTHY_WITHIN_S:.0f} s",
                    "figure": healthy, "limit": HEALTHY_WITHIN_S, "met": ok,
                    "by": None if ok or healthy is None else round(healthy - HEALTHY_WITHIN_S, 1)})
    ratio = figures.get("ratio_to_fanout")
    if ratio is not None:
        ok = ratio <= MAX_RATIO_TO_FANOUT
        out.append({"target": f"rollout at most {MAX_RATIO_TO_FANOUT:.0f}x the raw fan-out",
                    "figure": ratio, "limit": MAX_RATIO_TO_FANOUT, "met": ok,
                    "by": None if ok else round(ratio / MAX_RATIO_TO_FANOUT, 1),
                    **({} if ok else {"why": fanout_why(figures, devices)})})
    return out


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, value) rows for a short human summary."""
    f = report["figures"]
    rows = [("devices / shards", f"{f['devices']} / {f['shards']}")]
    if "time_to_all_healthy_s" in f:
        rows.append(("time to all healthy", _secs(f["time_to_all_healthy_s"])))
        rows.append(("time to reachable converged", _secs(f["time_to_reachable_converged_s"])))
    if "fanout_baseline_s" in f:
        rows.append(("raw broker fan-out, same bytes", _secs(f["fanout_baseline_s"])))
        rows.append(("rollout / raw fan-out", "-" if f.get("ratio_to_fanout") is None
                     else f"{f['ratio_to_fanout']:.2f}x"))
    if "converged_pct" in f:
        rows.append(("converged (all / reachable)",
                     f"{f['converged_pct']:.1f}% / {f['reachable_converged_pct']:.1f}%"))
    t = f["telemetry"]
    rows.append(("telemetry acked / produced", f"{t['summaries_acked']} / "
                 f"{t['summaries_produced']}" + (f" ({t['completeness_pct']:.1f}%)"
                                                 if t["completeness_pct"] is not None else "")))
    rows.append(("memory per device (shard RSS growth)", _fmt_bytes(f["rss_per_device_bytes"])))
    rows.append(("bytes fetched per device", _fmt_bytes(f["bytes_fetched_per_device"])))
    rows.append(("outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(report["outcomes"].items()))))
    for t in f.get("targets", []):
        verdict = "met" if t["met"] else (
            "missed" if t["by"] is None else
            f"missed by {t['by']} s" if "healthy" in t["target"] else f"missed: {t['by']}x over")
        rows.append((f"target: {t['target']}", verdict + (f" ({t['why']})" if t.get("why")
                                                          else "")))
    return rows


def _secs(v: float | None) -> str:
    return "not reached" if v is None else f"{v:.1f} s"


# -- SVG charts -------------------------------------------------------------------------
def _nice(top: float) -> float:
    if top <= 0:
        return 1.0
    step = 10 ** math.floor(math.log10(top))
    for m in (1, 2, 2.5, 5, 10):
        if top <= m * step:
            return m * step
    return 10 * step


class _Chart:
    """A small x/y chart drawn as SVG."""

    W, H, L, R, T, B = 780, 250, 60, 170, 30, 36

    def __init__(self, title: str, x_max: float, y_max: float, y_label: str) -> None:
        self.title, self.x_max, self.y_max = title, max(x_max, 1e-9), _nice(y_max)
        self.y_label = y_label
        self.parts: list[str] = []
        self.legend: list[tuple[str, str]] = []

    def x(self, v: float) -> float:
        return self.L + (self.W - self.L - self.R) * v / self.x_max

    def y(self, v: float) -> float:
        return self.H - self.B - (self.H - self.T - self.B) * v / self.y_max

    def span(self, x0: float, x1: float, color: str, label: str) -> None:
        x0c, x1c = self.x(max(x0, 0)), self.x(min(x1, self.x_max))
        self.parts.append(f'<rect x="{x0c:.1f}" y="{self.T}" width="{max(x1c - x0c, 1.5):.1f}" '
                          f'height="{self.H - self.T - self.B}" fill="{color}" opacity="0.45">'
                          f'<title>{html.escape(label)}</title></rect>')

    def mark(self, x: float, label: str) -> None:
        xc = self.x(x)
        self.parts.append(f'<line x1="{xc:.1f}" x2="{xc:.1f}" y1="{self.T}" '
                          f'y2="{self.H - self.B}" stroke="#555" stroke-dasharray="3,3"/>'
                          f'<text x="{xc + 3:.1f}" y="{self.T + 10}" font-size="10" '
                          f'fill="#333">{html.escape(label)}</text>')

    def line(self, points: list[tuple[float, float]], color: str, label: str,
             dash: str = "") -> None:
        if not points:
            return
        path = " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in points)
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                          f'stroke-width="2"{extra}/>')
        self.legend.append((color, label))

    def area(self, xs: list[float], low: list[float], high: list[float], color: str,
             label: str) -> None:
        pts = [(self.x(a), self.y(b)) for a, b in zip(xs, high, strict=True)] + \
              [(self.x(a), self.y(b)) for a, b in reversed(list(zip(xs, low, strict=True)))]
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
        self.parts.append(f'<polygon points="{path}" fill="{color}" opacity="0.85"/>')
        self.legend.append((color, label))

    def svg(self) -> str:
        axes = [f'<text x="{self.L}" y="18" font-size="14" font-weight="bold">'
                f'{html.escape(self.title)}</text>']
        for i in range(6):
            v = self.y_max * i / 5
            yc = self.y(v)
            label = f"{v:g}" if v < 1e4 else f"{v:,.0f}"
            axes.append(f'<line x1="{self.L}" x2="{self.W - self.R}" y1="{yc:.1f}" '
                        f'y2="{yc:.1f}" stroke="#e5e5e5"/><text x="{self.L - 6}" '
                        f'y="{yc + 4:.1f}" font-size="10" text-anchor="end">{label}</text>')
        step = _nice(self.x_max / 8)
        t = 0.0
        while t <= self.x_max + 1e-9:
            xc = self.x(t)
            axes.append(f'<text x="{xc:.1f}" y="{self.H - self.B + 14}" font-size="10" '
                        f'text-anchor="middle">{t:g}</text>')
            t += step
        axes.append(f'<text x="{(self.L + self.W - self.R) / 2:.0f}" y="{self.H - 6}" '
                    f'font-size="11" text-anchor="middle">seconds since the timed part '
                    f'started</text><text x="14" y="{(self.T + self.H - self.B) / 2:.0f}" '
                    f'font-size="11" transform="rotate(-90 14 '
                    f'{(self.T + self.H - self.B) / 2:.0f})" text-anchor="middle">'
                    f'{html.escape(self.y_label)}</text>')
        legend = [f'<rect x="{self.W - self.R + 12}" y="{self.T + 16 * i}" width="12" '
                  f'height="10" fill="{c}"/><text x="{self.W - self.R + 28}" '
                  f'y="{self.T + 16 * i + 9}" font-size="11">{html.escape(lab)}</text>'
                  for i, (c, lab) in enumerate(self.legend)]
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.W}" height="{self.H}" '
                f'viewBox="0 0 {self.W} {self.H}" font-family="sans-serif">'
                + "".join(self.parts + axes + legend) + "</svg>")


def _decorate(chart: _Chart, report: dict[str, Any]) -> None:
    faults = report["scenario"]["faults"]
    named: set[str] = set()
    for f in faults:
        if f["end"] is not None and f["kind"] in _SPAN_COLORS:
            label = {"broker_restart": "broker down"}.get(f["kind"], f["kind"].replace("_", " "))
            chart.span(f["start"], f["end"], _SPAN_COLORS[f["kind"]],
                       f"{label} ({f['devices']} devices)" if f["devices"] else label)
            if label not in named:
                named.add(label)
                chart.legend.append((_SPAN_COLORS[f["kind"]], label))
    for e in report["events"]:
        if e["kind"] in ("deploy", "fill_disk", "crash"):
            chart.mark(e["t"], {"deploy": "deploy", "fill_disk": "disk full",
                                "crash": "crash"}[e["kind"]])


def _charts(report: dict[str, Any]) -> list[str]:
    rows = report["timeline"]
    if not rows:
        return []
    t_max = rows[-1]["t"]
    n = report["figures"]["devices"]
    xs = [r["t"] for r in rows]
    out = []
    progress = _Chart("Rollout progress", t_max, 100, "% of devices")
    _decorate(progress, report)
    if report["model"]["target_version"] is not None:
        progress.line([(r["t"], 100 * r["converged"] / n) for r in rows], _PALETTE[0],
                      "healthy on target")
        progress.line([(r["t"], 100 * r["reachable_converged"] / max(r["reachable"], 1))
                       for r in rows], _PALETTE[2], "of reachable", "5,3")
    progress.line([(r["t"], 100 * r["connected"] / n) for r in rows], _PALETTE[1], "connected")
    out.append(progress.svg())
    labels = sorted({k for r in rows for k in r["versions"]}, key=lambda k: (k == "None", k))
    versions = _Chart("Versions in the fleet", t_max, n, "devices")
    _decorate(versions, report)
    low = [0.0] * len(rows)
    for i, label in enumerate(labels):
        high = [lo + r["versions"].get(label, 0) for lo, r in zip(low, rows, strict=True)]
        versions.area(xs, low, high, _PALETTE[i % len(_PALETTE)],
                      "no model" if label == "None" else f"v{label}")
        low = high
    down = [lo + (n - r["running"]) for lo, r in zip(low, rows, strict=True)]
    if any(d > lo for d, lo in zip(down, low, strict=True)):
        versions.area(xs, low, down, "#bbbbbb", "down (crashed)")
    out.append(versions.svg())
    tele = [r for r in rows if "summaries_produced" in r]
    top = max([r["summaries_stored"] for r in rows] +
              [r["summaries_produced"] for r in tele] + [1])
    telemetry = _Chart("Telemetry summaries delivered", t_max, top, "summaries (cumulative)")
    _decorate(telemetry, report)
    telemetry.line([(r["t"], r["summaries_produced"]) for r in tele], _PALETTE[1],
                   "made by devices")
    telemetry.line([(r["t"], r["summaries_acked"]) for r in tele], _PALETTE[2], "acked",
                   "5,3")
    telemetry.line([(r["t"], r["summaries_stored"]) for r in rows], _PALETTE[0],
                   "stored by controller")
    out.append(telemetry.svg())
    mb = [r["fetched_bytes"] / 1e6 for r in rows]
    base = mb[0] if mb else 0.0
    need = report["model"]["bundle_bytes"] * n / 1e6 if report["model"]["target_version"] else 0
    transfer = _Chart("Bytes fetched by devices", t_max, max(max(mb) - base, need, 1e-3), "MB")
    _decorate(transfer, report)
    transfer.line([(x, m - base) for x, m in zip(xs, mb, strict=True)], _PALETTE[0],
                  "bundle bytes fetched")
    if need:
        transfer.line([(0, need), (t_max, need)], "#999999", "bundle x devices", "2,4")
    out.append(transfer.svg())
    return out


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td></tr>"
                               for a, b in rows) + "</table>"


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page: figures, charts, faults, devices that did not converge."""
    s = report["scenario"]
    faults = [(f"{f['kind']}", f"t={f['start']:g}s" + (f"..{f['end']:g}s" if f["end"] else "")
               + (f", {f['devices']} devices" if f["devices"] else "")
               + (f", loss {f['loss']:.0%}" if "loss" in f else "")
               + (f", {f['seconds']:+g}s" if "seconds" in f else "")) for f in s["faults"]]
    odd = [d for d in report["devices"] if d["outcome"] != "healthy on target"][:100]
    odd_rows = "".join(
        f"<tr><td>{html.escape(d['id'])}</td><td>{html.escape(d['profile'])}</td>"
        f"<td>{html.escape(d['outcome'])}</td><td>{html.escape(str(d['job_state']))}</td>"
        f"<td>{html.escape(d['reason'])}</td><td>{html.escape(', '.join(d['faults']))}</td>"
        f"<td>{html.escape(d['detail'])}</td></tr>" for d in odd)
    figures = json.dumps(report["figures"], indent=2)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>edgefleet simulation: {html.escape(s['name'])}</title>
<style>body{{font-family:sans-serif;margin:24px;max-width:980px;color:#222}}
table{{border-collapse:collapse;margin:8px 0 18px}}th,td{{border:1px solid #ddd;padding:4px 8px;
text-align:left;font-size:13px}}th{{background:#f5f5f5}}svg{{display:block;margin:10px 0}}
pre{{background:#f7f7f7;padding:8px;font-size:12px}}</style></head><body>
<h1>{html.escape(s['name'])}</h1><p>{html.escape(s['description'])}</p>
{_table(summary_rows(report))}
{''.join(_charts(report))}
<h2>Faults</h2>{_table(faults) if faults else '<p>none</p>'}
<h2>Devices not healthy on the target ({len(odd)} shown)</h2>
<table><tr><th>device</th><th>profile</th><th>outcome</th><th>job</th><th>reason</th>
<th>faults</th><th>detail</th></tr>{odd_rows}</table>
<h2>All figures</h2><pre>{html.escape(figures)}</pre></body></html>
"""


def write_report(report: dict[str, Any], out: Path) -> None:
    """Write ``report.json`` and ``report.html`` into ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.html").write_text(render_html(report))
