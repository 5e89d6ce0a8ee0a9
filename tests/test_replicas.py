"""Controller replicas on PostgreSQL and Mosquitto: shared telemetry, one leader, failover."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from _support import ASSETS, TOKEN

from edgefleet.contract import CTL_STATE
from edgefleet.controller.lease import Lease
from edgefleet.simulations.fleet import wait_until

AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One ``edgefleet controller serve`` process of the group."""

    def __init__(self, name: str, *, db: str, broker: str, keys: Path, data: Path,
                 logs: Path, file_store: str = "directory") -> None:
        self.name, self.broker = name, broker
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "EDGEFLEET_ROLLOUT_TICK_S": "0.2"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "controller", "serve", "--keys", str(keys),
             "--broker", broker, "--db", db, "--data", str(data), "--port", str(self.port),
             "--token", TOKEN, "--share-group", "ctl", "--client-id", f"ctl-{name}",
             "--file-store", file_store, "-v"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def health(self) -> dict[str, Any]:
        try:
            return dict(httpx.get(f"{self.url}/healthz", timeout=2).json())
        except (httpx.HTTPError, ValueError):
            return {}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = httpx.request(method, f"{self.url}{path}", headers=AUTH, timeout=30, **kwargs)
        assert r.status_code < 300, r.text
        return r.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def replicas(pg_url, mosquitto, trust_root, tmp_path) -> Iterator[dict[str, Replica]]:
    group: dict[str, Replica] = {}
    shared = dict(db=pg_url, broker=mosquitto.url, keys=trust_root.parent,
                  data=tmp_path / "ctl", logs=tmp_path)
    try:
        group["a"] = Replica("a", **shared)  # type: ignore[arg-type]
        wait_until(lambda: group["a"].health().get("leader"), 30)
        group["b"] = Replica("b", **shared)  # type: ignore[arg-type]
        wait_until(lambda: group["b"].health().get("broker_connected"), 30)
        yield group
    finally:
        for r in group.values():
            r.stop()


@pytest.fixture
def unshared_replicas(pg_url, mosquitto, trust_root, tmp_path) -> Iterator[dict[str, Replica]]:
    """Two replicas with the database file store, each with a data directory of its own."""
    group: dict[str, Replica] = {}
    common = dict(db=pg_url, broker=mosquitto.url, keys=trust_root.parent, logs=tmp_path,
                  file_store="database")
    try:
        group["a"] = Replica("a", data=tmp_path / "ctl-a", **common)  # type: ignore[arg-type]
        wait_until(lambda: group["a"].health().get("leader"), 30)
        group["b"] = Replica("b", data=tmp_path / "ctl-b", **common)  # type: ignore[arg-type]
        wait_until(lambda: group["b"].health().get("broker_connected"), 30)
        yield group
    finally:
        for r in group.values():
            r.stop()


class StateWatch:
    """Every message on the controller state topic, as a device sees it."""

    def __init__(self, broker_url: str) -> None:
        import paho.mqtt.client as mqtt

        self.seen: list[bool] = []
        port = int(broker_url.rsplit(":", 1)[1])
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="state-watch")
        self._client.on_message = lambda _c, _u, m: self.seen.append(
            json.loads(m.payload).get("online") is True)
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(CTL_STATE, qos=1)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _register(replica: Replica) -> dict[str, Any]:
    labels = json.loads((ASSETS / "digits.json").read_text())["labels"]
    return dict(replica.call("POST", "/v1/models", data={
        "name": "digits", "labels": json.dumps(labels)}, files={
        "model": ("digits.onnx", (ASSETS / "digits.onnx").read_bytes()),
        "eval_set": ("eval.npz", (ASSETS / "eval.npz").read_bytes())}))


def _staged_until_first_healthy(create: Replica, watch: Replica,
                                version: int) -> dict[str, Any]:
    """A staged deployment of ``version`` made through ``create``, once ``watch`` sees a
    first device healthy while it still runs (mid-rollout)."""
    dep: dict[str, Any] = create.call("POST", "/v1/deployments", json={
        "model": "digits", "version": version, "strategy": "staged",
        "policy": {"waves": [25, 50, 100], "health_window_s": 1.5,
                   # timing on a loaded 2-core box is not what these tests are about
                   "device_max_latency_ratio": None}})
    wait_until(lambda: any(j["state"] == "healthy" for j in watch.call(
        "GET", f"/v1/deployments/{dep['id']}")["jobs"]), 60)
    assert watch.call("GET", f"/v1/deployments/{dep['id']}")["state"] == "running"
    return dep


