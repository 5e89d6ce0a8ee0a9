"""The controller on a real PostgreSQL server: migrations, a deployment to real agents,
telemetry ingest and queries, the audit chain across replicas, tokens and alerts.

Each test gets a fresh database (``pg_url`` in conftest.py); without a server that
answers, they are skipped and say why.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from _devices import summary
from _support import register_digits, wait_deployment, wait_devices_known
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from test_store_migration import V1
from typer.testing import CliRunner

from edgefleet.cli import app as cli_app
from edgefleet.contract import DDSketch, ManualClock, RegistryError, Summary
from edgefleet.controller._ingestor import Ingestor
from edgefleet.controller._tables import meta
from edgefleet.controller._telemetry_store import summary_row
from edgefleet.controller.aggregate import ALPHA, hour_of
from edgefleet.controller.alerts import AlertState
from edgefleet.controller.store import Store, schema_status
from edgefleet.simulations.fleet import wait_until

BASE = hour_of(1_700_000_000.0)


@pytest.fixture
def db_url(pg_url: str) -> str:
    """Here the conftest ``controller`` fixture runs on PostgreSQL."""
    return pg_url


def _differences(engine: sa.Engine) -> list:
    with engine.connect() as c:
        return compare_metadata(MigrationContext.configure(c), meta)


def _db(*args: str) -> dict:
    result = CliRunner().invoke(cli_app, ["db", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


# -- migrations ---------------------------------------------------------------------------
def test_an_empty_database_is_migrated_to_head_and_opening_it_again_changes_nothing(pg_url):
    store = Store(pg_url)
    store.upsert_device("pi-1", bd_seq=1_700_000_000_123, online=True)  # clock-seeded: BIGINT

    assert store.schema_version == "0007"
    assert _differences(store.engine) == []  # the revisions make the tables the code uses
    again = Store(pg_url)
    assert again.schema_version == "0007"
    assert again.get_device("pi-1")["bd_seq"] == 1_700_000_000_123
    with again.engine.connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [("0007",)]
    assert schema_status(again.engine)["up_to_date"] is True


def test_the_cli_reports_and_upgrades_the_schema(pg_url):
    assert _db("current", "--db", pg_url) == {"current": None, "head": "0007",
                                              "up_to_date": False, "legacy_version": None}

    done = _db("upgrade", "--db", pg_url)

    assert (done["from"], done["current"], done["up_to_date"]) == (None, "0007", True)
    assert _db("upgrade", "--db", pg_url)["from"] == "0007"  # nothing left to do
    assert _db("current", "--db", pg_url)["current"] == "0007"
    assert _differences(sa.create_engine(pg_url, poolclass=sa.NullPool)) == []


def test_controllers_starting_together_upgrade_the_schema_once(pg_url):
    start = threading.Barrier(4)
    versions: list[str] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            versions.append(Store(pg_url).schema_version)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == [] and versions == ["0007"] * 4
    engine = sa.create_engine(pg_url, poolclass=sa.NullPool)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT COUNT(*) FROM alembic_version")).scalar() == 1
        assert c.execute(sa.text("SELECT COUNT(*) FROM audit_head")).scalar() == 1


def test_a_store_from_before_alembic_is_upgraded_without_losing_data(pg_url):
    engine = sa.create_engine(pg_url, poolclass=sa.NullPool)
    with engine.begin() as c:  # schema 1 as the old migrator left it on PostgreSQL
        for statement in V1.split(";"):
            if statement.strip():
                c.execute(sa.text(statement))
        for seq in (1, 2):
            c.execute(sa.text(
                "INSERT INTO telemetry VALUES ('pi-1', :seq, 0, 60, false, 'digits', 1, 10, 0, "
                "'{\"latency_ms\": {\"p95\": 3.0}}', :at)"), {"seq": seq, "at": 100.0 + seq})
    assert schema_status(engine)["legacy_version"] == 1

    store = Store(pg_url)

    assert store.schema_version == "0007"
    assert store.deployment_state("dep-old") == "legacy"
    assert [(r["stream"], r["seq"]) for r in store.summaries("pi-1")] == [("", 1), ("", 2)]
    (position,) = store.telemetry.streams("pi-1")
    assert (position["last_seq"], position["stored"]) == (2, 2)
    assert store.cohort_metrics(["pi-1"], "digits", 1, 0).p95_ms == 3.0
    tables = set(sa.inspect(store.engine).get_table_names())
    assert not {"schema_info", "telemetry_v3"} & tables
    assert _differences(store.engine) == []  # bd_seq is BIGINT, keys and indexes as new


# -- a deployment and its telemetry ---------------------------------------------------------
def test_a_model_is_deployed_to_real_agents_and_their_telemetry_stored(controller, make_fleet,
                                                                       evalset):
    assert controller.store.engine.dialect.name == "postgresql"
    clock = ManualClock(BASE)
    fleet = make_fleet(2, clock=clock)
    wait_devices_known(controller, fleet.ids)
    row = register_digits(controller)

    dep = wait_deployment(controller, controller.deploy("digits", row["version"])["id"])

    assert dep["state"] == "succeeded"
    assert [j["state"] for j in dep["jobs"]] == ["healthy", "healthy"]
    assert {e["kind"] for e in dep["events"]} >= {"created", "succeeded"}
    for device in fleet.ids:
        assert controller.store.get_desired(device)["version"] == row["version"]
    wait_until(lambda: all((d["active"] or {}).get("version") == row["version"]
                           for d in controller.store.list_devices()), 10)
    for i, agent in enumerate(fleet.agents.values()):
        for x in evalset["x"][: 5 + i]:
            agent.predict(x[None, :])
    clock.advance(60.0)
    for agent in fleet.agents.values():
        agent.tick()
    wait_until(lambda: controller.store.telemetry_counts() == {fleet.ids[0]: 1,
                                                               fleet.ids[1]: 1}, 20)
    stored = [controller.store.summaries(d)[0] for d in fleet.ids]
    assert [(s["count"], s["version"]) for s in stored] == [(5, row["version"]),
                                                            (6, row["version"])]
    assert all(s["latency_sketch"] for s in stored)
    cohort = controller.store.cohort_metrics(fleet.ids, "digits", row["version"], 0)
    assert cohort.count == 11 and cohort.p95_ms is not None
    assert controller.store.audit.verify().ok


def _window(values: list[float], seq: int, **fields: Any) -> Summary:
    return summary(seq, start=BASE, count=len(values),
                   latency_ms={"p95": float(np.percentile(values, 95))},
                   latency_sketch=DDSketch().extend(values).to_dict(), **fields)


def test_telemetry_is_stored_once_and_answers_queries_before_and_after_rollup(pg_url):
    clock = ManualClock(BASE + 3600)
    store = Store(pg_url)
    acks: list[tuple[str, list[int]]] = []
    ingest = Ingestor(store.telemetry, lambda d, seqs: acks.append((d, seqs)), clock=clock,
                      counters={}, gap_timeout_s=30)
    rng = np.random.default_rng(3)
    fast, slow = list(rng.uniform(1, 2, 500)), list(rng.uniform(40, 60, 50))
    buffer = {"bytes": 900, "cap_bytes": 1000}
    drift = {"samples": 60, "psi_mean": 0.4, "top": {"3": 0.5}}

    ingest.process([("pi-1", _window(fast, 1), BASE + 60), ("pi-1", _window(fast, 2), BASE + 120),
                    ("pi-2", _window(slow, 1, drift=drift, buffer=buffer), BASE + 60),
                    ("pi-1", _window(fast, 2), BASE + 120),  # a repeat
                    ("pi-2", _window(slow, 3), BASE + 180)])  # after a gap: held back

    assert sorted(acks) == [("pi-1", [1, 2]), ("pi-2", [1])]
    assert store.telemetry_counts() == {"pi-1": 2, "pi-2": 1}
    assert store.telemetry.latest_buffers() == {"pi-2": buffer}
    assert [(w["device"], w["drift_score"]) for w in store.telemetry.drift_windows(0)] == [
        ("pi-2", 0.4)]
    m = store.cohort_metrics(["pi-1", "pi-2"], "digits", 1, since=0)
    exact = sorted(fast * 2 + slow)[int(0.95 * (len(fast) * 2 + len(slow) - 1))]
    assert m.count == 1050 and abs(m.p95_ms - exact) <= ALPHA * exact
    before = store.telemetry.aggregate(group_by=("device",))
    assert {k: a.count for k, a in before.items()} == {("pi-1",): 1000, ("pi-2",): 50}

    done = store.telemetry.apply_retention(BASE + 8 * 86400, raw_retention_s=7 * 86400,
                                           rollup_retention_s=90 * 86400)

    assert done == {"rolled_up": 3, "rollups_deleted": 0} and store.summaries() == []
    after = store.telemetry.aggregate(group_by=("device",))
    assert {k: a.count for k, a in after.items()} == {("pi-1",): 1000, ("pi-2",): 50}
    assert abs(after[("pi-1",)].quantile(0.95) - before[("pi-1",)].quantile(0.95)) < 1e-9
    ingest.process([("pi-1", _window([9.0] * 10, 3), BASE + 8 * 86400)])  # a late window
    store.telemetry.apply_retention(BASE + 16 * 86400, raw_retention_s=7 * 86400,
                                    rollup_retention_s=90 * 86400)
    (pi1,) = store.telemetry.rollup_rows("pi-1")  # merged into the same hour
    assert (pi1["windows"], pi1["count"]) == (3, 1010)


def test_values_postgresql_would_refuse_never_stall_a_batch(pg_url):
    """One device's out-of-range summary must not fail the batch others are in."""
    store = Store(pg_url)
    acks: list[tuple[str, list[int]]] = []
    counters: dict[str, int] = {}
    ingest = Ingestor(store.telemetry, lambda d, seqs: acks.append((d, seqs)),
                      clock=ManualClock(BASE + 3600), counters=counters, gap_timeout_s=30)

    def raw(seq: int, **changes: Any) -> bytes:
        data = {**_window([1.0, 2.0], seq).to_dict(), **changes}
        return json.dumps(data).encode()

    huge = raw(1, system={"cpu_pct": 7.0}).replace(b"7.0", b"1e999")  # overflows a double
    ingest.process([
        ("pi-1", raw(1), BASE + 60),
        ("pi-2", huge, BASE + 60),
        ("pi-3", raw(1, version=2**31), BASE + 60),  # over PostgreSQL's INTEGER
        ("pi-4", raw(1, count=2**40), BASE + 60),
        ("pi-5", raw(1, model="m" * 200), BASE + 60),  # over VARCHAR(128)
        ("pi-6", raw(1, model="dig\x00its"), BASE + 60),  # NUL: refused by PostgreSQL text
        ("pi-7", raw(1, latency_ms={"p95": float("nan")}), BASE + 60),  # a NaN token
    ])

    assert acks == [("pi-1", [1])]
    assert counters["malformed"] == 6
    assert store.telemetry_counts() == {"pi-1": 1}
    # a non-finite number from the controller's own code is written as null
    store.telemetry.write_batch([{**summary_row("pi-9", _window([1.0], 1), BASE),
                                  "drift": {"psi_max": float("inf")}}], {}, set(), {})
    (row,) = store.summaries("pi-9")
    assert row["drift"] == {"psi_max": None}


