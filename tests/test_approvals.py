"""Four-eyes: a deployment that touches production devices waits for a second person.

The rules on the orchestrator with an injected clock first, then real agents tagged
``env=production`` behind a real Mosquitto, driven through the API and the CLI.
"""

from __future__ import annotations

import json

import pytest
from _operators import ADMIN, bearer, create_token
from _support import register_digits, wait_deployment, wait_devices_known
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from edgefleet.cli import app as cli_app
from edgefleet.contract import DesiredState, ManualClock, RegistryError
from edgefleet.controller import RolloutPolicy, Store
from edgefleet.controller.api import create_app
from edgefleet.controller.auth import production_targets
from edgefleet.controller.http import ApiServer
from edgefleet.controller.orchestrator import Orchestrator


def test_production_targets_are_the_devices_with_the_tag():
    devices = [{"id": "a", "tags": {"env": "production"}}, {"id": "b", "tags": {"env": "dev"}},
               {"id": "c", "tags": {}}, {"id": "d", "tags": {"env": "production"}}]
    assert production_targets(devices, ["a", "b", "c", "x"], "env=production") == ["a"]
    assert production_targets(devices, ["a", "d"], "") == []
    with pytest.raises(ValueError, match="key=value"):
        production_targets(devices, ["a"], "production")


@pytest.fixture
def rollout(tmp_path):
    """An orchestrator on a real store; ``sent`` records what it would publish."""
    clock = ManualClock(1_700_000_000.0)
    store = Store(f"sqlite:///{tmp_path / 'o.db'}")
    for d in ("p1", "p2"):
        store.upsert_device(d, online=True, tags={"env": "production"},
                            active={"name": "digits", "version": 1})
    sent: list[tuple[str, DesiredState]] = []
    orch = Orchestrator(store, sent.extend, lambda m, v, ds: {d: f"{m}/{v}.json" for d in ds},
                        clock=clock)
    return orch, store, clock, sent


def test_a_pending_deployment_is_not_driven_and_its_wait_counts_against_no_timeout(rollout):
    orch, store, clock, sent = rollout
    policy = RolloutPolicy(strategy="staged", waves=(50.0, 100.0), wave_timeout_s=60)
    orch.create("dep-1", "digits", 2, ["p1", "p2"], policy, "alice",
                needs_approval=["p1", "p2"])
    for _ in range(3):  # hours pass while nobody approves
        clock.advance(3600)
        orch.tick()
    dep = store.get_deployment("dep-1", with_events=True)
    assert (dep["state"], dep["wave"], sent) == ("pending_approval", -1, [])
    assert [e["kind"] for e in dep["events"]] == ["created", "approval_requested"]

    with pytest.raises(RegistryError, match="four-eyes") as refused:
        orch.act("dep-1", "approve", "alice")
    assert refused.value.reason == "four_eyes"
    with pytest.raises(RegistryError, match="cannot rollback"):
        orch.act("dep-1", "rollback", "bob")  # nothing was sent: abort is the way out
    orch.act("dep-1", "approve", "bob")
    dep = store.get_deployment("dep-1")
    assert (dep["state"], dep["wave"], dep["approved_by"]) == ("running", 0, "bob")
    assert dep["approved_at"] == clock.time() and len(sent) == 1  # the first wave, at once
    clock.advance(30)  # within the wave's 60 s: the three hours before approval do not count
    orch.tick()
    assert store.get_deployment("dep-1")["state"] == "running"
    with pytest.raises(RegistryError, match="cannot approve"):
        orch.act("dep-1", "approve", "carol")  # once is enough


def test_aborting_a_pending_deployment_sends_nothing(rollout):
    orch, store, clock, sent = rollout
    orch.create("dep-2", "digits", 2, ["p1", "p2"], RolloutPolicy(), "alice",
                needs_approval=["p1"])
    orch.act("dep-2", "abort", "alice")
    dep = store.get_deployment("dep-2")
    assert dep["state"] == "aborted" and sent == []
    assert {j["job"] for j in dep["jobs"]} == {None}


