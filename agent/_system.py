"""System metrics for telemetry summaries, read with psutil when a window closes.

``cpu_percent`` (since the previous reading), ``rss_bytes`` and ``mem_percent`` of
the agent, ``disk_free_bytes`` of the state directory's file system and, where the
hardware reports one, ``temperature_c`` (a Raspberry Pi's ``cpu_thermal``, x86
``coretemp``…); absent otherwise rather than a made-up 0.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

__all__ = ["SystemMetrics", "pick_temperature"]

# sensor chips naming the SoC/CPU temperature, most specific first
PREFERRED_SENSORS = ("cpu_thermal", "soc_thermal", "coretemp", "k10temp", "cpu-thermal",
                     "thermal-fan-est", "acpitz")


def pick_temperature(readings: Mapping[str, Sequence[Any]]) -> float | None:
    """The CPU temperature in °C from ``psutil.sensors_temperatures()``-shaped readings.

    The first preferred chip with a reading wins (its hottest sensor); else the hottest
    sensor of any chip; ``None`` when nothing reports a plausible value.
    """
    def hottest(entries: Sequence[Any]) -> float | None:
        values = [float(e.current) for e in entries
                  if getattr(e, "current", None) is not None and -40.0 < e.current < 150.0]
        return max(values) if values else None

    for name in PREFERRED_SENSORS:
        if name in readings and (t := hottest(readings[name])) is not None:
            return round(t, 1)
    found = [t for entries in readings.values() if (t := hottest(entries)) is not None]
    return round(max(found), 1) if found else None


class SystemMetrics:
    """Callable returning the agent's system metrics (for ``TelemetryBuffer``).

    Args:
        state_dir: whose file system's free space to report.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._proc = psutil.Process()

    def __call__(self) -> dict[str, float]:
        mem = self._proc.memory_info()
        out = {"cpu_percent": psutil.cpu_percent(None), "rss_bytes": float(mem.rss),
               "mem_percent": psutil.virtual_memory().percent}
        with contextlib.suppress(OSError):
            out["disk_free_bytes"] = float(shutil.disk_usage(self.state_dir).free)
        sensors = getattr(psutil, "sensors_temperatures", None)  # Linux/FreeBSD only
        if sensors is not None:
            try:
                temperature = pick_temperature(sensors())
            except (OSError, RuntimeError):
                temperature = None
            if temperature is not None:
                out["temperature_c"] = temperature
        return out
