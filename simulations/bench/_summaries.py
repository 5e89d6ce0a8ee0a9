"""Realistic telemetry summaries for the ingest benchmarks, fast enough to play a fleet.

``Summary.encode`` takes about 0.3 ms for a summary with a sketch, drift and inputs:
too slow for one Python publisher to offer 5,000/s and still leave CPU for the
controller it measures. So each device's summary is encoded once per variant with
``Summary.encode`` and later summaries reuse those bytes with only the fields that
change per window — ``seq``, ``window_start``, ``window_end``, which the encoder writes
first — formatted in front. Every payload is thus exactly what ``Summary.encode`` would
write (checked on construction by decoding one per template); the controller decodes
and validates each one in full.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

__all__ = ["T0", "WINDOW_S", "device_id", "payloads", "summary_stream"]

T0 = 1_700_000_000.0
WINDOW_S = 60.0
_VARIANTS = 3  # errors 0, 1, 2 per window, round robin


def device_id(d: int) -> str:
    return f"bench-{d:05d}"


def _summary(d: int, seq: int, variant: int, sketch: dict[str, Any]) -> Any:
    from edgefleet.contract import Summary

    start = T0 + WINDOW_S * seq
    return Summary(
        seq=seq, window_start=start, window_end=start + WINDOW_S, count=200, errors=variant,
        model="digits", version=2,
        latency_ms={"p50": 1.0, "p95": 2.1, "p99": 3.4, "max": 5.0},
        predictions={str(k): 20 for k in range(10)},
        system={"cpu_percent": 12.0, "rss_bytes": 8.1e7, "mem_percent": 31.0},
        stream=f"stream-{d:05d}", latency_sketch=sketch,
        errors_by_kind={"model": variant} if variant else {},
        inputs={"samples": 200, "mean": 0.1, "std": 1.0, "out_of_range": 0, "non_finite": 0},
        drift={"samples": 200, "psi_max": 0.31, "psi_mean": 0.04,
               "top": {"12": 0.31, "40": 0.2, "3": 0.1}, "psi_predictions": 0.02},
        buffer={"bytes": 120_000, "cap_bytes": 50_000_000, "evicted_raw": 0,
                "evicted_summaries": 0, "dropped": 0})


def _head(seq: int) -> bytes:
    start = T0 + WINDOW_S * seq
    return f'{{"seq":{seq},"window_start":{start!r},"window_end":{start + WINDOW_S!r},'.encode()


def _templates(devices: int, seed: int) -> list[list[bytes]]:
    """Per device and variant: the encoded summary after its per-window fields."""
    from edgefleet.contract import DDSketch, Summary

    rnd = random.Random(seed)
    sketches = [DDSketch().extend(rnd.lognormvariate(0.0, 0.5) for _ in range(200)).to_dict()
                for _ in range(16)]
    out = []
    for d in range(devices):
        tails = []
        for v in range(_VARIANTS):
            encoded = _summary(d, 1, v, sketches[(d * _VARIANTS + v) % len(sketches)]).encode()
            head = _head(1)
            if not encoded.startswith(head):
                raise RuntimeError("Summary.encode no longer writes seq and the window first; "
                                   "update simulations/bench/_summaries.py")
            tail = encoded[len(head):]
            probe = Summary.decode(_head(7) + tail)
            if (probe.seq, probe.window_start, probe.errors) != (7, T0 + 7 * WINDOW_S, v):
                raise RuntimeError("a templated summary does not decode as encoded")
            tails.append(tail)
        out.append(tails)
    return out


def summary_stream(devices: int, seed: int = 1) -> Iterator[tuple[str, bytes]]:
    """Endless ``(device id, payload)``: round robin over ``devices``, each device's
    stream numbered from 1, one window after the other."""
    tails = _templates(devices, seed)
    ids = [device_id(d) for d in range(devices)]
    for i in itertools.count():
        d, seq = i % devices, i // devices + 1
        yield ids[d], _head(seq) + tails[d][i % _VARIANTS]


def payloads(n: int, devices: int, seed: int = 1) -> list[tuple[str, bytes]]:
    """The first ``n`` summaries of ``summary_stream``."""
    return list(itertools.islice(summary_stream(devices, seed), n))
