"""The controller's store: data access over SQLAlchemy Core (SQLite default, PostgreSQL-ready).

Pure data access; decisions live in ``rollout`` and the services. Every method opens
its own short transaction, so the store can be shared by the API workers, the MQTT
thread and the orchestrator.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from edgefleet.contract import NotFoundError

from ._alert_store import AlertStore
from ._audit_store import AuditStore
from ._tables import deployments, desired, devices, events, jobs, migrate, models
from ._telemetry_store import TelemetryStore
from ._token_store import TokenStore
from .rollout import CohortMetrics, ShadowMetrics

__all__ = ["Store"]


def _row(r: sa.Row[Any] | None) -> dict[str, Any] | None:
    return dict(r._mapping) if r is not None else None


def _rows(result: Iterable[sa.Row[Any]]) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in result]


class Store:
    """All controller persistence.

    Args:
        url: an SQLAlchemy URL (``sqlite:///ctl.db``, ``postgresql+psycopg://…``).
        audit_anchor: file that keeps the audit chain's head outside the database.
    """

    def __init__(self, url: str, *, audit_anchor: Path | None = None) -> None:
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
            self.schema_version = migrate(c)
        self.audit = AuditStore(self.engine, audit_anchor)
        self.tokens = TokenStore(self.engine)
        self.telemetry = TelemetryStore(self.engine)
        self.alerts = AlertStore(self.engine)

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
            return _rows(c.execute(sa.select(models).order_by(models.c.name, models.c.version)))

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
            return _rows(c.execute(sa.select(devices).order_by(devices.c.id)))

    # -- deployments ------------------------------------------------------------------
    def add_deployment(self, dep_id: str, model: str, version: int, *, strategy: str,
                       policy: dict[str, Any], plan: dict[str, Any],
                       targets: list[dict[str, Any]], created_by: str,
                       state: str = "running") -> None:
        """Insert a deployment and one job row per target (``device``, ``wave``, ``arm``…)."""
        now = time.time()
        with self.engine.begin() as c:
            c.execute(deployments.insert().values(
                id=dep_id, model=model, version=version, state=state, created_at=now,
                created_by=created_by, strategy=strategy, policy=policy, plan=plan,
                phase="start", wave=-1, phase_started_at=now, updated_at=now))
            if targets:
                c.execute(jobs.insert(), [
                    {"deployment": dep_id, "state": "pending", "reason": "", "detail": "",
                     "progress": {}, "updated_at": now, "job": None, **t} for t in targets])

    def get_deployment(self, dep_id: str, *, with_events: bool = False) -> dict[str, Any]:
        """Raises: NotFoundError."""
        with self.engine.connect() as c:
            row = _row(c.execute(sa.select(deployments).where(deployments.c.id == dep_id)).first())
            if row is None:
                raise NotFoundError(f"no deployment {dep_id}")
            row["jobs"] = _rows(c.execute(
                sa.select(jobs).where(jobs.c.deployment == dep_id).order_by(jobs.c.device)))
            if with_events:
                row["events"] = _rows(c.execute(sa.select(events).where(
                    events.c.deployment == dep_id).order_by(events.c.id)))
        return row

    def deployment_state(self, dep_id: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(sa.select(deployments.c.state)  # type: ignore[no-any-return]
                             .where(deployments.c.id == dep_id)).scalar()

    def devices_in(self, states: Iterable[str], devices_: list[str]) -> set[str]:
        """Which of ``devices_`` have a job in a deployment in one of ``states``."""
        q = sa.select(jobs.c.device).join(deployments, deployments.c.id == jobs.c.deployment) \
            .where(deployments.c.state.in_(list(states)), jobs.c.device.in_(devices_))
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(q)}

    def get_job(self, dep_id: str, device: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            return _row(c.execute(sa.select(jobs).where(jobs.c.deployment == dep_id,
                                                        jobs.c.device == device)).first())

    def list_deployments(self, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        q = sa.select(deployments).order_by(deployments.c.created_at)
        if states is not None:
            q = q.where(deployments.c.state.in_(list(states)))
        with self.engine.connect() as c:
            return _rows(c.execute(q))

    def update_deployment(self, dep_id: str, **values: Any) -> None:
        with self.engine.begin() as c:
            c.execute(deployments.update().where(deployments.c.id == dep_id)
                      .values(updated_at=time.time(), **values))

    def update_job(self, dep_id: str, device: str, *, only_job: str | None = None,
                   only_reason: str | None = None, **values: Any) -> bool:
        """Update a job row; with ``only_job``, only while that device-side job is in force
        (and with ``only_reason``, only while its reason is that)."""
        q = jobs.update().where(jobs.c.deployment == dep_id, jobs.c.device == device)
        if only_job is not None:
            q = q.where(jobs.c.job == only_job)
        if only_reason is not None:
            q = q.where(jobs.c.reason == only_reason)
        with self.engine.begin() as c:
            return bool(c.execute(q.values(updated_at=time.time(), **values)).rowcount)

    def add_event(self, dep_id: str, kind: str, actor: str, **detail: Any) -> None:
        """Record a deployment event, and in the same transaction its audit entry."""
        with self.audit.transaction() as tx:
            now = time.time()
            tx.conn.execute(events.insert().values(deployment=dep_id, ts=now, actor=actor,
                                                   kind=kind, detail=detail))
            tx.append(actor, f"deployment.{kind}", dep_id, detail, ts=now)

    def events(self, dep_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return _rows(c.execute(sa.select(events).where(events.c.deployment == dep_id)
                                   .order_by(events.c.id)))

    # -- desired state ----------------------------------------------------------------
    def set_desired(self, device: str, payload: dict[str, Any]) -> None:
        values = {"deployment": payload["deployment"], "job": payload["job"],
                  "model": payload["model"], "version": payload["version"],
                  "mode": payload.get("mode", "active"), "payload": payload,
                  "updated_at": time.time()}
        with self.engine.begin() as c:
            if c.execute(desired.update().where(desired.c.device == device)
                         .values(**values)).rowcount == 0:
                c.execute(desired.insert().values(device=device, **values))

    def get_desired(self, device: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            return _row(c.execute(sa.select(desired).where(desired.c.device == device)).first())

    # -- telemetry (``_telemetry_store``) -------------------------------------------------
    def summaries(self, device: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        return self.telemetry.summaries(device, limit)

    def cohort_metrics(self, devices_: list[str], model: str, version: int,
                       since: float) -> CohortMetrics:
        """See ``TelemetryStore.cohort_metrics`` (p95 from merged sketches)."""
        return self.telemetry.cohort_metrics(devices_, model, version, since)

    def shadow_metrics(self, devices_: list[str], model: str, version: int,
                       since: float) -> ShadowMetrics:
        return self.telemetry.shadow_metrics(devices_, model, version, since)

    def telemetry_counts(self) -> dict[str, int]:
        return self.telemetry.telemetry_counts()
