"""The API's security glue: bearer tokens → roles on every route, the audit middleware,
and the token and audit routes. What may call what is decided in ``auth``.

Every route gets ``authorize`` as an app-wide dependency: it looks the route up in
``auth.ROUTES`` and refuses (401 no or bad token, 403 role too low) before the route's
own parameters are even read. ``check_routes`` makes ``create_app`` fail for a route
missing from that table. ``AuditMiddleware`` appends every mutating call (``POST``,
``PUT``, ``PATCH``, ``DELETE``) by a known caller to the audit log with its outcome;
handlers add ``before``/``after`` with ``note``. Tokens never reach logs or the audit log.
"""

# FastAPI reads annotations at runtime, so no "from __future__ import annotations" here.

import hmac
import json
import logging
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.contract.names import TOKEN_NAME

from ._api_errors import InvalidRequest
from ._api_types import SeqQuery
from ._token_store import public_token
from .auth import (
    CONSOLE,
    DEVICE,
    PUBLIC,
    ROUTES,
    Principal,
    allows,
    check_table,
    split_token,
    token_refusal,
    valid_token_name,
)

if TYPE_CHECKING:
    from .service import FleetController

__all__ = ["ActorName", "AuditMiddleware", "add_security_routes", "authorize", "check_routes",
           "identify_token", "note", "record_principal"]

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)
_PRINCIPAL = "edgefleet.principal"
_NOTE = "edgefleet.audit"
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _controller(request: Request) -> "FleetController":
    return request.app.state.edgefleet  # type: ignore[no-any-return]


def _identify(ctl: "FleetController", cred: HTTPAuthorizationCredentials | None
              ) -> tuple[Principal | None, str]:
    if cred is None or cred.scheme.lower() != "bearer" or not cred.credentials:
        return None, "missing bearer token"
    return identify_token(ctl, cred.credentials)


def identify_token(ctl: "FleetController", presented: str) -> tuple[Principal | None, str]:
    """Who an API token is (the bootstrap admin token or a stored one), or why not."""
    admin = ctl.settings.admin_token
    if admin and hmac.compare_digest(presented.encode(), admin.encode()):
        return Principal("admin", "admin"), ""
    token_id = split_token(presented)
    row = ctl.store.tokens.get(token_id) if token_id else None
    why = token_refusal(row, presented, ctl.clock.time())
    if why or row is None:
        return None, why or "unknown token"
    return Principal(row["name"], row["role"], row["id"]), ""


def authorize(request: Request,
              cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
              ) -> Principal | None:
    """The caller of this route, if it may call it (None on public and device routes).

    Raises:
        HTTPException: 401 without a valid token, 403 when its role is too low.
    """
    route = request.scope.get("route")
    needed = ROUTES.get((request.method, getattr(route, "path_format", "")))
    if needed is None:  # check_routes prevents this; refuse rather than guess
        raise HTTPException(403, "this route has no declared role")
    if needed in (PUBLIC, DEVICE, CONSOLE):
        return None
    principal, why = _identify(_controller(request), cred)
    if principal is None:
        raise HTTPException(401, why, headers={"WWW-Authenticate": "Bearer"})
    request.scope[_PRINCIPAL] = principal
    if not allows(principal.role, needed):
        raise HTTPException(403, f"this needs the {needed} role; {principal.name!r} is "
                                 f"{principal.role}")
    return principal


def _actor_name(principal: Annotated[Principal | None, Depends(authorize)]) -> str:
    if principal is None:
        raise HTTPException(401, "missing bearer token")
    return principal.name


ActorName = Annotated[str, Depends(_actor_name)]


def check_routes(app: FastAPI) -> None:
    """Refuse an app with a route missing from ``auth.ROUTES`` (or with unknown routes).

    Raises:
        RuntimeError: listing each route without a declared role.
    """
    docs = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    pairs, problems = [], []
    for route in app.routes:
        if isinstance(route, APIRoute):
            pairs += [(m, route.path_format) for m in sorted(route.methods or ())]
        elif getattr(route, "path", None) not in docs:
            problems.append(f"{getattr(route, 'path', route)!r} is not an API route, so no "
                            "role can be checked on it")
    problems += check_table(pairs)
    if problems:
        raise RuntimeError("API routes without a declared role:\n" + "\n".join(problems))


