"""The controller's store: data access over SQLAlchemy Core (SQLite by default, or PostgreSQL).

Pure data access; decisions live in ``rollout`` and the services. Every method opens
its own short transaction, so the store can be shared by the API workers, the MQTT
thread and the orchestrator.

The schema is kept by Alembic revisions (``migrations/``): ``Store`` brings it up to
date when it opens (``upgrade_schema``), in one transaction that holds the migration
lock, so controllers starting together upgrade once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from edgefleet.contract import NotFoundError, RegistryError
from edgefleet.contract._json import dumps

from ._alert_store import AlertStore
from ._audit_store import AuditStore
from ._console_store import ConsoleStore
from ._credential_store import CredentialStore
from ._registry_store import RegistryStore
from ._statuses import StatusUpdate
from ._tables import deployments, desired, devices, events, jobs
from ._telemetry_store import TelemetryStore
from ._token_store import TokenStore
from .rollout import CohortMetrics, ShadowMetrics

__all__ = ["Store", "create_engine", "schema_status", "upgrade_schema"]

_MIGRATIONS = Path(__file__).with_name("migrations")
_PG_LOCK = 0x65646765666C74  # pg_advisory_xact_lock key of the migrations ("edgeflt")


def create_engine(url: str) -> sa.Engine:
    """The store's engine for an SQLAlchemy URL (SQLite: WAL, a 30 s busy timeout)."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True, json_serializer=dumps)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                              json_serializer=dumps)

    @sa.event.listens_for(engine, "connect")
    def _wal(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
    return engine


def _alembic(conn: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = conn
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic())


def _current(conn: sa.Connection, scripts: ScriptDirectory) -> str | None:
    """The store's revision (None: empty or pre-Alembic).

    Raises:
        RegistryError: a revision this controller does not know (``schema_too_new``).
    """
    heads = MigrationContext.configure(conn).get_current_heads()
    for rev in heads:
        try:
            scripts.get_revision(rev)
        except CommandError as exc:
            raise RegistryError(f"the store's schema is at revision {rev}, which this "
                                f"controller does not know (its newest is "
                                f"{scripts.get_current_head()}): a newer controller "
                                "upgraded it", reason="schema_too_new") from exc
    return heads[0] if heads else None


def upgrade_schema(engine: sa.Engine) -> str:
    """Bring the store's schema to the newest revision; returns that revision.

    One transaction, holding the migration lock (SQLite: ``BEGIN IMMEDIATE``;
    PostgreSQL: an advisory lock): a failed step leaves the store as it was, and
    controllers starting together upgrade once. A store made before Alembic (it has a
    ``schema_info`` table) is brought to the baseline by the baseline revision itself.

    Raises:
        RegistryError: the store was upgraded by a newer controller (``schema_too_new``).
    """
    scripts = _scripts()
    head = scripts.get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {_MIGRATIONS} (a broken install?)")
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":  # pysqlite would run the DDL outside a transaction
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
        if _current(conn, scripts) != head:
            command.upgrade(_alembic(conn), "head")
    return head


def schema_status(engine: sa.Engine) -> dict[str, Any]:
    """Where the store's schema stands: ``current`` and ``head`` revisions, ``up_to_date``,
    and ``legacy_version`` (a pre-Alembic store's ``schema_info`` version, else None).

    Raises:
        RegistryError: the store was upgraded by a newer controller (``schema_too_new``).
    """
    scripts = _scripts()
    with engine.connect() as conn:
        current = _current(conn, scripts)
        legacy = None
        if current is None and sa.inspect(conn).has_table("schema_info"):
            legacy = conn.execute(sa.text("SELECT MAX(version) FROM schema_info")).scalar()
    head = scripts.get_current_head()
    return {"current": current, "head": head, "up_to_date": current == head,
            "legacy_version": legacy}


# the job columns a rollout step reads
_BRIEF_JOB = frozenset({"device", "state", "job", "wave", "arm", "from_model", "from_version"})


def _row(r: sa.Row[Any] | None) -> dict[str, Any] | None:
    return dict(r._mapping) if r is not None else None


def _rows(result: sa.Result[Any]) -> list[dict[str, Any]]:
    keys = list(result.keys())  # once, not a mapping view per row
    return [dict(zip(keys, r, strict=True)) for r in result]


class Store:
    """All controller persistence. Tables of one concern have a store of their own,
    reached through this one: ``models`` (registry rows), ``credentials`` (claim tokens,
    device credentials), ``telemetry``, ``alerts``, ``audit``, ``tokens``, ``console``.

    Args:
        url: an SQLAlchemy URL (``sqlite:///ctl.db``, ``postgresql+psycopg://…``).
        audit_anchor: file that keeps the audit chain's head outside the database.
        upgrade: bring the schema to this controller's revision (else refuse one behind).

    Raises:
        RegistryError: the store was upgraded by a newer controller (``schema_too_new``);
            without ``upgrade``, the store is behind (``schema_outdated``).
    """

    def __init__(self, url: str, *, audit_anchor: Path | None = None,
                 upgrade: bool = True) -> None:
        self.engine = create_engine(url)
        if upgrade:
            self.schema_version = upgrade_schema(self.engine)  # the Alembic revision
        else:
            status = schema_status(self.engine)
            if not status["up_to_date"]:
                self.engine.dispose()
                raise RegistryError(
                    f"the store's schema is at {status['current'] or 'nothing'}, this "
                    f"controller needs {status['head']}; automatic upgrades are off: run "
                    "`edgefleet db upgrade --db URL` (back the database up first)",
                    reason="schema_outdated")
            self.schema_version = status["head"]
        self.audit = AuditStore(self.engine, audit_anchor)
        self.tokens = TokenStore(self.engine)
        self.telemetry = TelemetryStore(self.engine)
        self.alerts = AlertStore(self.engine)
        self.console = ConsoleStore(self.engine)
        self.models = RegistryStore(self.engine)  # model versions and their variants
        self.credentials = CredentialStore(self.engine)  # claim tokens, device credentials
        self._status_statements: dict[Any, Any] = {}
        self._session_statements: dict[Any, Any] = {}

    # -- models (``_registry_store``) -------------------------------------------------------
    def add_model(self, **values: Any) -> dict[str, Any]:
        """Insert a model version (``version`` defaults to the next free one for ``name``)."""
        return self.models.add_model(**values)

    def next_version(self, name: str) -> int:
        return self.models.next_version(name)

    def get_model(self, name: str, version: int) -> dict[str, Any]:
        """Raises: NotFoundError."""
        return self.models.get_model(name, version)

    def list_models(self) -> list[dict[str, Any]]:
        return self.models.list_models()

    def mark_bundled(self, name: str, version: int) -> None:
        self.models.mark_bundled(name, version)

    # -- devices ----------------------------------------------------------------------
    def upsert_device(self, device_id: str, **values: Any) -> None:
        with self.engine.begin() as c:
            found = c.execute(sa.select(devices.c.id).where(devices.c.id == device_id)).first()
            if found:
                c.execute(devices.update().where(devices.c.id == device_id).values(**values))
            else:
                c.execute(devices.insert().values(id=device_id, **{
                    "hw": {}, "tags": {}, **values}))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """One transaction for several of the calls below that take ``conn``."""
        with self.engine.begin() as c:
            yield c

    @contextlib.contextmanager
    def _in(self, conn: sa.Connection | None) -> Iterator[sa.Connection]:
        if conn is not None:
            yield conn
        else:
            with self.engine.begin() as c:
                yield c

    def _session_statement(self, columns: frozenset[str]) -> Any:
        stmt = self._session_statements.get(columns)
        if stmt is None:
            stmt = self._session_statements[columns] = devices.update().where(
                devices.c.id == sa.bindparam("_id"), devices.c.bd_seq == sa.bindparam("_bd")
            ).values({k: sa.bindparam(k, type_=devices.c[k].type) for k in columns})
        return stmt

    def update_session(self, device_id: str, bd_seq: int, *, conn: sa.Connection | None = None,
                       **values: Any) -> bool:
        """Update a device's record if ``bd_seq`` is its current session (a birth that
        announces a change, not a new connection); returns whether it was."""
        stmt = self._session_statement(frozenset(values))
        with self._in(conn) as c:
            return bool(c.execute(stmt, {"_id": device_id, "_bd": bd_seq, **values}).rowcount)

    def update_sessions(self, updates: list[tuple[str, int, dict[str, Any]]], *,
                        conn: sa.Connection | None = None) -> int | None:
        """``update_session`` for many ``(device, bd_seq, values)``, in order: one
        executemany per run of updates that set the same columns. Returns how many were
        of the current session (``None`` where the driver cannot count an executemany)."""
        runs: list[tuple[frozenset[str], list[dict[str, Any]]]] = []
        for device_id, bd_seq, values in updates:
            columns = frozenset(values)
            if not runs or runs[-1][0] != columns:
                runs.append((columns, []))
            runs[-1][1].append({"_id": device_id, "_bd": bd_seq, **values})
        done = 0
        with self._in(conn) as c:
            for columns, rows in runs:
                done += c.execute(self._session_statement(columns), rows).rowcount
            counted = c.dialect.supports_sane_multi_rowcount
        return done if counted else None

    def mark_offline(self, device_id: str, bd_seq: int, *,
                     conn: sa.Connection | None = None) -> bool:
        """Offline only if the death matches the current session; returns whether it did."""
        with self._in(conn) as c:
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

    def devices_hw(self, device_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The hardware each known device reported, by id."""
        with self.engine.connect() as c:
            return {r.id: r.hw for r in c.execute(sa.select(devices.c.id, devices.c.hw)
                                                   .where(devices.c.id.in_(device_ids)))}

    def list_devices(self, columns: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Every device's row, or only ``columns`` of it (a fleet's JSON columns cost
        more to read than the few a caller needs)."""
        q = sa.select(*(devices.c[name] for name in columns)) if columns \
            else sa.select(devices)
        with self.engine.connect() as c:
            return _rows(c.execute(q.order_by(devices.c.id)))

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

    def job_counts(self, dep_id: str, *, wave: int | None = None,
                   arm: str | None = None) -> dict[str, int]:
        """How many of a deployment's jobs (of one wave, or one arm) are in each state."""
        q = sa.select(jobs.c.state, sa.func.count()).where(jobs.c.deployment == dep_id)
        if wave is not None:
            q = q.where(jobs.c.wave == wave)
        if arm is not None:
            q = q.where(jobs.c.arm == arm)
        with self.engine.connect() as c:
            return {str(state): int(n) for state, n in c.execute(q.group_by(jobs.c.state))}

    def get_deployment(self, dep_id: str, *, with_events: bool = False,
                       brief_jobs: bool = False, with_jobs: bool = True) -> dict[str, Any]:
        """A deployment with its jobs (``brief_jobs``: only what a rollout step reads of
        them, ``_BRIEF_JOB``; ``with_jobs=False``: none, ``jobs`` is absent).

        Raises: NotFoundError."""
        columns = [c for c in jobs.c if c.name in _BRIEF_JOB] if brief_jobs else [jobs]
        with self.engine.connect() as c:
            row = _row(c.execute(sa.select(deployments).where(deployments.c.id == dep_id)).first())
            if row is None:
                raise NotFoundError(f"no deployment {dep_id}")
            if with_jobs:
                row["jobs"] = _rows(c.execute(sa.select(*columns).where(
                    jobs.c.deployment == dep_id).order_by(jobs.c.device)))
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
        # the devices of every such deployment, matched here: an IN list of a whole
        # fleet's ids costs more to build than the rows cost to read
        q = sa.select(jobs.c.device).join(deployments, deployments.c.id == jobs.c.deployment) \
            .where(deployments.c.state.in_(list(states)))
        wanted = set(devices_)
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(q) if r[0] in wanted}

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
                   only_reason: str | None = None, unless_states: Iterable[str] = (),
                   **values: Any) -> bool:
        """Update a job row; with ``only_job``, only while that device-side job is in force
        (and with ``only_reason``, only while its reason is that; with ``unless_states``,
        not while it is in one of those)."""
        q = jobs.update().where(jobs.c.deployment == dep_id, jobs.c.device == device)
        if only_job is not None:
            q = q.where(jobs.c.job == only_job)
        if unless_states:
            q = q.where(jobs.c.state.not_in(list(unless_states)))
        if only_reason is not None:
            q = q.where(jobs.c.reason == only_reason)
        with self.engine.begin() as c:
            return bool(c.execute(q.values(updated_at=time.time(), **values)).rowcount)

    def update_jobs(self, dep_id: str, devices: list[str], **values: Any) -> None:
        """Set the same fields on several devices' job rows, in one transaction."""
        if not devices:
            return
        stmt = jobs.update().where(jobs.c.deployment == dep_id,
                                   jobs.c.device == sa.bindparam("v")).values(
            updated_at=time.time(), **values)
        with self.engine.begin() as c:
            c.execute(stmt, [{"v": d} for d in devices])

    def apply_statuses(self, updates: Iterable[StatusUpdate], settled: Iterable[str], *,
                       conn: sa.Connection | None = None) -> list[StatusUpdate]:
        """Store devices' job statuses (``_statuses.fold``) in one transaction; returns
        the ones whose job is no longer the row's (or already settled).

        Each update's fields apply while its job is the row's job and the row's state is
        not one of ``settled``. When the row has moved on to another job, a failure's
        reason is kept on it if it has none (why the device failed, without changing
        where it is now)."""
        settled = tuple(sorted(settled))
        stale, now = [], time.time()
        groups: dict[frozenset[str], list[StatusUpdate]] = {}
        for u in updates:  # one statement per set of fields, run for all of them at once
            groups.setdefault(frozenset(u.fields), []).append(u)
        with self._in(conn) as c:
            for fields, group in groups.items():
                key = (fields, settled)
                stmt = self._status_statements.get(key)
                if stmt is None:
                    stmt = jobs.update().where(
                        jobs.c.deployment == sa.bindparam("d"),
                        jobs.c.device == sa.bindparam("v"), jobs.c.job == sa.bindparam("j"),
                        # spelled out: an expanding NOT IN cannot run for many rows at once
                        *(jobs.c.state != state for state in settled)).values(
                        {"updated_at": sa.bindparam("now"),
                         **{k: sa.bindparam(f"f_{k}", type_=jobs.c[k].type) for k in fields}})
                    self._status_statements[key] = stmt
                params = [{"d": u.deployment, "v": u.device, "j": u.job, "now": now,
                           **{f"f_{k}": v for k, v in u.fields.items()}} for u in group]
                if len(group) > 1 and c.execute(stmt, params).rowcount == len(group):
                    continue  # every one applied (the usual case)
                for u, one in zip(group, params, strict=True):  # which did not, one by one
                    if len(group) == 1 and c.execute(stmt, one).rowcount:
                        continue
                    if len(group) > 1 and self._applied(c, u, now):
                        continue
                    stale.append(u)
            for u in stale:
                if u.failure is not None:
                    c.execute(jobs.update().where(
                        jobs.c.deployment == u.deployment, jobs.c.device == u.device,
                        jobs.c.job != u.job, jobs.c.reason == "").values(
                        reason=u.failure[0], detail=u.failure[1], updated_at=now))
        return stale

    @staticmethod
    def _applied(c: sa.Connection, u: StatusUpdate, now: float) -> bool:
        """Whether a run of ``apply_statuses`` (stamped ``now``) updated ``u``'s row."""
        return c.execute(sa.select(jobs.c.job).where(
            jobs.c.deployment == u.deployment, jobs.c.device == u.device, jobs.c.job == u.job,
            jobs.c.updated_at == now)).first() is not None

    def add_event(self, dep_id: str, kind: str, actor: str, **detail: Any) -> None:
        """Record a deployment event, and in the same transaction its audit entry."""
        self.update_with_event(dep_id, {}, kind, actor, **detail)

    def update_with_event(self, dep_id: str, update: dict[str, Any], kind: str, actor: str,
                          **detail: Any) -> None:
        """Update a deployment's row and record the event saying so, in one transaction
        with its audit entry (a controller killed in between leaves both or neither: a
        wave started without its event would go unrecorded)."""
        with self.audit.transaction() as tx:
            now = time.time()
            if update:
                tx.conn.execute(deployments.update().where(deployments.c.id == dep_id)
                                .values(updated_at=now, **update))
            tx.conn.execute(events.insert().values(deployment=dep_id, ts=now, actor=actor,
                                                   kind=kind, detail=detail))
            tx.append(actor, f"deployment.{kind}", dep_id, detail, ts=now)

    def events(self, dep_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return _rows(c.execute(sa.select(events).where(events.c.deployment == dep_id)
                                   .order_by(events.c.id)))

    # -- desired state ----------------------------------------------------------------
    def set_desired(self, device: str, payload: dict[str, Any]) -> None:
        self.set_desired_many([(device, payload)])

    def set_desired_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Record devices' desired states (device, payload), in one transaction."""
        now = time.time()
        rows = [{"device": device, "deployment": p["deployment"], "job": p["job"],
                 "model": p["model"], "version": p["version"], "mode": p.get("mode", "active"),
                 "payload": p, "updated_at": now} for device, p in items]
        if not rows:
            return
        # every column is replaced: each device's row goes and comes back, two statements
        # run for all rows (no IN list of the devices to find which rows exist)
        with self.engine.begin() as c:
            c.execute(desired.delete().where(desired.c.device == sa.bindparam("key")),
                      [{"key": r["device"]} for r in rows])
            c.execute(desired.insert(), rows)

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
