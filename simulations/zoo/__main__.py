"""``python -m edgefleet.simulations.zoo OUT_DIR``: build the zoo and print what it holds."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import ZOO_NAMES, build_zoo
from ._runtime import Port, signature


def _ports(ports: list[Port]) -> str:
    return ", ".join(f"{name}:{dtype}[{','.join(str(d) for d in dims)}]"
                     for name, dtype, dims in ports)


def _size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def main(argv: list[str] | None = None) -> int:
    """Build the zoo into OUT_DIR and print a table (or ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m edgefleet.simulations.zoo",
                                     description="Build the model zoo (models + eval data).")
    parser.add_argument("out_dir", type=Path, help="directory to write the models into")
    parser.add_argument("--only", nargs="+", choices=ZOO_NAMES, metavar="NAME",
                        help=f"build only these ({', '.join(ZOO_NAMES)})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    zoo = build_zoo(args.out_dir, args.only)
    seconds = time.perf_counter() - started
    rows: list[dict[str, Any]] = []
    for m in zoo.values():
        inputs, outputs = signature(m.file, m.runtime)
        rows.append({"name": m.name, "runtime": m.runtime, "task": m.task, "opset": m.opset,
                     "model_bytes": _size(m.file), "eval_bytes": m.eval_npz.stat().st_size,
                     "inputs": _ports(inputs), "outputs": _ports(outputs),
                     "file": m.file.name})
    if args.json:
        print(json.dumps({"build_s": round(seconds, 3), "models": rows}, indent=2))
        return 0
    header = (f"{'name':<20} {'runtime':<12} {'opset':>5} {'model':>9} {'eval':>9}  "
              "inputs -> outputs")
    print(header)
    print("-" * len(header))
    for r in rows:
        opset = "-" if r["opset"] is None else str(r["opset"])
        print(f"{r['name']:<20} {r['runtime']:<12} {opset:>5} {r['model_bytes'] / 1e3:>7.0f}kB "
              f"{r['eval_bytes'] / 1e3:>7.0f}kB  {r['inputs']} -> {r['outputs']}")
    print(f"\n{len(rows)} models in {args.out_dir} ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