def test_the_leader_dies_mid_rollout_and_telemetry_flood_and_nothing_is_lost_or_doubled(
        replicas, make_fleet, pg_url, evalset):
    a, b = replicas["a"], replicas["b"]
    assert (a.health()["leader"], b.health()["leader"]) == (True, False)
    fleet = make_fleet(12, prefix="rep", summary_window_s=0.2, telemetry_flush_interval_s=0.2,
                       resend_after_s=2.0)
    wait_until(lambda: {d["id"] for d in b.call("GET", "/v1/devices") if d["online"]}
               >= set(fleet.ids), 20)
    v1, v2 = _register(a)["version"], _register(a)["version"]
    first = b.call("POST", "/v1/deployments", json={"model": "digits", "version": v1})
    wait_until(lambda: b.call("GET", f"/v1/deployments/{first['id']}")["state"]
               == "succeeded", 60)

    stop = threading.Event()
    x = evalset["x"][:4].astype(np.float32)

    def flood() -> None:  # every agent serves and summarizes 5 windows a second
        while not stop.is_set():
            for agent in fleet.agents.values():
                agent.predict(x)
            stop.wait(0.01)
    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        # created on the replica that does not lead: the leader drives it
        dep = _staged_until_first_healthy(b, b, v2)
        watch = StateWatch(replicas["a"].broker)
        wait_until(lambda: watch.seen == [True], 10)  # the retained state: online
        a.proc.kill()  # SIGKILL: no goodbye, its lease goes with its connection
        a.proc.wait(10)
        wait_until(lambda: b.health().get("leader"), 20)
        # a's will said "offline" for the whole group; b, alive, says "online" again
        wait_until(lambda: False in watch.seen and watch.seen[-1] is True, 20)
        watch.stop()
        late = StateWatch(replicas["a"].broker)  # what a device connecting now is told
        wait_until(lambda: late.seen == [True], 10)
        late.stop()
        wait_until(lambda: b.call("GET", f"/v1/deployments/{dep['id']}")["state"]
                   not in ("running", "paused"), 90)
        final = b.call("GET", f"/v1/deployments/{dep['id']}")
        assert final["state"] == "succeeded", final
        assert {j["state"] for j in final["jobs"]} == {"healthy"}
        # a little more telemetry to the surviving replica: a window more per agent
        made = sum(agent.buffer.stats()["summaries"] for agent in fleet.agents.values())
        wait_until(lambda: sum(agent.buffer.stats()["summaries"]
                               for agent in fleet.agents.values()) >= made + len(fleet.agents),
                   20)
    finally:
        stop.set()
        flooder.join(10)
    assert {agent.active.version for agent in fleet.agents.values()} == {v2}

    # every summary every agent made is stored exactly once, in order
    wait_until(lambda: all(agent.buffer.stats()["summaries_unacked"] == 0
                           for agent in fleet.agents.values()), 60)
    made = {d: agent.buffer.stats()["summaries"] for d, agent in fleet.agents.items()}
    engine = sa.create_engine(pg_url, poolclass=sa.NullPool)
    with engine.connect() as c:
        rows = c.execute(sa.text(
            "SELECT device, COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM telemetry "
            "GROUP BY device")).all()
        lost = c.execute(sa.text("SELECT COALESCE(SUM(lost), 0) FROM telemetry_streams")).scalar()
    engine.dispose()
    stored = {d: (n, distinct, lo, hi) for d, n, distinct, lo, hi in rows}
    assert stored == {d: (n, n, 1, n) for d, n in made.items()}
    assert lost == 0
    total = sum(made.values())
    assert total > 12 * 20  # a flood, not a trickle
    on_b = b.call("GET", "/v1/stats")["summaries_stored"]
    assert 0 < on_b < total  # the replicas shared the telemetry


