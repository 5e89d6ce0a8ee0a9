"""The web console's rules, through its HTTP answers: sign-in and the session cookie,
CSRF, roles (what is offered and what is refused), the end of a session, and that every
user-supplied string reaches a page escaped. Real controller, store and templates; no
browser here (tests/test_console_browser.py drives Chromium)."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from _operators import ADMIN, bearer, create_token, offline_controller
from _support import TOKEN, register_digits
from fastapi.testclient import TestClient

from edgefleet.contract import ManualClock
from edgefleet.controller import RolloutPolicy, init_keys
from edgefleet.controller._tables import console_sessions
from edgefleet.controller.api import create_app
from edgefleet.controller.console._session import COOKIE, session_refusal

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def world(tmp_path):
    clock = ManualClock(1_800_000_000.0)
    ctl = offline_controller(tmp_path, init_keys(tmp_path / "keys"), clock=clock,
                             production_tag="env=production")
    with TestClient(create_app(ctl), raise_server_exceptions=True,
                    base_url="http://ctl.test") as admin:
        tokens = {role: create_token(admin, f"{role}-1", role)["token"]
                  for role in ("viewer", "operator")}
        tokens["operator2"] = create_token(admin, "operator-2", "operator")["token"]
        yield {"ctl": ctl, "clock": clock, "app": admin.app, "tokens": tokens}


def client(world) -> TestClient:
    return TestClient(world["app"], base_url="http://ctl.test")


def sign_in(c: TestClient, token: str) -> str:
    """Sign in through the form; returns the page's CSRF token."""
    form = c.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)
    resp = c.post("/ui/login", data={"token": token, "nonce": nonce, "next": "/ui/devices"},
                  follow_redirects=False)
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == "/ui/devices"
    return csrf_of(c.get("/ui/"))


def csrf_of(resp) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', resp.text).group(1)


def test_signing_in_sets_a_strict_httponly_cookie_and_keeps_only_its_hash(world):
    c = client(world)
    form = c.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)
    resp = c.post("/ui/login", data={"token": world["tokens"]["operator"], "nonce": nonce},
                  follow_redirects=False)
    cookie = next(h for h in resp.headers.get_list("set-cookie") if h.startswith(COOKIE + "="))
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path"} <= flags
    assert "samesite=strict" in cookie.lower() and "path=/ui" in cookie.lower()
    value = cookie.split(";")[0].split("=", 1)[1]
    with world["ctl"].store.engine.connect() as conn:
        stored = [r.id_hash for r in conn.execute(sa.select(console_sessions))]
    assert len(stored) == 1 and value not in stored[0] and len(stored[0]) == 64
    page = c.get("/ui/")
    assert page.status_code == 200 and "operator-1" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_a_wrong_token_or_a_forged_sign_in_form_is_refused(world):
    c = client(world)
    form = c.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text).group(1)
    bad = c.post("/ui/login", data={"token": "eft_0123456789abcdef_nope", "nonce": nonce})
    assert bad.status_code == 401 and "unknown token" in bad.text
    other = client(world)  # no nonce cookie: a form posted from elsewhere
    forged = other.post("/ui/login", data={"token": TOKEN, "nonce": nonce})
    assert forged.status_code == 403 and f"{COOKIE}=" not in forged.headers.get("set-cookie", "")
    assert other.get("/ui/", follow_redirects=False).status_code == 401


def test_pages_without_a_session_answer_with_the_sign_in_form(world):
    c = client(world)
    for path in ("/ui/", "/ui/devices", "/ui/models", "/ui/deployments", "/ui/audit"):
        resp = c.get(path)
        assert resp.status_code == 401 and 'name="token"' in resp.text, path
        assert f'name="next" value="{path}"' in resp.text


