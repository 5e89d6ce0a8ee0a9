"""A store written by the previous schema is upgraded in place, and its old rollouts end."""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa

from edgefleet.controller import _tables
from edgefleet.controller.orchestrator import describe
from edgefleet.controller.store import Store

V1 = """
CREATE TABLE model_versions (name VARCHAR(128) NOT NULL, version INTEGER NOT NULL,
  parent INTEGER, variant VARCHAR(32) NOT NULL, runtime VARCHAR(32) NOT NULL,
  file VARCHAR(512) NOT NULL, sha256 VARCHAR(64) NOT NULL, size_bytes BIGINT NOT NULL,
  signature JSON NOT NULL, labels JSON NOT NULL, metrics JSON NOT NULL, report JSON,
  bundled BOOLEAN NOT NULL, created_at FLOAT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE devices (id VARCHAR(64) NOT NULL, online BOOLEAN NOT NULL, bd_seq INTEGER NOT NULL,
  last_seen FLOAT, agent_version VARCHAR(32), active JSON, last_good JSON, hw JSON NOT NULL,
  tags JSON NOT NULL, api_url VARCHAR(256), PRIMARY KEY (id));
CREATE TABLE deployments (id VARCHAR(64) NOT NULL, model VARCHAR(128) NOT NULL,
  version INTEGER NOT NULL, state VARCHAR(32) NOT NULL, created_at FLOAT NOT NULL,
  created_by VARCHAR(64) NOT NULL, PRIMARY KEY (id));
CREATE TABLE jobs (deployment VARCHAR(64) NOT NULL, device VARCHAR(64) NOT NULL,
  state VARCHAR(32) NOT NULL, reason VARCHAR(64) NOT NULL, detail TEXT NOT NULL,
  progress JSON NOT NULL, updated_at FLOAT NOT NULL, PRIMARY KEY (deployment, device));
CREATE TABLE telemetry (device VARCHAR(64) NOT NULL, seq BIGINT NOT NULL,
  window_start FLOAT NOT NULL, window_end FLOAT NOT NULL, historical BOOLEAN NOT NULL,
  model VARCHAR(128) NOT NULL, version INTEGER NOT NULL, count INTEGER NOT NULL,
  errors INTEGER NOT NULL, payload JSON NOT NULL, received_at FLOAT NOT NULL,
  PRIMARY KEY (device, seq));
CREATE TABLE schema_info (version INTEGER NOT NULL, applied_at FLOAT NOT NULL,
  PRIMARY KEY (version));
INSERT INTO schema_info VALUES (1, 0);
INSERT INTO deployments VALUES ('dep-old', 'digits', 1, 'running', 0, 'admin');
INSERT INTO deployments VALUES ('dep-done', 'digits', 1, 'succeeded', 0, 'admin');
INSERT INTO jobs VALUES ('dep-old', 'pi-1', 'pending', '', '', '{}', 0);
"""


def test_v1_store_is_migrated_and_its_unfinished_rollouts_end(tmp_path):
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript(V1)
    db.close()

    store = Store(f"sqlite:///{path}")

    assert store.schema_version == 5
    with store.engine.connect() as c:
        versions = [r[0] for r in c.execute(sa.text("SELECT version FROM schema_info"))]
    assert versions == [1, 2, 3, 4, 5]  # each migration is recorded
    assert store.deployment_state("dep-old") == "legacy"  # not driven with no plan
    assert store.deployment_state("dep-done") == "succeeded"
    view = describe(store.get_deployment("dep-old", with_events=True))
    assert view["jobs"][0]["device"] == "pi-1" and view["policy"] is None
    indexes = {i["name"] for i in sa.inspect(store.engine).get_indexes("telemetry")}
    assert "telemetry_received" in indexes
    Store(f"sqlite:///{path}")  # opening it again changes nothing
    with store.engine.connect() as c:
        assert c.execute(sa.text("SELECT COUNT(*) FROM schema_info")).scalar() == 5


