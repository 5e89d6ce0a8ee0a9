"""Controller ingest benchmark: summaries per second through the real path.

What is measured (``run(size)``), with ``devices`` device ids each numbering its own
stream and realistic summaries (sketch, drift, inputs, buffer: ~1.3 KB):

* ``mqtt_backlog`` (the figure; ``baseline`` is the raw SQLite one below): the fleet's
  summaries wait in a real Mosquitto (a controller restart, a fleet reconnecting after
  an outage); a real ``FleetController`` then drains them — decode on paho's thread,
  batched SQLite inserts (WAL) by its ingest worker, one QoS 1 ack per device and
  batch. Timed from ``start()`` until every summary is stored and acked.
* ``ingest_sustained`` (a second row; ``_sustained.py``): a publisher process plays
  the fleet for ``duration`` seconds (by size; ``--duration``), keeping at most
  ``_sustained.WINDOW`` summaries unacked as agents do, into a running controller; the figure is
  the slowest ``window_s`` window's stored rate (30 s windows for runs of 150 s and
  more), and nothing may be lost: every summary sent is stored exactly once, each
  device's stream without a gap. A warm-up (5 s at most) before the windows is not
  counted; the loss check covers it. The publisher (Python paho) and Mosquitto share the
  machine's cores with the controller, so on 2 cores this is a lower bound.
* ``in_process``: the same controller code without the network — ``Summary.decode``
  and ``Ingestor.process`` in batches — to show what MQTT costs.
* ``baseline``: raw batched ``sqlite3`` inserts of the very same rows (same table and
  indexes, JSON columns encoded, ``executemany`` per batch): the storage ceiling.

Summaries are realistic and each exactly what ``Summary.encode`` writes; they are made
fast by ``_summaries.py`` so that one publisher can keep up. Target: ≥ 5,000
summaries/s on a 2-core machine, sustained for 5 minutes (``full``) with nothing lost.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._summaries import payloads as _payloads
from ._sustained import sustained

__all__ = ["SIZES", "run"]

SIZES = {"tiny": (1_000, 20), "small": (5_000, 50), "medium": (20_000, 200),
         "large": (50_000, 500), "full": (30_000, 300)}  # backlog summaries, devices
DURATIONS = {"tiny": 5.0, "small": 30.0, "medium": 60.0, "large": 300.0,
             "full": 300.0}  # seconds of sustained publishing
TARGET_PER_S = 5_000
BATCH = 2_000


def _controller(root: Path, broker_url: str) -> Any:
    from edgefleet.controller import FleetController, Settings, init_keys

    keys = root / "keys" / "root.json"
    if not keys.exists():
        keys = init_keys(root / "keys")
    return FleetController(Settings(
        db_url=f"sqlite:///{root / 'ctl.db'}", broker_url=broker_url, keys_dir=keys.parent,
        data_dir=root / "ctl", admin_token="bench", client_id="bench-controller",
        alert_interval_s=3600.0))  # ingest alone: no alert rounds during the run


def _publish_backlog(url: str, payloads: list[tuple[str, bytes]]) -> None:
    """Publish everything while the controller is away (nothing else runs meanwhile)."""
    import paho.mqtt.client as mqtt

    from edgefleet.contract import DeviceTopic, device_topic

    host, port = url.split("//", 1)[1].rsplit(":", 1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-backlog")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, int(port))
    client.loop_start()
    info = None
    for d, payload in payloads:
        info = client.publish(device_topic(d, DeviceTopic.TELEMETRY), payload, qos=1)
    if info is not None:
        info.wait_for_publish(300)
    client.loop_stop()
    client.disconnect()


def _mqtt_backlog(root: Path, payloads: list[tuple[str, bytes]]) -> dict[str, Any]:
    from edgefleet.simulations.brokers import MosquittoProcess
    from edgefleet.simulations.fleet import wait_until

    n = len(payloads)
    with MosquittoProcess(workdir=root / "mosquitto-backlog",
                          extra_config=f"max_queued_messages {n + 1000}") as broker:
        ctl = _controller(root / "backlog", broker.url)
        ctl.start()  # its persistent session subscribes…
        ctl.stop()  # …and keeps collecting while it is away
        _publish_backlog(broker.url, payloads)
        ctl = _controller(root / "backlog", broker.url)
        start = time.perf_counter()
        ctl.start()
        try:
            wait_until(lambda: ctl.counters["summaries_stored"] >= n, 600, 0.005)
            ctl.ingestor.flush(60)  # and acked
            elapsed = time.perf_counter() - start
            counters = dict(ctl.counters)
        finally:
            ctl.stop()
    return _figures(n, elapsed, counters)


def _figures(n: int, elapsed: float, counters: dict[str, int]) -> dict[str, Any]:
    stored, batches = counters["summaries_stored"], max(1, counters["ingest_batches"])
    return {"per_s": round(n / elapsed), "elapsed_s": round(elapsed, 2), "stored": stored,
            "batches": counters["ingest_batches"], "mean_batch": round(stored / batches, 1),
            "queue_full": counters["summaries_queue_full"]}


def _in_process(root: Path, payloads: list[tuple[str, bytes]]) -> tuple[dict[str, Any],
                                                                          list[dict[str, Any]]]:
    from edgefleet.contract import ManualClock, Summary
    from edgefleet.controller._ingestor import Ingestor
    from edgefleet.controller._telemetry_store import summary_row
    from edgefleet.controller.store import Store

    store = Store(f"sqlite:///{root / 'in-process.db'}")
    ingest = Ingestor(store.telemetry, lambda _d, _s: None, clock=ManualClock(1.8e9),
                      counters={})
    start = time.perf_counter()
    for i in range(0, len(payloads), BATCH):
        ingest.process([(d, p, 1.8e9) for d, p in payloads[i:i + BATCH]])
    elapsed = time.perf_counter() - start
    rows = [summary_row(d, Summary.decode(p), 1.8e9) for d, p in payloads]
    return {"per_s": round(len(payloads) / elapsed), "elapsed_s": round(elapsed, 2)}, rows


def _baseline(root: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    import sqlalchemy as sa

    from edgefleet.controller._tables import meta, telemetry

    path = root / "baseline.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    meta.create_all(engine, tables=[telemetry])  # the same table and indexes
    engine.dispose()
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    cols = [c.name for c in telemetry.columns]
    is_json = {c.name for c in telemetry.columns if isinstance(c.type, sa.JSON)}
    sql = f"INSERT INTO telemetry ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    start = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        db.executemany(sql, [tuple(json.dumps(r[c]) if c in is_json and r[c] is not None
                                   else r[c] for c in cols) for r in rows[i:i + BATCH]])
        db.commit()
    elapsed = time.perf_counter() - start
    db.close()
    return {"per_s": round(len(rows) / elapsed), "elapsed_s": round(elapsed, 2)}


def _why(name: str, row: dict[str, Any], in_process: dict[str, Any],
         baseline: dict[str, Any]) -> str:
    parts = [f"the same controller code without MQTT stores {in_process['per_s']:,}/s and raw "
             f"SQLite inserts {baseline['per_s']:,}/s here"]
    if name == "sustained":
        cpu = row.get("cpu_percent", {})
        if cpu:
            parts.insert(0, "CPU (100% = one core): " + ", ".join(
                f"{k} {v}%" for k, v in cpu.items()) + f" of {os.cpu_count()} cores, load "
                f"average {row['load_avg_1m']:.1f}")
        lost = {k: row[k] for k in ("missing", "streams_with_gaps", "store_lost",
                                    "duplicates", "queue_full", "ingest_failed") if row[k]}
        if lost:
            parts.insert(0, "NOT all stored once: " + ", ".join(
                f"{k} {v:,}" for k, v in lost.items()))
        if row["published_s"] + 1 < row["duration_s"] + row["warmup_s"]:
            parts.insert(0, f"published for {row['published_s']} s of "
                            f"{row['warmup_s'] + row['duration_s']} s")
    return "; ".join(parts)


def run(size: str = "full", duration: float | None = None,
        progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Measure ingest at ``size`` (see ``SIZES``, ``DURATIONS``): rows ``ingest`` (draining a
    backlog) and ``ingest_sustained`` (``duration`` seconds of a publishing fleet).

    Raises:
        ValueError: an unknown size or a duration ≤ 0.
    """
    from . import make_result

    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    duration = DURATIONS[size] if duration is None else float(duration)
    if duration <= 0:
        raise ValueError("duration must be > 0")
    n, devices = SIZES[size]
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-ingest-") as tmp:
        root = Path(tmp)
        for sub in ("backlog", "sustained/controller"):
            (root / sub).mkdir(parents=True)
        payloads = _payloads(n, devices)
        in_process, rows = _in_process(root, payloads)
        baseline = _baseline(root, rows)
        backlog = _mqtt_backlog(root, payloads)
        if progress is not None:
            progress(f"  ingest backlog: {backlog['per_s']:,} summaries/s; now {duration:g} s "
                     f"of a {devices}-device fleet publishing")
        held = sustained(root / "sustained", devices, duration, _controller, progress)
    base = baseline["per_s"]
    common: dict[str, Any] = {
        "size": size, "devices": devices, "cpus": os.cpu_count(),
        "baseline_is": "raw batched sqlite3 inserts of the same rows (same table, indexes)",
        "payload_bytes": round(sum(len(p) for _d, p in payloads) / n),
        "in_process": in_process, "baseline_sqlite": baseline}
    figure = backlog["per_s"]
    rate = held["min_window_per_s"]
    intact = held["sent"] == held["stored"] == held["distinct_stored"] == held["acked"] and not (
        held["streams_with_gaps"] or held["store_lost"] or held["missing"])
    rates = ", ".join(f"{r:,}" for r in held["window_rates"])
    return [
        make_result(
            "ingest", figure=figure, unit="summaries/s", baseline=base,
            ratio=round(figure / base, 4), target=f">= {TARGET_PER_S:,} summaries/s",
            passed=figure >= TARGET_PER_S, target_value=TARGET_PER_S, target_op=">=",
            why=_why("backlog", backlog, in_process, baseline), summaries=n,
            mqtt_backlog=backlog, **common),
        make_result(
            "ingest_sustained", figure=rate, unit="summaries/s", baseline=base,
            ratio=round(rate / base, 4),
            target=f">= {TARGET_PER_S:,}/s for {duration:g} s, none lost",
            passed=(rate >= TARGET_PER_S and intact
                    and held["published_s"] + 1 >= duration + held["warmup_s"]),
            target_value=TARGET_PER_S, target_op=">=",
            why=_why("sustained", held, in_process, baseline), sustained=held,
            notes=[f"per {held['window_s']:g} s: {rates} (min {rate:,}, mean "
                   f"{held['mean_per_s']:,}); sent {held['sent']:,}, stored "
                   f"{held['stored']:,} ({held['distinct_stored']:,} distinct), missing "
                   f"{held['missing']:,}, streams with gaps {held['streams_with_gaps']:,}"],
            **common),
    ]
