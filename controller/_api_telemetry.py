"""HTTP routes for fleet telemetry queries and alerts (read-only, ``VIEWER``).

``GET /v1/telemetry/query`` answers counts, errors by kind, p50/p95/p99 from merged
latency sketches (stating their relative error ``alpha``), drift and the share of
replayed history, over raw summaries and hourly rollups, for any device set, model
version, deployment and time range. ``GET /v1/alerts`` lists alerts (active ones
unless ``all=true``). See docs/alerts-and-queries.md.
"""

# FastAPI reads annotations at runtime, so no "from __future__ import annotations" here.

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, Query

from edgefleet.contract import InvalidRequest

from ._api_types import VersionQuery
from .aggregate import ALPHA, Aggregate

if TYPE_CHECKING:
    from .service import FleetController

__all__ = ["SELECTOR_PATTERN", "add_telemetry_routes", "parse_selector", "query_telemetry"]

GROUPS = {"device": ("device",), "version": ("model", "version"), "none": ()}
GroupBy = Literal["device", "version", "none"]


_BLANK = " \t\n"
_PART = r"[^,=]*[^,= \t\n][^,=]*=[^,]*"  # key=value, the key not blank
# what parse_selector accepts, for the API's schema: parts split by commas, empty ones skipped
SELECTOR_PATTERN = rf"^([ \t\n]*|{_PART})(,([ \t\n]*|{_PART}))*$"


def parse_selector(text: str | None) -> dict[str, str]:
    """``"site=lab,hw=pi5"`` → ``{"site": "lab", "hw": "pi5"}``; spaces, tabs and newlines around
    keys and values are dropped, empty parts skipped (``SELECTOR_PATTERN`` says the same).

    Raises:
        ValueError: a part that is not ``key=value``.
    """
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip(_BLANK):
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip(_BLANK):
            raise InvalidRequest(f"selector parts are key=value, got {part!r}")
        out[key.strip(_BLANK)] = value.strip(_BLANK)
    return out


def query_telemetry(ctl: "FleetController", *, device: str | None = None,
                    selector: str | None = None, model: str | None = None,
                    version: int | None = None, deployment: str | None = None,
                    since: float | None = None, until: float | None = None,
                    group_by: GroupBy = "none") -> dict[str, Any]:
    """Aggregate telemetry over raw summaries and rollups (see the module docstring).

    A deployment selects its target devices and, unless given, its model version,
    from its creation on.

    Raises:
        NotFoundError: an unknown deployment.
        InvalidRequest: a malformed selector.
        ValueError: an unknown ``group_by``.
    """
    from .service import select_devices

    if group_by not in GROUPS:
        raise ValueError(f"group_by is one of {sorted(GROUPS)}")
    devices: set[str] | None = {device} if device else None
    tags = parse_selector(selector)
    if tags:
        matched = set(select_devices(ctl.store.list_devices(), ids=None, selector=tags))
        devices = matched if devices is None else devices & matched
    if deployment:
        dep = ctl.store.get_deployment(deployment)
        targets = {j["device"] for j in dep["jobs"]}
        devices = targets if devices is None else devices & targets
        model = model or dep["model"]
        version = version if version is not None else dep["version"]
        since = max(since or dep["created_at"], dep["created_at"])
    groups = ctl.store.telemetry.aggregate(
        group_by=GROUPS[group_by], devices=sorted(devices) if devices is not None else None,
        model=model, version=version, since=since, until=until)
    total = Aggregate()
    answers = []
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        total.merge(groups[key])
        answers.append({"key": dict(zip(GROUPS[group_by], key, strict=True)),
                        **groups[key].answer()})
    return {
        "alpha": ALPHA,
        "resolution": "raw summaries per window; rollups per hour (an hour counts when it "
                      "starts within since..until)",
        "filters": {"device": device, "selector": tags, "model": model, "version": version,
                    "deployment": deployment, "since": since, "until": until,
                    "devices": sorted(devices) if devices is not None else None},
        "group_by": group_by, "groups": answers, "total": total.answer(),
    }


def add_telemetry_routes(app: FastAPI, ctl: "FleetController") -> None:
    """Add the telemetry query and alert routes to the controller's app."""

    @app.get("/v1/telemetry/query")
    def telemetry_query(
        device: str | None = None,
        # the pattern is stated, parse_selector enforces it (with a message naming the part)
        selector: Annotated[str | None, Query(
            description="tags, k=v[,k=v…]",
            json_schema_extra={"pattern": SELECTOR_PATTERN})] = None,
        model: str | None = None, version: VersionQuery = None,
        deployment: str | None = None,
        since: Annotated[float | None, Query(description="window start ≥, epoch s")] = None,
        until: Annotated[float | None, Query(description="window start <, epoch s")] = None,
        group_by: GroupBy = "none",
    ) -> dict[str, Any]:
        return query_telemetry(ctl, device=device, selector=selector, model=model,
                               version=version, deployment=deployment, since=since,
                               until=until, group_by=group_by)

    @app.get("/v1/alerts")
    def list_alerts(
        include_resolved: Annotated[bool, Query(alias="all",
                                                description="resolved ones too")] = False,
    ) -> list[dict[str, Any]]:
        return ctl.alerts.active(include_resolved=include_resolved)
