"""``GET /metrics``: Prometheus exposition format (viewer role: scrape with a bearer token)."""

# FastAPI reads annotations at runtime, so no "from __future__ import annotations" here.

from typing import TYPE_CHECKING

from fastapi import FastAPI, Response
from fastapi.concurrency import run_in_threadpool

from .metrics import CONTENT_TYPE, FleetCollector, render

if TYPE_CHECKING:
    from .service import FleetController

__all__ = ["add_metrics_route"]


def add_metrics_route(app: FastAPI, ctl: "FleetController") -> None:
    """Add ``/metrics`` to the controller's app."""
    collector = FleetCollector(ctl, latency=getattr(ctl, "latency_by_model", None))

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        body = await run_in_threadpool(render, ctl, collector)
        return Response(body, media_type=CONTENT_TYPE)
