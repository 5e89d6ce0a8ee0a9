"""Parsing of the CLI's human units: durations (``120s``, ``10m``, ``1h``) and percentages."""

from __future__ import annotations

import re

__all__ = ["parse_duration", "parse_fraction", "parse_percent", "parse_waves"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``"120s"``, ``"10m"``, ``"1.5h"``, ``"30"`` (seconds) → seconds.

    Raises:
        ValueError: not a duration.
    """
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 10m, 1h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_percent(text: str) -> float:
    """``"20%"`` or ``"20"`` → 20.0 (a percentage).

    Raises:
        ValueError: not a number within 0..100.
    """
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise ValueError(f"not a percentage: {text!r}") from None
    if not 0 <= value <= 100:
        raise ValueError(f"percentage out of range: {text!r}")
    return value


def parse_fraction(text: str) -> float:
    """``"2%"`` → 0.02; ``"0.02"`` → 0.02 (a bare number is already a fraction).

    Raises:
        ValueError: not a percentage or a fraction within 0..1.
    """
    if text.strip().endswith("%"):
        return parse_percent(text) / 100.0
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a fraction or percentage: {text!r}") from None
    if not 0 <= value <= 1:
        raise ValueError(f"{text!r}: give a fraction (0..1) or a percentage like 2%")
    return value


def parse_waves(text: str) -> list[float]:
    """``"5%,25%,100%"`` → ``[5.0, 25.0, 100.0]``.

    Raises:
        ValueError: not increasing percentages ending at 100.
    """
    waves = [parse_percent(p) for p in text.split(",") if p.strip()]
    if not waves or waves[-1] != 100 or waves != sorted(set(waves)) or waves[0] <= 0:
        raise ValueError(f"waves must be increasing percentages ending at 100%, got {text!r}")
    return waves
