"""How the API answers errors: a status that says whose fault, and ``detail``/``reason``.

The caller's fault is a 4xx that says what was wrong: a body or parameter that does not
fit its schema (422, FastAPI's list of the fields at fault), a value the controller
refuses (the contract's ``InvalidRequest``, 422), an unknown thing (``NotFoundError``,
404), a conflict with what is there (``RegistryError``, 409), a full queue (429). Anything
else is the controller's own fault: a 500, whose traceback the server logs; a plain
``ValueError`` is one of those, never a bad request by itself.
"""

# FastAPI reads annotations at runtime, so no "from __future__ import annotations" here.

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from edgefleet.contract import (
    EdgefleetError,
    InvalidRequest,
    NotFoundError,
    OptimizationError,
    RegistryError,
)

from .console import is_console
from .console._render import SignInNeeded, console_error
from .optimizations import QUEUE_FULL

__all__ = ["ERROR_RESPONSES", "ApiError", "InvalidRequest", "add_error_handlers"]


class ApiError(BaseModel):
    """Every error answer: ``detail`` says what was wrong (for a request that does not fit
    its schema, FastAPI's list of the fields at fault), ``reason`` a stable code when the
    controller refused it for a reason of its own (``not_found``, ``queue_full``…)."""

    detail: str | list[Any]
    reason: str | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
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


def add_error_handlers(app: FastAPI) -> None:
    """Answer errors as JSON (``ApiError``), or as a page on the console's paths."""
    from .console._forms import login_page  # (it imports the routes, which import this)

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

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> Response:
        # the controller's own fault; Starlette raises it again after this answer, so the
        # server logs its traceback
        detail = "the controller failed on this request (its log has the traceback)"
        if is_console(request.url.path):
            return console_error(request, 500, detail)
        return JSONResponse({"detail": detail, "reason": "internal"}, status_code=500)
