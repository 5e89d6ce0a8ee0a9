"""Sustained ingest: a fleet publishing for ``duration`` seconds into a real controller.

A publisher process (one paho client, QoS 1) plays ``devices`` agents: it keeps at most
``WINDOW`` summaries unacked, as agents do (they resend what is not acked), so the rate
is what the controller commits and acks, not what the broker can queue. The controller
(``FleetController``, SQLite store) runs in this process, as in production, behind a
real Mosquitto. After a warm-up (``warmup_s``: 5 s, or a quarter of a short run; not
counted) every ``window_s`` the stored count gives that window's rate, for ``duration``
seconds; the figure is the slowest window. At the end the store is checked: every
summary sent is stored once, every device's stream numbered from 1 without a gap,
nothing counted lost, duplicate or refused.

CPU (psutil) of the controller, the publisher and Mosquitto over the run says where the
time went: on a 2-core machine the publisher and the broker take a share of the cores
the controller would use.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["WINDOW", "sustained"]

WINDOW = 4_000  # unacked summaries at most (the broker queues 10,000 for the controller)
SAMPLE_S = 0.25
DRAIN_S = 120.0


def _publisher(url: str, devices: int, duration_s: float, ready: Any, go: Any,
               results: Any) -> None:
    """Child process: publish like a fleet for ``duration_s``, then wait for the acks."""
    import paho.mqtt.client as mqtt

    from edgefleet.contract import Ack, DeviceTopic, device_topic, device_wildcard

    from ._summaries import summary_stream

    stream = summary_stream(devices)
    first = [next(stream)]  # the templates are encoded now, not on the clock
    topics: dict[str, str] = {}
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    acked = [0]
    lock = threading.Lock()
    publishing_done, drained = threading.Event(), threading.Event()
    sent = 0

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            acked[0] += len(Ack.decode(msg.payload).seqs)
            if publishing_done.is_set() and acked[0] >= sent:
                drained.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-fleet")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_message = on_message
    client.connect(host, int(port))
    client.subscribe(device_wildcard(DeviceTopic.TELEMETRY_ACK), qos=1)
    client.loop_start()
    ready.set()
    go.wait(60)
    start = time.perf_counter()
    end = start + duration_s
    while time.perf_counter() < end:
        while sent - acked[0] < WINDOW:
            device, payload = first.pop() if first else next(stream)
            topic = topics.get(device)
            if topic is None:
                topic = topics[device] = device_topic(device, DeviceTopic.TELEMETRY)
            client.publish(topic, payload, qos=1)
            sent += 1
        time.sleep(0.001)
    published_s = time.perf_counter() - start
    with lock:
        publishing_done.set()
        if acked[0] >= sent:
            drained.set()
    drained.wait(DRAIN_S)
    results.put({"sent": sent, "acked": acked[0], "published_s": published_s,
                 "drain_s": time.perf_counter() - start - published_s, "pid": os.getpid()})
    client.loop_stop()
    client.disconnect()


class _Sampler(threading.Thread):
    """Samples the controller's stored count; reports each finished window."""

    def __init__(self, counters: dict[str, int], window_s: float, warmup_s: float,
                 report: Callable[[int, float], None]) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.counters, self.window_s, self.report = counters, window_s, report
        self.warmup_s = warmup_s
        self.samples: list[tuple[float, int]] = []
        self.start_t = 0.0
        self.stop_event = threading.Event()

    def run(self) -> None:
        self.start_t = time.perf_counter() + self.warmup_s  # windows start after warm-up
        done = 0
        while not self.stop_event.wait(SAMPLE_S):
            now = time.perf_counter()
            self.samples.append((now, self.counters.get("summaries_stored", 0)))
            while now - self.start_t >= (done + 1) * self.window_s:
                done += 1
                rates = self.rates(done * self.window_s)
                if rates:
                    self.report(done, rates[-1])

    def rates(self, until_s: float) -> list[float]:
        """Stored per second in each whole window from the warm-up's end to ``until_s``."""
        import numpy as np

        if len(self.samples) < 2:
            return []
        ts = np.array([t - self.start_t for t, _ in self.samples])
        stored = np.array([s for _, s in self.samples], dtype=float)
        edges = np.arange(0.0, until_s + 1e-9, self.window_s)
        at = np.interp(edges, ts, stored, left=0.0)
        return [float(x) for x in np.diff(at) / self.window_s]


