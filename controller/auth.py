"""Who may call what: roles, the route table, API tokens and four-eyes approval. Pure.

Roles, each including the one below it:

* ``viewer``: read-only ``GET`` routes (not tokens, not the audit listing).
* ``operator``: deploy, pause, resume, abort, rollback, promote, drop, approve; read
  the audit log.
* ``admin``: everything, including models, tokens and (later) device provisioning.

``ROUTES`` maps every ``(method, path template)`` of the API to what it needs. The API
refuses to build when one of its routes is missing from this table (or the table names
a route that does not exist), and ``tests/test_rbac.py`` calls every route with every
role. A new route is declared here in one line, with one of:

* a role (``VIEWER``, ``OPERATOR``, ``ADMIN``): a bearer token with at least that role;
* ``PUBLIC``: no token (``/healthz``; ``/v1/repository/…``, whose files are signed);
* ``DEVICE``: no bearer role is checked: the route authenticates the caller itself
  (e.g. ``POST /v1/provision`` with a device claim token) and is responsible for it.
* ``CONSOLE``: a page or form of the web console (``/ui/…``), authenticated by its
  session cookie; a console form does what an API route does and needs that route's
  role (``console._session.may``).

The HTTP glue (bearer parsing, the audit middleware) lives in ``_api_security``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from edgefleet.contract.names import TOKEN_NAME

__all__ = [
    "ADMIN",
    "CONSOLE",
    "DEVICE",
    "OPERATOR",
    "PUBLIC",
    "RESERVED_NAMES",
    "ROLES",
    "ROUTES",
    "VIEWER",
    "Principal",
    "allows",
    "approval_refusal",
    "check_table",
    "hash_token",
    "new_token",
    "production_targets",
    "split_token",
    "token_refusal",
    "valid_token_name",
]

Role = Literal["viewer", "operator", "admin"]
Access = Literal["public", "device", "console", "viewer", "operator", "admin"]
ROLES: Final[tuple[Role, ...]] = ("viewer", "operator", "admin")  # ascending
VIEWER: Final = "viewer"
OPERATOR: Final = "operator"
ADMIN: Final = "admin"
PUBLIC: Final = "public"
DEVICE: Final = "device"
CONSOLE: Final = "console"

ROUTES: Final[Mapping[tuple[str, str], Access]] = {
    ("GET", "/healthz"): PUBLIC,
    ("POST", "/v1/models"): ADMIN,
    ("GET", "/v1/models"): VIEWER,
    ("GET", "/v1/models/{name}/{version}"): VIEWER,
    ("POST", "/v1/models/{name}/{version}/optimize"): ADMIN,
    ("POST", "/v1/models/{name}/{version}/variants"): ADMIN,
    ("GET", "/v1/models/{name}/{version}/variants"): VIEWER,
    ("GET", "/v1/models/{name}/{version}/card"): VIEWER,
    ("PUT", "/v1/models/{name}/{version}/card"): OPERATOR,
    ("GET", "/v1/optimizations"): VIEWER,
    ("GET", "/v1/optimizations/{job_id}"): VIEWER,
    ("POST", "/v1/deployments"): OPERATOR,
    ("GET", "/v1/deployments"): VIEWER,
    ("GET", "/v1/deployments/{dep_id}"): VIEWER,
    ("GET", "/v1/deployments/{dep_id}/events"): VIEWER,
    ("POST", "/v1/deployments/{dep_id}/approve"): OPERATOR,
    ("POST", "/v1/deployments/{dep_id}/{action}"): OPERATOR,  # pause … drop
    ("GET", "/v1/devices"): VIEWER,
    ("GET", "/v1/devices/{device_id}"): VIEWER,
    ("GET", "/v1/devices/{device_id}/telemetry"): VIEWER,
    ("GET", "/v1/stats"): VIEWER,
    ("POST", "/v1/tokens"): ADMIN,
    ("GET", "/v1/tokens"): ADMIN,
    ("DELETE", "/v1/tokens/{token_id}"): ADMIN,
    ("GET", "/v1/audit"): OPERATOR,
    ("GET", "/v1/audit/verify"): VIEWER,  # monitoring may alert on a broken chain
    ("POST", "/v1/provision"): DEVICE,  # authenticated by the claim token in the body
    ("POST", "/v1/claim-tokens"): ADMIN,
    ("GET", "/v1/claim-tokens"): ADMIN,
    ("DELETE", "/v1/claim-tokens/{token_id}"): ADMIN,
    ("POST", "/v1/devices/{device_id}/revoke"): ADMIN,
    ("GET", "/v1/devices/{device_id}/identity"): VIEWER,
    ("GET", "/v1/telemetry/query"): VIEWER,
    ("GET", "/v1/alerts"): VIEWER,
    ("GET", "/metrics"): VIEWER,  # Prometheus scrapes with a viewer bearer token
    # signed TUF files for devices, which hold no token (off unless serve_repository)
    ("GET", "/v1/repository/{file}"): PUBLIC,
    # the web console: its pages and forms check the session cookie and, for each form,
    # the role of the API route it stands for
    ("GET", "/ui/static/{name}"): PUBLIC,
    ("GET", "/ui/login"): CONSOLE,
    ("POST", "/ui/login"): CONSOLE,
    ("POST", "/ui/logout"): CONSOLE,
    ("GET", "/ui/"): CONSOLE,
    ("GET", "/ui/devices"): CONSOLE,
    ("GET", "/ui/devices/{device_id}"): CONSOLE,
    ("POST", "/ui/devices/{device_id}/revoke"): CONSOLE,
    ("GET", "/ui/models"): CONSOLE,
    ("GET", "/ui/models/{name}/{version}"): CONSOLE,
    ("POST", "/ui/models/{name}/{version}/card"): CONSOLE,
    ("GET", "/ui/deployments"): CONSOLE,
    ("GET", "/ui/deployments/new"): CONSOLE,
    ("POST", "/ui/deployments"): CONSOLE,
    ("GET", "/ui/deployments/{dep_id}"): CONSOLE,
    ("POST", "/ui/deployments/{dep_id}/{action}"): CONSOLE,
    ("GET", "/ui/telemetry"): CONSOLE,
    ("GET", "/ui/alerts"): CONSOLE,
    ("GET", "/ui/audit"): CONSOLE,
}

# Actor names that are not tokens: the bootstrap admin token and the controller itself.
RESERVED_NAMES: Final = frozenset({"admin", "orchestrator", "controller", "system",
                                   "anonymous", "device"})
_PREFIX: Final = "eft"


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``name`` is the actor recorded in audit and ``created_by``."""

    name: str
    role: Role
    token_id: str | None = None  # None: the bootstrap admin token


