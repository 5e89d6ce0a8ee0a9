"""Schema 5, the baseline: the tables as the pre-Alembic migrator left them at version 5.

On an empty database it creates them. On a store made by that migrator (it has a
``schema_info`` table, versions 1 to 5) it runs that migrator's remaining steps instead,
frozen here as they were, then drops ``schema_info``: from here on ``alembic_version``
says where the schema stands, and an upgraded store has exactly a new store's tables.

Frozen: later schema changes are new revisions, never edits to this file (it must not
import ``_tables``, which describes the newest schema).

Revision ID: 0005
Revises: (none)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = None
branch_labels = None
depends_on = None

log = logging.getLogger("edgefleet.controller.migrations")
_LEGACY_LAST = 5  # the pre-Alembic migrator's last schema version


def _model_versions() -> None:
    op.create_table(
        "model_versions",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("parent", sa.Integer, nullable=True),
        sa.Column("variant", sa.String(32), nullable=False),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("file", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("signature", sa.JSON, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON, nullable=True),
        sa.Column("bundled", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("hardware_classes", sa.JSON, nullable=True),
        sa.Column("release_counter", sa.Integer, nullable=False, server_default="1"))


def _devices() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("bd_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=True),
        sa.Column("agent_version", sa.String(32), nullable=True),
        sa.Column("active", sa.JSON, nullable=True),
        sa.Column("last_good", sa.JSON, nullable=True),
        sa.Column("hw", sa.JSON, nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("api_url", sa.String(256), nullable=True))


def _deployments() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("strategy", sa.String(32), nullable=False, server_default="all-at-once"),
        sa.Column("policy", sa.JSON, nullable=True),
        sa.Column("plan", sa.JSON, nullable=True),
        sa.Column("phase", sa.String(32), nullable=False, server_default="waves"),
        sa.Column("wave", sa.Integer, nullable=False, server_default="-1"),
        sa.Column("phase_started_at", sa.Float, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=True),
        sa.Column("approved_by", sa.String(64), nullable=True),
        sa.Column("approved_at", sa.Float, nullable=True))


def _jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("deployment", sa.String(64), primary_key=True),
        sa.Column("device", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("progress", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("job", sa.String(80), nullable=True),
        sa.Column("wave", sa.Integer, nullable=False, server_default="0"),
        sa.Column("arm", sa.String(16), nullable=False, server_default=""),
        sa.Column("from_model", sa.String(128), nullable=True),
        sa.Column("from_version", sa.Integer, nullable=True))


def _telemetry_indexes() -> None:
    op.create_index("telemetry_received", "telemetry", ["received_at"], if_not_exists=True)
    op.create_index("telemetry_window", "telemetry", ["window_start"], if_not_exists=True)


def _telemetry() -> None:
    op.create_table(
        "telemetry",
        sa.Column("device", sa.String(64), primary_key=True),
        sa.Column("stream", sa.String(64), primary_key=True, server_default=""),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("window_start", sa.Float, nullable=False),
        sa.Column("window_end", sa.Float, nullable=False),
        sa.Column("historical", sa.Boolean, nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("latency_sketch", sa.JSON, nullable=True),
        sa.Column("errors_by_kind", sa.JSON, nullable=True),
        sa.Column("inputs", sa.JSON, nullable=True),
        sa.Column("drift", sa.JSON, nullable=True),
        sa.Column("buffer", sa.JSON, nullable=True),
        sa.Column("drift_score", sa.Float, nullable=True))
    _telemetry_indexes()


def _telemetry_streams() -> None:
    op.create_table(
        "telemetry_streams",
        sa.Column("device", sa.String(64), primary_key=True),
        sa.Column("stream", sa.String(64), primary_key=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("gap_since", sa.Float, nullable=True),
        sa.Column("stored", sa.BigInteger, nullable=False),
        sa.Column("lost", sa.BigInteger, nullable=False),
        sa.Column("first_received", sa.Float, nullable=True),
        sa.Column("last_received", sa.Float, nullable=True),
        sa.Column("buffer", sa.JSON, nullable=True))


def _telemetry_rollups() -> None:
    op.create_table(
        "telemetry_rollups",
        sa.Column("device", sa.String(64), primary_key=True),
        sa.Column("hour", sa.Float, primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("windows", sa.Integer, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("agg", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False))
    op.create_index("telemetry_rollups_hour", "telemetry_rollups", ["hour"])


def _alerts() -> None:
    op.create_table(
        "alerts",
        sa.Column("key", sa.String(256), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("notify_resolved", sa.Boolean, nullable=False),
        sa.Column("first_at", sa.Float, nullable=False),
        sa.Column("last_at", sa.Float, nullable=False),
        sa.Column("resolved_at", sa.Float, nullable=True),
        sa.Column("notified_at", sa.Float, nullable=True),
        sa.Column("notified_severity", sa.String(16), nullable=True))
    op.create_index("alerts_active", "alerts", ["active"])


def _deployment_events() -> None:
    op.create_table(
        "deployment_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("deployment", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False))
    op.create_index("ix_deployment_events_deployment", "deployment_events", ["deployment"])


def _desired_state() -> None:
    op.create_table(
        "desired_state",
        sa.Column("device", sa.String(64), primary_key=True),
        sa.Column("deployment", sa.String(64), nullable=False),
        sa.Column("job", sa.String(80), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False))


def _api_tokens() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("expires_at", sa.Float, nullable=True))


def _audit_log() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False))


def _audit_head() -> None:
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False))


def _claim_tokens() -> None:
    op.create_table(
        "claim_tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("uses_left", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True))


def _device_credentials() -> None:
    op.create_table(
        "device_credentials",
        sa.Column("device", sa.String(64), primary_key=True),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("passwd_line", sa.String(256), nullable=False),
        sa.Column("provisioned_at", sa.Float, nullable=False),
        sa.Column("claim_token", sa.String(16), nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("revoked_by", sa.String(64), nullable=True))


def _model_variants() -> None:
    op.create_table(
        "model_variants",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("variant", sa.String(64), primary_key=True),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("file", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("signature", sa.JSON, nullable=False),
        sa.Column("hardware_classes", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON, nullable=True),
        sa.Column("bundled", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False))


_TABLES: dict[str, Callable[[], None]] = {
    "model_versions": _model_versions, "devices": _devices, "deployments": _deployments,
    "jobs": _jobs, "telemetry": _telemetry, "telemetry_streams": _telemetry_streams,
    "telemetry_rollups": _telemetry_rollups, "alerts": _alerts,
    "deployment_events": _deployment_events, "desired_state": _desired_state,
    "api_tokens": _api_tokens, "audit_log": _audit_log, "audit_head": _audit_head,
    "claim_tokens": _claim_tokens, "device_credentials": _device_credentials,
    "model_variants": _model_variants}


def upgrade() -> None:
    conn = op.get_bind()
    if sa.inspect(conn).has_table("schema_info"):
        _finish_legacy(conn)
        return
    for create in _TABLES.values():
        create()


def downgrade() -> None:
    for name in reversed(_TABLES):
        op.drop_table(name)


# -- the pre-Alembic migrator's steps (schema_info versions 2..5), as they were ---------------
def _finish_legacy(conn: sa.Connection) -> None:
    current = conn.execute(sa.text("SELECT MAX(version) FROM schema_info")).scalar() or 1
    if current > _LEGACY_LAST:
        raise RuntimeError(f"store schema {current} is newer than this controller "
                           f"({_LEGACY_LAST})")
    for version in range(current + 1, _LEGACY_LAST + 1):
        _LEGACY[version](conn)
        log.info("pre-Alembic store: ran schema step %d", version)
    op.drop_table("schema_info")


def _v2(conn: sa.Connection) -> None:
    """Rollouts: strategy/policy/plan on deployments, wave/arm/job on jobs, events, desired."""
    cols = {
        "deployments": ["strategy VARCHAR(32) NOT NULL DEFAULT 'all-at-once'", "policy JSON",
                        "plan JSON", "phase VARCHAR(32) NOT NULL DEFAULT 'waves'",
                        "wave INTEGER NOT NULL DEFAULT -1", "phase_started_at FLOAT",
                        "result JSON", "updated_at FLOAT"],
        "jobs": ["job VARCHAR(80)", "wave INTEGER NOT NULL DEFAULT 0",
                 "arm VARCHAR(16) NOT NULL DEFAULT ''", "from_model VARCHAR(128)",
                 "from_version INTEGER"],
    }
    for table, defs in cols.items():
        for d in defs:
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {d}"))
    if conn.dialect.name == "postgresql":  # birth sequence numbers are clock-seeded now
        conn.execute(sa.text("ALTER TABLE devices ALTER COLUMN bd_seq TYPE BIGINT"))
    # v1 deployments had no plan or policy: they end here rather than being driven
    conn.execute(sa.text("UPDATE deployments SET state = 'legacy' WHERE state = 'running'"))
    _telemetry_indexes()
    _deployment_events()
    _desired_state()


def _v3(conn: sa.Connection) -> None:
    """Security: API tokens, approval of production deployments, the audit log, claim
    tokens and device credentials, signed hardware classes and release counters."""
    for d in ("approved_by VARCHAR(64)", "approved_at FLOAT"):
        conn.execute(sa.text(f"ALTER TABLE deployments ADD COLUMN {d}"))
    for d in ("hardware_classes JSON", "release_counter INTEGER NOT NULL DEFAULT 1"):
        conn.execute(sa.text(f"ALTER TABLE model_versions ADD COLUMN {d}"))
    for create in (_api_tokens, _audit_log, _audit_head, _claim_tokens, _device_credentials):
        create()


def _v4(conn: sa.Connection) -> None:
    """Fleet telemetry: (device, stream, seq) keys, sketches, drift and buffer columns,
    ingest positions per stream, hourly rollups, alert state.

    The telemetry table is rebuilt (its primary key gains ``stream``); existing rows
    keep stream ``""`` (agents from before streams) and seed their stream positions.
    """
    for index in ("telemetry_received", "telemetry_window"):
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {index}"))
    conn.execute(sa.text("ALTER TABLE telemetry RENAME TO telemetry_v3"))
    if conn.dialect.name == "postgresql":  # constraint names are per schema there
        conn.execute(sa.text("ALTER TABLE telemetry_v3 RENAME CONSTRAINT telemetry_pkey "
                             "TO telemetry_v3_pkey"))
    for create in (_telemetry, _telemetry_streams, _telemetry_rollups, _alerts):
        create()
    cols = ("device, seq, window_start, window_end, historical, model, version, count, errors, "
            "payload, received_at")
    conn.execute(sa.text(f"INSERT INTO telemetry ({cols}, stream) "
                         f"SELECT {cols}, '' FROM telemetry_v3"))
    conn.execute(sa.text("DROP TABLE telemetry_v3"))
    conn.execute(sa.text(
        "INSERT INTO telemetry_streams (device, stream, last_seq, stored, lost, first_received, "
        "last_received) SELECT device, '', MAX(seq), COUNT(*), 0, MIN(received_at), "
        "MAX(received_at) FROM telemetry GROUP BY device"))


def _v5(conn: sa.Connection) -> None:
    """Per-class variants of model versions."""
    _model_variants()


_LEGACY: dict[int, Callable[[sa.Connection], None]] = {2: _v2, 3: _v3, 4: _v4, 5: _v5}