def _pending_deployment(world, created_by: str) -> str:
    ctl = world["ctl"]
    register_digits(ctl)
    for d in ("p1", "p2"):
        ctl.store.upsert_device(d, online=True, tags={"env": "production"})
    dep = ctl.deploy("digits", 1, selector={"env": "production"}, created_by=created_by,
                     policy=RolloutPolicy(strategy="staged", waves=(50.0, 100.0)))
    assert dep["state"] == "pending_approval"
    return str(dep["id"])


def test_a_viewer_is_offered_no_action_and_a_forged_post_is_refused(world):
    dep_id = _pending_deployment(world, "operator-1")
    c = client(world)
    csrf = sign_in(c, world["tokens"]["viewer"])
    page = c.get(f"/ui/deployments/{dep_id}")
    assert page.status_code == 200 and "pending approval" in page.text
    assert "<button" in c.get("/ui/").text  # (sign out is a button: the check below is real)
    assert not re.search(r'id="action-\w+"', page.text)
    assert 'id="new-deployment"' not in c.get("/ui/deployments").text
    assert "<textarea" not in c.get("/ui/models/digits/1").text
    audit_before = world["ctl"].store.audit.verify().head_seq
    for path, data in ((f"/ui/deployments/{dep_id}/approve", {}),
                       (f"/ui/deployments/{dep_id}/abort", {}),
                       ("/ui/models/digits/1/card", {"intended_use": "x"}),
                       ("/ui/devices/p1/revoke", {})):
        resp = c.post(path, data={"csrf": csrf, **data})
        assert resp.status_code == 403 and "viewer" in resp.text, path
    assert world["ctl"].store.get_deployment(dep_id)["state"] == "pending_approval"
    assert world["ctl"].store.console.card("digits", 1) is None
    refused = world["ctl"].store.audit.entries(after=audit_before)
    assert [e["detail"]["outcome"] for e in refused] == [403] * 4  # audited as refused
    assert {e["actor"] for e in refused} == {"viewer-1"}


def test_a_post_without_the_csrf_token_or_from_another_origin_is_refused(world):
    dep_id = _pending_deployment(world, "operator-1")
    c = client(world)
    csrf = sign_in(c, world["tokens"]["operator"])
    assert c.post(f"/ui/deployments/{dep_id}/abort").status_code == 403
    assert c.post(f"/ui/deployments/{dep_id}/abort", data={"csrf": "x" * 43}).status_code == 403
    cross = c.post(f"/ui/deployments/{dep_id}/abort", data={"csrf": csrf},
                   headers={"Origin": "http://evil.test"})
    assert cross.status_code == 403 and "cross-origin" in cross.text
    assert world["ctl"].store.get_deployment(dep_id)["state"] == "pending_approval"
    ok = c.post(f"/ui/deployments/{dep_id}/abort", data={"csrf": csrf},
                headers={"Origin": "http://ctl.test"}, follow_redirects=False)
    assert ok.status_code == 303
    assert world["ctl"].store.get_deployment(dep_id)["state"] == "aborted"


def test_four_eyes_the_creator_is_not_offered_approve_and_a_second_operator_approves(world):
    dep_id = _pending_deployment(world, "operator-1")
    sent: list[str] = []  # (no broker here: what the first wave would publish)
    world["ctl"]._publish_signed = lambda device, _envelope: sent.append(device)
    creator = client(world)
    csrf = sign_in(creator, world["tokens"]["operator"])
    page = creator.get(f"/ui/deployments/{dep_id}")
    assert 'id="action-abort"' in page.text and 'id="action-approve"' not in page.text
    refused = creator.post(f"/ui/deployments/{dep_id}/approve", data={"csrf": csrf})
    assert refused.status_code == 403 and "four-eyes" in refused.text
    second = client(world)
    csrf2 = sign_in(second, world["tokens"]["operator2"])
    assert 'id="action-approve"' in second.get(f"/ui/deployments/{dep_id}").text
    done = second.post(f"/ui/deployments/{dep_id}/approve", data={"csrf": csrf2})
    assert done.status_code == 200 and "Approved by operator-2" in done.text
    dep = world["ctl"].store.get_deployment(dep_id)
    assert (dep["state"], dep["approved_by"]) == ("running", "operator-2")
    assert len(sent) == 1 and sent[0] in ("p1", "p2")  # the first wave: half the targets
    entry = world["ctl"].store.audit.entries(target=f"/ui/deployments/{dep_id}/approve")
    assert entry[-1]["actor"] == "operator-2" and entry[-1]["detail"]["via"] == "console"


