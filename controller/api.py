"""The controller's HTTP API (FastAPI). OpenAPI at ``/openapi.json``, docs at ``/docs``.

Every route except ``/healthz`` and ``/v1/repository/…`` (signed files for devices, off
by default) needs ``Authorization: Bearer <token>`` with the role ``auth.ROUTES``
declares for it (``_api_security`` checks it before the route runs, and audits every
mutating call). Bad input gets a 4xx with a reason, never a 500.
"""

# FastAPI reads annotations at runtime, so no "from __future__ import annotations" here.

import dataclasses
import json
from typing import Annotated, Any, Literal

from fastapi import (
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from edgefleet.contract import EdgefleetError, NotFoundError, OptimizationError, RegistryError
from edgefleet.contract.names import NAME
from edgefleet.optimizer import OptimizeTarget

from ._api_devices import add_device_routes
from ._api_metrics import add_metrics_route
from ._api_repository import add_repository_route
from ._api_security import ActorName as Auth
from ._api_security import AuditMiddleware, add_security_routes, authorize, check_routes, note
from ._api_telemetry import add_telemetry_routes
from ._api_types import INT64_MAX, JsonInt, VersionPath
from ._model_cards import ModelCardBody, model_card
from .auth import DEVICE, PUBLIC, ROUTES
from .console import add_console, is_console
from .console._forms import login_page
from .console._render import SignInNeeded, console_error
from .optimizations import QUEUE_FULL
from .orchestrator import describe
from .rollout import BOUNDS, ON_BREACH, OPTIONAL, SILENT, STRATEGIES, RolloutPolicy
from .service import FleetController

__all__ = ["create_app"]


HardwareClass = Annotated[str, Field(pattern=NAME.pattern)]


class OptimizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # 0 is not false, "1" not 1
    method: str = Field("auto", pattern="^(auto|static|dynamic|none)$")
    sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    accuracy_budget_pt: float = Field(1.0, ge=0.0, le=100.0)
    latency_runs: JsonInt = Field(200, ge=10, le=100_000)
    # what the model is ("": as registered, else detected): classifiers with labels are
    # judged by top-1, everything else by fidelity to fp32
    task: str = Field("", pattern="^(|classification|detection|segmentation|sequence|"
                                  "embedding|other)$")
    min_sqnr_db: float = Field(20.0, ge=0.0, le=200.0)
    min_cosine: float = Field(0.995, ge=0.0, le=1.0)
    fallback: bool = True  # keep the most sensitive nodes in float when int8 misses the gate
    evaluator: str = ""  # module:function; create_app narrows it to the allowed list
    # a variant per class (int8 / fp32, ONNX / .tflite, TensorRT FP16), chosen and reported
    hardware_classes: list[HardwareClass] = Field(default_factory=list, max_length=32)


def _policy_body() -> type[BaseModel]:
    """The API's schema of a rollout policy, made from ``RolloutPolicy``'s own fields,
    enums and bounds (the strategy is the deployment's own field). What a schema cannot
    say, that waves increase and end at 100, ``RolloutPolicy`` still refuses with a 422."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(RolloutPolicy):
        if f.name == "strategy":
            continue
        if f.name == "waves":
            kind: Any = Annotated[list[Annotated[float, Field(gt=0, le=100)]],
                                  Field(min_length=1, max_length=100)]
            default: Any = list(f.default)
        elif f.name in ("on_breach", "silent"):
            kind, default = Literal[ON_BREACH if f.name == "on_breach" else SILENT], f.default
        elif f.type == "bool":
            kind, default = bool, f.default
        else:
            number: Any = JsonInt if f.type == "int" else float
            kind = Annotated[number, Field(allow_inf_nan=False, **BOUNDS.get(f.name, {}))]
            if f.name in OPTIONAL:
                kind = kind | None
            default = f.default
        fields[f.name] = (kind, default)
    return create_model("RolloutPolicyBody",
                        __config__=ConfigDict(extra="forbid", strict=True), **fields)


RolloutPolicyBody = _policy_body()


class DeployBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # 0 is not false, "1" not 1
    model: str = Field(min_length=1, max_length=64)
    version: JsonInt = Field(ge=1, le=INT64_MAX)
    devices: list[str] | None = Field(None, min_length=1)
    selector: dict[str, str] | None = None
    strategy: Literal[STRATEGIES] = "all-at-once"  # type: ignore[valid-type]
    policy: RolloutPolicyBody = Field(  # type: ignore[valid-type]
        default_factory=RolloutPolicyBody,
        description="how it proceeds and what stops it (fields left out keep their defaults)")


DEPLOYMENT_ACTIONS = ("pause", "resume", "abort", "rollback", "promote", "drop")


class _ActionConvertor(Convertor[str]):
    """Only a deployment action matches ``{action}``, so ``POST …/{dep_id}/events`` is a
    405 (events are read with GET), not a 422 for an unknown action."""

    regex = "|".join(DEPLOYMENT_ACTIONS)

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("deployment_action", _ActionConvertor())


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "file"}


def _job(view: dict[str, Any]) -> dict[str, Any]:
    """An optimization job as the API shows it: its child version without the file path."""
    return {**view, "result": _public(view["result"]) if view["result"] else None}


class ApiError(BaseModel):
    """Every error answer: ``detail`` says what was wrong (for a request that does not fit
    its schema, FastAPI's list of the fields at fault), ``reason`` a stable code when the
    controller refused it for a reason of its own (``not_found``, ``queue_full``…)."""

    detail: str | list[Any]
    reason: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ApiError, "description": text} for status, text in (
        (400, "The request cannot be read (a malformed body or upload)"),
        (401, "No token, or an unknown, revoked or expired one"),
        (403, "The token's role may not do this"),
        (404, "No such model, version, deployment, device, token or job"),
        (409, "It conflicts with what is there (a version that exists, a state that "
              "does not allow it)"),
        (413, "The upload is larger than the controller accepts"),
        (422, "A field is missing, of the wrong type or out of range, or the controller "
              "refuses the value"),
        (429, "Busy: the same call works later (Retry-After)"),
    )}


def create_app(ctl: FleetController) -> FastAPI:
    """Build the API around a controller (started by the caller)."""
    public = ctl.settings.public_api_docs
    app = FastAPI(title="edgefleet controller", version="1", dependencies=[Depends(authorize)],
                  docs_url="/docs" if public else None, redoc_url="/redoc" if public else None,
                  openapi_url="/openapi.json" if public else None, responses=_ERRORS)
    app.state.edgefleet = ctl
    app.add_middleware(AuditMiddleware)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if is_console(request.url.path):
            return console_error(request, exc.status_code, str(exc.detail))
        if exc.status_code == 405:  # Allow: every method of the path, not one route's
            methods = sorted({m for route in request.app.router.routes
                              if route.matches(request.scope)[0] != Match.NONE
                              for m in getattr(route, "methods", None) or ()})
            exc = StarletteHTTPException(405, exc.detail,
                                         headers={**(exc.headers or {}),
                                                  "Allow": ", ".join(methods)})
        return await http_exception_handler(request, exc)

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> Response:
        if is_console(request.url.path):
            return console_error(request, 404, str(exc))
        return JSONResponse({"detail": str(exc), "reason": exc.reason}, status_code=404)

    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, exc: SignInNeeded) -> Response:
        return login_page(request, why=exc.why, next_url=exc.next_url, status=401)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if is_console(request.url.path):
            where = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) + ": " +
                              str(e.get("msg", "")) for e in exc.errors())
            return console_error(request, 422, f"invalid request: {where}")
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(EdgefleetError)
    async def _edgefleet(request: Request, exc: EdgefleetError) -> Response:
        code = 409 if isinstance(exc, RegistryError) else 422
        if isinstance(exc, OptimizationError):
            code = 422
        if exc.reason == QUEUE_FULL:  # not a conflict: the same call works later
            code = 429
        elif exc.reason == "invalid_claim_token":  # what authenticates /v1/provision
            code = 401
        if is_console(request.url.path):
            return console_error(request, code, str(exc))
        return JSONResponse({"detail": str(exc), "reason": exc.reason}, status_code=code)

    @app.exception_handler(ValueError)
    async def _value(request: Request, exc: ValueError) -> Response:
        if is_console(request.url.path):
            return console_error(request, 422, str(exc))
        return JSONResponse({"detail": str(exc), "reason": "invalid"}, status_code=422)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "broker_connected": bool(ctl.link and ctl.link.connected.is_set()),
                "replica": ctl.settings.client_id, "leader": ctl.leading}

    @app.post("/v1/models", status_code=201)
    async def register_model(
        request: Request, _: Auth, name: Annotated[str, Form(min_length=1, max_length=64)],
        model: Annotated[UploadFile, File()],
        labels: Annotated[str | None, Form()] = None,
        # optional files: left out when there is none (the spec has no null for a file)
        eval_set: Annotated[UploadFile, File()] = None,  # type: ignore[assignment]
        calibration: Annotated[UploadFile, File()] = None,  # type: ignore[assignment]
        metrics: Annotated[str | None, Form()] = None,
        hardware_classes: Annotated[str | None, Form()] = None,
        security_release: Annotated[bool, Form()] = False,
        task: Annotated[str | None, Form()] = None,
        input_kinds: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        try:
            label_list = json.loads(labels) if labels else []
            metric_map = json.loads(metrics) if metrics else {}
            classes = json.loads(hardware_classes) if hardware_classes else []
            kinds = json.loads(input_kinds) if input_kinds else {}
        except json.JSONDecodeError as exc:
            raise HTTPException(422, f"labels/metrics/hardware_classes/input_kinds must be "
                                     f"JSON: {exc}") from exc
        if not isinstance(kinds, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in kinds.items()):
            raise HTTPException(422, "input_kinds must be a JSON object of input name -> kind")
        if not isinstance(label_list, list) or not isinstance(metric_map, dict):
            raise HTTPException(422, "labels must be a JSON list and metrics a JSON object")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise HTTPException(422, "hardware_classes must be a JSON list of strings")
        limit = ctl.settings.max_upload_bytes
        blobs = []
        for upload in (model, eval_set, calibration):
            data = await upload.read(limit + 1) if upload is not None else None
            if data is not None and len(data) > limit:
                raise HTTPException(413, f"upload larger than {limit} bytes")
            blobs.append(data)
        row = await run_in_threadpool(
            ctl.registry.register, name, blobs[0] or b"", labels=[str(x) for x in label_list],
            eval_npz=blobs[1], calibration_npz=blobs[2], metrics=metric_map,
            hardware_classes=classes, security_release=security_release, task=task or None,
            input_kinds=kinds)
        note(request, after={"name": row["name"], "version": row["version"],
                             "sha256": row["sha256"], "hardware_classes": classes,
                             "release_counter": row["release_counter"]})
        return _public(row)

    @app.get("/v1/models")
    def list_models(_: Auth) -> list[dict[str, Any]]:
        return [_public(r) for r in ctl.store.list_models()]

    @app.get("/v1/models/{name}/{version}")
    def get_model(_: Auth, name: str, version: VersionPath) -> dict[str, Any]:
        return _public(ctl.registry.get(name, version))

    @app.post("/v1/models/{name}/{version}/variants", status_code=201)
    async def add_variant(
        request: Request, _: Auth, name: str, version: VersionPath,
        variant: Annotated[str, Form(min_length=1, max_length=64)],
        hardware_classes: Annotated[str, Form(min_length=2, description="a JSON list")],
        model: Annotated[UploadFile, File()],
    ) -> dict[str, Any]:
        try:
            classes = json.loads(hardware_classes)
        except json.JSONDecodeError as exc:
            raise HTTPException(422, f"hardware_classes must be a JSON list: {exc}") from exc
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise HTTPException(422, "hardware_classes must be a JSON list of strings")
        limit = ctl.settings.max_upload_bytes
        data = await model.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"upload larger than {limit} bytes")
        row = await run_in_threadpool(ctl.registry.add_variant, name, version, data,
                                      variant=variant, hardware_classes=classes)
        note(request, after={"name": name, "version": version, "variant": variant,
                             "hardware_classes": classes, "sha256": row["sha256"]})
        return _public(row)

    @app.get("/v1/models/{name}/{version}/variants")
    def list_variants(_: Auth, name: str, version: VersionPath) -> list[dict[str, Any]]:
        ctl.registry.get(name, version)
        return [_public(v) for v in ctl.registry.variants(name, version)]

    @app.get("/v1/models/{name}/{version}/card")
    def get_model_card(_: Auth, name: str, version: VersionPath) -> dict[str, Any]:
        """The version's model card (empty fields until someone writes it)."""
        return model_card(ctl, name, version)

    @app.put("/v1/models/{name}/{version}/card")
    def put_model_card(request: Request, user: Auth, name: str, version: VersionPath,
                       body: ModelCardBody) -> dict[str, Any]:
        before = model_card(ctl, name, version)
        ctl.store.console.put_card(name, version, body.model_dump(), user)
        after = model_card(ctl, name, version)
        note(request, before=before["card"], after=after["card"])
        return after

    # the evaluators this controller runs, as an enum in the spec (the route refuses
    # others with a message that says where the list is set)
    optimize_body = create_model(
        "OptimizeBody", __base__=OptimizeBody,
        evaluator=(str, Field(
            "", description="module:function of a quality evaluator: one of this "
                            "controller's optimize_evaluators (EDGEFLEET_OPTIMIZE_EVALUATORS), "
                            "or empty for the built-in judgement",
            json_schema_extra={"enum": ["", *ctl.settings.optimize_evaluators]})))

    @app.post("/v1/models/{name}/{version}/optimize", status_code=202)
    def optimize_model(request: Request, response: Response, user: Auth, name: str,
                       version: VersionPath, body: optimize_body) -> dict[str, Any]:  # type: ignore[valid-type]
        """Queue an optimization (a job: follow it at the ``Location`` answered)."""
        if body.evaluator and body.evaluator not in ctl.settings.optimize_evaluators:
            raise HTTPException(422, f"evaluator {body.evaluator!r} is not allowed on this "
                                     f"controller: list it in optimize_evaluators "
                                     f"(EDGEFLEET_OPTIMIZE_EVALUATORS)")
        target = OptimizeTarget(method=body.method, sparsity=body.sparsity,
                                accuracy_budget_pt=body.accuracy_budget_pt,
                                latency_runs=body.latency_runs, task=body.task,
                                min_sqnr_db=body.min_sqnr_db, min_cosine=body.min_cosine,
                                fallback=body.fallback, evaluator=body.evaluator)
        job = ctl.optimizations.submit(name, version, target,
                                       hardware_classes=body.hardware_classes,
                                       created_by=user)
        note(request, after={"job": job["id"], "name": name, "version": version,
                             "hardware_classes": body.hardware_classes})
        response.headers["Location"] = f"/v1/optimizations/{job['id']}"
        return _job(job)

    @app.get("/v1/optimizations")
    def list_optimizations(_: Auth, limit: Annotated[int, Query(ge=1, le=1000)] = 100
                           ) -> list[dict[str, Any]]:
        """Recent optimization jobs, newest first (queued, running and the last finished)."""
        return [_job(j) for j in ctl.optimizations.recent(limit)]

    @app.get("/v1/optimizations/{job_id}")
    def get_optimization(_: Auth, job_id: str) -> dict[str, Any]:
        """One optimization job: state, progress, and the child version or the error."""
        return _job(ctl.optimizations.get(job_id))

    @app.post("/v1/deployments", status_code=201)
    def create_deployment(request: Request, user: Auth, body: DeployBody) -> dict[str, Any]:
        policy = RolloutPolicy.from_dict({**body.policy.model_dump(exclude_unset=True),
                                          "strategy": body.strategy})
        dep = ctl.deploy(body.model, body.version, devices=body.devices,
                         selector=body.selector, created_by=user, policy=policy)
        view = describe(ctl.store.get_deployment(dep["id"], with_events=True))
        note(request, body=body.model_dump(), after={"id": view["id"], "state": view["state"]})
        return view

    @app.get("/v1/deployments")
    def list_deployments(_: Auth) -> list[dict[str, Any]]:
        return ctl.store.list_deployments()

    @app.get("/v1/deployments/{dep_id}")
    def get_deployment(_: Auth, dep_id: str) -> dict[str, Any]:
        return describe(ctl.store.get_deployment(dep_id, with_events=True))

    @app.get("/v1/deployments/{dep_id}/events")
    def deployment_events(_: Auth, dep_id: str) -> list[dict[str, Any]]:
        ctl.store.get_deployment(dep_id)
        return ctl.store.events(dep_id)

    def act(request: Request, user: str, dep_id: str, action: str) -> dict[str, Any]:
        before = ctl.store.get_deployment(dep_id)["state"]
        view = describe(ctl.orchestrator.act(dep_id, action, user))
        note(request, before={"state": before}, after={"state": view["state"]})
        return view

    @app.post("/v1/deployments/{dep_id}/approve")
    def approve_deployment(request: Request, user: Auth, dep_id: str) -> dict[str, Any]:
        """Four-eyes: start a deployment to production devices someone else created."""
        try:
            return act(request, user, dep_id, "approve")
        except RegistryError as exc:
            if exc.reason == "four_eyes":
                raise HTTPException(403, str(exc)) from exc
            raise

    @app.post("/v1/deployments/{dep_id}/{action:deployment_action}")
    def deployment_action(request: Request, user: Auth, dep_id: str,
                          action: Literal[DEPLOYMENT_ACTIONS]) -> dict[str, Any]:  # type: ignore[valid-type]
        return act(request, user, dep_id, action)

    @app.get("/v1/devices")
    def list_devices(_: Auth) -> list[dict[str, Any]]:
        return ctl.store.list_devices()

    @app.get("/v1/devices/{device_id}")
    def get_device(_: Auth, device_id: str) -> dict[str, Any]:
        return ctl.store.get_device(device_id)

    @app.get("/v1/devices/{device_id}/telemetry")
    def device_telemetry(_: Auth, device_id: str,
                         limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                         ) -> list[dict[str, Any]]:
        ctl.store.get_device(device_id)
        return ctl.store.summaries(device_id, limit=limit)

    @app.get("/v1/stats")
    def stats(_: Auth) -> dict[str, Any]:
        return dict(ctl.counters, malformed=ctl.counters["malformed"] +
                    (ctl.link.malformed if ctl.link else 0))

    add_security_routes(app, ctl)
    add_device_routes(app, ctl)
    add_telemetry_routes(app, ctl)
    add_metrics_route(app, ctl)
    add_repository_route(app, ctl)
    add_console(app, ctl)
    check_routes(app)
    _declare_open_routes(app)
    return app


def _declare_open_routes(app: FastAPI) -> None:
    """The spec says which routes need no bearer token (``/healthz``; ``/v1/provision``,
    which checks the claim token in its body): ``security: []`` on those operations."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            for (method, path), role in ROUTES.items():
                op = spec.get("paths", {}).get(path, {}).get(method.lower())
                if op is not None and role in (PUBLIC, DEVICE):
                    op["security"] = []
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
