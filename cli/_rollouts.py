"""Deploy with a rollout strategy, and watch or steer deployments."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from ._admin import JsonOpt, TokenOpt, UrlOpt, split_ref
from ._client import ApiClient
from ._output import console, emit, fail, table
from ._parse import parse_duration, parse_fraction, parse_percent, parse_waves

__all__ = ["deployments_app", "register_deploy"]

deployments_app = typer.Typer(help="Deployments: progress, timeline, pause/resume/abort/rollback.",
                              no_args_is_help=True)
TERMINAL = ("succeeded", "failed", "aborted", "rolled_back", "rejected", "dropped")


def _policy(waves: str | None, canary: str | None, health_window: str | None,
            max_failure_rate: str | None, max_p95_regression: str | None,
            max_error_rate: str | None, wave_timeout: str | None, on_breach: str | None,
            silent: str | None, sample: str | None, min_agreement: str | None,
            max_latency_ratio: float | None, duration: str | None, split: str | None,
            auto_promote: bool) -> dict[str, Any]:
    p: dict[str, Any] = {}
    parsed = (  # (given text, policy field, parser)
        (waves, "waves", parse_waves),
        (canary, "waves", lambda t: [parse_percent(t), 100.0]),
        (health_window, "health_window_s", parse_duration),
        (max_failure_rate, "max_failure_rate", parse_fraction),
        (max_p95_regression, "max_p95_regression", parse_fraction),
        (max_error_rate, "max_error_rate", parse_fraction),
        (wave_timeout, "wave_timeout_s", parse_duration),
        (sample, "sample", parse_fraction),
        (min_agreement, "min_agreement", parse_fraction),
        (duration, "duration_s", parse_duration),
        (split, "split", parse_percent),
    )
    try:
        for text, field, parse in parsed:
            if text:
                p[field] = parse(text)
    except ValueError as exc:
        fail(str(exc))
    if on_breach:
        p["on_breach"] = on_breach
    if silent:
        p["silent"] = silent
    if max_latency_ratio is not None:
        p["max_latency_ratio"] = max_latency_ratio
    if not auto_promote:
        p["auto_promote"] = False
    return p


def register_deploy(app: typer.Typer) -> None:
    @app.command("deploy")
    def deploy(
        ref: Annotated[str, typer.Argument(help="NAME:VERSION to deploy.")],
        device: Annotated[list[str] | None, typer.Option(
            "--device", "-d", help="Target device id (repeat).")] = None,
        selector: Annotated[list[str] | None, typer.Option(
            "--selector", "-s", help="Tag match key=value (repeat).")] = None,
        strategy: Annotated[str, typer.Option(
            help="all-at-once | staged | canary | shadow | ab")] = "all-at-once",
        waves: Annotated[str | None, typer.Option(help="Staged waves, e.g. 5%,25%,100%.")]
        = None,
        canary: Annotated[str | None, typer.Option(help="Canary share, e.g. 10%.")] = None,
        health_window: Annotated[str | None, typer.Option(
            help="Device-side health window after activation, e.g. 120s.")] = None,
        max_failure_rate: Annotated[str | None, typer.Option(
            help="Failed devices tolerated per wave, e.g. 2%.")] = None,
        max_p95_regression: Annotated[str | None, typer.Option(
            help="p95 latency increase tolerated vs the old version, e.g. 20%.")] = None,
        max_error_rate: Annotated[str | None, typer.Option(
            help="Inference errors tolerated in the new cohort, e.g. 1%.")] = None,
        wave_timeout: Annotated[str | None, typer.Option(
            help="No wave waits longer than this for its devices, e.g. 10m.")] = None,
        on_breach: Annotated[str | None, typer.Option(help="pause | abort | rollback")] = None,
        silent: Annotated[str | None, typer.Option(
            help="Devices silent at the wave timeout count as: failed | skipped")] = None,
        sample: Annotated[str | None, typer.Option(help="Shadow: inputs mirrored, e.g. 20%.")]
        = None,
        min_agreement: Annotated[str | None, typer.Option(
            help="Shadow: top-1 agreement needed to promote, e.g. 98%.")] = None,
        max_latency_ratio: Annotated[float | None, typer.Option(
            help="Shadow: candidate/active latency allowed, e.g. 1.2.")] = None,
        duration: Annotated[str | None, typer.Option(help="Shadow/A-B duration, e.g. 30m.")]
        = None,
        split: Annotated[str | None, typer.Option(help="A/B: % of devices on the new version.")]
        = None,
        auto_promote: Annotated[bool, typer.Option(
            help="Shadow: promote by itself when the thresholds hold.")] = True,
        wait: Annotated[float, typer.Option(help="Seconds to wait for the result (0: don't).")]
        = 0.0,
        url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Deploy a version with a rollout strategy (all devices if no target is given)."""
        name, version = split_ref(ref)
        sel = {}
        for s in selector or []:
            k, eq, v = s.partition("=")
            if not eq:
                fail(f"selector must be key=value, got {s!r}")
            sel[k] = v
        policy = _policy(waves, canary, health_window, max_failure_rate, max_p95_regression,
                         max_error_rate, wave_timeout, on_breach, silent, sample, min_agreement,
                         max_latency_ratio, duration, split, auto_promote)
        client = ApiClient(url, token)
        dep = client.call("POST", "/v1/deployments", json={
            "model": name, "version": version, "devices": device or None,
            "selector": sel or None, "strategy": strategy, "policy": policy})
        deadline = time.monotonic() + wait
        while wait and dep["state"] not in (*TERMINAL, "pending_approval") and \
                time.monotonic() < deadline:
            time.sleep(0.5)
            dep = client.call("GET", f"/v1/deployments/{dep['id']}")
        show_deployment(dep, as_json)


