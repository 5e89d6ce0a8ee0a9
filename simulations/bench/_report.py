"""The results as a table, each verdict with its margin, and the change since a previous run.

Pure functions over result rows (dicts from ``make_result``) and saved reports; the
runner does the files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["compare", "find_previous", "miss_pct", "render", "verdict"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value: Any) -> str:
    if not _number(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def miss_pct(row: dict[str, Any]) -> float | None:
    """How far the row's value falls short of its numeric target, in % of the target.

    ``None`` when the row has no numeric target; ≤ 0 when the target is met.
    """
    target, op = row.get("target_value"), row.get("target_op")
    value = row.get(row.get("target_of") or "figure")
    if not (_number(target) and _number(value)) or op not in (">=", "<=") or target == 0:
        return None
    t, v = float(target), float(value)  # type: ignore[arg-type]
    return 100.0 * ((t - v) if op == ">=" else (v - t)) / abs(t)


def verdict(row: dict[str, Any]) -> str:
    """``pass``, ``missed by X%``, ``MISS`` (met the number but not the rest), ``error: …``,
    ``skipped: …`` or ``-`` (no target)."""
    if "error" in row:
        return "error: " + str(row["error"])[:70]
    if row.get("skipped"):
        return "skipped: " + str(row["skipped"])
    if row.get("passed") is None:
        return "-"
    if row["passed"]:
        return "pass"
    pct = miss_pct(row)
    return f"missed by {pct:.1f}%" if pct is not None and pct > 0 else "MISS"


def better_direction(row: dict[str, Any]) -> str | None:
    """``"higher"`` or ``"lower"`` (from the target's direction), or ``None``."""
    return {">=": "higher", "<=": "lower"}.get(str(row.get("target_op") or ""))


def compare(results: Sequence[dict[str, Any]], previous: dict[str, Any]) -> None:
    """Add ``vs_previous`` to each row that has a figure in the ``previous`` report:
    the previous figure, ratio, the change of the figure in % and whether it is better."""
    before = {r.get("benchmark"): r for r in previous.get("results", [])
              if _number(r.get("figure"))}
    for row in results:
        old = before.get(row.get("benchmark"))
        if old is None or not _number(row.get("figure")):
            continue
        change = (100.0 * (row["figure"] - old["figure"]) / abs(old["figure"])
                  if old["figure"] else None)
        direction = better_direction(row)
        better = None
        if change is not None and direction is not None and change != 0:
            better = (change > 0) == (direction == "higher")
        row["vs_previous"] = {"figure": old["figure"], "ratio": old.get("ratio"),
                              "change_pct": None if change is None else round(change, 2),
                              "better": better}


def _change(row: dict[str, Any]) -> str:
    prev = row.get("vs_previous")
    if not prev or prev.get("change_pct") is None:
        return "-"
    text = f"{prev['change_pct']:+.1f}%"
    if prev.get("better") is not None:
        text += " (better)" if prev["better"] else " (worse)"
    return text


def render(results: Sequence[dict[str, Any]], *, previous: str | None = None) -> str:
    """A plain text table — benchmark, figure, baseline, ratio, target, verdict, vs
    previous — then, for each miss, by how much and why, and any row's notes."""
    head = ("benchmark", "figure", "baseline", "ratio", "target", "verdict", "vs previous")
    rows = []
    for r in results:
        unit = r.get("unit", "")
        has = "error" not in r and not r.get("skipped")
        rows.append((str(r.get("benchmark", r.get("module", "?"))),
                     f"{_num(r.get('figure'))} {unit}".strip() if has else "-",
                     f"{_num(r.get('baseline'))} {unit}".strip() if has else "-",
                     _num(r.get("ratio")), str(r.get("target", "-")), verdict(r), _change(r)))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*head), line.format(*("-" * w for w in widths))]
    out += [line.format(*row).rstrip() for row in rows]
    misses = [r for r in results if r.get("passed") is False and "error" not in r]
    if misses:
        out.append("")
        for r in misses:
            pct = miss_pct(r)
            value = r.get(r.get("target_of") or "figure")
            how = (f"missed by {pct:.1f}% ({r.get('target_of')} {_num(value)} vs target "
                   f"{r.get('target')})" if pct is not None and pct > 0
                   else f"missed ({r.get('target')})")
            out.append(f"{r['benchmark']}: {how}: {r.get('why') or 'no explanation recorded'}")
    notes = [(r["benchmark"], n) for r in results for n in r.get("notes", [])]
    if notes:
        out.append("")
        out += [f"{name}: {note}" for name, note in notes]
    if previous:
        out.append(f"\nvs previous: {previous}")
    return "\n".join(out)


def find_previous(folder: Path, size: str) -> Path | None:
    """The newest saved report in ``folder`` of the same ``size`` (``latest.json`` aside)."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.json"), reverse=True):  # names start with a UTC stamp
        if path.name == "latest.json":
            continue
        try:
            if json.loads(path.read_text()).get("size") == size:
                return path
        except (OSError, ValueError):
            continue
    return None
