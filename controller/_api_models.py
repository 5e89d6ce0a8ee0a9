"""HTTP routes for models: register versions and variants, read them and their cards,
and queue optimization jobs (``/v1/models…``, ``/v1/optimizations…``).

A model's file path stays inside the controller: every row is answered without it.
"""

# FastAPI reads annotations at runtime, so no "from __future__ import annotations" here.

import json
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, create_model

from edgefleet.optimizer import OptimizeTarget

from ._api_security import ActorName, note
from ._api_types import HardwareClass, JsonInt, VersionPath
from ._model_cards import ModelCardBody, model_card

if TYPE_CHECKING:
    from .service import FleetController

__all__ = ["OptimizeBody", "add_model_routes"]


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
    evaluator: str = ""  # module:function; add_model_routes narrows it to the allowed list
    # a variant per class (int8 / fp32, ONNX / .tflite, TensorRT FP16), chosen and reported
    hardware_classes: list[HardwareClass] = Field(default_factory=list, max_length=32)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "file"}


def _job(view: dict[str, Any]) -> dict[str, Any]:
    """An optimization job as the API shows it: its child version without the file path."""
    return {**view, "result": _public(view["result"]) if view["result"] else None}


def add_model_routes(app: FastAPI, ctl: "FleetController") -> None:
    """Add the model and optimization routes to the controller's app."""

    @app.post("/v1/models", status_code=201)
    async def register_model(
        request: Request, _: ActorName, name: Annotated[str, Form(min_length=1, max_length=64)],
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
            ctl.registry.register, name, blobs[0] or b"",
            labels=[str(x) for x in label_list], eval_npz=blobs[1],
            calibration_npz=blobs[2], metrics=metric_map, hardware_classes=classes,
            security_release=security_release, task=task or None, input_kinds=kinds)
        note(request, after={"name": row["name"], "version": row["version"],
                             "sha256": row["sha256"], "hardware_classes": classes,
                             "release_counter": row["release_counter"]})
        return _public(row)

    @app.get("/v1/models")
    def list_models(_: ActorName) -> list[dict[str, Any]]:
        return [_public(r) for r in ctl.store.list_models()]

    @app.get("/v1/models/{name}/{version}")
    def get_model(_: ActorName, name: str, version: VersionPath) -> dict[str, Any]:
        return _public(ctl.registry.get(name, version))

    @app.post("/v1/models/{name}/{version}/variants", status_code=201)
    async def add_variant(
        request: Request, _: ActorName, name: str, version: VersionPath,
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
    def list_variants(_: ActorName, name: str, version: VersionPath) -> list[dict[str, Any]]:
        ctl.registry.get(name, version)
        return [_public(v) for v in ctl.registry.variants(name, version)]

    @app.get("/v1/models/{name}/{version}/card")
    def get_model_card(_: ActorName, name: str, version: VersionPath) -> dict[str, Any]:
        """The version's model card (empty fields until someone writes it)."""
        return model_card(ctl, name, version)

    @app.put("/v1/models/{name}/{version}/card")
    def put_model_card(request: Request, user: ActorName, name: str, version: VersionPath,
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
    def optimize_model(request: Request, response: Response, user: ActorName, name: str,
                       version: VersionPath, body: optimize_body) -> dict[str, Any]:  # type: ignore[valid-type]
        """Queue an optimization (a job: follow it at the ``Location`` answered)."""
        body = cast(OptimizeBody, body)  # its class is made above, at run time
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
    def list_optimizations(_: ActorName, limit: Annotated[int, Query(ge=1, le=1000)] = 100
                           ) -> list[dict[str, Any]]:
        """Recent optimization jobs, newest first (queued, running and the last finished)."""
        return [_job(j) for j in ctl.optimizations.recent(limit)]

    @app.get("/v1/optimizations/{job_id}")
    def get_optimization(_: ActorName, job_id: str) -> dict[str, Any]:
        """One optimization job: state, progress, and the child version or the error."""
        return _job(ctl.optimizations.get(job_id))