def test_v2_store_gains_tokens_approvals_and_an_audit_log(tmp_path):
    path = tmp_path / "v2.db"
    db = sqlite3.connect(path)
    db.executescript(V1)
    db.close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as c:  # what the previous release left: schema 2
        _tables._v2(c)
        c.execute(sa.text("INSERT INTO schema_info VALUES (2, 0)"))
    engine.dispose()

    store = Store(f"sqlite:///{path}", audit_anchor=tmp_path / "audit-head.json")

    assert store.schema_version == 5
    dep = store.get_deployment("dep-done")
    assert (dep["state"], dep["approved_by"], dep["approved_at"]) == ("succeeded", None, None)
    assert describe(store.get_deployment("dep-done", with_events=True))["approved_by"] is None
    assert store.tokens.list() == [] and store.audit.verify().ok
    store.add_event("dep-done", "noted", "admin", note="after the upgrade")
    (entry,) = store.audit.entries()
    assert (entry["seq"], entry["action"], entry["target"]) == (1, "deployment.noted",
                                                                "dep-done")
    assert store.audit.verify().ok


def test_v3_store_keeps_its_telemetry_and_gains_streams_rollups_and_alerts(tmp_path):
    from edgefleet.contract import ManualClock, Summary
    from edgefleet.controller._ingestor import Ingestor

    path = tmp_path / "v3.db"
    db = sqlite3.connect(path)
    db.executescript(V1)
    db.close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as c:  # what the previous release left: schema 3, (device, seq) keys
        _tables._v2(c)
        _tables._v3(c)
        c.execute(sa.text("INSERT INTO schema_info VALUES (2, 0), (3, 0)"))
        for seq in (1, 2, 3):
            c.execute(sa.text(
                "INSERT INTO telemetry VALUES ('pi-1', :seq, 0, 60, 0, 'digits', 1, 10, 0, "
                "'{\"latency_ms\": {\"p95\": 2.0}}', :at)"), {"seq": seq, "at": 100.0 + seq})
    engine.dispose()

    store = Store(f"sqlite:///{path}")

    assert store.schema_version == 5
    rows = store.summaries("pi-1")
    assert [(r["stream"], r["seq"], r["count"]) for r in rows] == [("", 1, 10), ("", 2, 10),
                                                                    ("", 3, 10)]
    (position,) = store.telemetry.streams("pi-1")
    assert (position["stream"], position["last_seq"], position["stored"]) == ("", 3, 3)
    tables = set(sa.inspect(store.engine).get_table_names())
    assert {"telemetry_streams", "telemetry_rollups", "alerts"} <= tables
    assert "telemetry_v3" not in tables
    indexes = {i["name"] for i in sa.inspect(store.engine).get_indexes("telemetry")}
    assert {"telemetry_received", "telemetry_window"} <= indexes
    assert store.cohort_metrics(["pi-1"], "digits", 1, 0).p95_ms == 2.0  # reported p95s

    acked: list[tuple[str, list[int]]] = []
    ingest = Ingestor(store.telemetry, lambda d, seqs: acked.append((d, seqs)),
                      clock=ManualClock(1000.0), counters={})

    def summary(seq: int, stream: str) -> Summary:
        return Summary(seq=seq, window_start=0, window_end=60, count=1, errors=0,
                       model="digits", version=1, stream=stream)

    ingest.process([("pi-1", summary(3, ""), 1000.0),  # an old agent resending: a repeat
                    ("pi-1", summary(4, "upgraded"), 1000.0),  # same buffer, now with an id
                    ("pi-1", summary(1, "reprovisioned"), 1000.0)])  # a new buffer from 1

    assert acked == [("pi-1", [1, 3, 4])]
    assert ingest.counters["summaries_duplicate"] == 1
    assert ingest.counters["summaries_stored"] == 2 and ingest.counters["summaries_lost"] == 0
    assert sorted((r["stream"], r["seq"]) for r in store.summaries("pi-1")) == [
        ("", 1), ("", 2), ("", 3), ("reprovisioned", 1), ("upgraded", 4)]


def test_v4_store_gains_model_variants(tmp_path):
    path = tmp_path / "v4.db"
    old = Store(f"sqlite:///{path}")
    with old.engine.begin() as c:  # make it a v4 store: no variants table, v5 not recorded
        c.execute(sa.text("DROP TABLE model_variants"))
        c.execute(sa.text("UPDATE schema_info SET version = 4 WHERE version = 5"))
    old.engine.dispose()
    store = Store(f"sqlite:///{path}")
    assert store.schema_version == 5
    assert "model_variants" in sa.inspect(store.engine).get_table_names()
