"""The telemetry store's byte cap, as pure decisions: budget, eviction plan, capacity.

Nothing here touches SQLite or the disk; ``agent.telemetry`` measures the store and
applies what these functions decide, so the policy gets fast, exhaustive tests.

What the cap bounds (see docs/telemetry.md): the bytes on disk of the database file,
its write-ahead log and the WAL index (``-shm``) together. ``Budget`` splits the cap:

- ``wal_bytes``: the WAL is checkpointed (TRUNCATE) as soon as it is larger;
- ``shm_bytes``: the WAL index, 32 KiB for any WAL below 16 MiB;
- ``txn_reserve_bytes``: room for the WAL frames of one transaction in flight (one
  writer batch or one group of summaries), so even a process killed mid-transaction
  leaves at most the cap on disk;
- ``main_bytes``: the rest, for the database pages.

Eviction order: raw inference rows (oldest first) → acknowledged summaries (already
delivered, so removing them loses nothing) → unacknowledged summaries (oldest first,
a loss: counted and reported). Incoming raw rows never push a summary out: when the
store is full of unsent summaries, new raw rows are not stored (and counted as
evicted raw rows) instead.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = [
    "MIN_BUFFER_BYTES",
    "RAW_ROW_DISK_BYTES",
    "SUMMARY_DISK_BYTES",
    "Budget",
    "Eviction",
    "StoreState",
    "offline_hours",
    "plan_eviction",
    "raw_row_bytes",
    "summary_disk_bytes",
]

MIN_BUFFER_BYTES = 256 * 1024
SHM_BYTES = 32 * 1024
WAL_FRAME_HEADER = 24
# pages a writer transaction touches besides the new rows' leaves: interior pages, the
# open-window state, meta, sqlite_sequence, pointer map and freelist trunk pages
FIXED_TXN_PAGES = 16
# the schema's own pages (tables, indexes, pointer map) in an empty store
SCHEMA_PAGES = 12
# Measured on-disk sizes, B-tree overhead included (docs/telemetry.md; the capacity
# tests check they still hold): a raw row (timestamp, a 6-character model name,
# version, latency, ok, a 1-character label, error kind) and a stored summary of a
# 60 s window (zlib-compressed JSON: latency sketch, 10 classes, drift, input
# statistics, system metrics) by inference rate: the sketch grows with the rate.
RAW_ROW_DISK_BYTES = 42
SUMMARY_DISK_BYTES = {1.0: 700, 10.0: 900, 100.0: 1300}


@dataclasses.dataclass(frozen=True)
class Budget:
    """How a byte cap is split between database pages, WAL and reserves.

    Raises:
        ValueError: a cap below ``MIN_BUFFER_BYTES`` or a page size that is not a power of 2.
    """

    cap_bytes: int
    page_size: int = 4096

    def __post_init__(self) -> None:
        if self.cap_bytes < MIN_BUFFER_BYTES:
            raise ValueError(f"the telemetry buffer cap must be ≥ {MIN_BUFFER_BYTES} bytes")
        if self.page_size < 512 or self.page_size & (self.page_size - 1):
            raise ValueError("page_size must be a power of 2, ≥ 512")

    @property
    def frame_bytes(self) -> int:
        return self.page_size + WAL_FRAME_HEADER

    @property
    def max_batch_rows(self) -> int:
        """Raw rows per writer transaction: small caps take smaller bites."""
        return max(64, min(4096, self.cap_bytes // 1024))

    @property
    def wal_bytes(self) -> int:
        return max(8 * self.frame_bytes, min(1024 * 1024, self.cap_bytes // 32))

    @property
    def shm_bytes(self) -> int:
        return SHM_BYTES

    @property
    def txn_reserve_bytes(self) -> int:
        rows_pages = math.ceil(self.max_batch_rows * RAW_ROW_DISK_BYTES * 1.5 / self.page_size)
        return (rows_pages + FIXED_TXN_PAGES) * self.frame_bytes

    @property
    def main_bytes(self) -> int:
        """The most the database file may hold (whole pages)."""
        room = self.cap_bytes - self.wal_bytes - self.shm_bytes - self.txn_reserve_bytes
        return max(room // self.page_size, SCHEMA_PAGES + 4) * self.page_size

    @property
    def slack_bytes(self) -> int:
        """Extra room made when raw rows are evicted, so eviction runs in chunks."""
        return max(self.page_size * 4, self.main_bytes // 64)


@dataclasses.dataclass(frozen=True)
class StoreState:
    """What the store holds now, as the eviction planner needs it.

    ``raw_row_bytes`` and ``summary_bytes`` are estimates of the on-disk bytes per
    row; the caller measures again after applying a plan and plans again if needed.
    """

    used_bytes: int
    raw_rows: int
    acked: int
    unacked: int
    raw_row_bytes: float = RAW_ROW_DISK_BYTES
    summary_bytes: float = 1024.0


@dataclasses.dataclass(frozen=True)
class Eviction:
    """Rows to delete, oldest first, and incoming raw rows not to store."""

    raw: int = 0
    acked: int = 0
    unacked: int = 0
    skip_raw: int = 0

    def __bool__(self) -> bool:
        return bool(self.raw or self.acked or self.unacked or self.skip_raw)


def plan_eviction(state: StoreState, *, target_bytes: int, incoming_bytes: int = 0,
                  incoming_raw_rows: int = 0, slack_bytes: int = 0, raw_headroom_bytes: int = 0,
                  max_raw_rows: int = 0) -> Eviction:
    """What to evict so that ``used + incoming ≤ target`` (if the store can hold it at all).

    Args:
        state: the store now.
        target_bytes: the most the database pages may hold.
        incoming_bytes: what the next write adds (its raw rows included).
        incoming_raw_rows: how many of the incoming bytes are raw rows (they may be
            skipped rather than push a summary out).
        slack_bytes: free this much more when raw rows have to go anyway, so that
            eviction runs in chunks rather than on every write.
        raw_headroom_bytes: raw rows leave this much of the target free, so the next
            summaries fit without evicting anything.
        max_raw_rows: a row-count limit on raw rows as well (0: none).
    """
    rb = max(state.raw_row_bytes, 1.0)
    sb = max(state.summary_bytes, 1.0)
    need = state.used_bytes + incoming_bytes - target_bytes
    raw_need = need + (raw_headroom_bytes if incoming_raw_rows else 0)
    raw = skip = 0
    if raw_need > 0:
        raw = min(state.raw_rows, math.ceil((raw_need + slack_bytes) / rb))
    if max_raw_rows > 0:
        skip = max(0, incoming_raw_rows - max_raw_rows)
        over = state.raw_rows - raw + incoming_raw_rows - skip - max_raw_rows
        raw = min(state.raw_rows, raw + max(0, over))
    left = raw_need - (raw + skip) * rb
    if left > 0 and incoming_raw_rows > skip:
        skip += min(incoming_raw_rows - skip, math.ceil(left / rb))
    rest = need - (raw + skip) * rb
    acked = unacked = 0
    if rest > 0:
        acked = min(state.acked, math.ceil(rest / sb))
        rest -= acked * sb
    if rest > 0:
        unacked = min(state.unacked, math.ceil(rest / sb))
    return Eviction(raw=raw, acked=acked, unacked=unacked, skip_raw=skip)


def summary_disk_bytes(rate_per_s: float) -> int:
    """The measured bytes of a stored summary at the next measured rate up."""
    for rate, size in sorted(SUMMARY_DISK_BYTES.items()):
        if rate_per_s <= rate:
            return size
    return max(SUMMARY_DISK_BYTES.values())


def raw_row_bytes(model: str, top: str | None, kind: str | None) -> float:
    """Estimated on-disk bytes of one raw row (record header, rowid, cell pointer, fill)."""
    return (34 + len(model) + len(top or "") + len(kind or "")) * 1.15


def offline_hours(cap_bytes: int, rate_per_s: float, *, window_s: float = 60.0,
                  raw_row_bytes: float = RAW_ROW_DISK_BYTES,
                  summary_bytes: float | None = None) -> dict[str, float]:
    """How long a device can stay offline before the store loses a summary.

    Returns:
        ``summaries_h``: hours of summaries kept (raw rows are evicted first, so this
        is what an offline device hands over when it reconnects); ``raw_h``: hours of
        raw rows kept beside them when the store first fills up (the raw history then
        shrinks as unsent summaries take its room, to nothing at ``summaries_h``).
    """
    budget = Budget(cap_bytes)
    size = summary_bytes if summary_bytes is not None else summary_disk_bytes(rate_per_s)
    usable = budget.main_bytes - SCHEMA_PAGES * budget.page_size
    summaries_per_h = 3600.0 / window_s * size
    raw_per_h = 3600.0 * rate_per_s * raw_row_bytes
    return {"summaries_h": usable / summaries_per_h,
            "raw_h": usable / (raw_per_h + summaries_per_h)}
