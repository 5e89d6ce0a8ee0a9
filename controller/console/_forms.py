"""The console's forms (``POST /ui/…``): sign-in and sign-out, and each operator action,
which calls what the API route it stands for calls, with that route's role, and is
audited like it."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from edgefleet.contract import EdgefleetError, InvalidRequest

from .._api_security import identify_token, note, record_principal
from .._api_telemetry import parse_selector
from .._model_cards import ModelCardBody, model_card
from ..rollout import ACTIONS, STRATEGIES, RolloutPolicy
from . import _session
from ._render import page, redirect, require, signed_in
from ._session import COOKIE, LOGIN_COOKIE, Session, check_csrf

if TYPE_CHECKING:
    from ..service import FleetController

__all__ = ["add_forms", "login_page"]

_POLICY_NUMBERS = ("max_failure_rate", "max_error_rate", "max_p95_regression",
                   "health_window_s", "wave_timeout_s", "min_samples", "split", "duration_s",
                   "sample", "min_agreement")


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def login_page(request: Request, *, why: str = "", next_url: str = "/ui/",
               status: int = 200) -> HTMLResponse:
    """The sign-in form, with a fresh double-submit token in a cookie and the form."""
    nonce = secrets.token_urlsafe(24)
    if not next_url.startswith("/ui/") or next_url.startswith("//"):
        next_url = "/ui/"
    resp = page(request, "login.html", None, why=why, next_url=next_url, nonce=nonce,
                status=status)
    resp.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", path="/ui/login",
                    secure=_secure(request), max_age=3600)
    return resp


def _policy(form: dict[str, str]) -> RolloutPolicy:
    """A rollout policy from the create form's fields (empty ones keep their defaults).

    Raises:
        InvalidRequest: naming the field and what it takes.
    """
    values: dict[str, Any] = {"strategy": form.get("strategy") or "all-at-once"}
    if form.get("waves", "").strip():
        try:
            values["waves"] = [float(w) for w in form["waves"].replace(",", " ").split()]
        except ValueError:
            raise InvalidRequest("waves: cumulative percentages, e.g. 10 50 100") from None
    for key in _POLICY_NUMBERS:
        text = form.get(key, "").strip()
        if text:
            try:
                values[key] = int(text) if key == "min_samples" else float(text)
            except ValueError:
                raise InvalidRequest(f"{key}: expected a number, got {text!r}") from None
    if form.get("on_breach"):
        values["on_breach"] = form["on_breach"]
    return RolloutPolicy.from_dict(values)


def add_forms(app: FastAPI, ctl: FleetController) -> None:
    """Sign-in, sign-out and the operator actions."""

    def acting(request: Request, csrf: str | None, method: str, api_path: str) -> Session:
        session = signed_in(request)
        record_principal(request.scope, session.principal)  # audited, refused or not
        note(request, via="console")
        check_csrf(request, session, csrf)
        require(session, method, api_path)
        return session

    @app.get("/ui/login", include_in_schema=False, response_class=HTMLResponse)
    def login_form(request: Request,
                   next_url: Annotated[str, Query(alias="next", max_length=2048)] = "/ui/",
                   ) -> HTMLResponse:
        return login_page(request, next_url=next_url)

    @app.post("/ui/login", include_in_schema=False, response_class=HTMLResponse)
    def login(request: Request, token: Annotated[str, Form(max_length=512)] = "",
              nonce: Annotated[str, Form(max_length=128)] = "",
              next_url: Annotated[str, Form(alias="next", max_length=2048)] = "/ui/",
              ) -> Response:
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not cookie or not secrets.compare_digest(nonce, cookie) or \
                not _session.same_origin(request):
            return login_page(request, why="the sign-in form expired: try again",
                              next_url=next_url, status=403)
        principal, why = identify_token(ctl, token.strip())
        if principal is None:
            return login_page(request, why=f"not signed in: {why}", next_url=next_url,
                              status=401)
        session_id, expires = _session.start(ctl, principal, token.strip())
        resp = redirect(next_url if next_url.startswith("/ui/") else "/ui/")
        resp.set_cookie(COOKIE, session_id, httponly=True, samesite="strict", path="/ui",
                        secure=_secure(request), max_age=int(expires - ctl.clock.time()))
        resp.delete_cookie(LOGIN_COOKIE, path="/ui/login")
        return resp

    @app.post("/ui/logout", include_in_schema=False)
    def logout(request: Request, csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
        session = signed_in(request)
        check_csrf(request, session, csrf)
        ctl.store.console.end_session(request.cookies.get(COOKIE, ""))
        resp = login_page(request, why="signed out")
        resp.delete_cookie(COOKIE, path="/ui")
        return resp

    @app.post("/ui/devices/{device_id}/revoke", include_in_schema=False)
    def revoke(request: Request, device_id: str,
               csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
        session = acting(request, csrf, "POST", "/v1/devices/{device_id}/revoke")
        before = ctl.provisioner.identity(device_id)
        after = ctl.provisioner.revoke_device(device_id, actor=session.principal.name)
        note(request, before={"revoked_at": before["revoked_at"]},
             after={"revoked_at": after["revoked_at"]})
        return redirect(f"/ui/devices/{device_id}")

    @app.post("/ui/models/{name}/{version}/card", include_in_schema=False)
    def save_card(request: Request, name: str, version: int,
                  csrf: Annotated[str, Form(max_length=128)] = "",
                  intended_use: Annotated[str, Form(max_length=4000)] = "",
                  data: Annotated[str, Form(max_length=4000)] = "",
                  metrics: Annotated[str, Form(max_length=4000)] = "",
                  limits: Annotated[str, Form(max_length=4000)] = "") -> Response:
        session = acting(request, csrf, "PUT", "/v1/models/{name}/{version}/card")
        before = model_card(ctl, name, version)
        body = ModelCardBody(intended_use=intended_use, data=data, metrics=metrics,
                             limits=limits)
        ctl.store.console.put_card(name, version, body.model_dump(), session.principal.name)
        note(request, before=before["card"], after=body.model_dump())
        return redirect(f"/ui/models/{name}/{version}#card")

    @app.post("/ui/deployments", include_in_schema=False)
    async def create(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        session = acting(request, form.get("csrf"), "POST", "/v1/deployments")
        problems = []
        try:
            policy = _policy(form)
            try:
                version = int(form.get("version", "0") or 0)
            except ValueError:
                raise InvalidRequest("version: expected a version number") from None
            selector = parse_selector(form.get("selector")) or None
            ids = [d for d in form.get("devices", "").replace(",", " ").split() if d] or None
            if not form.get("model"):
                raise InvalidRequest("model: choose the model to deploy")
            if selector is None and ids is None:
                raise InvalidRequest("targets: give a selector (tags, k=v) or device ids; a "
                                 "console deployment never targets the whole fleet by default")
            dep = ctl.deploy(form["model"], version, devices=ids, selector=selector,
                             created_by=session.principal.name, policy=policy)
        except EdgefleetError as exc:  # InvalidRequest, NotFoundError, a busy device…
            problems.append(str(exc))
        if problems:
            return page(request, "deployment_new.html", session, status=422,
                        models=ctl.store.list_models(), form=form, reach=None,
                        problems=problems, strategies=STRATEGIES,
                        defaults=RolloutPolicy().to_dict())
        note(request, after={"id": dep["id"], "state": dep["state"]})
        return redirect(f"/ui/deployments/{dep['id']}")

    @app.post("/ui/deployments/{dep_id}/{action}", include_in_schema=False)
    def act(request: Request, dep_id: str, action: str,
            csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
        if action not in ACTIONS:
            raise HTTPException(404, f"no action {action!r}")
        api_path = ("/v1/deployments/{dep_id}/approve" if action == "approve"
                    else "/v1/deployments/{dep_id}/{action}")
        session = acting(request, csrf, "POST", api_path)
        before = ctl.store.get_deployment(dep_id)["state"]
        try:
            after = ctl.orchestrator.act(dep_id, action, session.principal.name)
        except EdgefleetError as exc:
            if exc.reason == "four_eyes":
                raise HTTPException(403, str(exc)) from exc
            raise HTTPException(409, str(exc)) from exc
        note(request, before={"state": before}, after={"state": after["state"]})
        return redirect(f"/ui/deployments/{dep_id}")

