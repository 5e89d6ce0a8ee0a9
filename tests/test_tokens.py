"""API tokens: an admin hands out roles; secrets are shown once and kept nowhere in clear."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
from _operators import ADMIN, bearer, create_token, offline_controller
from _support import TOKEN
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from edgefleet.cli import app as cli_app
from edgefleet.contract import ManualClock
from edgefleet.controller import Settings
from edgefleet.controller.api import create_app
from edgefleet.controller.http import ApiServer


@pytest.fixture
def ctl(tmp_path, trust_root):
    return offline_controller(tmp_path, trust_root, clock=ManualClock(1_700_000_000.0))


@pytest.fixture
def client(ctl):
    with TestClient(create_app(ctl), raise_server_exceptions=False) as c:
        yield c


def test_admin_creates_an_operator_token_that_works_until_it_is_revoked(client, ctl, caplog):
    caplog.set_level(logging.DEBUG)
    made = create_token(client, "alice", "operator")
    assert set(made) == {"id", "name", "role", "created_at", "created_by", "revoked_at",
                         "expires_at", "state", "token"}
    assert (made["name"], made["role"], made["created_by"], made["state"]) == \
        ("alice", "operator", "admin", "active")
    alice = bearer(made["token"])
    assert client.get("/v1/deployments", headers=alice).status_code == 200
    assert client.get("/v1/tokens", headers=alice).status_code == 403  # not an admin

    listed = client.get("/v1/tokens", headers=ADMIN).json()
    assert [t["name"] for t in listed] == ["alice"]
    assert "token" not in listed[0] and "hash" not in listed[0]

    revoked = client.delete(f"/v1/tokens/{made['id']}", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    refused = client.get("/v1/deployments", headers=alice)
    assert refused.status_code == 401 and refused.json()["detail"] == "token revoked"
    again = client.delete(f"/v1/tokens/{made['id']}", headers=ADMIN).json()
    assert again["revoked_at"] == revoked.json()["revoked_at"]  # revoking twice changes nothing
    assert made["token"] not in caplog.text and TOKEN not in caplog.text


def test_the_store_keeps_only_a_hash_of_each_token(client, ctl, tmp_path):
    made = create_token(client, "bob", "viewer")
    row = ctl.store.tokens.get(made["id"])
    assert row["hash"] == hashlib.sha256(made["token"].encode()).hexdigest()
    secret = made["token"].split("_", 2)[2].encode()  # eft_<id>_<secret>: the secret may hold "_"
    for path in (tmp_path / "ctl.db", tmp_path / "ctl.db-wal"):
        if path.exists():
            assert secret not in path.read_bytes()
    audit = json.dumps(client.get("/v1/audit", headers=ADMIN).json())
    assert "bob" in audit and made["token"] not in audit and row["hash"] not in audit


def test_tokens_expire_on_the_controller_clock(client, ctl):
    made = create_token(client, "temp", "viewer", ttl_s=3600)
    assert made["expires_at"] == made["created_at"] + 3600
    assert client.get("/v1/devices", headers=bearer(made["token"])).status_code == 200
    ctl.clock.advance(3600)
    resp = client.get("/v1/devices", headers=bearer(made["token"]))
    assert (resp.status_code, resp.json()["detail"]) == (401, "token expired")
    assert client.get("/v1/tokens", headers=ADMIN).json()[0]["state"] == "expired"


@pytest.mark.parametrize("body,status", [
    ({"name": "admin", "role": "viewer"}, 422),  # the bootstrap token's actor name
    ({"name": "orchestrator", "role": "admin"}, 422),
    ({"name": "has space", "role": "viewer"}, 422),
    ({"name": "carol", "role": "root"}, 422),
    ({"name": "carol", "role": "viewer", "ttl_s": 0}, 422),
    ({"name": "carol", "role": "viewer", "token": "chosen"}, 422),
])
def test_bad_token_requests_are_refused_with_a_reason(client, body, status):
    assert client.post("/v1/tokens", headers=ADMIN, json=body).status_code == status


def test_token_names_are_never_reused(client):
    first = create_token(client, "dave", "viewer")
    client.delete(f"/v1/tokens/{first['id']}", headers=ADMIN)
    resp = client.post("/v1/tokens", headers=ADMIN, json={"name": "dave", "role": "admin"})
    assert resp.status_code == 409 and resp.json()["reason"] == "name_taken"


def test_an_admin_token_can_manage_tokens_but_an_operator_cannot_escalate(client):
    root = bearer(create_token(client, "root2", "admin")["token"])
    ops = bearer(create_token(client, "ops", "operator")["token"])
    made = client.post("/v1/tokens", headers=root, json={"name": "eve", "role": "viewer"})
    assert made.status_code == 201 and made.json()["created_by"] == "root2"
    escalate = client.post("/v1/tokens", headers=ops, json={"name": "ops2", "role": "admin"})
    assert escalate.status_code == 403


def test_settings_never_show_the_admin_token():
    settings = Settings(admin_token="very-secret-admin-token")
    assert "very-secret-admin-token" not in repr(settings) + str(settings)


def test_tokens_from_the_cli_print_the_secret_once(ctl):
    server = ApiServer(create_app(ctl))
    server.start()
    runner = CliRunner()

    def cli(*args: str, token: str = TOKEN):
        return runner.invoke(cli_app, list(args), env={"EDGEFLEET_URL": server.url,
                                                       "EDGEFLEET_TOKEN": token,
                                                       "COLUMNS": "200"})

    try:
        made = cli("tokens", "create", "frank", "--role", "operator", "--ttl", "90d")
        assert made.exit_code == 0, made.output
        assert "will not be shown again" in made.stderr
        secret = made.stdout.strip().splitlines()[-1]
        assert secret.startswith("eft_")
        row = json.loads(cli("tokens", "list", "--json").stdout)[0]
        assert row["name"] == "frank" and row["expires_at"] - row["created_at"] == 90 * 86400
        assert secret not in cli("tokens", "list").stdout
        assert "frank" in cli("tokens", "list").stdout

        as_frank = cli("deployments", "list", "--json", token=secret)
        assert as_frank.exit_code == 0 and json.loads(as_frank.stdout) == []
        denied = cli("tokens", "list", token=secret)
        assert denied.exit_code == 1 and "403" in denied.output

        revoked = cli("tokens", "revoke", row["id"], "--json")
        assert json.loads(revoked.stdout)["state"] == "revoked"
        after = cli("deployments", "list", token=secret)
        assert after.exit_code == 1 and "401" in after.output and "revoked" in after.output
        bad_ttl = cli("tokens", "create", "gina", "--ttl", "soon")
        assert bad_ttl.exit_code == 1 and "not a duration" in bad_ttl.output
    finally:
        server.stop()
