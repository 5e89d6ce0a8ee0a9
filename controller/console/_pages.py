"""The console's pages (``GET /ui/…``): what each shows, read from the store."""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse

from edgefleet.contract import InvalidRequest, NotFoundError
from edgefleet.contract.bundle import bundle_paths

from .._api_telemetry import parse_selector
from .._console_store import DEVICE_SORTS, DeviceQuery
from .._model_cards import model_card
from .._views import describe
from ..rollout import ACTIONS, ACTIVE, STRATEGIES, RolloutPolicy, action_applies, wave_failures
from ..service import select_devices
from ._charts import Series, bar_chart, data_table, line_chart
from ._render import page, signed_in

if TYPE_CHECKING:
    from ..service import FleetController

__all__ = ["add_pages"]

PAGE_SIZE = 50
SEEN = {"5m": 300.0, "1h": 3600.0, "1d": 86400.0}  # "last seen within"
UNSEEN = {"1h+": 3600.0, "1d+": 86400.0}  # "not seen for"
BUCKETS = 24


def _dep_row(dep: dict[str, Any]) -> dict[str, Any]:
    waves = len((dep.get("plan") or {}).get("waves") or [])
    return {**dep, "waves": waves}


def time_series(ctl: FleetController, *, devices: list[str] | None = None,
                model: str | None = None, since: float | None = None,
                ) -> dict[tuple[str, int], list[tuple[float, dict[str, Any]]]]:
    """Per model version, the telemetry of each of ``BUCKETS`` slices of time up to now,
    starting with the oldest window since ``since`` (default: a day ago), so a young
    fleet fills the chart."""
    now = ctl.clock.time()
    since = now - 86400.0 if since is None else since
    first = ctl.store.telemetry.aggregate(devices=devices, model=model, since=since)
    start = min((a.first_window for a in first.values() if a.first_window), default=None)
    if start is None:
        return {}
    width = max((now - start) / BUCKETS, 1.0)
    out: dict[tuple[str, int], list[tuple[float, dict[str, Any]]]] = {}
    for i in range(BUCKETS):
        t0 = start + i * width
        groups = ctl.store.telemetry.aggregate(
            group_by=("model", "version"), devices=devices, model=model, since=t0,
            until=t0 + width if i < BUCKETS - 1 else None, rollups_too=False)
        for (m, v), agg in groups.items():
            if m:
                out.setdefault((str(m), int(v)), []).append((t0 + width / 2, agg.answer()))
    return out


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def charts(series: dict[tuple[str, int], list[tuple[float, dict[str, Any]]]],
           what: str) -> list[dict[str, Any]]:
    """Latency p50/p95 and error rate over time, one line per version."""
    def named(pick: Any) -> list[Series]:
        return [Series(f"{m} v{v}", [(t, _finite(pick(a))) for t, a in pts])
                for (m, v), pts in sorted(series.items())]

    out = []
    for title, label, unit, pick in (
            (f"p50 latency {what}", "latency", "ms", lambda a: a["latency_ms"]["p50"]),
            (f"p95 latency {what}", "latency", "ms", lambda a: a["latency_ms"]["p95"]),
            (f"error rate {what}", "errors", "%",
             lambda a: None if a["error_rate"] is None else 100 * a["error_rate"])):
        lines = named(pick)
        out.append({"svg": line_chart(lines, title=title, y_label=label, y_unit=unit),
                    "table": data_table(lines, caption=title, y_unit=unit)})
    return out


def gates(view: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each gate of a deployment's policy with the value it was last judged on (a wave's
    failure rate from the orchestrator's own counts; the cohorts' error rate and p95)."""
    policy = RolloutPolicy.from_dict({**(view.get("policy") or {}),
                                      "strategy": view["strategy"]})
    new = (view.get("metrics") or {}).get("new") or {}
    base = (view.get("metrics") or {}).get("base") or {}
    judged_waves = result.get("waves") or {}
    rows: list[dict[str, Any]] = []
    for wave in view.get("waves", []):
        judged = judged_waves.get(str(wave["index"]))
        if judged is None:
            rows.append({"gate": f"wave {wave['index'] + 1} failure rate", "value": None,
                         "limit": policy.max_failure_rate, "ok": True, "detail": "not started"})
            continue
        failed, out_of = wave_failures(judged.get("counts") or {}, policy)
        rate = failed / out_of if out_of else None
        rows.append({"gate": f"wave {wave['index'] + 1} failure rate", "value": rate,
                     "limit": policy.max_failure_rate,
                     "ok": judged["outcome"] != "breached" or rate is None
                     or rate <= policy.max_failure_rate,
                     "detail": f"{failed} of {out_of} devices" + (
                         f"; {judged['detail']}" if judged.get("detail") else "")})
    if policy.max_error_rate is not None:
        rate = new["errors"] / new["count"] if new.get("count") else None
        rows.append({"gate": "error rate, new version", "value": rate,
                     "limit": policy.max_error_rate, "detail": f"{new.get('count', 0)} "
                     f"inferences (judged from {policy.min_samples})",
                     "ok": rate is None or rate <= policy.max_error_rate})
    if policy.max_p95_regression is not None:
        reg = (new["p95_ms"] / base["p95_ms"] - 1) if new.get("p95_ms") and \
            base.get("p95_ms") else None
        rows.append({"gate": "p95 latency regression vs the old version", "value": reg,
                     "limit": policy.max_p95_regression, "detail": "p95 "
                     f"{new.get('p95_ms') or '–'} ms new vs {base.get('p95_ms') or '–'} ms old",
                     "ok": reg is None or reg <= policy.max_p95_regression})
    return rows


def signed_bundles(ctl: FleetController, row: dict[str, Any],
                   variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The signed bundles of a version (its default and each variant) with their files,
    as devices fetch them; a bundle not signed yet (nobody deployed it) is said so. Reads
    only: a page never signs."""
    out = []
    for variant in [None, *variants]:
        file = PurePosixPath((variant or row)["file"]).name
        manifest, _ = bundle_paths(row["name"], row["version"], file,
                                   variant["variant"] if variant else "")
        try:
            files = [{"sha256": sha, "path": path, "length": length}
                     for sha, path, length in ctl.repo.bundle_files(manifest)]
        except NotFoundError:
            files = []
        out.append({"variant": variant["variant"] if variant else row["variant"],
                    "default": variant is None, "manifest": manifest, "files": files,
                    "classes": (variant or row).get("hardware_classes") or []})
    return out