def allows(role: Role, needed: Access) -> bool:
    """Whether a caller with ``role`` may call a route that needs ``needed``."""
    if needed in (PUBLIC, DEVICE, CONSOLE):
        return True
    return ROLES.index(role) >= ROLES.index(needed)


def check_table(routes: Iterable[tuple[str, str]],
                table: Mapping[tuple[str, str], Access] = ROUTES) -> list[str]:
    """Problems between an app's ``(method, path)`` routes and the table (empty: none)."""
    seen = set(routes)
    problems = [f"{m} {p} has no declared role in controller/auth.py ROUTES"
                for m, p in sorted(seen - set(table))]
    problems += [f"ROUTES names {m} {p}, which the API does not have"
                 for m, p in sorted(set(table) - seen)]
    return problems


# -- tokens -------------------------------------------------------------------------------
def new_token() -> tuple[str, str]:
    """A fresh ``(token id, token)``; the token is ``eft_<id>_<secret>``, 256-bit secret."""
    token_id = secrets.token_hex(8)
    return token_id, f"{_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"


def split_token(token: str) -> str | None:
    """The token id inside a presented token, or None if it does not look like one."""
    prefix, _, rest = token.partition("_")
    token_id, sep, secret = rest.partition("_")
    if prefix != _PREFIX or not sep or not secret or not re.fullmatch(r"[0-9a-f]{16}",
                                                                      token_id):
        return None
    return token_id


def hash_token(token: str) -> str:
    """What the store keeps: sha256 of the whole token (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_refusal(row: Mapping[str, Any] | None, presented: str, now: float) -> str | None:
    """Why a presented token is not accepted (None: it is), given its stored row."""
    if row is None:
        return "unknown token"
    if not hmac.compare_digest(row["hash"], hash_token(presented)):
        return "unknown token"
    if row["revoked_at"] is not None:
        return "token revoked"
    if row["expires_at"] is not None and now >= row["expires_at"]:
        return "token expired"
    if row["role"] not in ROLES:
        return "token has an unknown role"
    return None


def valid_token_name(name: str) -> str | None:
    """Why ``name`` cannot name a token (None: it can)."""
    if not TOKEN_NAME.valid(name):
        return f"token names are {TOKEN_NAME.expected}"
    if name.lower() in RESERVED_NAMES:
        return f"{name!r} is reserved (the bootstrap admin token or the controller)"
    return None


# -- four-eyes ----------------------------------------------------------------------------
def production_targets(devices: Iterable[Mapping[str, Any]], targets: Iterable[str],
                       production_tag: str) -> list[str]:
    """Targets whose stored tags carry ``production_tag`` (``key=value``; "" disables).

    Tags are what devices reported in their last birth; a target never seen has none.

    Raises:
        ValueError: ``production_tag`` is not ``key=value``.
    """
    if not production_tag:
        return []
    key, eq, value = production_tag.partition("=")
    if not eq or not key:
        raise ValueError(f"production_tag must be key=value, got {production_tag!r}")
    wanted = set(targets)
    return sorted(d["id"] for d in devices
                  if d["id"] in wanted and (d.get("tags") or {}).get(key) == value)


def approval_refusal(created_by: str, approver: str) -> str | None:
    """Why ``approver`` may not approve a deployment ``created_by`` made (None: may)."""
    if approver == created_by:
        return (f"four-eyes rule: {approver!r} created this deployment and cannot approve "
                "it; another operator or admin must")
    return None
