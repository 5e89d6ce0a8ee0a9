"""``edgefleet bench``: the benchmarks of ``edgefleet.simulations.bench``, in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register_bench"]


def register_bench(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        only: Annotated[list[str] | None, typer.Option(
            "--only", help="Run only this benchmark (repeatable).")] = None,
        size: Annotated[str, typer.Option(
            help="tiny, small, medium, large or full.")] = "full",
        out: Annotated[Path, typer.Option(help="Where to save the results (JSON).")]
        = Path("bench-results.json"),
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
        = False,
    ) -> None:
        """Run the benchmarks: each figure against a baseline measured in the same run."""
        from edgefleet.simulations.bench import main

        args = [f"--only={name}" for name in only or []] + [f"--size={size}", f"--out={out}"]
        raise typer.Exit(main([*args, "--json"] if as_json else args))
