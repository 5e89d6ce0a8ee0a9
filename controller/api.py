"""The controller's HTTP API (FastAPI). OpenAPI at ``/openapi.json``, docs at ``/docs``.

Every route except ``/healthz`` and ``/v1/repository/…`` (signed files for devices, off
by default) needs ``Authorization: Bearer <token>`` with the role ``auth.ROUTES``
declares for it (``_api_security`` checks it before the route runs, and audits every
mutating call). Bad input gets a 4xx with a reason, never a 500.

Each group of routes is added by its module; ``create_app`` puts them together:

* ``_api_fleet``: ``/healthz``, the devices, their telemetry summaries, ``/v1/stats``;
* ``_api_models``: models, variants, model cards, optimization jobs;
* ``_api_deployments``: deployments, their events, approval and the operator's actions;
* ``_api_security``: API tokens and the audit log;
* ``_api_devices``: claim tokens, device provisioning and revocation;
* ``_api_telemetry``: telemetry queries and alerts;
* ``_api_metrics``: ``/metrics`` for Prometheus;
* ``_api_repository``: the TUF repository over HTTP, for devices;
* ``console``: the web console under ``/ui/``.

How errors are answered is in ``_api_errors``.
"""

from typing import Any

from fastapi import Depends, FastAPI

from ._api_deployments import add_deployment_routes
from ._api_devices import add_device_routes
from ._api_errors import ERROR_RESPONSES, add_error_handlers
from ._api_fleet import add_fleet_routes
from ._api_metrics import add_metrics_route
from ._api_models import add_model_routes
from ._api_repository import add_repository_route
from ._api_security import AuditMiddleware, add_security_routes, authorize, check_routes
from ._api_telemetry import add_telemetry_routes
from .auth import DEVICE, PUBLIC, ROUTES
from .console import add_console
from .service import FleetController

__all__ = ["create_app"]


def create_app(ctl: FleetController) -> FastAPI:
    """Build the API around a controller (started by the caller).

    Raises:
        RuntimeError: a route without a role in ``auth.ROUTES`` (``check_routes``).
    """
    public = ctl.settings.public_api_docs
    app = FastAPI(title="edgefleet controller", version="1", dependencies=[Depends(authorize)],
                  docs_url="/docs" if public else None, redoc_url="/redoc" if public else None,
                  openapi_url="/openapi.json" if public else None, responses=ERROR_RESPONSES)
    app.state.edgefleet = ctl
    app.add_middleware(AuditMiddleware)
    add_error_handlers(app)
    add_fleet_routes(app, ctl)
    add_model_routes(app, ctl)
    add_deployment_routes(app, ctl)
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
