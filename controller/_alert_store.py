"""Alert persistence: the ``alerts`` table (one row per key) and the rollback facts.

Data access only; what fires and what is sent is ``alerts.evaluate`` /
``alerts.reconcile``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from ._tables import alerts, deployments, events, jobs
from .alerts import AlertState

__all__ = ["AlertStore"]

_FIELDS = tuple(c.name for c in alerts.columns)


class AlertStore:
    """Alert states over the store's engine (see ``Store.alerts``)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def states(self, keys: Iterable[str] = ()) -> dict[str, AlertState]:
        """Every active alert, plus the named keys whatever their state."""
        wanted = sorted(set(keys))
        out: dict[str, AlertState] = {}
        with self.engine.connect() as c:
            rows = list(c.execute(sa.select(alerts).where(alerts.c.active.is_(True))))
            for i in range(0, len(wanted), 500):
                rows += c.execute(sa.select(alerts).where(alerts.c.key.in_(wanted[i:i + 500])))
        for r in rows:
            out[r.key] = AlertState(**dict(r._mapping))
        return out

    def save(self, states: Iterable[AlertState]) -> None:
        rows = [s.to_dict() for s in states]
        if not rows:
            return
        with self.engine.begin() as c:
            present = {r[0] for r in c.execute(sa.select(alerts.c.key).where(
                alerts.c.key.in_([r["key"] for r in rows])))}
            new = [r for r in rows if r["key"] not in present]
            old = [{**{f"p_{k}": v for k, v in r.items()}} for r in rows if r["key"] in present]
            if new:
                c.execute(alerts.insert(), new)
            if old:
                c.execute(alerts.update().where(alerts.c.key == sa.bindparam("p_key")).values(
                    {k: sa.bindparam(f"p_{k}", type_=alerts.c[k].type)
                     for k in _FIELDS if k != "key"}), old)

    def rows(self, *, active_only: bool = True, limit: int = 500) -> list[dict[str, Any]]:
        q = sa.select(alerts).order_by(alerts.c.active.desc(), alerts.c.last_at.desc()) \
            .limit(limit)
        if active_only:
            q = q.where(alerts.c.active.is_(True))
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def prune(self, before: float) -> int:
        """Forget resolved alerts that ended before ``before``."""
        with self.engine.begin() as c:
            res = c.execute(alerts.delete().where(alerts.c.active.is_(False),
                                                  alerts.c.resolved_at < before))
            return int(res.rowcount or 0)

    def rollbacks(self, since: float) -> list[dict[str, Any]]:
        """Deployments rolled back, and devices that rolled back by themselves, since then."""
        out: list[dict[str, Any]] = []
        with self.engine.connect() as c:
            q = sa.select(events.c.deployment, events.c.ts, events.c.actor, events.c.detail,
                          deployments.c.model, deployments.c.version).join(
                deployments, deployments.c.id == events.c.deployment).where(
                events.c.kind == "rollback_started", events.c.ts >= since)
            for dep, ts, actor, detail, model, version in c.execute(q):
                out.append({"deployment": dep, "device": None, "at": ts, "actor": actor,
                            "reason": (detail or {}).get("reason", ""), "model": model,
                            "version": version,
                            "devices": list((detail or {}).get("devices") or [])})
            q = sa.select(jobs.c.deployment, jobs.c.device, jobs.c.updated_at, jobs.c.reason,
                          jobs.c.detail, deployments.c.model, deployments.c.version).join(
                deployments, deployments.c.id == jobs.c.deployment).where(
                jobs.c.state == "rolled_back", jobs.c.updated_at >= since)
            for r in c.execute(q):
                out.append({"deployment": r.deployment, "device": r.device, "at": r.updated_at,
                            "reason": r.reason, "detail": r.detail, "model": r.model,
                            "version": r.version})
        return out
