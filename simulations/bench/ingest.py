"""Controller ingest benchmark: summaries per second through the real path.

What is measured (``run(size)``), with ``devices`` device ids each numbering its own
stream and realistic summaries (sketch, drift, inputs, buffer: ~1.3 KB):

* ``mqtt_backlog`` (the figure; ``baseline`` is the raw SQLite one below): the fleet's
  summaries wait in a real Mosquitto (a controller restart, a fleet reconnecting after
  an outage); a real ``FleetController`` then drains them — decode on paho's thread,
  batched SQLite inserts (WAL) by its ingest worker, one QoS 1 ack per device and
  batch. Timed from ``start()`` until every summary is stored and acked.
* ``mqtt_closed_loop``: a publisher process plays the fleet at the same time, keeping
  at most ``WINDOW`` summaries unacked as agents do; acked (= committed) per second.
  The publisher (Python paho) shares the same 2 cores, so this is a lower bound.
* ``in_process``: the same controller code without the network — ``Summary.decode``
  and ``Ingestor.process`` in batches — to show what MQTT costs.
* ``baseline``: raw batched ``sqlite3`` inserts of the very same rows (same table and
  indexes, JSON columns encoded, ``executemany`` per batch): the storage ceiling.

Target: ≥ 5,000 summaries/s on a 2-core machine.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["SIZES", "run"]

SIZES = {"tiny": (1_000, 20), "small": (5_000, 50), "medium": (20_000, 200),
         "large": (50_000, 500), "full": (30_000, 300)}  # summaries, devices
TARGET_PER_S = 5_000
WINDOW = 4_000  # unacked summaries at most (the broker queues 10,000 for the controller)
BATCH = 2_000


def _payloads(n: int, devices: int, seed: int = 1) -> list[tuple[str, bytes]]:
    """``n`` summaries round-robin over ``devices``, each device counting from 1."""
    import random

    from edgefleet.contract import DDSketch, Summary

    rnd = random.Random(seed)
    sketches = [DDSketch().extend(rnd.lognormvariate(0.0, 0.5) for _ in range(200)).to_dict()
                for _ in range(16)]
    out = []
    for i in range(n):
        d, seq = i % devices, i // devices + 1
        start = 1_700_000_000.0 + 60.0 * seq
        s = Summary(
            seq=seq, window_start=start, window_end=start + 60.0, count=200, errors=i % 3,
            model="digits", version=2,
            latency_ms={"p50": 1.0, "p95": 2.1, "p99": 3.4, "max": 5.0},
            predictions={str(k): 20 for k in range(10)},
            system={"cpu_percent": 12.0, "rss_bytes": 8.1e7, "mem_percent": 31.0},
            stream=f"stream-{d:05d}", latency_sketch=sketches[i % len(sketches)],
            errors_by_kind={"model": i % 3} if i % 3 else {},
            inputs={"samples": 200, "mean": 0.1, "std": 1.0, "out_of_range": 0,
                    "non_finite": 0},
            drift={"samples": 200, "psi_max": 0.31, "psi_mean": 0.04,
                   "top": {"12": 0.31, "40": 0.2, "3": 0.1}, "psi_predictions": 0.02},
            buffer={"bytes": 120_000, "cap_bytes": 50_000_000, "evicted_raw": 0,
                    "evicted_summaries": 0, "dropped": 0})
        out.append((f"bench-{d:05d}", s.encode()))
    return out


def _publisher(url: str, n: int, devices: int, ready: Any, results: Any) -> None:
    """Child process: publish like a fleet, count acks, report timings."""
    import threading

    import paho.mqtt.client as mqtt

    from edgefleet.contract import Ack, DeviceTopic, device_topic, device_wildcard

    payloads = _payloads(n, devices)
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    acked = [0]
    done = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        acked[0] += len(Ack.decode(msg.payload).seqs)
        if acked[0] >= n:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_message = on_message
    client.connect(host, int(port))
    client.subscribe(device_wildcard(DeviceTopic.TELEMETRY_ACK), qos=1)
    client.loop_start()
    topics = [device_topic(d, DeviceTopic.TELEMETRY) for d, _p in payloads]
    ready.set()
    start = time.perf_counter()
    sent = 0
    while not done.is_set():
        while sent < n and sent - acked[0] < WINDOW:
            client.publish(topics[sent], payloads[sent][1], qos=1)
            sent += 1
        done.wait(0.001)
        if time.perf_counter() - start > 600:
            break
    elapsed = time.perf_counter() - start
    client.loop_stop()
    client.disconnect()
    results.put({"acked": acked[0], "sent": sent, "elapsed_s": elapsed})


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


def _mqtt_closed_loop(root: Path, n: int, devices: int) -> dict[str, Any]:
    from edgefleet.simulations.brokers import MosquittoProcess

    ctx = mp.get_context("spawn")
    with MosquittoProcess(workdir=root / "mosquitto-loop") as broker:
        ctl = _controller(root / "loop", broker.url)
        ctl.start()
        try:
            ready, results = ctx.Event(), ctx.Queue()
            proc = ctx.Process(target=_publisher, args=(broker.url, n, devices, ready, results))
            proc.start()
            ready.wait(120)
            out = results.get(timeout=900)
            proc.join(30)
            counters = dict(ctl.counters)
        finally:
            ctl.stop()
    return {**_figures(out["acked"], out["elapsed_s"], counters), "window": WINDOW}


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


def run(size: str = "full") -> dict[str, Any]:
    """Measure ingest at ``size`` (see ``SIZES``); returns the runner's result row.

    Raises:
        ValueError: an unknown size.
    """
    from . import make_result

    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    n, devices = SIZES[size]
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-ingest-") as tmp:
        root = Path(tmp)
        for sub in ("backlog", "loop"):
            (root / sub).mkdir()
        payloads = _payloads(n, devices)
        in_process, rows = _in_process(root, payloads)
        baseline = _baseline(root, rows)
        backlog = _mqtt_backlog(root, payloads)
        loop = _mqtt_closed_loop(root, n, devices)
    figure, base = backlog["per_s"], baseline["per_s"]
    return make_result(
        "ingest", figure=figure, unit="summaries/s", baseline=base,
        ratio=round(figure / base, 3),
        target=f">= {TARGET_PER_S:,} summaries/s",
        passed=figure >= TARGET_PER_S, size=size, summaries=n, devices=devices,
        cpus=os.cpu_count(),
        baseline_is="raw batched sqlite3 inserts of the same rows (same table, indexes)",
        payload_bytes=round(sum(len(p) for _d, p in payloads) / n),
        mqtt_backlog=backlog, mqtt_closed_loop=loop, in_process=in_process,
        baseline_sqlite=baseline)


if __name__ == "__main__":
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "small"), indent=2))
