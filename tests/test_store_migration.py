"""Stores from before Alembic (schema_info versions 1 to 4) are upgraded in place by the
baseline revision, lose nothing, and end with a new store's schema; the revisions and the
tables the code uses agree; a failed upgrade changes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from edgefleet.contract import RegistryError
from edgefleet.controller._tables import meta
from edgefleet.controller.orchestrator import describe
from edgefleet.controller.store import Store, schema_status

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


# What the pre-Alembic migrator's steps 2 and 3 left on SQLite (frozen, as they ran).
V2_STEP = """
ALTER TABLE deployments ADD COLUMN strategy VARCHAR(32) NOT NULL DEFAULT 'all-at-once';
ALTER TABLE deployments ADD COLUMN policy JSON;
ALTER TABLE deployments ADD COLUMN plan JSON;
ALTER TABLE deployments ADD COLUMN phase VARCHAR(32) NOT NULL DEFAULT 'waves';
ALTER TABLE deployments ADD COLUMN wave INTEGER NOT NULL DEFAULT -1;
ALTER TABLE deployments ADD COLUMN phase_started_at FLOAT;
ALTER TABLE deployments ADD COLUMN result JSON;
ALTER TABLE deployments ADD COLUMN updated_at FLOAT;
ALTER TABLE jobs ADD COLUMN job VARCHAR(80);
ALTER TABLE jobs ADD COLUMN wave INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN arm VARCHAR(16) NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN from_model VARCHAR(128);
ALTER TABLE jobs ADD COLUMN from_version INTEGER;
UPDATE deployments SET state = 'legacy' WHERE state = 'running';
CREATE INDEX telemetry_received ON telemetry (received_at);
CREATE INDEX telemetry_window ON telemetry (window_start);
CREATE TABLE deployment_events (id INTEGER NOT NULL, deployment VARCHAR(64) NOT NULL,
  ts FLOAT NOT NULL, actor VARCHAR(64) NOT NULL, kind VARCHAR(32) NOT NULL,
  detail JSON NOT NULL, PRIMARY KEY (id));
CREATE INDEX ix_deployment_events_deployment ON deployment_events (deployment);
CREATE TABLE desired_state (device VARCHAR(64) NOT NULL, deployment VARCHAR(64) NOT NULL,
  job VARCHAR(80) NOT NULL, model VARCHAR(128) NOT NULL, version INTEGER NOT NULL,
  mode VARCHAR(16) NOT NULL, payload JSON NOT NULL, updated_at FLOAT NOT NULL,
  PRIMARY KEY (device));
INSERT INTO schema_info VALUES (2, 0);
"""
V3_STEP = """
ALTER TABLE deployments ADD COLUMN approved_by VARCHAR(64);
ALTER TABLE deployments ADD COLUMN approved_at FLOAT;
ALTER TABLE model_versions ADD COLUMN hardware_classes JSON;
ALTER TABLE model_versions ADD COLUMN release_counter INTEGER NOT NULL DEFAULT 1;
CREATE TABLE api_tokens (id VARCHAR(16) NOT NULL, name VARCHAR(64) NOT NULL,
  role VARCHAR(16) NOT NULL, hash VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL,
  created_by VARCHAR(64) NOT NULL, revoked_at FLOAT, expires_at FLOAT, PRIMARY KEY (id),
  UNIQUE (name));
CREATE TABLE audit_log (seq BIGINT NOT NULL, ts FLOAT NOT NULL, actor VARCHAR(64) NOT NULL,
  action VARCHAR(128) NOT NULL, target VARCHAR(256) NOT NULL, detail JSON NOT NULL,
  prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL, PRIMARY KEY (seq));
CREATE TABLE audit_head (id INTEGER NOT NULL, seq BIGINT NOT NULL, hash VARCHAR(64) NOT NULL,
  updated_at FLOAT NOT NULL, PRIMARY KEY (id));
CREATE TABLE claim_tokens (id VARCHAR(16) NOT NULL, label VARCHAR(128) NOT NULL,
  hash VARCHAR(64) NOT NULL, uses_left INTEGER NOT NULL, expires_at FLOAT NOT NULL,
  created_at FLOAT NOT NULL, created_by VARCHAR(64) NOT NULL, revoked_at FLOAT,
  PRIMARY KEY (id), UNIQUE (hash));
CREATE TABLE device_credentials (device VARCHAR(64) NOT NULL, public_key TEXT NOT NULL,
  key_id VARCHAR(64) NOT NULL, passwd_line VARCHAR(256) NOT NULL,
  provisioned_at FLOAT NOT NULL, claim_token VARCHAR(16) NOT NULL, revoked_at FLOAT,
  revoked_by VARCHAR(64), PRIMARY KEY (device));
INSERT INTO schema_info VALUES (3, 0);
"""
V3_TELEMETRY = """
INSERT INTO telemetry VALUES ('pi-1', 1, 0, 60, 0, 'digits', 1, 10, 0,
  '{"latency_ms": {"p95": 2.0}}', 101.0);
INSERT INTO telemetry VALUES ('pi-1', 2, 0, 60, 0, 'digits', 1, 10, 0,
  '{"latency_ms": {"p95": 2.0}}', 102.0);
INSERT INTO telemetry VALUES ('pi-1', 3, 0, 60, 0, 'digits', 1, 10, 0,
  '{"latency_ms": {"p95": 2.0}}', 103.0);