def test_signing_out_revoking_or_expiry_ends_the_session(world):
    clock = world["clock"]
    c = client(world)
    csrf = sign_in(c, world["tokens"]["operator"])
    out = c.post("/ui/logout", data={"csrf": csrf})
    assert out.status_code == 200 and "signed out" in out.text
    assert c.get("/ui/").status_code == 401

    c2 = client(world)
    sign_in(c2, world["tokens"]["viewer"])
    token_id = world["tokens"]["viewer"].split("_")[1]
    with TestClient(world["app"]) as api:
        assert api.delete(f"/v1/tokens/{token_id}", headers=ADMIN).status_code == 200
    gone = c2.get("/ui/devices")
    assert gone.status_code == 401 and "token revoked" in gone.text

    with TestClient(world["app"]) as api:
        short = create_token(api, "short-lived", "operator", ttl_s=120)["token"]
    c3 = client(world)
    sign_in(c3, short)
    assert c3.get("/ui/").status_code == 200
    clock.advance(121)
    assert "session expired" in c3.get("/ui/").text  # the session ends with its token
    assert api.get("/v1/models", headers=bearer(short)).status_code == 401


def test_session_refusal_rules():
    row = {"expires_at": 100.0, "token_id": "t1", "token_hash": "h", "role": "viewer"}
    token = {"hash": "h", "revoked_at": None, "expires_at": None, "role": "viewer"}
    assert session_refusal(row, token, None, 50.0) is None
    assert session_refusal(None, token, None, 50.0) == "signed out"
    assert session_refusal(row, token, None, 100.0) == "session expired"
    assert session_refusal(row, {**token, "revoked_at": 1.0}, None, 50.0) == "token revoked"
    assert session_refusal(row, {**token, "hash": "other"}, None, 50.0) == "token unknown"
    assert session_refusal(row, {**token, "role": "admin"}, None, 50.0) == "token changed"
    assert session_refusal(row, None, None, 50.0) == "token unknown"
    admin = {**row, "token_id": None,
             "token_hash": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}
    assert session_refusal(admin, None, "foo", 50.0) is None  # sha256("foo")
    assert session_refusal(admin, None, "bar", 50.0) == "the admin token changed"
    assert session_refusal(admin, None, None, 50.0) == "the admin token changed"


def test_every_user_supplied_string_reaches_the_pages_escaped(world):
    ctl = world["ctl"]
    register_digits(ctl)
    ctl.store.upsert_device("pi-x", online=True, tags={"site": HOSTILE, HOSTILE: "v"},
                            hw={"class": HOSTILE}, agent_version=HOSTILE,
                            active={"name": HOSTILE, "version": 1})
    ctl.store.console.put_card("digits", 1, {"intended_use": HOSTILE, "data": HOSTILE,
                                             "metrics": "", "limits": ""}, HOSTILE)
    c = client(world)
    sign_in(c, world["tokens"]["operator"])
    pages = {p: c.get(p) for p in ("/ui/", "/ui/devices", "/ui/devices/pi-x",
                                   "/ui/models/digits/1", f"/ui/devices?q={HOSTILE}",
                                   f"/ui/devices?tag=site={HOSTILE}",
                                   f"/ui/devices/{HOSTILE}")}
    for path, resp in pages.items():
        assert "<script>alert" not in resp.text and "<img src=x" not in resp.text, path
    assert "&lt;script&gt;alert(" in pages["/ui/devices/pi-x"].text
    assert "&lt;script&gt;alert(" in pages["/ui/models/digits/1"].text
    assert pages[f"/ui/devices?tag=site={HOSTILE}"].text.count("pi-x") >= 1  # found by it
    assert pages[f"/ui/devices/{HOSTILE}"].status_code == 404