def show_deployment(dep: dict[str, Any], as_json: bool) -> None:
    if emit(dep, as_json):
        return
    console.print(f"[bold]{dep['id']}[/bold] {dep['model']}:{dep['version']} "
                  f"({dep['strategy']}) — [bold]{dep['state']}[/bold]"
                  + (f" ({dep['reason']})" if dep.get("reason") else ""))
    if dep["state"] == "pending_approval":
        console.print("production devices: waiting for another operator's "
                      f"`edgefleet deployments approve {dep['id']}`")
    elif dep.get("approved_by"):
        console.print(f"approved by {dep['approved_by']} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(dep['approved_at']))}")
    if dep.get("waves"):
        table("waves", ["wave", "devices", "healthy", "failed", "silent", "pending", "outcome"],
              [(w["index"] + 1, w["devices"], w["healthy"], w["failed"], w["silent"],
                w["pending"], w["outcome"]) for w in dep["waves"]])
    if dep.get("arms"):
        table("arms", ["arm", "devices", "version", "inferences", "errors", "p95 ms"],
              [(arm, a["devices"], a["version"], a["inferences"], a["errors"],
                f"{a['p95_ms']:.3f}" if a.get("p95_ms") else "-")
               for arm, a in dep["arms"].items()])
    if dep.get("shadow"):
        sh = dep["shadow"]
        console.print(f"shadow: {sh.get('samples', 0)} samples, agreement "
                      f"{sh.get('agreement')}, latency ratio {sh.get('latency_ratio')}")
    table("devices", ["device", "state", "reason", "progress", "detail"],
          [(j["device"], j["state"], j["reason"],
            f"{j['progress'].get('bytes', 0):,}/{j['progress'].get('total', 0):,}"
            if j["progress"] else "", j["detail"][:60]) for j in dep["jobs"]])
    if dep.get("events"):
        table("timeline", ["time", "who", "event", "detail"],
              [(time.strftime("%H:%M:%S", time.localtime(e["ts"])), e["actor"], e["kind"],
                json.dumps(e["detail"])[:80]) for e in dep["events"]])