"""


def _old_store(path: Path, *scripts: str) -> str:
    db = sqlite3.connect(path)
    for script in (V1, *scripts):
        db.executescript(script)
    db.close()
    return f"sqlite:///{path}"


def _differences(store: Store) -> list:
    """How the store's schema differs from the tables the code uses (Alembic's compare)."""
    with store.engine.connect() as c:
        return compare_metadata(MigrationContext.configure(c), meta)


def test_a_new_store_has_exactly_the_tables_the_code_uses(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'new.db'}")

    assert store.schema_version == "0007"
    assert _differences(store) == []
    assert schema_status(store.engine) == {"current": "0007", "head": "0007",
                                           "up_to_date": True, "legacy_version": None}


def test_v1_store_is_migrated_and_its_unfinished_rollouts_end(tmp_path):
    url = _old_store(tmp_path / "v1.db")
    assert schema_status(sa.create_engine(url))["legacy_version"] == 1

    store = Store(url)

    assert store.schema_version == "0007"
    with store.engine.connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [("0007",)]
    tables = set(sa.inspect(store.engine).get_table_names())
    assert "schema_info" not in tables  # alembic_version says where the schema stands now
    assert store.deployment_state("dep-old") == "legacy"  # not driven with no plan
    assert store.deployment_state("dep-done") == "succeeded"
    view = describe(store.get_deployment("dep-old", with_events=True))
    assert view["jobs"][0]["device"] == "pi-1" and view["policy"] is None
    indexes = {i["name"] for i in sa.inspect(store.engine).get_indexes("telemetry")}
    assert "telemetry_received" in indexes
    # a new store's schema, but for devices.bd_seq, INTEGER from v1 (64-bit in SQLite too)
    (only,) = _differences(store)
    assert [(d[0], d[2], d[3]) for d in only] == [("modify_type", "devices", "bd_seq")]
    again = Store(url)  # opening it again changes nothing
    assert again.schema_version == "0007" and again.deployment_state("dep-old") == "legacy"


def test_v2_store_gains_tokens_approvals_and_an_audit_log(tmp_path):
    url = _old_store(tmp_path / "v2.db", V2_STEP)  # what the previous release left: schema 2

    store = Store(url, audit_anchor=tmp_path / "audit-head.json")

    assert store.schema_version == "0007"
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

    # what the previous release left: schema 3, (device, seq) keys
    url = _old_store(tmp_path / "v3.db", V2_STEP, V3_STEP, V3_TELEMETRY)

    store = Store(url)

    assert store.schema_version == "0007"
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
    url = f"sqlite:///{tmp_path / 'v4.db'}"
    old = Store(url)
    with old.engine.begin() as c:  # make it what the old migrator left at v4
        c.execute(sa.text("DROP TABLE model_variants"))
        c.execute(sa.text("DROP TABLE console_sessions"))  # (schema 7's, after Alembic)
        c.execute(sa.text("DROP TABLE model_cards"))
        c.execute(sa.text("DROP TABLE stored_file_chunks"))  # (schema 6's, after Alembic)
        c.execute(sa.text("DROP TABLE stored_files"))
        c.execute(sa.text("DROP TABLE alembic_version"))
        c.execute(sa.text("CREATE TABLE schema_info (version INTEGER NOT NULL, "
                          "applied_at FLOAT NOT NULL, PRIMARY KEY (version))"))
        c.execute(sa.text("INSERT INTO schema_info VALUES (1, 0), (2, 0), (3, 0), (4, 0)"))
    old.engine.dispose()

    store = Store(url)

    assert store.schema_version == "0007"
    assert _differences(store) == []


def test_a_failed_upgrade_leaves_the_old_store_as_it_was(tmp_path):
    # an alerts table made by hand on a v3 store: step 4 cannot create its own
    url = _old_store(tmp_path / "v3.db", V2_STEP, V3_STEP, V3_TELEMETRY,
                     "CREATE TABLE alerts (key TEXT);")

    with pytest.raises(sa.exc.OperationalError, match="alerts"):
        Store(url)

    engine = sa.create_engine(url)
    tables = set(sa.inspect(engine).get_table_names())
    assert "telemetry_v3" not in tables and "telemetry_streams" not in tables
    assert "alembic_version" not in tables
    with engine.connect() as c:  # the rename and copy of step 4 were rolled back
        assert c.execute(sa.text("SELECT COUNT(*) FROM telemetry")).scalar() == 3
        assert c.execute(sa.text("SELECT MAX(version) FROM schema_info")).scalar() == 3
    assert "stream" not in {col["name"] for col in sa.inspect(engine).get_columns("telemetry")}


def test_a_store_upgraded_by_a_newer_controller_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'ctl.db'}"
    Store(url).engine.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))

    with pytest.raises(RegistryError, match="0099") as err:
        Store(url)

    assert err.value.reason == "schema_too_new"
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0099"


def test_with_automatic_upgrades_off_a_store_behind_is_refused_until_db_upgrade(tmp_path,
                                                                                trust_root):
    from typer.testing import CliRunner

    from edgefleet.cli import app

    url = _old_store(tmp_path / "ctl.db")
    with pytest.raises(RegistryError, match="edgefleet db upgrade") as err:
        Store(url, upgrade=False)
    assert err.value.reason == "schema_outdated"
    assert schema_status(sa.create_engine(url))["current"] is None  # left as it was

    serve = CliRunner().invoke(app, ["controller", "serve", "--keys", str(trust_root.parent),
                                     "--db", url, "--data", str(tmp_path / "data"),
                                     "--no-db-upgrade", "--port", "0"])
    assert serve.exit_code != 0 and "edgefleet db upgrade" in serve.output, serve.output

    upgraded = CliRunner().invoke(app, ["db", "upgrade", "--db", url, "--json"])
    assert upgraded.exit_code == 0, upgraded.output
    store = Store(url, upgrade=False)  # now it opens
    assert store.schema_version == schema_status(store.engine)["head"]
