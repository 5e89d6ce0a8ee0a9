"""Pages from templates: the autoescaping Jinja environment, the headers every page
gets, and the signed-in operator a page needs."""

from __future__ import annotations

import datetime
import math
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from . import _session
from ._session import Session

if TYPE_CHECKING:
    from ..service import FleetController

__all__ = ["HEADERS", "SignInNeeded", "console_error", "env", "page", "redirect", "require",
           "signed_in"]

# no inline script or style, no frames, forms post here only
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _when(ts: float | None) -> str:
    if ts is None or not math.isfinite(ts):
        return "–"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    s = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return f"{s:.0f} s ago"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f} %"


def _query(request: Request, **changes: Any) -> str:
    """This page's query string with some parameters changed (None drops one)."""
    params = dict(request.query_params)
    for k, v in changes.items():
        if v is None or v == "":
            params.pop(k, None)
        else:
            params[k] = str(v)
    return "?" + urlencode(params) if params else "?"


env = jinja2.Environment(
    loader=jinja2.PackageLoader("edgefleet.controller.console", "templates"),
    autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
env.filters.update(when=_when, num=_num, pct=_pct)


class SignInNeeded(Exception):
    """No session (or it ended): the page answers with the sign-in form."""

    def __init__(self, why: str, next_url: str) -> None:
        super().__init__(why)
        self.why, self.next_url = why, next_url


def controller(request: Request) -> FleetController:
    return request.app.state.edgefleet  # type: ignore[no-any-return]


def signed_in(request: Request) -> Session:
    """The operator behind this request.

    Raises:
        SignInNeeded: no session, or it ended (the handler answers with the sign-in page).
    """
    session, why = _session.current(controller(request), request)
    if session is None:
        raise SignInNeeded(why, request.url.path + (f"?{request.url.query}"
                                                    if request.url.query else ""))
    return session


def require(session: Session, method: str, api_path: str) -> None:
    """Refuse a form its operator's role may not use (the API route's role).

    Raises:
        HTTPException: 403.
    """
    if not session.may(method, api_path):
        raise HTTPException(403, f"{session.principal.name!r} is {session.role}: this needs "
                                 "a higher role")


def page(request: Request, template: str, session: Session | None, *, status: int = 200,
         **values: Any) -> HTMLResponse:
    """A rendered page with the console's headers."""
    ctl = controller(request)
    now = ctl.clock.time()
    html = env.get_template(template).render(
        request=request, session=session, now=now, path=request.url.path,
        ago=lambda ts: _ago(ts, now), query=lambda **kw: _query(request, **kw),
        may=(lambda m, p: session.may(m, p)) if session else (lambda m, p: False),
        **values)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=HEADERS)


def console_error(request: Request, status: int, detail: str) -> HTMLResponse:
    """An error as a page (the operator may still be signed in)."""
    try:
        session, _ = _session.current(controller(request), request)
    except Exception:  # the error may be the store's own
        session = None
    return page(request, "error.html", session, status=status, detail=detail)