def _cpu_s(pid: int | None) -> float:
    import psutil

    if pid is None:
        return 0.0
    try:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def _check_store(db: Path) -> dict[str, int]:
    """Rows, distinct keys, streams with a gap or not starting at 1, lost per the store."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows, distinct = con.execute(
            "SELECT COUNT(*), COUNT(DISTINCT device || '/' || stream || '/' || seq) "
            "FROM telemetry").fetchone()
        gaps = con.execute(
            "SELECT COUNT(*) FROM (SELECT COUNT(*) AS n, MIN(seq) AS lo, MAX(seq) AS hi "
            "FROM telemetry GROUP BY device, stream) WHERE lo != 1 OR hi - lo + 1 != n"
        ).fetchone()[0]
        lost = con.execute("SELECT COALESCE(SUM(lost), 0) FROM telemetry_streams").fetchone()[0]
    finally:
        con.close()
    return {"rows": rows, "distinct": distinct, "streams_with_gaps": gaps, "lost": lost}


def sustained(root: Path, devices: int, duration_s: float,
              controller: Callable[[Path, str], Any],
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the sustained ingest for ``duration_s``; figures, windows, checks and CPU.

    Args:
        root: an empty folder for the broker's and the controller's files.
        devices: agents the publisher plays.
        duration_s: how long the fleet publishes.
        controller: makes a ``FleetController`` from ``(folder, broker url)``.
        progress: told each window's rate as it finishes.

    Raises:
        RuntimeError: the publisher did not start or report.
    """
    from edgefleet.simulations.brokers import MosquittoProcess
    from edgefleet.simulations.fleet import wait_until

    window_s = 30.0 if duration_s >= 150 else max(1.0, duration_s / 5)
    warmup_s = min(5.0, duration_s / 4)
    ctx = mp.get_context("spawn")

    def say(i: int, rate: float) -> None:
        if progress is not None:
            progress(f"  ingest sustained: {i * window_s:5.0f} s  {rate:,.0f} summaries/s")

    with MosquittoProcess(workdir=root / "mosquitto") as broker:
        ctl = controller(root / "controller", broker.url)
        ctl.start()
        ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=_publisher, daemon=True,
                           args=(broker.url, devices, warmup_s + duration_s, ready, go, results))
        try:
            proc.start()
            if not ready.wait(120):
                raise RuntimeError("the publisher process did not connect")
            sampler = _Sampler(ctl.counters, window_s, warmup_s, say)
            pids = {"controller": os.getpid(), "publisher": proc.pid,
                    "mosquitto": broker.pid}
            cpu0 = {k: _cpu_s(p) for k, p in pids.items()}
            sampler.start()
            go.set()
            out = results.get(timeout=warmup_s + duration_s + DRAIN_S + 120)
            cpu = {k: _cpu_s(p) - cpu0[k] for k, p in pids.items()}
            with contextlib.suppress(TimeoutError):  # acked means committed: quick
                wait_until(lambda: ctl.counters["summaries_stored"] >= out["sent"], 10, 0.05)
            ctl.ingestor.flush(60)
            sampler.stop_event.set()
            sampler.join(5)
            proc.join(30)
            counters = dict(ctl.counters)
        finally:
            if proc.is_alive():  # interrupted: the fleet stops with the benchmark
                proc.terminate()
                proc.join(10)
            ctl.stop()
    check = _check_store(root / "controller" / "ctl.db")
    windows = sampler.rates(min(duration_s, out["published_s"] - warmup_s))
    wall = out["published_s"] + out["drain_s"]
    lost = out["sent"] - check["rows"]
    return {
        "duration_s": duration_s, "warmup_s": warmup_s, "window_s": window_s,
        "devices": devices, "window": WINDOW,
        "sent": out["sent"], "acked": out["acked"], "stored": check["rows"],
        "distinct_stored": check["distinct"], "missing": max(0, lost),
        "streams_with_gaps": check["streams_with_gaps"], "store_lost": check["lost"],
        "duplicates": counters.get("summaries_duplicate", 0),
        "queue_full": counters.get("summaries_queue_full", 0),
        "ingest_failed": counters.get("ingest_failed", 0),
        "malformed": counters.get("malformed", 0),
        "mean_per_s": round(check["rows"] / wall) if wall else 0,
        "window_rates": [round(r) for r in windows],
        "min_window_per_s": round(min(windows)) if windows else 0,
        "published_s": round(out["published_s"], 2), "drain_s": round(out["drain_s"], 2),
        "cpu_percent": {k: round(100 * v / wall) for k, v in cpu.items()} if wall else {},
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
