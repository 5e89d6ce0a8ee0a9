"""Run registered benchmarks in one process, print a table, save the results as JSON."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "render", "run_benchmarks"]


def run_benchmarks(names: Sequence[str], size: str = "full", *,
                   progress: Any = None) -> list[dict[str, Any]]:
    """Run each named benchmark module at ``size`` (or its largest size below it).

    A benchmark that raises is reported with its ``error``; the others still run.
    """
    results = []
    for name in names:
        if progress is not None:
            progress(f"running {name} ({size})…")
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"{__package__}.{name}")
            sizes = list(getattr(module, "SIZES", [size]))
            result = dict(module.run(size if size in sizes else sizes[-1]))
        except Exception as exc:  # a failing benchmark must not hide the others
            result = {"benchmark": name, "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc(limit=5)}
        result.setdefault("benchmark", name)
        result["module"] = name
        result["elapsed_s"] = round(time.perf_counter() - start, 2)
        results.append(result)
    return results


def _num(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def render(results: Sequence[dict[str, Any]]) -> str:
    """A plain text table: name, figure, baseline, ratio, target, pass/miss."""
    head = ("benchmark", "figure", "baseline", "ratio", "target", "result")
    rows = []
    for r in results:
        unit = r.get("unit", "")
        verdict = ("error: " + r["error"][:60]) if "error" in r else (
            "pass" if r.get("passed") else "MISS" if "passed" in r else "-")
        rows.append((str(r.get("benchmark", r.get("module", "?"))),
                     f"{_num(r.get('figure'))} {unit}".strip(),
                     f"{_num(r.get('baseline'))} {unit}".strip(), _num(r.get("ratio")),
                     str(r.get("target", "-")), verdict))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*head), line.format(*("-" * w for w in widths))]
    out += [line.format(*row) for row in rows]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgefleet.simulations.bench``; returns 0, or 1 if a benchmark errored."""
    from . import BENCHMARKS

    parser = argparse.ArgumentParser(prog="python -m edgefleet.simulations.bench",
                                     description="Run edgefleet's benchmarks.")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--size", default="full", help="tiny, small, medium, large or full")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"),
                        help="where to save the results (JSON; default %(default)s)")
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    progress = None if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    results = run_benchmarks(names, args.size, progress=progress)
    report = {"generated_at": time.time(), "size": args.size, "python": platform.python_version(),
              "machine": platform.machine(), "cpus": os.cpu_count(), "results": results}
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(results))
        print(f"\nresults saved to {args.out}")
    return 1 if any("error" in r for r in results) else 0
