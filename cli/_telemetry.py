"""Fleet telemetry queries and alerts: thin layers over the controller API."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

import typer

from ._admin import JsonOpt, TokenOpt, UrlOpt
from ._client import ApiClient
from ._output import console, emit, fail, table, when
from ._parse import parse_duration

__all__ = ["alerts_app", "parse_when", "telemetry_app"]

telemetry_app = typer.Typer(help="Fleet telemetry: latency, errors, drift, by device, "
                                 "version, deployment and time.", no_args_is_help=True)
alerts_app = typer.Typer(help="Alerts: drift, latency regressions, offline devices, full "
                              "buffers, rollbacks.", no_args_is_help=True)


def parse_when(text: str, now: float) -> float:
    """A point in time: ``2h`` / ``30m`` (that long ago), epoch seconds, or ISO 8601.

    Raises:
        ValueError: none of these.
    """
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if value > 1e8 else now - value  # small bare numbers: seconds ago
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use e.g. 2h, 2024-05-01T10:00, or epoch "
                         f"seconds)") from None
    if stamp.tzinfo is None:
        stamp = stamp.astimezone()  # local time, like the tables show
    return stamp.timestamp()


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _label(key: dict[str, Any]) -> str:
    if "device" in key:
        return str(key["device"])
    if "model" in key:
        return f"{key['model']}:{key['version']}"
    return "all"


@telemetry_app.command("query")
def telemetry_query(
    device: Annotated[str | None, typer.Option(help="One device id.")] = None,
    selector: Annotated[str | None, typer.Option(help="Devices by tags: k=v[,k=v].")] = None,
    model: Annotated[str | None, typer.Option(help="Model name, or NAME:VERSION.")] = None,
    version: Annotated[int | None, typer.Option(help="Model version.")] = None,
    deployment: Annotated[str | None, typer.Option(help="A deployment: its devices and "
                                                        "version, since it started.")] = None,
    since: Annotated[str | None, typer.Option(help="Windows from: 2h (ago), ISO time or "
                                                   "epoch s.")] = None,
    until: Annotated[str | None, typer.Option(help="Windows before (same forms).")] = None,
    group_by: Annotated[str, typer.Option(help="device | version | none")] = "version",
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Inferences, errors, p50/p95/p99 latency (merged sketches), drift and replayed share."""
    params: dict[str, Any] = {"group_by": group_by}
    if model and ":" in model:
        model, _, v = model.partition(":")
        try:
            version = int(v)
        except ValueError:
            fail(f"--model takes NAME or NAME:VERSION, got {model}:{v}")
    now = time.time()
    try:
        for name, value in (("since", since), ("until", until)):
            if value is not None:
                params[name] = parse_when(value, now)
    except ValueError as exc:
        fail(str(exc))
    named: dict[str, Any] = {"device": device, "selector": selector, "model": model,
                             "version": version, "deployment": deployment}
    params.update({k: v for k, v in named.items() if v is not None})
    answer = ApiClient(url, token).call("GET", "/v1/telemetry/query", params=params)
    if emit(answer, as_json):
        return
    rows = [(_label(g["key"]), g["devices"], g["windows"], f"{g['count']:,}",
             f"{g['errors']:,} ({_pct(g['error_rate'])})", _ms(g["latency_ms"]["p50"]),
             _ms(g["latency_ms"]["p95"]), _ms(g["latency_ms"]["p99"]),
             f"{_ms(g['drift']['mean'])} / {_ms(g['drift']['max'])}",
             _pct(g["historical_share"])) for g in answer["groups"]]
    table(f"telemetry by {group_by} — latency in ms, within ±{answer['alpha']:.0%} "
          f"(merged DDSketch)",
          [group_by if group_by != "none" else "", "devices", "windows", "inferences",
           "errors", "p50", "p95", "p99", "drift mean / max", "replayed"], rows)
    kinds = answer["total"]["errors_by_kind"]
    if kinds:
        console.print("errors by kind: " + ", ".join(f"{k} {n:,}" for k, n in kinds.items()))


@alerts_app.command("list")
def alerts_list(
    show_all: Annotated[bool, typer.Option("--all", help="Resolved alerts too.")] = False,
    url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Alerts that are firing now (with --all: resolved ones too)."""
    rows = ApiClient(url, token).call("GET", "/v1/alerts",
                                      params={"all": "true" if show_all else "false"})
    if not emit(rows, as_json):
        table("alerts" if show_all else "active alerts",
              ["severity", "kind", "subject", "since", "state", "what"],
              [(r["severity"], r["kind"], r["subject"], when(r["first_at"]),
                "active" if r["active"] else f"resolved {when(r['resolved_at'])}", r["text"])
               for r in rows])