def record_principal(scope: Scope, principal: Principal) -> None:
    """Say who makes this call, for its audit entry (routes not behind ``authorize``)."""
    scope[_PRINCIPAL] = principal


def note(request: Request, **fields: Any) -> None:
    """Add ``before``/``after`` (or ``actor`` on device routes) to this call's audit entry."""
    request.scope.setdefault(_NOTE, {}).update(fields)


class AuditMiddleware:
    """Appends each mutating call by a known caller to the audit log, with its outcome."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _MUTATING:
            await self.app(scope, receive, send)
            return
        status, error = 500, bytearray()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400:
                error.extend(message.get("body", b"")[:4096 - len(error)])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            await run_in_threadpool(_record, scope, status, bytes(error))


def _record(scope: Scope, status: int, error: bytes) -> None:
    principal: Principal | None = scope.get(_PRINCIPAL)
    extra = dict(scope.get(_NOTE) or {})
    actor = extra.pop("actor", None) or (principal.name if principal else None)
    route = scope.get("route")
    template = getattr(route, "path_format", scope["path"])
    if actor is None:  # no accountable caller (no or a bad token): the log only
        if status in (401, 403):
            log.warning("refused %s %s: %s", scope["method"], scope["path"], status)
        return
    detail: dict[str, Any] = {"outcome": status, **extra}
    if scope.get("path_params"):
        detail["params"] = dict(scope["path_params"])
    if principal is not None:
        detail["role"] = principal.role
        detail["token_id"] = principal.token_id
    if status >= 400:
        detail["error"] = _error_text(error)
    try:
        scope["app"].state.edgefleet.store.audit.append(
            actor, f"{scope['method']} {template}", scope["path"], detail)
    except Exception:
        log.exception("could not append %s %s to the audit log", scope["method"],
                      scope["path"])


def _error_text(body: bytes) -> str:
    """The ``detail`` of an error answer, short (validation errors: where, not what)."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")
    if isinstance(detail, list):  # FastAPI validation: keep locations, not echoed input
        return "invalid request: " + ", ".join(
            ".".join(str(p) for p in d.get("loc", ())) for d in detail if isinstance(d, dict))
    return str(detail)[:500]


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # 0 is not false, "1" not 1
    name: str = Field(pattern=TOKEN_NAME.pattern,
                      description=f"the actor name in audit: {TOKEN_NAME.expected} (not a "
                                  "reserved name: admin, the controller's)")
    role: Literal["viewer", "operator", "admin"]
    ttl_s: float | None = Field(None, gt=0, le=10 * 365 * 86400,
                                description="seconds until it expires (none: never)")


def add_security_routes(app: FastAPI, ctl: "FleetController") -> None:
    """``/v1/tokens`` and ``/v1/audit``."""

    @app.post("/v1/tokens", status_code=201)
    def create_token(request: Request, user: ActorName, body: TokenBody) -> dict[str, Any]:
        """The token is in this answer only; the controller keeps its sha256."""
        why = valid_token_name(body.name)  # a reserved name fits the pattern
        if why:
            raise InvalidRequest(why)
        row, token = ctl.store.tokens.create(body.name, body.role, created_by=user,
                                             now=ctl.clock.time(), ttl_s=body.ttl_s)
        view = public_token(row, ctl.clock.time())
        note(request, after=view)
        return {**view, "token": token}

    @app.get("/v1/tokens")
    def list_tokens(_: ActorName) -> list[dict[str, Any]]:
        now = ctl.clock.time()
        return [public_token(r, now) for r in ctl.store.tokens.list()]

    @app.delete("/v1/tokens/{token_id}")
    def revoke_token(request: Request, _: ActorName, token_id: str) -> dict[str, Any]:
        now = ctl.clock.time()
        before, after = ctl.store.tokens.revoke(token_id, now)
        note(request, before={"revoked_at": before["revoked_at"]},
             after={"revoked_at": after["revoked_at"], "name": after["name"]})
        return public_token(after, now)

    @app.get("/v1/audit")
    def audit_entries(_: ActorName, after: SeqQuery = 0,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      target: str | None = None) -> list[dict[str, Any]]:
        return ctl.store.audit.entries(after=after, limit=limit, target=target)

    @app.get("/v1/audit/verify")
    def audit_verify(_: ActorName) -> dict[str, Any]:
        return ctl.store.audit.verify().to_dict()
