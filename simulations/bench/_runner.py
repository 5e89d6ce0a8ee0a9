"""Run registered benchmarks in one process, print a table, keep the results as JSON.

Each run is saved as ``<out>/<UTC stamp>-<size>.json`` and copied to
``<out>/latest.json``; it is compared with ``--compare FILE`` or else with the newest
earlier report of the same size in ``<out>``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgefleet.contract.files import atomic_write

from ._report import compare, find_previous, render

__all__ = ["main", "run_benchmarks", "save"]

QUICK_SIZE = "tiny"


def _call(module: Any, size: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    sizes = list(getattr(module, "SIZES", [size]))
    accepted = inspect.signature(module.run).parameters
    kwargs = {k: v for k, v in options.items() if v is not None and k in accepted}
    out = module.run(size if size in sizes else sizes[-1], **kwargs)
    return [dict(r) for r in (out if isinstance(out, list) else [out])]


def run_benchmarks(names: Sequence[str], size: str = "full", *,
                   progress: Callable[[str], None] | None = None,
                   duration: float | None = None) -> list[dict[str, Any]]:
    """Run each named benchmark module at ``size`` (or its largest size if it has no such
    size); returns their rows in order.

    A benchmark that raises gives one row with its ``error``; the others still run.
    ``duration`` and ``progress`` reach the modules whose ``run`` takes them.
    """
    results = []
    for name in names:
        if progress is not None:
            progress(f"running {name} ({size})…")
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"{__package__}.{name}")
            rows = _call(module, size, {"duration": duration, "progress": progress})
        except Exception as exc:  # a failing benchmark must not hide the others
            rows = [{"benchmark": name, "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc(limit=5)}]
        elapsed = round(time.perf_counter() - start, 2)
        for row in rows:
            row.setdefault("benchmark", name)
            row["module"] = name
            row["elapsed_s"] = elapsed
        results.extend(rows)
    return results


def save(report: dict[str, Any], folder: Path) -> Path:
    """Write ``report`` as ``folder/<UTC stamp>-<size>.json`` and ``folder/latest.json``.

    Raises:
        OSError: the folder cannot be created or written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(report["generated_at"]))
    path = folder / f"{stamp}-{report['size']}.json"
    n = 1
    while path.exists():  # two runs in one second
        n += 1
        path = folder / f"{stamp}.{n}-{report['size']}.json"
    text = json.dumps(report, indent=2, default=str) + "\n"
    atomic_write(path, text.encode())
    atomic_write(folder / "latest.json", text.encode())
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``edgefleet bench``; returns 0, or 1 if a benchmark errored.

    Raises:
        SystemExit: bad arguments (status 2, with the usage).
    """
    from . import BENCHMARKS

    parser = argparse.ArgumentParser(
        prog="edgefleet bench", description="Run edgefleet's benchmarks: each figure against a "
        "baseline measured in the same run, compared with the previous run.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this benchmark (repeatable; same as NAME)")
    parser.add_argument("--size", default="full", help="tiny, small, medium, large or full")
    parser.add_argument("--quick", action="store_true",
                        help=f"smallest sizes, for CI (same as --size {QUICK_SIZE})")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="sustained runs (ingest) last this long (default: by size)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="folder keeping every run's JSON and latest.json "
                             "(default %(default)s)")
    parser.add_argument("--compare", type=Path, default=None, metavar="FILE",
                        help="compare with this results JSON (default: the newest earlier "
                             "run of the same size in --out)")
    parser.add_argument("--no-compare", action="store_true", help="do not compare")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    names = [*args.names, *args.only] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(BENCHMARKS)}")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be > 0")
    if args.out.suffix == ".json":
        parser.error("--out is a folder (each run is saved in it, with latest.json)")
    size = QUICK_SIZE if args.quick else args.size
    previous_path = None if args.no_compare else (args.compare or find_previous(args.out, size))
    previous = None
    if previous_path is not None:
        try:
            previous = json.loads(previous_path.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"cannot read {previous_path}: {exc}")
    progress = None if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    load_before = os.getloadavg()[0]
    results = run_benchmarks(names, size, progress=progress, duration=args.duration)
    report: dict[str, Any] = {
        "generated_at": time.time(), "size": size, "duration_s": args.duration,
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_avg_1m": [round(load_before, 2),
                                                round(os.getloadavg()[0], 2)],
        "results": results}
    shown = None
    if previous is not None and previous_path is not None:
        compare(results, previous)
        shown = f"{previous_path} ({previous.get('size')}, " + time.strftime(
            "%Y-%m-%d %H:%M UTC", time.gmtime(previous.get("generated_at", 0))) + ")"
        report["compared_with"] = str(previous_path)
    saved = save(report, args.out)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(results, previous=shown))
        print(f"\nload average (1 min) before/after: {report['load_avg_1m'][0]:g} / "
              f"{report['load_avg_1m'][1]:g} on {os.cpu_count()} CPUs")
        print(f"\nresults saved to {saved} (and {args.out / 'latest.json'})")
    return 1 if any("error" in r for r in results) else 0
