"""The controller's store: SQLAlchemy Core tables (SQLite by default, PostgreSQL-ready).

Pure data access; decisions live in the service. Every method opens its own short
transaction, so the store can be shared by the API workers and the MQTT thread.
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from edgefleet.contract import NotFoundError

__all__ = ["Store"]

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
)
devices = sa.Table(
    "devices", meta,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("online", sa.Boolean, nullable=False, default=False),
    sa.Column("bd_seq", sa.Integer, nullable=False, default=0),
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
)
telemetry = sa.Table(
    "telemetry", meta,
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("window_end", sa.Float, nullable=False),
    sa.Column("historical", sa.Boolean, nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)
schema_info = sa.Table(
    "schema_info", meta,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)
SCHEMA_VERSION = 1


def _row(r: sa.Row[Any] | None) -> dict[str, Any] | None:
    return dict(r._mapping) if r is not None else None


class Store:
    """All controller persistence.

    Args:
        url: an SQLAlchemy URL (``sqlite:///ctl.db``, ``postgresql+psycopg://…``).
    """

    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            @sa.event.listens_for(self.engine, "connect")
            def _wal(dbapi_conn: Any, _rec: Any) -> None:
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
                dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        with self.engine.begin() as c:
            meta.create_all(c)
            if c.execute(sa.select(sa.func.max(schema_info.c.version))).scalar() is None:
                c.execute(schema_info.insert().values(version=SCHEMA_VERSION,
                                                      applied_at=time.time()))

    # -- models -----------------------------------------------------------------------
    def add_model(self, **values: Any) -> dict[str, Any]:
        """Insert a model version (``version`` defaults to the next free one for ``name``)."""
        with self.engine.begin() as c:
            current = c.execute(sa.select(sa.func.max(models.c.version))
                                .where(models.c.name == values["name"])).scalar()
            values = {"bundled": False, "report": None, "parent": None,
                      "version": (current or 0) + 1, **values, "created_at": time.time()}
            c.execute(models.insert().values(**values))
        return values

    def next_version(self, name: str) -> int:
        with self.engine.connect() as c:
            current = c.execute(sa.select(sa.func.max(models.c.version))
                                .where(models.c.name == name)).scalar()
        return (current or 0) + 1

    def get_model(self, name: str, version: int) -> dict[str, Any]:
        """Raises: NotFoundError."""
        with self.engine.connect() as c:
            row = _row(c.execute(sa.select(models).where(
                models.c.name == name, models.c.version == version)).first())
        if row is None:
            raise NotFoundError(f"no model {name}:{version}")
        return row

    def list_models(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(models).order_by(models.c.name, models.c.version))
            return [dict(r._mapping) for r in rows]

    def mark_bundled(self, name: str, version: int) -> None:
        with self.engine.begin() as c:
            c.execute(models.update().where(models.c.name == name, models.c.version == version)
                      .values(bundled=True))

    # -- devices ----------------------------------------------------------------------
    def upsert_device(self, device_id: str, **values: Any) -> None:
        with self.engine.begin() as c:
            found = c.execute(sa.select(devices.c.id).where(devices.c.id == device_id)).first()
            if found:
                c.execute(devices.update().where(devices.c.id == device_id).values(**values))
            else:
                c.execute(devices.insert().values(id=device_id, **{
                    "hw": {}, "tags": {}, **values}))

    def mark_offline(self, device_id: str, bd_seq: int) -> bool:
        """Offline only if the death matches the current session; returns whether it did."""
        with self.engine.begin() as c:
            res = c.execute(devices.update().where(devices.c.id == device_id,
                                                   devices.c.bd_seq == bd_seq)
                            .values(online=False, last_seen=time.time()))
            return bool(res.rowcount)

    def get_device(self, device_id: str) -> dict[str, Any]:
        """Raises: NotFoundError."""
        with self.engine.connect() as c:
            row = _row(c.execute(sa.select(devices).where(devices.c.id == device_id)).first())
        if row is None:
            raise NotFoundError(f"no device {device_id}")
        return row

    def list_devices(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(sa.select(devices).order_by(devices.c.id))]

    # -- deployments ------------------------------------------------------------------
    def add_deployment(self, dep_id: str, model: str, version: int, targets: list[str],
                       created_by: str) -> None:
        now = time.time()
        with self.engine.begin() as c:
            c.execute(deployments.insert().values(id=dep_id, model=model, version=version,
                                                  state="running", created_at=now,
                                                  created_by=created_by))
            if targets:
                c.execute(jobs.insert(), [
                    {"deployment": dep_id, "device": d, "state": "pending", "reason": "",
                     "detail": "", "progress": {}, "updated_at": now} for d in targets])

    def get_deployment(self, dep_id: str) -> dict[str, Any]:
        """Raises: NotFoundError."""
        with self.engine.connect() as c:
            row = _row(c.execute(sa.select(deployments).where(deployments.c.id == dep_id)).first())
            if row is None:
                raise NotFoundError(f"no deployment {dep_id}")
            row["jobs"] = [dict(r._mapping) for r in c.execute(
                sa.select(jobs).where(jobs.c.deployment == dep_id).order_by(jobs.c.device))]
        return row

    def list_deployments(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(
                sa.select(deployments).order_by(deployments.c.created_at))]

    def update_job(self, dep_id: str, device: str, **values: Any) -> bool:
        with self.engine.begin() as c:
            res = c.execute(jobs.update().where(jobs.c.deployment == dep_id,
                                                jobs.c.device == device)
                            .values(updated_at=time.time(), **values))
            return bool(res.rowcount)

    def set_deployment_state(self, dep_id: str, state: str) -> None:
        with self.engine.begin() as c:
            c.execute(deployments.update().where(deployments.c.id == dep_id).values(state=state))

    # -- telemetry --------------------------------------------------------------------
    def add_summary(self, device: str, summary: dict[str, Any]) -> bool:
        """Store a summary once per (device, seq); ``False`` if it was already stored."""
        try:
            with self.engine.begin() as c:
                c.execute(telemetry.insert().values(
                    device=device, seq=summary["seq"], window_start=summary["window_start"],
                    window_end=summary["window_end"], historical=summary["historical"],
                    model=summary["model"], version=summary["version"], count=summary["count"],
                    errors=summary["errors"], payload=summary, received_at=time.time()))
            return True
        except SAIntegrityError:
            return False

    def summaries(self, device: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        q = sa.select(telemetry).order_by(telemetry.c.device, telemetry.c.seq).limit(limit)
        if device is not None:
            q = q.where(telemetry.c.device == device)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def telemetry_counts(self) -> dict[str, int]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(telemetry.c.device, sa.func.count())
                             .group_by(telemetry.c.device))
            return {r[0]: r[1] for r in rows}


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
