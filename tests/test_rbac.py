"""Every API route × every kind of caller: allowed or refused, as ``auth.ROUTES`` says.

Routes come from the app itself, so a route added later is covered without touching
this file (and ``create_app`` refuses to build if it has no declared role).
"""

from __future__ import annotations

import functools
import inspect
import re

import pytest
from _operators import ADMIN, bearer, create_token, offline_controller
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from edgefleet.contract import ManualClock
from edgefleet.controller import init_keys
from edgefleet.controller.api import create_app
from edgefleet.controller.auth import CONSOLE, DEVICE, PUBLIC, ROLES, ROUTES

# who calls → the role their token carries (None: refused before any role is considered)
CALLERS = {"bootstrap-admin": "admin", "admin": "admin", "operator": "operator",
           "viewer": "viewer", "no-token": None, "unknown-token": None, "revoked": None,
           "expired": None, "basic-auth": None}
SAMPLE_PARAMS = {"dep_id": "dep-nope", "name": "nope", "version": "1", "device_id": "ghost",
                 "token_id": "0123456789abcdef", "action": "pause", "job_id": "opt-nope"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rbac")
    clock = ManualClock(1_700_000_000.0)
    ctl = offline_controller(root, init_keys(root / "keys"), clock=clock)
    app = create_app(ctl)
    reached: list[tuple[str, str]] = []
    for route in app.routes:  # observe (not replace) each handler: was it reached?
        if isinstance(route, APIRoute):
            route.dependant.call = _spy(route.dependant.call, route, reached)
    with TestClient(app, raise_server_exceptions=False) as client:
        headers = {"bootstrap-admin": ADMIN, "no-token": {},
                   "unknown-token": bearer("eft_0123456789abcdef_forged"),
                   "basic-auth": {"Authorization": "Basic YWRtaW46YWRtaW4="}}
        for role in ROLES:
            headers[role] = bearer(create_token(client, f"rbac-{role}", role)["token"])
        revoked = create_token(client, "rbac-revoked", "operator")
        assert client.delete(f"/v1/tokens/{revoked['id']}", headers=ADMIN).status_code == 200
        headers["revoked"] = bearer(revoked["token"])
        headers["expired"] = bearer(create_token(client, "rbac-expired", "admin",
                                                 ttl_s=60)["token"])
        clock.advance(61)
        yield {"client": client, "app": app, "headers": headers, "reached": reached}


def _spy(call, route, reached):
    key = (sorted(route.methods)[0], route.path_format)
    if inspect.iscoroutinefunction(call):
        @functools.wraps(call)
        async def spied_async(*args, **kwargs):
            reached.append(key)
            return await call(*args, **kwargs)
        return spied_async

    @functools.wraps(call)
    def spied(*args, **kwargs):
        reached.append(key)
        return call(*args, **kwargs)
    return spied


def _routes(app):
    for route in app.routes:
        if isinstance(route, APIRoute):
            for method in sorted(route.methods):
                yield method, route.path_format


def _call(client, method, path, headers):
    url = re.sub(r"{(\w+)}", lambda m: SAMPLE_PARAMS.get(m.group(1), "x"), path)
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return client.request(method, url, headers=headers, **body)


@pytest.mark.parametrize("caller", sorted(CALLERS))
def test_every_route_admits_exactly_the_roles_it_declares(world, caller):
    client, reached = world["client"], world["reached"]
    role = CALLERS[caller]
    wrong = []
    for method, path in _routes(world["app"]):
        needed = ROUTES[(method, path)]
        if needed in (DEVICE, CONSOLE):
            continue  # authenticated by the route itself (claim tokens, the console's
            # session cookie), tested with it (test_console.py)
        allowed = needed == PUBLIC or (role is not None and
                                       ROLES.index(role) >= ROLES.index(needed))
        reached.clear()
        status = _call(client, method, path, world["headers"][caller]).status_code
        if allowed and status in (401, 403):
            wrong.append(f"{method} {path}: {caller} refused with {status}")
        elif not allowed:
            expected = 401 if role is None else 403
            if status != expected:
                wrong.append(f"{method} {path}: {caller} got {status}, expected {expected}")
            if reached:
                wrong.append(f"{method} {path}: refused call reached the handler")
    assert not wrong, "\n".join(wrong)


def test_the_spy_sees_handlers_that_run(world):
    """(So that 'never reached the handler' above is a real observation.)"""
    world["reached"].clear()
    assert world["client"].get("/v1/models", headers=world["headers"]["viewer"]).json() == []
    assert world["reached"] == [("GET", "/v1/models")]


def test_roles_follow_the_operator_policy():
    for (method, path), needed in ROUTES.items():
        if path.startswith("/v1/tokens"):
            assert needed == "admin", path  # tokens are admin business only
        elif method != "GET":
            assert needed in ("operator", "admin", DEVICE, CONSOLE), \
                f"{method} {path} must not be callable read-only"
    deployment_actions = [k for k in ROUTES if k[0] == "POST" and k[1].startswith(
        "/v1/deployments")]
    assert {ROUTES[k] for k in deployment_actions} == {"operator"}
    assert ROUTES[("POST", "/v1/models")] == ROUTES[("POST", "/v1/models/{name}/{version}/"
                                                             "optimize")] == "admin"
    # queuing an optimization stays admin business; following one is a read
    assert ROUTES[("GET", "/v1/optimizations")] == ROUTES[("GET", "/v1/optimizations/"
                                                                  "{job_id}")] == "viewer"
    assert ROUTES[("GET", "/v1/audit")] == "operator"
    assert ROUTES[("GET", "/healthz")] == PUBLIC


def test_a_route_added_without_a_declared_role_cannot_be_served(world):
    from edgefleet.controller._api_security import check_routes

    app = create_app(world["app"].state.edgefleet)

    @app.get("/v1/undeclared")
    def undeclared() -> dict:
        return {"leaked": True}

    with pytest.raises(RuntimeError, match="GET /v1/undeclared has no declared role"):
        check_routes(app)
    with TestClient(app) as client:  # and if it were served anyway: refused, not leaked
        resp = client.get("/v1/undeclared", headers=ADMIN)
    assert resp.status_code == 403 and "no declared role" in resp.json()["detail"]


def test_refusals_say_why_without_echoing_the_token(world):
    client, headers = world["client"], world["headers"]
    viewer = client.post("/v1/deployments/dep-nope/abort", headers=headers["viewer"])
    assert viewer.status_code == 403
    assert viewer.json()["detail"] == "this needs the operator role; 'rbac-viewer' is viewer"
    for caller, reason in (("revoked", "token revoked"), ("expired", "token expired"),
                           ("unknown-token", "unknown token"),
                           ("no-token", "missing bearer token")):
        resp = client.get("/v1/devices", headers=headers[caller])
        assert (resp.status_code, resp.json()["detail"]) == (401, reason)
        assert resp.headers["www-authenticate"] == "Bearer"
        token = headers[caller].get("Authorization", "Bearer -").split()[1]
        assert token not in resp.text