def test_the_devices_list_filters_sorts_and_pages_in_the_database(world):
    ctl = world["ctl"]
    now = world["clock"].time()
    for i in range(120):
        ctl.store.upsert_device(f"dev-{i:03d}", online=i % 2 == 0, last_seen=now - i * 60,
                                hw={"class": "rpi5" if i % 3 == 0 else "rpi4"},
                                tags={"site": "lab" if i < 60 else "plant"},
                                active={"name": "digits", "version": 1 + i % 4})
    c = client(world)
    sign_in(c, world["tokens"]["viewer"])

    def ids(resp) -> list[str]:
        return re.findall(r'href="/ui/devices/(dev-\d+)"', resp.text)

    first = c.get("/ui/devices")
    assert "120 matching" in first.text and len(ids(first)) == 50 and "page 1 of 3" in first.text
    last = c.get("/ui/devices?page=3")
    assert ids(last) == [f"dev-{i:03d}" for i in range(100, 120)]
    picked = c.get("/ui/devices?status=online&class=rpi5&tag=site%3Dlab&version=1"
                   "&sort=last_seen&desc=1")
    expected = [f"dev-{i:03d}" for i in range(60) if i % 2 == 0 and i % 3 == 0 and i % 4 == 0]
    assert ids(picked) == sorted(expected)  # newest first: lowest index was seen last
    seen = c.get("/ui/devices?seen=5m")  # within 5 minutes: i*60 <= 300
    assert ids(seen) == [f"dev-{i:03d}" for i in range(6)]
    bad = c.get("/ui/devices?tag=nokey&version=x&sort=evil")
    assert bad.status_code == 200 and "tag: expected key=value" in bad.text
    assert "version: expected a number" in bad.text and "sort: one of" in bad.text
    counts = c.get("/ui/")
    assert re.search(r'id="online">60<', counts.text) and re.search(r'id="offline">60<',
                                                                   counts.text)


def test_a_model_card_is_kept_with_its_version_through_the_api_and_the_console(world):
    register_digits(world["ctl"])
    with TestClient(world["app"]) as api:
        viewer, operator = (bearer(world["tokens"][r]) for r in ("viewer", "operator"))
        assert api.get("/v1/models/digits/1/card", headers=viewer).json()["card"] == {
            "intended_use": "", "data": "", "metrics": "", "limits": ""}
        assert api.put("/v1/models/digits/1/card", headers=viewer,
                       json={"intended_use": "x"}).status_code == 403
        put = api.put("/v1/models/digits/1/card", headers=operator,
                      json={"intended_use": "digit reading on meters", "limits": "no letters"})
        assert put.status_code == 200 and put.json()["updated_by"] == "operator-1"
        assert api.put("/v1/models/digits/9/card", headers=operator,
                       json={}).status_code == 404
        assert api.put("/v1/models/digits/1/card", headers=operator,
                       json={"bogus": "x"}).status_code == 422
    c = client(world)
    csrf = sign_in(c, world["tokens"]["operator2"])
    page = c.get("/ui/models/digits/1")
    assert "digit reading on meters" in page.text and "<textarea" in page.text
    saved = c.post("/ui/models/digits/1/card", data={"csrf": csrf, "data": "MNIST-like",
                                                      "intended_use": "meters"})
    assert saved.status_code == 200 and "MNIST-like" in saved.text
    card = world["ctl"].store.console.card("digits", 1)
    assert card["card"]["data"] == "MNIST-like" and card["updated_by"] == "operator-2"
