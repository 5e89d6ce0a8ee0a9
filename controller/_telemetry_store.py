"""Telemetry persistence: raw summaries, stream positions, hourly rollups, aggregates.

Data access only, over the store's engine. Which summary to store is decided by
``ingest.admit`` (the ingest worker calls ``write_batch`` with its verdicts); how
windows add up is ``aggregate.Aggregate``. Raw summaries are answered at window
resolution, rollups at hour resolution (an hour counts when it starts in the range).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from edgefleet.contract import Summary
from edgefleet.contract._json import dumps

from ._tables import rollups, streams, telemetry
from .aggregate import Aggregate, rollup, window_drift_score
from .ingest import StreamState, summary_fields
from .rollout import CohortMetrics, ShadowMetrics

__all__ = ["GROUPS", "TelemetryStore", "summary_row"]

# the summary fields kept in their own columns (the rest stays in ``payload``)
SPLIT = ("latency_sketch", "errors_by_kind", "inputs", "drift", "buffer")
GROUPS = ("device", "model", "version")
_AGG_COLUMNS = (telemetry.c.device, telemetry.c.model, telemetry.c.version,
                telemetry.c.window_start, telemetry.c.window_end, telemetry.c.historical,
                telemetry.c.count, telemetry.c.errors, telemetry.c.payload,
                telemetry.c.latency_sketch, telemetry.c.errors_by_kind, telemetry.c.drift,
                telemetry.c.inputs)
StreamKey = tuple[str, str]
RollupKey = tuple[str, float, str, int]

_STREAM_UPDATE = {
    with_buffer: streams.update().where(
        streams.c.device == sa.bindparam("d"), streams.c.stream == sa.bindparam("s")
    ).values(last_seq=sa.bindparam("p_last"), gap_since=sa.bindparam("p_gap"),
             stored=streams.c.stored + sa.bindparam("p_stored"),
             lost=streams.c.lost + sa.bindparam("p_lost"),
             last_received=sa.bindparam("p_received"),
             **({"buffer": sa.bindparam("p_buffer", type_=sa.JSON)} if with_buffer else {}))
    for with_buffer in (True, False)}
# The hot insert on SQLite skips SQLAlchemy's per-row processing, and when it can, lets
# SQLite's JSON functions (C, outside the GIL) cut the split columns out of the summary
# as received instead of re-encoding them in Python: together ~40% of the ingest CPU.
_COLUMNS = [c.name for c in telemetry.columns]
_JSON_COLUMNS = frozenset(c.name for c in telemetry.columns if isinstance(c.type, sa.JSON))
_SQLITE_INSERT = (f"INSERT INTO telemetry ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in _COLUMNS)})"
                  f" VALUES ({', '.join('?' * len(_COLUMNS))})")
_PLAIN = [c for c in _COLUMNS if c not in SPLIT]
_RAW = len(_PLAIN) + 1  # the parameter number of the summary as received
_SQLITE_INSERT_RAW = (
    f"INSERT INTO telemetry ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in _COLUMNS)}) VALUES ("
    + ", ".join(f"NULLIF(json_extract(?{_RAW}, '$.{c}'), '{{}}')" if c in SPLIT
                else f"?{_PLAIN.index(c) + 1}" for c in _COLUMNS) + ")")
_KEYS = tuple(f'"{k}"'.encode() for k in SPLIT)


def summary_row(device: str, summary: Summary, received_at: float, *, sketch_ok: bool = True,
                raw: bytes | None = None) -> dict[str, Any]:
    """The telemetry row of one summary (``sketch_ok=False`` drops a malformed sketch).

    ``raw``, the summary as received, lets SQLite take the JSON columns from it (key
    ``_raw``, only when they are exactly what ``Summary.decode`` validated).
    """
    payload = summary_fields(summary)
    split = {k: payload.pop(k) or None for k in SPLIT}
    if not sketch_ok:
        split["latency_sketch"] = None
    stream = payload.pop("stream")
    row = {"device": device, "stream": stream, "seq": summary.seq,
           "window_start": summary.window_start, "window_end": summary.window_end,
           "historical": summary.historical, "model": summary.model,
           "version": summary.version, "count": summary.count, "errors": summary.errors,
           "payload": payload, "received_at": received_at,
           "drift_score": window_drift_score(split["drift"]), **split}
    if raw is not None and sketch_ok:
        text = _as_received(raw)
        if text is not None:
            row["_raw"] = text
    return row


def _as_received(raw: bytes) -> str | None:
    """``raw`` as text when each JSON column's key occurs at most once in it, unescaped,
    with no NaN or Infinity: then the top-level value SQLite extracts is the one Python
    validated. None otherwise (the columns are encoded in Python)."""
    if b"\\" in raw or b"NaN" in raw or b"Infinity" in raw:
        return None
    if any(raw.count(k) > 1 for k in _KEYS):
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class TelemetryStore:
    """Telemetry tables over a shared engine (see ``Store.telemetry``)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """One transaction for the calls below that take ``conn`` (``load_streams`` with
        ``lock``, then ``write_batch``)."""
        with self.engine.begin() as c:
            yield c

    # -- ingest -------------------------------------------------------------------------
    def load_streams(self, devices: Iterable[str], *, conn: sa.Connection | None = None,
                     lock: bool = False) -> dict[StreamKey, StreamState]:
        """Every known stream of these devices, with its position.

        With ``conn`` and ``lock`` (controller replicas, PostgreSQL) the rows stay locked
        until that transaction ends (``SELECT … FOR UPDATE``, in key order), so two
        replicas judge a stream's summaries one after the other."""
        ids = sorted(set(devices))
        out: dict[StreamKey, StreamState] = {}
        with contextlib.ExitStack() as stack:
            c = conn if conn is not None else stack.enter_context(self.engine.connect())
            for i in range(0, len(ids), 500):
                q = sa.select(streams.c.device, streams.c.stream, streams.c.last_seq,
                              streams.c.gap_since).where(streams.c.device.in_(ids[i:i + 500]))
                if lock and c.dialect.name == "postgresql":
                    q = q.order_by(streams.c.device, streams.c.stream).with_for_update()
                for d, s, last, gap in c.execute(q):
                    out[(d, s)] = StreamState(int(last), gap)
        return out

    def write_batch(self, rows: Sequence[dict[str, Any]],
                    positions: Mapping[StreamKey, dict[str, Any]], new_streams: set[StreamKey],
                    seen: Mapping[str, float], maybe_new_devices: Iterable[str] = (), *,
                    conn: sa.Connection | None = None) -> None:
        """One transaction: the summaries, their streams' positions, devices' last_seen.

        ``positions`` maps a stream to ``{last_seq, gap_since, stored, lost, received,
        buffer}`` (``stored``/``lost`` are increments; ``buffer`` None keeps the last one).
        Devices in ``maybe_new_devices`` that have no row yet get one. With ``conn``, in
        that connection's transaction (the caller commits).
        """
        from ._tables import devices

        with contextlib.ExitStack() as stack:
            c = conn if conn is not None else stack.enter_context(self.engine.begin())
            if rows:
                _insert_summaries(c, rows)
            inserts = [{"device": d, "stream": s, "last_seq": p["last_seq"],
                        "gap_since": p["gap_since"], "stored": p["stored"], "lost": p["lost"],
                        "first_received": p["received"], "last_received": p["received"],
                        "buffer": p["buffer"]}
                       for (d, s), p in positions.items() if (d, s) in new_streams]
            if inserts:
                c.execute(streams.insert(), inserts)
            updates = [{"d": d, "s": s, "p_last": p["last_seq"], "p_gap": p["gap_since"],
                        "p_stored": p["stored"], "p_lost": p["lost"], "p_received": p["received"],
                        "p_buffer": p["buffer"]}
                       for (d, s), p in positions.items() if (d, s) not in new_streams]
            for with_buffer in (True, False):
                part = [u for u in updates if (u["p_buffer"] is not None) == with_buffer]
                if part:
                    c.execute(_STREAM_UPDATE[with_buffer], part)
            candidates = [d for d in maybe_new_devices if d in seen]
            if candidates:
                known = {r[0] for r in c.execute(sa.select(devices.c.id).where(
                    devices.c.id.in_(candidates)))}
                missing = [d for d in candidates if d not in known]
                if missing:
                    c.execute(devices.insert(), [{"id": d, "last_seen": seen[d], "hw": {},
                                                  "tags": {}} for d in missing])
            if seen:
                c.execute(devices.update().where(devices.c.id == sa.bindparam("d"))
                          .values(last_seen=sa.bindparam("ts")),
                          [{"d": d, "ts": ts} for d, ts in seen.items()])

    def streams(self, device: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(streams).order_by(streams.c.device, streams.c.first_received)
        if device is not None:
            q = q.where(streams.c.device == device)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def latest_buffers(self) -> dict[str, dict[str, Any]]:
        """Each device's buffer as its most recent summary reported it."""
        out: dict[str, tuple[float, dict[str, Any]]] = {}
        with self.engine.connect() as c:
            for d, at, buf in c.execute(sa.select(streams.c.device, streams.c.last_received,
                                                  streams.c.buffer)
                                        .where(streams.c.buffer.is_not(None))):
                if buf and (d not in out or (at or 0) > out[d][0]):
                    out[d] = (at or 0.0, buf)
        return {d: buf for d, (_at, buf) in out.items()}

    # -- reading ------------------------------------------------------------------------
    def summaries(self, device: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Raw summaries in arrival order (per device), oldest first."""
        q = sa.select(telemetry).order_by(telemetry.c.device, telemetry.c.received_at,
                                          telemetry.c.seq).limit(limit)
        if device is not None:
            q = q.where(telemetry.c.device == device)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def telemetry_counts(self) -> dict[str, int]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(telemetry.c.device, sa.func.count())
                             .group_by(telemetry.c.device))
            return {r[0]: r[1] for r in rows}

    def _received_rows(self, devices: list[str], since: float, version: int | None = None,
                       model: str | None = None) -> list[Mapping[Any, Any]]:
        if not devices:
            return []
        q = sa.select(*_AGG_COLUMNS).where(telemetry.c.device.in_(devices),
                                           telemetry.c.received_at >= since)
        if version is not None:
            q = q.where(telemetry.c.version == version)
        if model is not None:
            q = q.where(telemetry.c.model == model)
        with self.engine.connect() as c:
            return [r._mapping for r in c.execute(q)]

    def cohort_metrics(self, devices: list[str], model: str, version: int,
                       since: float) -> CohortMetrics:
        """Inferences, errors and p95 of a cohort on one version, received since ``since``.

        The p95 is the merged DDSketch's (``aggregate.ALPHA`` relative error); windows
        without a sketch add their reported p95, weighted by inferences.
        """
        agg = Aggregate()
        for row in self._received_rows(devices, since, version, model):
            agg.add_window(row)
        return CohortMetrics(agg.count, agg.errors, agg.quantile(0.95))

    def shadow_metrics(self, devices: list[str], model: str, version: int,
                       since: float) -> ShadowMetrics:
        totals = {"samples": 0, "agree": 0, "distance_sum": 0.0, "candidate_ms_sum": 0.0,
                  "active_ms_sum": 0.0}
        for row in self._received_rows(devices, since):
            sh = (row["payload"] or {}).get("shadow") or {}
            if sh.get("model") == model and sh.get("version") == version:
                for k in totals:
                    totals[k] += sh.get(k, 0)
        return ShadowMetrics(**totals)  # type: ignore[arg-type]

    def aggregate(self, *, group_by: Sequence[str] = (), devices: Sequence[str] | None = None,
                  model: str | None = None, version: int | None = None,
                  since: float | None = None, until: float | None = None,
                  received_since: float | None = None,
                  rollups_too: bool = True) -> dict[tuple[Any, ...], Aggregate]:
        """Aggregates of raw summaries (and rollups) matching the filters, per group.

        ``since``/``until`` bound ``window_start`` (rollups: the hour's start);
        ``received_since`` bounds arrival time instead (raw summaries only).

        Raises:
            ValueError: an unknown ``group_by`` column.
        """
        if any(g not in GROUPS for g in group_by):
            raise ValueError(f"group_by takes {GROUPS}")
        out: dict[tuple[Any, ...], Aggregate] = {}
        if devices is not None and not devices:
            return out
        q = sa.select(*_AGG_COLUMNS)
        q = _filtered(q, telemetry, telemetry.c.window_start, devices, model, version, since,
                      until)
        if received_since is not None:
            q = q.where(telemetry.c.received_at >= received_since)
        with self.engine.connect() as c:
            for r in c.execute(q):
                row = r._mapping
                key = tuple(row[g] for g in group_by)
                out.setdefault(key, Aggregate()).add_window(row)
            if not rollups_too or received_since is not None:
                return out
            q = sa.select(rollups.c.device, rollups.c.model, rollups.c.version, rollups.c.agg)
            q = _filtered(q, rollups, rollups.c.hour, devices, model, version, since, until)
            for r in c.execute(q):
                row = r._mapping
                key = tuple(row[g] for g in group_by)
                out.setdefault(key, Aggregate()).merge(Aggregate.from_dict(row["agg"]))
        return out

    def latency_by_version(self, since: float) -> dict[tuple[str, int], dict[str, Any]]:
        """p50/p95/p99 (merged sketches), inferences and errors per model version, for
        windows received since ``since`` (``metrics.FleetCollector``'s ``latency``)."""
        groups = self.aggregate(group_by=("model", "version"), received_since=since)
        return {(str(m), int(v)): {"p50": a.quantile(0.5), "p95": a.quantile(0.95),
                                   "p99": a.quantile(0.99), "count": a.count,
                                   "errors": a.errors}
                for (m, v), a in groups.items() if m}

    def versions_since(self, received_since: float) -> set[tuple[str, int]]:
        """The ``(model, version)`` pairs of summaries received since then."""
        q = sa.select(telemetry.c.model, telemetry.c.version).where(
            telemetry.c.received_at >= received_since).distinct()
        with self.engine.connect() as c:
            return {(str(m), int(v)) for m, v in c.execute(q)}

    def drift_windows(self, received_since: float) -> list[dict[str, Any]]:
        """Scored windows received since then: device, model, version, window, drift."""
        q = sa.select(telemetry.c.device, telemetry.c.model, telemetry.c.version,
                      telemetry.c.window_start, telemetry.c.window_end, telemetry.c.drift,
                      telemetry.c.drift_score).where(
            telemetry.c.received_at >= received_since, telemetry.c.drift_score.is_not(None))
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    # -- retention ----------------------------------------------------------------------
    def apply_retention(self, now: float, *, raw_retention_s: float,
                        rollup_retention_s: float, chunk: int = 5000) -> dict[str, int]:
        """Roll raw summaries received more than ``raw_retention_s`` ago into hourly
        per-device rollups (by window start) and delete them; delete rollups whose hour
        is older than ``rollup_retention_s``.

        Raw age is by arrival (the controller's clock): a device with a wrong clock, or
        a replay of old windows, still keeps its summaries raw — visible to rollout
        gates and alerts — for the full raw retention.
        """
        cutoff = now - raw_retention_s
        rolled = 0
        while True:
            with self.engine.begin() as c:
                rows = [r._mapping for r in c.execute(
                    sa.select(telemetry.c.stream, telemetry.c.seq, *_AGG_COLUMNS)
                    .where(telemetry.c.received_at < cutoff)
                    .order_by(telemetry.c.received_at).limit(chunk))]
                if not rows:
                    break
                self._merge_rollups(c, rollup(rows), now)
                c.execute(telemetry.delete().where(
                    telemetry.c.device == sa.bindparam("d"),
                    telemetry.c.stream == sa.bindparam("s"), telemetry.c.seq == sa.bindparam("q")),
                    [{"d": r["device"], "s": r["stream"], "q": r["seq"]} for r in rows])
            rolled += len(rows)
        with self.engine.begin() as c:
            expired = c.execute(rollups.delete().where(
                rollups.c.hour < now - rollup_retention_s)).rowcount
        return {"rolled_up": rolled, "rollups_deleted": int(expired or 0)}

    def _merge_rollups(self, c: sa.Connection, groups: dict[RollupKey, Aggregate],
                       now: float) -> None:
        keys = list(groups)
        existing: dict[RollupKey, Aggregate] = {}
        for i in range(0, len(keys), 200):
            part = keys[i:i + 200]
            q = sa.select(rollups.c.device, rollups.c.hour, rollups.c.model, rollups.c.version,
                          rollups.c.agg).where(sa.tuple_(
                              rollups.c.device, rollups.c.hour, rollups.c.model,
                              rollups.c.version).in_(part))
            for d, h, m, v, agg in c.execute(q):
                existing[(d, float(h), m, int(v))] = Aggregate.from_dict(agg)
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for key, agg in groups.items():
            if key in existing:
                agg = existing[key].merge(agg)
            values = {"d": key[0], "h": key[1], "m": key[2], "v": key[3],
                      "windows": agg.windows, "count": agg.count, "errors": agg.errors,
                      "agg": agg.to_dict(), "updated_at": now}
            (updates if key in existing else inserts).append(values)
        if inserts:
            c.execute(rollups.insert(), [{
                "device": v["d"], "hour": v["h"], "model": v["m"], "version": v["v"],
                "windows": v["windows"], "count": v["count"], "errors": v["errors"],
                "agg": v["agg"], "updated_at": v["updated_at"]} for v in inserts])
        if updates:
            c.execute(rollups.update().where(
                rollups.c.device == sa.bindparam("d"), rollups.c.hour == sa.bindparam("h"),
                rollups.c.model == sa.bindparam("m"), rollups.c.version == sa.bindparam("v"))
                .values(windows=sa.bindparam("p_windows"), count=sa.bindparam("p_count"),
                        errors=sa.bindparam("p_errors"),
                        agg=sa.bindparam("p_agg", type_=sa.JSON),
                        updated_at=sa.bindparam("p_at")),
                [{"d": v["d"], "h": v["h"], "m": v["m"], "v": v["v"],
                  "p_windows": v["windows"], "p_count": v["count"], "p_errors": v["errors"],
                  "p_agg": v["agg"], "p_at": v["updated_at"]} for v in updates])

    def rollup_rows(self, device: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(rollups).order_by(rollups.c.device, rollups.c.hour)
        if device is not None:
            q = q.where(rollups.c.device == device)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]


def _insert_summaries(c: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    if c.dialect.name != "sqlite":
        c.execute(telemetry.insert(), [{k: v for k, v in r.items() if k != "_raw"}
                                       for r in rows])
        return
    fast = [tuple(r[k] if k != "payload" else dumps(r[k]) for k in _PLAIN) + (r["_raw"],)
            for r in rows if "_raw" in r]
    slow = [tuple(dumps(r[k]) if k in _JSON_COLUMNS and r[k] is not None else r[k]
                  for k in _COLUMNS) for r in rows if "_raw" not in r]
    if fast:
        c.exec_driver_sql(_SQLITE_INSERT_RAW, fast)  # type: ignore[arg-type]
    if slow:
        c.exec_driver_sql(_SQLITE_INSERT, slow)  # type: ignore[arg-type]


def _filtered(q: Any, table: sa.Table, time_col: Any, devices: Sequence[str] | None,
              model: str | None, version: int | None, since: float | None,
              until: float | None) -> Any:
    if devices is not None:
        q = q.where(table.c.device.in_(list(devices)))
    if model is not None:
        q = q.where(table.c.model == model)
    if version is not None:
        q = q.where(table.c.version == version)
    if since is not None:
        q = q.where(time_col >= since)
    if until is not None:
        q = q.where(time_col < until)
    return q
