"""The controller's tables as the newest schema has them (SQLAlchemy Core, SQLite or PostgreSQL).

The tables are made and changed by the Alembic revisions in ``migrations/versions``
(``store.upgrade_schema`` runs them); a change here goes with a new revision that makes
it, and ``tests/test_store_migration.py`` checks that the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["alerts", "api_tokens", "audit_head", "audit_log", "claim_tokens",
           "console_sessions", "deployments", "desired", "device_credentials", "devices",
           "events", "jobs", "meta", "model_cards", "models", "rollups", "stored_file_chunks",
           "stored_files", "streams", "telemetry", "variants"]

meta = sa.MetaData()

models = sa.Table(
    "model_versions", meta,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("parent", sa.Integer, nullable=True),
    sa.Column("variant", sa.String(32), nullable=False, default="fp32"),
    sa.Column("runtime", sa.String(32), nullable=False, default="onnxruntime"),
    sa.Column("file", sa.String(512), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("signature", sa.JSON, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("report", sa.JSON, nullable=True),
    sa.Column("bundled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # signed into the bundle's trust data: devices refuse other classes / lower counters
    sa.Column("hardware_classes", sa.JSON, nullable=True),
    sa.Column("release_counter", sa.Integer, nullable=False, server_default="1"),
)
devices = sa.Table(
    "devices", meta,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("online", sa.Boolean, nullable=False, default=False),
    sa.Column("bd_seq", sa.BigInteger, nullable=False, default=0),
    sa.Column("last_seen", sa.Float, nullable=True),
    sa.Column("agent_version", sa.String(32), nullable=True),
    sa.Column("active", sa.JSON, nullable=True),
    sa.Column("last_good", sa.JSON, nullable=True),
    sa.Column("hw", sa.JSON, nullable=False, default=dict),
    sa.Column("tags", sa.JSON, nullable=False, default=dict),
    sa.Column("api_url", sa.String(256), nullable=True),
)
deployments = sa.Table(
    "deployments", meta,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False, default="admin"),
    sa.Column("strategy", sa.String(32), nullable=False, server_default="all-at-once"),
    sa.Column("policy", sa.JSON, nullable=True),
    sa.Column("plan", sa.JSON, nullable=True),
    sa.Column("phase", sa.String(32), nullable=False, server_default="waves"),
    sa.Column("wave", sa.Integer, nullable=False, server_default="-1"),
    sa.Column("phase_started_at", sa.Float, nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=True),
    sa.Column("approved_by", sa.String(64), nullable=True),  # four-eyes (v3)
    sa.Column("approved_at", sa.Float, nullable=True),
)
jobs = sa.Table(
    "jobs", meta,
    sa.Column("deployment", sa.String(64), primary_key=True),
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False, default=""),
    sa.Column("detail", sa.Text, nullable=False, default=""),
    sa.Column("progress", sa.JSON, nullable=False, default=dict),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("job", sa.String(80), nullable=True),  # the device-side job id now in force
    sa.Column("wave", sa.Integer, nullable=False, server_default="0"),
    sa.Column("arm", sa.String(16), nullable=False, server_default=""),
    sa.Column("from_model", sa.String(128), nullable=True),
    sa.Column("from_version", sa.Integer, nullable=True),
)
telemetry = sa.Table(  # raw summaries, one per (device, stream, seq); see _telemetry_store
    "telemetry", meta,
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("stream", sa.String(64), primary_key=True, server_default=""),  # v4
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("window_end", sa.Float, nullable=False),
    sa.Column("historical", sa.Boolean, nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),  # the rest of the summary
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("latency_sketch", sa.JSON, nullable=True),  # v4: contract.sketch.DDSketch dict
    sa.Column("errors_by_kind", sa.JSON, nullable=True),
    sa.Column("inputs", sa.JSON, nullable=True),
    sa.Column("drift", sa.JSON, nullable=True),
    sa.Column("buffer", sa.JSON, nullable=True),
    sa.Column("drift_score", sa.Float, nullable=True),  # max(psi_mean, psi_predictions)
    sa.Index("telemetry_received", "received_at"),
    sa.Index("telemetry_window", "window_start"),
)
streams = sa.Table(  # v4: ingest position per device buffer: exactly once, in order
    "telemetry_streams", meta,
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("stream", sa.String(64), primary_key=True),
    sa.Column("last_seq", sa.BigInteger, nullable=False),  # highest seq stored
    sa.Column("gap_since", sa.Float, nullable=True),  # first held-back arrival past a gap
    sa.Column("stored", sa.BigInteger, nullable=False, default=0),
    sa.Column("lost", sa.BigInteger, nullable=False, default=0),  # seqs given up on
    sa.Column("first_received", sa.Float, nullable=True),
    sa.Column("last_received", sa.Float, nullable=True),
    sa.Column("buffer", sa.JSON, nullable=True),  # the device buffer, latest summary
)
rollups = sa.Table(  # v4: hourly per-device aggregates of summaries past raw retention
    "telemetry_rollups", meta,
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("hour", sa.Float, primary_key=True),  # start of the hour (window_start)
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("windows", sa.Integer, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("agg", sa.JSON, nullable=False),  # controller.aggregate.Aggregate.to_dict()
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("telemetry_rollups_hour", "hour"),
)
alerts = sa.Table(  # v4: alert state, one row per alert key (controller.alerts)
    "alerts", meta,
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
    sa.Column("notified_severity", sa.String(16), nullable=True),
    sa.Index("alerts_active", "active"),
)
events = sa.Table(
    "deployment_events", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("deployment", sa.String(64), nullable=False, index=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
)
desired = sa.Table(
    "desired_state", meta,
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("deployment", sa.String(64), nullable=False),
    sa.Column("job", sa.String(80), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
api_tokens = sa.Table(  # bearer tokens with a role; only the sha256 of a token is kept
    "api_tokens", meta,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),  # the actor name
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("expires_at", sa.Float, nullable=True),
)
audit_log = sa.Table(  # append-only, hash-chained (controller/audit.py)
    "audit_log", meta,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(128), nullable=False),
    sa.Column("target", sa.String(256), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
audit_head = sa.Table(  # one row (id 1): the chain's head, locked by each append
    "audit_head", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
claim_tokens = sa.Table(  # first-boot claim tokens; only the sha256 of a token is kept
    "claim_tokens", meta,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("label", sa.String(128), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("uses_left", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)
device_credentials = sa.Table(  # a provisioned device's key and broker password hash
    "device_credentials", meta,
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("passwd_line", sa.String(256), nullable=False),
    sa.Column("provisioned_at", sa.Float, nullable=False),
    sa.Column("claim_token", sa.String(16), nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("revoked_by", sa.String(64), nullable=True),
)
variants = sa.Table(  # per-class variants of a model version (another file, same model)
    "model_variants", meta,
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
    sa.Column("bundled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
stored_files = sa.Table(  # the database file store (controller/_db_files.py): one row a file
    "stored_files", meta,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("path", sa.String(1024), nullable=False, unique=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("chunk_bytes", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sqlite_autoincrement=True,  # ids never reused: a replaced file's id is never its old one
)
stored_file_chunks = sa.Table(  # its content, in chunks of the file's chunk_bytes
    "stored_file_chunks", meta,
    sa.Column("file_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
              primary_key=True, autoincrement=False),
    sa.Column("chunk", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
console_sessions = sa.Table(  # v7: web console sign-ins; only the sha256 of the cookie is kept
    "console_sessions", meta,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),  # the actor, as the API token's
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_id", sa.String(16), nullable=True),  # None: the bootstrap admin token
    sa.Column("token_hash", sa.String(64), nullable=False),  # sha256 of the token signed in with
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("console_sessions_expiry", "expires_at"),
)
model_cards = sa.Table(  # v7: a model version's card (intended use, data, metrics, limits)
    "model_cards", meta,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("card", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("updated_by", sa.String(64), nullable=False),
)