def test_production_fleet_keeps_its_model_until_a_second_operator_approves(controller,
                                                                          make_fleet):
    lab = make_fleet(1, tags={"env": "lab"}, prefix="lab")
    prod = make_fleet(2, tags={"env": "production"}, prefix="prod")
    wait_devices_known(controller, lab.ids + prod.ids)
    register_digits(controller)
    with TestClient(create_app(controller), raise_server_exceptions=False) as client:
        alice = bearer(create_token(client, "alice", "operator")["token"])
        bob = bearer(create_token(client, "bob", "operator")["token"])
        viewer = bearer(create_token(client, "vic", "viewer")["token"])
        body = {"model": "digits", "version": 1}

        lab_only = client.post("/v1/deployments", headers=alice,
                               json={**body, "selector": {"env": "lab"}}).json()
        assert lab_only["state"] == "running" and not lab_only["approval_required"]
        assert wait_deployment(controller, lab_only["id"])["state"] == "succeeded"

        dep = client.post("/v1/deployments", headers=alice, json=body).json()
        assert (dep["state"], dep["approval_required"], dep["created_by"]) == \
            ("pending_approval", True, "alice")
        overlap = client.post("/v1/deployments", headers=bob,
                              json={**body, "devices": [prod.ids[0]]})
        assert overlap.status_code == 409  # its devices are reserved while it waits
        for _ in range(2):  # orchestrator ticks, run here so that they have surely run
            controller.orchestrator.tick()
        assert {d: prod.agents[d].active for d in prod.ids} == {d: None for d in prod.ids}
        assert [controller.store.get_desired(d) for d in prod.ids] == [None, None]

        own = client.post(f"/v1/deployments/{dep['id']}/approve", headers=alice)
        assert own.status_code == 403 and "four-eyes" in own.json()["detail"]
        assert client.post(f"/v1/deployments/{dep['id']}/approve",
                           headers=viewer).status_code == 403
        approved = client.post(f"/v1/deployments/{dep['id']}/approve", headers=bob)
        assert approved.status_code == 200 and approved.json()["approved_by"] == "bob"

        done = wait_deployment(controller, dep["id"], 60)
        assert done["state"] == "succeeded"
        assert {d: prod.agents[d].active.version for d in prod.ids} == {d: 1 for d in prod.ids}
        shown = client.get(f"/v1/deployments/{dep['id']}", headers=viewer).json()
        assert shown["approved_by"] == "bob" and shown["approved_at"] >= shown["created_at"]
        assert [(e["kind"], e["actor"]) for e in shown["events"]][:3] == [
            ("created", "alice"), ("approval_requested", "alice"), ("approved", "bob")]

        audit = client.get("/v1/audit", headers=ADMIN, params={"limit": 1000}).json()
    approvals = [e for e in audit if e["action"] == "POST /v1/deployments/{dep_id}/approve"]
    assert [(e["actor"], e["detail"]["outcome"]) for e in approvals] == \
        [("alice", 403), ("vic", 403), ("bob", 200)]
    assert "four-eyes" in approvals[0]["detail"]["error"]
    assert approvals[2]["detail"]["before"] == {"state": "pending_approval"}
    rollout_events = [e["action"] for e in audit if e["target"] == dep["id"]
                      and e["action"].startswith("deployment.")]
    assert rollout_events[:3] == ["deployment.created", "deployment.approval_requested",
                                  "deployment.approved"]
    assert rollout_events[-1] == "deployment.succeeded"


def test_approve_from_the_cli(controller, make_fleet):
    prod = make_fleet(1, tags={"env": "production"}, prefix="prod")
    wait_devices_known(controller, prod.ids)
    register_digits(controller)
    server = ApiServer(create_app(controller))
    server.start()
    runner = CliRunner()
    try:
        with TestClient(create_app(controller)) as client:
            tokens = {n: create_token(client, n, "operator")["token"] for n in ("ann", "ben")}

        def cli(who: str, *args: str):
            return runner.invoke(cli_app, list(args), env={
                "EDGEFLEET_URL": server.url, "EDGEFLEET_TOKEN": tokens.get(who, ""),
                "COLUMNS": "200"})

        made = cli("ann", "deploy", "digits:1", "--wait", "60", "--json")
        dep = json.loads(made.stdout)
        assert dep["state"] == "pending_approval"  # --wait does not wait for a person
        assert "approve" in cli("ann", "deployments", "show", dep["id"]).stdout
        own = cli("ann", "deployments", "approve", dep["id"])
        assert own.exit_code == 1 and "403" in own.output and "four-eyes" in own.output
        approved = cli("ben", "deployments", "approve", dep["id"], "--json")
        assert approved.exit_code == 0, approved.output
        assert json.loads(approved.stdout)["approved_by"] == "ben"
        assert wait_deployment(controller, dep["id"], 60)["state"] == "succeeded"
        assert "approved by ben" in cli("ann", "deployments", "show", dep["id"]).stdout
    finally:
        server.stop()
