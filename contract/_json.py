"""JSON for the hot paths: orjson when it is installed (the controller), else the stdlib.

Both refuse what is not standard JSON: ``NaN``/``Infinity`` tokens and numbers that
overflow a double (``1e999``). orjson parses a summary about five times faster and
writes one about ten times faster than the stdlib; a device (the ``agent`` extra) does
without it.
"""

from __future__ import annotations

import json
import math
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    orjson = None  # type: ignore[assignment]  # then the stdlib's json does the work

__all__ = ["dumps", "loads"]


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a double")
    return value


_STRICT = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def loads(payload: bytes | str) -> Any:
    """Parse standard JSON.

    Raises:
        ValueError: not JSON, not UTF-8, a non-finite number, nesting too deep for the
            parser.
    """
    if orjson is not None:
        return orjson.loads(payload)  # refuses nesting deeper than 1024 itself
    text = payload.decode() if isinstance(payload, bytes | bytearray) else payload
    try:
        return _STRICT.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Compact standard JSON text; a non-finite number is written as ``null``."""
    if orjson is not None:
        try:
            return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # a type orjson does not take (numpy scalars): the stdlib's
            pass
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), separators=(",", ":"), allow_nan=False)