@deployments_app.command("show")
def deployments_show(dep_id: Annotated[str, typer.Argument(help="Deployment id.")],
                     url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Show a deployment: waves or arms, every device's job, the timeline."""
    show_deployment(ApiClient(url, token).call("GET", f"/v1/deployments/{dep_id}"), as_json)


@deployments_app.command("list")
def deployments_list(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List deployments."""
    rows = ApiClient(url, token).call("GET", "/v1/deployments")
    if not emit(rows, as_json):
        table("deployments", ["id", "model", "strategy", "state", "created by"],
              [(r["id"], f"{r['model']}:{r['version']}", r["strategy"], r["state"],
                r["created_by"]) for r in rows])


def _render(dep: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_row(f"[bold]{dep['id']}[/bold] {dep['model']}:{dep['version']} "
                 f"({dep['strategy']}) — [bold]{dep['state']}[/bold] {dep.get('reason', '')}")
    groups = dep.get("waves") or []
    if not groups:
        done = sum(j["state"] in ("healthy", "shadowing", "reverted") for j in dep["jobs"])
        groups = [{"index": 0, "devices": len(dep["jobs"]), "healthy": done, "failed": sum(
            j["state"] in ("failed", "rolled_back") for j in dep["jobs"]), "outcome": ""}]
    bars = Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total} healthy  {task.fields[extra]}"))
    for w in groups:
        bars.add_task(f"wave {w['index'] + 1}", total=max(w["devices"], 1),
                      completed=w["healthy"],
                      extra=f"failed {w['failed']}  {w.get('outcome', '')}")
    grid.add_row(bars)
    if dep.get("events"):
        e = dep["events"][-1]
        grid.add_row(f"last event: {e['kind']} by {e['actor']}")
    return grid


@deployments_app.command("watch")
def deployments_watch(
    dep_id: Annotated[str, typer.Argument(help="Deployment id.")],
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds (0: never).")]
    = 0.0,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Follow a deployment live until it ends (--json: one JSON object per line per change)."""
    client = ApiClient(url, token)
    deadline = time.monotonic() + timeout if timeout else None
    last = None
    if as_json:
        while True:
            dep = client.call("GET", f"/v1/deployments/{dep_id}")
            snapshot = json.dumps(dep, sort_keys=True, default=str)
            if snapshot != last:
                sys.stdout.write(snapshot + "\n")
                sys.stdout.flush()
                last = snapshot
            if dep["state"] in TERMINAL or (deadline and time.monotonic() > deadline):
                break
            time.sleep(interval)
    else:
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                dep = client.call("GET", f"/v1/deployments/{dep_id}")
                live.update(_render(dep))
                if dep["state"] in TERMINAL or (deadline and time.monotonic() > deadline):
                    break
                time.sleep(interval)
    if dep["state"] not in ("succeeded",):
        raise typer.Exit(0 if dep["state"] not in TERMINAL else 2)


def _action(name: str, doc: str) -> None:
    def command(dep_id: Annotated[str, typer.Argument(help="Deployment id.")],
                url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
        show_deployment(ApiClient(url, token).call("POST", f"/v1/deployments/{dep_id}/{name}"),
                        as_json)

    command.__doc__ = doc
    deployments_app.command(name)(command)


for _name, _doc in (("pause", "Stop starting new waves (devices mid-update finish)."),
                    ("resume", "Continue a paused deployment (after a breach: the next wave)."),
                    ("abort", "End the deployment; devices keep what they run now."),
                    ("rollback", "Send every touched device back to its previous version."),
                    ("promote", "Shadow/A-B: move every target device to the new version."),
                    ("drop", "Shadow/A-B: stop the candidate; the new arm goes back."),
                    ("approve", "Start a deployment to production devices that someone else "
                                "created (four-eyes).")):
    _action(_name, _doc)