def lineage(ctl: FleetController, name: str) -> list[dict[str, Any]]:
    """A model's versions, each with the one it was made from."""
    return sorted((r for r in ctl.store.list_models() if r["name"] == name),
                  key=lambda r: r["version"])


def add_pages(app: FastAPI, ctl: FleetController) -> None:
    """The console's read-only pages (its forms are in ``_forms``)."""

    @app.get("/ui/", include_in_schema=False, response_class=HTMLResponse)
    def overview(request: Request) -> HTMLResponse:
        session = signed_in(request)
        running = [_dep_row(d) for d in ctl.store.list_deployments(ACTIVE)]
        return page(request, "overview.html", session, counts=ctl.store.console.fleet_counts(),
                    running=running, alerts=ctl.alerts.active()[:10])

    @app.get("/ui/devices", include_in_schema=False, response_class=HTMLResponse)
    def devices(request: Request, q: str = "", status: str = "", model: str = "",
                version: str = "", hw_class: Annotated[str, Query(alias="class")] = "",
                tag: str = "", seen: str = "", sort: str = "id", desc: bool = False,
                page_no: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
                ) -> HTMLResponse:
        session = signed_in(request)
        problems = []
        tag_kv = None
        if tag:
            key, eq, value = tag.partition("=")
            if eq and key:
                tag_kv = (key.strip(), value.strip())
            else:
                problems.append(f"tag: expected key=value, got {tag!r}")
        version_no = int(version) if version.isdigit() else None
        if version and version_no is None:
            problems.append(f"version: expected a number, got {version!r}")
        if sort not in DEVICE_SORTS:
            problems.append(f"sort: one of {', '.join(DEVICE_SORTS)}")
            sort = "id"
        if status not in ("", "online", "offline"):
            problems.append("status: online or offline")
            status = ""
        query = DeviceQuery(text=q.strip(), status=status, model=model.strip(),
                            version=version_no, hw_class=hw_class.strip(), tag=tag_kv,
                            seen_within_s=SEEN.get(seen), unseen_for_s=UNSEEN.get(seen),
                            sort=sort, descending=desc, offset=(page_no - 1) * PAGE_SIZE,
                            limit=PAGE_SIZE)
        rows, total = ctl.store.console.device_page(query, ctl.clock.time())
        pages = max(1, math.ceil(total / PAGE_SIZE))
        return page(request, "devices.html", session, rows=rows, total=total,
                    page_no=page_no, pages=pages, f=request.query_params, problems=problems,
                    sort=sort, desc=desc, sorts=DEVICE_SORTS, seen_options=[*SEEN, *UNSEEN],
                    classes=ctl.store.console.hw_classes())

    @app.get("/ui/devices/{device_id}", include_in_schema=False, response_class=HTMLResponse)
    def device(request: Request, device_id: str) -> HTMLResponse:
        session = signed_in(request)
        row = ctl.store.get_device(device_id)
        buffers = ctl.store.telemetry.streams(device_id)
        try:
            identity: dict[str, Any] | None = ctl.provisioner.identity(device_id)
        except NotFoundError:  # a device that joined without provisioning has none
            identity = None
        return page(request, "device.html", session, d=row, jobs=ctl.store.console.device_jobs(
            device_id), buffers=buffers, identity=identity,
            charts=charts(time_series(ctl, devices=[device_id]), "on this device"))

    @app.get("/ui/models", include_in_schema=False, response_class=HTMLResponse)
    def models(request: Request) -> HTMLResponse:
        session = signed_in(request)
        by_name: dict[str, list[dict[str, Any]]] = {}
        for r in ctl.store.list_models():
            by_name.setdefault(r["name"], []).append(r)
        return page(request, "models.html", session, models=by_name,
                    jobs=ctl.optimizations.recent(20))

    @app.get("/ui/models/{name}/{version}", include_in_schema=False,
             response_class=HTMLResponse)
    def model(request: Request, name: str, version: int) -> HTMLResponse:
        session = signed_in(request)
        row = ctl.registry.get(name, version)
        versions = lineage(ctl, name)
        children = [v for v in versions if v.get("parent") == version]
        variants = ctl.registry.variants(name, version)
        return page(request, "model.html", session, m=row, versions=versions,
                    children=children, bundles=signed_bundles(ctl, row, variants),
                    card=model_card(ctl, name, version), report=row.get("report") or {})

    @app.get("/ui/deployments", include_in_schema=False, response_class=HTMLResponse)
    def deployments(request: Request) -> HTMLResponse:
        session = signed_in(request)
        rows = sorted(ctl.store.list_deployments(), key=lambda d: -d["created_at"])
        return page(request, "deployments.html", session, rows=[_dep_row(d) for d in rows])

    @app.get("/ui/deployments/new", include_in_schema=False, response_class=HTMLResponse)
    def new_deployment(request: Request, model: str = "", version: str = "",
                       selector: str = "", devices: str = "") -> HTMLResponse:
        session = signed_in(request)
        reach: list[str] | None = None
        problems: list[str] = []
        if selector or devices:
            try:
                ids = [d for d in devices.replace(",", " ").split() if d] or None
                reach = select_devices(ctl.store.list_devices(), ids=ids,
                                       selector=parse_selector(selector) or None)
            except InvalidRequest as exc:
                problems.append(f"selector: {exc}")
        return page(request, "deployment_new.html", session, models=ctl.store.list_models(),
                    form=dict(request.query_params), reach=reach, problems=problems,
                    strategies=STRATEGIES, defaults=RolloutPolicy().to_dict())

    @app.get("/ui/deployments/{dep_id}", include_in_schema=False,
             response_class=HTMLResponse)
    def deployment(request: Request, dep_id: str) -> HTMLResponse:
        session = signed_in(request)
        dep = ctl.store.get_deployment(dep_id, with_events=True)
        view = describe(dep)
        actions = [a for a in ACTIONS if action_applies(a, view["strategy"], view["state"])]
        if view["created_by"] == session.principal.name and "approve" in actions:
            actions.remove("approve")  # four-eyes: the creator cannot approve
        states: dict[str, int] = {}
        for j in view["jobs"]:
            states[j["state"]] = states.get(j["state"], 0) + 1
        return page(request, "deployment.html", session, d=view, actions=actions,
                    gates=gates(view, dep.get("result") or {}), states=states,
                    jobs=view["jobs"][:200])

    @app.get("/ui/telemetry", include_in_schema=False, response_class=HTMLResponse)
    def telemetry(request: Request, model: str = "", deployment: str = "") -> HTMLResponse:
        session = signed_in(request)
        scope: dict[str, Any] | None = None
        if deployment:  # its target devices, from its creation on
            dep = ctl.store.get_deployment(deployment)
            scope = {"id": dep["id"], "model": dep["model"], "version": dep["version"],
                     "devices": len(dep["jobs"])}
            series = time_series(ctl, devices=sorted({j["device"] for j in dep["jobs"]}),
                                 model=dep["model"], since=dep["created_at"])
        else:
            series = time_series(ctl, model=model or None)
        drift = []
        for (m, v), pts in sorted(series.items()):
            latest = next((a for _, a in reversed(pts) if a["drift"]["windows"]), None)
            if latest:
                bars = sorted(latest["drift"]["top"].items(), key=lambda kv: -kv[1])[:12]
                drift.append({"model": m, "version": v, "svg": bar_chart(
                    bars, title=f"input drift (PSI) {m} v{v}", x_label="PSI", unit="",
                    threshold=ctl.settings.alert_drift_alert,
                    threshold_label="alert threshold")})
        ab = [describe(ctl.store.get_deployment(d["id"])) for d in
              ctl.store.list_deployments() if d["strategy"] in ("ab", "shadow")][-5:]
        what = f"in {deployment}" if scope else "by version"
        return page(request, "telemetry.html", session, charts=charts(series, what),
                    drift=drift, ab=ab, model=model, scope=scope)

    @app.get("/ui/alerts", include_in_schema=False, response_class=HTMLResponse)
    def alerts(request: Request) -> HTMLResponse:
        session = signed_in(request)
        return page(request, "alerts.html", session,
                    rows=ctl.alerts.active(include_resolved=True))

    @app.get("/ui/audit", include_in_schema=False, response_class=HTMLResponse)
    def audit(request: Request) -> HTMLResponse:
        session = signed_in(request)
        allowed = session.may("GET", "/v1/audit")
        check = ctl.store.audit.verify()
        rows = ctl.store.audit.entries(after=max(0, check.head_seq - 100), limit=100) \
            if allowed else []
        return page(request, "audit.html", session, check=check, rows=rows[::-1],
                    allowed=allowed)