def test_replicas_sharing_no_filesystem_finish_a_rollout_after_the_leader_is_killed(
        unshared_replicas, make_fleet, tmp_path):
    a, b = unshared_replicas["a"], unshared_replicas["b"]
    assert (a.health()["leader"], b.health()["leader"]) == (True, False)
    fleet = make_fleet(8, prefix="nofs", resend_after_s=2.0)
    wait_until(lambda: {d["id"] for d in a.call("GET", "/v1/devices") if d["online"]}
               >= set(fleet.ids), 20)
    # registered on the replica that does not lead: its files are in the database only
    version = _register(b)["version"]
    assert a.call("GET", f"/v1/models/digits/{version}")["sha256"]
    dep = _staged_until_first_healthy(a, b, version)
    a.proc.kill()  # SIGKILL mid-rollout: the leader that signed the bundle is gone
    a.proc.wait(10)
    wait_until(lambda: b.health().get("leader"), 20)
    wait_until(lambda: b.call("GET", f"/v1/deployments/{dep['id']}")["state"]
               not in ("running", "paused"), 120)

    final = b.call("GET", f"/v1/deployments/{dep['id']}")
    assert final["state"] == "succeeded", final
    assert sorted(j["device"] for j in final["jobs"]) == sorted(fleet.ids)
    assert {j["state"] for j in final["jobs"]} == {"healthy"}
    assert {agent.active.version for agent in fleet.agents.values()} == {version}
    devices = {d["id"]: d for d in b.call("GET", "/v1/devices")}
    assert {devices[d]["active"]["version"] for d in fleet.ids} == {version}
    events = b.call("GET", f"/v1/deployments/{dep['id']}/events")
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "created" and kinds[-1] == "succeeded", kinds
    assert sorted({e["detail"].get("wave") for e in events
                   if e["kind"] == "wave_started"}) == [0, 1, 2], [
        (e["kind"], e["actor"], e["detail"]) for e in events]
    assert b.call("GET", "/v1/audit/verify")["ok"] is True
    # nothing of the repository or the models was kept in either data directory
    for data in (tmp_path / "ctl-a", tmp_path / "ctl-b"):
        assert not (data / "repo").exists() and not (data / "models").exists()


def test_one_lease_holder_at_a_time_and_it_is_freed_when_its_connection_ends(pg_url):
    engines = [sa.create_engine(pg_url), sa.create_engine(pg_url)]
    first, second = Lease(engines[0]), Lease(engines[1])
    try:
        assert first.acquire() and not second.acquire()
        assert first.acquire()  # confirmed while its connection lives
        assert first._conn is not None
        first._conn.invalidate()  # the holder's connection breaks, as when its host dies
        wait_until(second.acquire, 10)
        assert not first.acquire()  # it knows it no longer leads
        second.release()
        assert first.acquire()
    finally:
        first.release()
        second.release()
        for e in engines:
            e.dispose()


def test_on_sqlite_the_lease_is_a_lock_file_next_to_the_database(tmp_path):
    engines = [sa.create_engine(f"sqlite:///{tmp_path / 'ctl.db'}") for _ in range(2)]
    first, second = Lease(engines[0]), Lease(engines[1])
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire() and not first.acquire()
    second.release()
    with first.exclusive("deployment:x"):
        pass


def test_replicas_sharing_a_repository_never_publish_an_older_version(tmp_path, trust_root):
    from edgefleet.controller.signing import TrustRepository

    a = TrustRepository(tmp_path / "repo", trust_root.parent, shared=True)
    b = TrustRepository(tmp_path / "repo", trust_root.parent, shared=True)
    a.add_targets({"x/1/model.onnx": b"one"})
    b.add_targets({"x/2/model.onnx": b"two"})  # b first takes what a published
    a.refresh(min_remaining_fraction=1.0)  # and a what b published
    ts = json.loads((tmp_path / "repo" / "metadata" / "timestamp.json").read_bytes())
    assert ts["signed"]["version"] == a.timestamp.signed.version == 4
    assert set(a.targets.signed.targets) == {"x/1/model.onnx", "x/2/model.onnx"}


def test_a_late_step_of_a_finished_job_does_not_reopen_it(controller, make_fleet):
    from _support import register_digits, wait_deployment

    from edgefleet.contract import JobStatus

    fleet = make_fleet(1, prefix="late")
    device = fleet.ids[0]
    wait_until(lambda: any(d["id"] == device for d in controller.store.list_devices()), 10)
    v = register_digits(controller)["version"]
    dep = wait_deployment(controller, controller.deploy("digits", v)["id"])
    job = next(j for j in dep["jobs"] if j["device"] == device)
    assert job["state"] == "healthy"
    # with replicas, the device's "installing" may be handled after its "healthy"
    controller._on_status(device, JobStatus(job=job["job"], deployment=dep["id"],
                                            state="installing", ts=0.0))
    assert controller.store.get_job(dep["id"], device)["state"] == "healthy"
    controller._on_status(device, JobStatus(job=job["job"], deployment=dep["id"],
                                            state="failed", ts=1.0, reason="smoke_test"))
    assert controller.store.get_job(dep["id"], device)["state"] == "healthy"  # ended stays
