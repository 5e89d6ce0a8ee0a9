"""Telemetry buffer write rate vs raw batched SQLite inserts on the same machine.

Figure: records per second through the buffer as the agent drives it — ``record()``
(the inference path's non-blocking put of one tuple, with the copied input row for
drift) for a batch, then ``flush()``: raw rows, open-window accumulators (latency
sketch, counts) and drift bins committed in one transaction per batch, the byte cap
enforced. Baseline: ``executemany`` of the same rows into the same raw table (WAL,
``synchronous=NORMAL``), one transaction per batch of the same size: the storage
ceiling. Target: ≥ 100,000 records/s.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import make_result
from ._digits import eval_inputs, manifest

__all__ = ["SIZES", "run"]

SIZES = {"tiny": 5_000, "small": 50_000, "medium": 200_000, "large": 500_000,
         "full": 300_000}
TARGET_PER_S = 100_000
BATCH = 4_096
T0 = 1_700_000_040.0


def _records(n: int) -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(3)
    x = eval_inputs()
    rows = [x[j:j + 1].copy() for j in range(len(x))]
    lat = rng.lognormal(np.log(0.03), 0.25, n).tolist()
    top = rng.integers(0, 10, n).astype(str).tolist()
    return [(T0 + i * 0.1, "digits", 1, lat[i], True, top[i], None, rows[i % len(rows)])
            for i in range(n)]


def _buffer(root: Path, records: list[tuple[Any, ...]], drift: bool) -> float:
    from edgefleet.agent._windows import DriftSpec
    from edgefleet.agent.telemetry import TelemetryBuffer

    spec = DriftSpec.from_manifest(manifest()) if drift else None
    buf = TelemetryBuffer(root / f"buffer-{drift}.db", max_bytes=1 << 30, queue_max=BATCH,
                          window_s=60.0)
    try:
        buf.close_windows(T0)
        record = buf.record
        start = time.perf_counter()
        for i in range(0, len(records), BATCH):
            for ts, m, v, lat, ok, top, kind, x in records[i:i + BATCH]:
                record(ts, m, v, lat, ok, top, kind, spec.rows(x) if spec else None, spec)
            buf.flush()
        elapsed = time.perf_counter() - start
        assert buf.stats()["raw_rows"] == len(records), "the buffer lost records"
    finally:
        buf.stop()
    return len(records) / elapsed


def _baseline(root: Path, records: list[tuple[Any, ...]]) -> float:
    db = sqlite3.connect(root / "baseline.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE inferences (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT "
               "NULL, model TEXT NOT NULL, version INTEGER NOT NULL, latency_ms REAL NOT NULL, "
               "ok INTEGER NOT NULL, top TEXT, kind TEXT)")
    rows = [r[:7] for r in records]
    start = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        db.execute("BEGIN")
        db.executemany("INSERT INTO inferences(ts, model, version, latency_ms, ok, top, kind) "
                       "VALUES (?,?,?,?,?,?,?)", rows[i:i + BATCH])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return len(rows) / elapsed


def run(size: str = "full") -> dict[str, Any]:
    """Raises: ValueError for an unknown size."""
    if size not in SIZES:
        raise ValueError(f"size is one of {sorted(SIZES)}")
    n = SIZES[size]
    records = _records(n)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-buffer-") as tmp:
        root = Path(tmp)
        baseline = _baseline(root, records)
        with_drift = _buffer(root, records, drift=True)
        without_drift = _buffer(root, records, drift=False)
    return make_result(
        "buffer_write", figure=round(with_drift), unit="records/s", baseline=round(baseline),
        ratio=round(with_drift / baseline, 3), target=f">= {TARGET_PER_S:,} records/s",
        passed=with_drift >= TARGET_PER_S, target_value=TARGET_PER_S, target_op=">=",
        why=(f"without drift {without_drift:,.0f} records/s; raw inserts of the same rows "
             f"{baseline:,.0f}/s on this machine"), records=n, batch=BATCH,
        without_drift_per_s=round(without_drift),
        note="figure with drift on (input rows binned per batch); baseline: raw executemany")
