"""Console sign-in: an API token becomes a session cookie; every form carries a CSRF token.

* Signing in takes the same API tokens as the CLI. The cookie holds a random session id
  (HttpOnly, SameSite=Strict, Secure over HTTPS, path ``/ui``); the store keeps only its
  sha256, with the actor, role and CSRF token. A session ends at sign-out, after
  ``SESSION_S``, or as soon as its API token is revoked or expires.
* Every ``POST`` carries the session's CSRF token in a hidden field, and a browser's
  ``Origin`` (when sent) must be this host. The sign-in form, before any session, uses a
  double-submit cookie.
* What a role may do is ``auth.ROUTES`` of the API route an action stands for: one table
  for the API and the console.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request

from ..auth import ROUTES, Principal, allows, hash_token

if TYPE_CHECKING:
    from ..service import FleetController

__all__ = ["COOKIE", "LOGIN_COOKIE", "SESSION_S", "Session", "check_csrf", "may",
           "session_refusal"]

COOKIE = "edgefleet_console"
LOGIN_COOKIE = "edgefleet_console_login"
SESSION_S = 12 * 3600.0


@dataclasses.dataclass(frozen=True)
class Session:
    """A signed-in operator: who, with which role, and the CSRF token of their forms."""

    principal: Principal
    csrf: str
    expires_at: float

    @property
    def role(self) -> str:
        return self.principal.role

    def may(self, method: str, api_path: str) -> bool:
        return may(self.principal.role, method, api_path)


def may(role: str, method: str, api_path: str) -> bool:
    """Whether ``role`` may do what the API route ``method api_path`` does (``auth.ROUTES``)."""
    needed = ROUTES.get((method, api_path))
    return needed is not None and allows(role, needed)  # type: ignore[arg-type]


def session_refusal(row: dict[str, Any] | None, token: dict[str, Any] | None,
                    admin_token: str | None, now: float) -> str | None:
    """Why a stored sign-in no longer stands (None: it does), given the API token's row
    (``token``) or, for the bootstrap admin, the admin token configured now."""
    if row is None:
        return "signed out"
    if now >= row["expires_at"]:
        return "session expired"
    if row["token_id"] is None:  # the bootstrap admin token: still the configured one?
        if not admin_token or not hmac.compare_digest(row["token_hash"],
                                                      hash_token(admin_token)):
            return "the admin token changed"
        return None
    if token is None or not hmac.compare_digest(token["hash"], row["token_hash"]):
        return "token unknown"
    if token["revoked_at"] is not None:
        return "token revoked"
    if token["expires_at"] is not None and now >= token["expires_at"]:
        return "token expired"
    if token["role"] != row["role"]:
        return "token changed"
    return None


def start(ctl: FleetController, principal: Principal, token: str) -> tuple[str, float]:
    """Keep a new sign-in; its cookie value and when it ends."""
    now = ctl.clock.time()
    expires = now + SESSION_S
    row = ctl.store.tokens.get(principal.token_id) if principal.token_id else None
    if row is not None and row["expires_at"] is not None:
        expires = min(expires, float(row["expires_at"]))
    session_id = secrets.token_urlsafe(32)
    ctl.store.console.add_session(session_id, name=principal.name, role=principal.role,
                                  token_id=principal.token_id, token=token,
                                  csrf=secrets.token_urlsafe(32), expires_at=expires)
    return session_id, expires


def current(ctl: FleetController, request: Request) -> tuple[Session | None, str]:
    """The sign-in behind the request's cookie, or why there is none."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None, ""
    row = ctl.store.console.session(cookie)
    token = (ctl.store.tokens.get(row["token_id"])
             if row is not None and row["token_id"] else None)
    why = session_refusal(row, token, ctl.settings.admin_token, ctl.clock.time())
    if why or row is None:
        if row is not None:
            ctl.store.console.end_session(cookie)
        return None, why or "signed out"
    return Session(Principal(row["name"], row["role"], row["token_id"]), row["csrf"],
                   row["expires_at"]), ""


def same_origin(request: Request) -> bool:
    """A browser's ``Origin`` (if it sent one) names this host."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def check_csrf(request: Request, session: Session, presented: str | None) -> None:
    """Refuse a form without this session's CSRF token or from another origin.

    Raises:
        HTTPException: 403.
    """
    if not presented or not hmac.compare_digest(presented, session.csrf):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    if not same_origin(request):
        raise HTTPException(403, "cross-origin form refused")