# -- audit, tokens, alerts ----------------------------------------------------------------
def test_audit_appends_from_two_controller_replicas_form_one_chain(pg_url, tmp_path):
    replicas = [Store(pg_url, audit_anchor=tmp_path / f"head-{i}.json") for i in range(2)]
    errors: list[BaseException] = []

    def writer(store: Store, n: int) -> None:
        try:
            for i in range(15):
                if i % 3:
                    store.audit.append(f"user-{n}", "POST /v1/x", f"/v1/x/{i}", {"i": i})
                else:
                    store.add_event(f"dep-{n}", "noted", "orchestrator", i=i)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(replicas[n % 2], n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    entries = replicas[0].audit.entries(limit=1000)
    assert [e["seq"] for e in entries] == list(range(1, 61))  # the head row serialized them
    assert all(r.audit.verify().ok for r in replicas)
    with replicas[0].engine.begin() as c:
        c.execute(sa.text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 7"))
    found = replicas[1].audit.verify()
    assert not found.ok and found.first_bad_seq == 7


def test_tokens_keep_their_names_unique_and_revocations_stick(pg_url):
    tokens = Store(pg_url).tokens
    row, secret = tokens.create("ci-bot", "operator", created_by="admin", now=1000.0, ttl_s=60)

    with pytest.raises(RegistryError) as taken:
        tokens.create("ci-bot", "viewer", created_by="admin", now=1001.0)
    assert taken.value.reason == "name_taken"
    assert [(t["name"], t["role"]) for t in tokens.list()] == [("ci-bot", "operator")]
    assert secret not in json.dumps(tokens.list())  # only its hash is kept

    before, after = tokens.revoke(row["id"], now=1002.0)
    assert (before["revoked_at"], after["revoked_at"]) == (None, 1002.0)
    assert tokens.revoke(row["id"], now=1003.0)[1]["revoked_at"] == 1002.0
    assert tokens.get(row["id"])["revoked_at"] == 1002.0


def test_alert_states_are_saved_updated_and_pruned(pg_url):
    alerts = Store(pg_url).alerts
    state = AlertState(key="offline:pi-1", kind="device_offline", severity="warn",
                       subject="pi-1", text="pi-1 offline", detail={"since": 1.0},
                       active=True, notify_resolved=True, first_at=10.0, last_at=10.0)
    alerts.save([state])
    ended = AlertState(**{**state.to_dict(), "active": False, "resolved_at": 20.0,
                          "detail": {"since": 1.0, "back": 20.0}})

    alerts.save([ended])

    assert alerts.states() == {}  # no active one
    assert alerts.states(["offline:pi-1"])["offline:pi-1"] == ended
    assert [r["key"] for r in alerts.rows(active_only=False)] == ["offline:pi-1"]
    assert alerts.prune(before=30.0) == 1 and alerts.rows(active_only=False) == []
