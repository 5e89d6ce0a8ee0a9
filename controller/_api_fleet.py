"""HTTP routes for what the controller knows of its fleet: its own health, the devices
and their telemetry summaries, and its counters (``/healthz``, ``/v1/devices…``,
``/v1/stats``). Device identity (provisioning, revocation) is in ``_api_devices``.
"""

# FastAPI reads annotations at runtime, so no "from __future__ import annotations" here.

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Query

from ._api_security import ActorName

if TYPE_CHECKING:
    from .service import FleetController

__all__ = ["add_fleet_routes"]


def add_fleet_routes(app: FastAPI, ctl: "FleetController") -> None:
    """Add the health, device and counter routes to the controller's app."""

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "broker_connected": bool(ctl.link and ctl.link.connected.is_set()),
                "replica": ctl.settings.client_id, "leader": ctl.leading}

    @app.get("/v1/devices")
    def list_devices(_: ActorName) -> list[dict[str, Any]]:
        return ctl.store.list_devices()

    @app.get("/v1/devices/{device_id}")
    def get_device(_: ActorName, device_id: str) -> dict[str, Any]:
        return ctl.store.get_device(device_id)

    @app.get("/v1/devices/{device_id}/telemetry")
    def device_telemetry(_: ActorName, device_id: str,
                         limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                         ) -> list[dict[str, Any]]:
        ctl.store.get_device(device_id)
        return ctl.store.summaries(device_id, limit=limit)

    @app.get("/v1/stats")
    def stats(_: ActorName) -> dict[str, Any]:
        return dict(ctl.counters, malformed=ctl.counters["malformed"] +
                    (ctl.link.malformed if ctl.link else 0))
