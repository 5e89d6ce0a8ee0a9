"""What the web console reads and keeps: its sign-ins, model cards, and the fleet's
devices filtered, sorted and paged by the database (so a page of 10,000 devices costs
one page of rows, not the whole table)."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any

import sqlalchemy as sa

from ._tables import console_sessions, deployments, devices, jobs, model_cards

__all__ = ["DEVICE_SORTS", "ConsoleStore", "DeviceQuery"]

# what the devices list sorts by: the query's name → the column
DEVICE_SORTS = ("id", "last_seen", "model", "version", "class")


@dataclasses.dataclass(frozen=True)
class DeviceQuery:
    """A page of the devices list: filters (empty: any), order and position."""

    text: str = ""  # part of the device id
    status: str = ""  # online | offline
    model: str = ""
    version: int | None = None
    hw_class: str = ""
    tag: tuple[str, str] | None = None  # key, value
    seen_within_s: float | None = None  # last seen at most this long ago
    unseen_for_s: float | None = None  # last seen longer ago than this (or never)
    sort: str = "id"
    descending: bool = False
    offset: int = 0
    limit: int = 50


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class ConsoleStore:
    """The console's tables (``console_sessions``, ``model_cards``) and its fleet queries."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # -- sign-ins ---------------------------------------------------------------------------
    def add_session(self, session_id: str, *, name: str, role: str, token_id: str | None,
                    token: str, csrf: str, expires_at: float) -> None:
        """Keep a sign-in under the sha256 of its cookie (and of the token it used)."""
        now = time.time()
        with self.engine.begin() as c:
            c.execute(console_sessions.delete().where(console_sessions.c.expires_at < now))
            c.execute(console_sessions.insert().values(
                id_hash=_hash(session_id), name=name, role=role, token_id=token_id,
                token_hash=_hash(token), csrf=csrf, created_at=now, expires_at=expires_at))

    def session(self, session_id: str) -> dict[str, Any] | None:
        """The sign-in behind a cookie, None when unknown."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(console_sessions).where(
                console_sessions.c.id_hash == _hash(session_id))).first()
        return dict(row._mapping) if row is not None else None

    def end_session(self, session_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(console_sessions.delete().where(
                console_sessions.c.id_hash == _hash(session_id)))

    @staticmethod
    def token_matches(row: dict[str, Any], token: str) -> bool:
        """Whether ``token`` is the one this sign-in used (the bootstrap admin token)."""
        return bool(token) and row["token_hash"] == _hash(token)

    # -- model cards --------------------------------------------------------------------------
    def card(self, name: str, version: int) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(model_cards).where(
                model_cards.c.name == name, model_cards.c.version == version)).first()
        return dict(row._mapping) if row is not None else None

    def put_card(self, name: str, version: int, card: dict[str, str], actor: str) -> None:
        now = time.time()
        with self.engine.begin() as c:
            done = c.execute(model_cards.update().where(
                model_cards.c.name == name, model_cards.c.version == version).values(
                card=card, updated_at=now, updated_by=actor)).rowcount
            if not done:
                c.execute(model_cards.insert().values(name=name, version=version, card=card,
                                                      updated_at=now, updated_by=actor))

    # -- the fleet ----------------------------------------------------------------------------
    def device_page(self, q: DeviceQuery, now: float) -> tuple[list[dict[str, Any]], int]:
        """One page of devices matching ``q`` and how many match in all."""
        model = devices.c.active["name"].as_string()
        version = devices.c.active["version"].as_integer()
        hw_class = devices.c.hw["class"].as_string()
        where: list[Any] = []
        if q.text:
            pattern = q.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append(devices.c.id.like(f"%{pattern}%", escape="\\"))
        if q.status:
            where.append(devices.c.online.is_(q.status == "online"))
        if q.model:
            where.append(model == q.model)
        if q.version is not None:
            where.append(version == q.version)
        if q.hw_class:
            where.append(hw_class == q.hw_class)
        if q.tag is not None:
            where.append(devices.c.tags[q.tag[0]].as_string() == q.tag[1])
        if q.seen_within_s is not None:
            where.append(devices.c.last_seen >= now - q.seen_within_s)
        if q.unseen_for_s is not None:
            where.append(sa.or_(devices.c.last_seen.is_(None),
                                devices.c.last_seen < now - q.unseen_for_s))
        order_col = {"id": devices.c.id, "last_seen": devices.c.last_seen, "model": model,
                     "version": version, "class": hw_class}[q.sort]
        order = [order_col.desc() if q.descending else order_col.asc()]
        if q.sort != "id":
            order.append(devices.c.id.asc())
        select = sa.select(devices.c.id, devices.c.online, devices.c.last_seen,
                           devices.c.agent_version, devices.c.active, devices.c.last_good,
                           devices.c.hw, devices.c.tags).where(*where)
        with self.engine.connect() as c:
            total = c.execute(sa.select(sa.func.count()).select_from(devices)
                              .where(*where)).scalar_one()
            rows = [dict(r._mapping) for r in c.execute(
                select.order_by(*order).offset(q.offset).limit(q.limit))]
        return rows, int(total)

    def fleet_counts(self) -> dict[str, Any]:
        """Devices online and offline, by model version and by hardware class."""
        model = devices.c.active["name"].as_string()
        version = devices.c.active["version"].as_integer()
        hw_class = devices.c.hw["class"].as_string()
        with self.engine.connect() as c:
            online = {bool(o): n for o, n in c.execute(
                sa.select(devices.c.online, sa.func.count()).group_by(devices.c.online))}
            by_version = [{"model": m, "version": v, "online": int(on or 0), "devices": n}
                          for m, v, n, on in c.execute(
                              sa.select(model, version, sa.func.count(),
                                        sa.func.sum(sa.case((devices.c.online, 1), else_=0)))
                              .group_by(model, version).order_by(model, version))]
            by_class = [{"class": k, "devices": n} for k, n in c.execute(
                sa.select(hw_class, sa.func.count()).group_by(hw_class).order_by(hw_class))]
        return {"online": online.get(True, 0), "offline": online.get(False, 0),
                "by_version": by_version, "by_class": by_class}

    def hw_classes(self) -> list[str]:
        """The hardware classes devices have reported ("" for none)."""
        hw_class = devices.c.hw["class"].as_string()
        with self.engine.connect() as c:
            return sorted({k or "" for (k,) in c.execute(sa.select(hw_class).distinct())})

    def device_jobs(self, device: str, limit: int = 50) -> list[dict[str, Any]]:
        """A device's jobs in deployments, newest first, with the deployment's model."""
        q = (sa.select(jobs.c.deployment, jobs.c.state, jobs.c.reason, jobs.c.detail,
                       jobs.c.wave, jobs.c.arm, jobs.c.updated_at, jobs.c.from_version,
                       deployments.c.model, deployments.c.version, deployments.c.strategy)
             .join(deployments, deployments.c.id == jobs.c.deployment)
             .where(jobs.c.device == device)
             .order_by(jobs.c.updated_at.desc()).limit(limit))
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]
