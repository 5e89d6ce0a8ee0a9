"""``edgefleet bench``: the benchmarks of ``edgefleet.simulations.bench``, in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.simulations.bench import BENCHMARKS

from ._output import remember_json

__all__ = ["register_bench"]


def register_bench(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        names: Annotated[list[str] | None, typer.Argument(
            help=f"Benchmarks to run (default: all): {', '.join(BENCHMARKS)}.",
            show_default=False)] = None,
        only: Annotated[list[str] | None, typer.Option(
            "--only", help="Run only this benchmark (repeatable; same as NAME).")] = None,
        size: Annotated[str, typer.Option(
            help="tiny, small, medium, large or full.")] = "full",
        quick: Annotated[bool, typer.Option(
            "--quick", help="Smallest sizes, for CI (same as --size tiny).")] = False,
        duration: Annotated[float | None, typer.Option(
            help="Seconds a sustained run (ingest) lasts (default: by size; full: 300).",
            show_default=False)] = None,
        out: Annotated[Path, typer.Option(
            help="Folder keeping each run's JSON and latest.json.")] = Path("bench-results"),
        compare: Annotated[Path | None, typer.Option(
            help="Compare with this results JSON (default: the newest earlier run of the "
                 "same size in --out).", show_default=False)] = None,
        no_compare: Annotated[bool, typer.Option(
            "--no-compare", help="Do not compare with a previous run.")] = False,
        as_json: Annotated[bool, typer.Option(
            "--json", help="Print JSON for scripts.", callback=remember_json)]
        = False,
    ) -> None:
        """Run the benchmarks: each figure against a baseline measured in the same run."""
        from edgefleet.simulations.bench import main

        args = [*(names or []), *(f"--only={name}" for name in only or []),
                f"--size={size}", f"--out={out}"]
        args += ["--quick"] * quick + ["--no-compare"] * no_compare + ["--json"] * as_json
        if duration is not None:
            args.append(f"--duration={duration}")
        if compare is not None:
            args.append(f"--compare={compare}")
        raise typer.Exit(main(args))
