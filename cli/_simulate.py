"""``edgefleet simulate``: a fleet of real agents in shard processes, under a fault scenario."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from ._output import console, emit, fail, remember_json, table

__all__ = ["register_simulate"]


def register_simulate(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate(
        scenario: Annotated[str, typer.Option(
            help="A scenario file (.toml/.json) or a built-in scenario's name "
                 "(see --list).")] = "rollout",
        devices: Annotated[int | None, typer.Option(
            min=1, help="Fleet size (default: the scenario's).")] = None,
        shards: Annotated[int | None, typer.Option(
            min=1, help="Shard processes (default: one per ~250 devices).")] = None,
        duration: Annotated[float | None, typer.Option(
            min=1.0, help="Seconds the timed part may last, the rollout included "
                          "(default: the scenario's duration_s).")] = None,
        out: Annotated[Path, typer.Option(
            help="Folder for report.json and report.html.")] = Path("simulation-report"),
        workdir: Annotated[Path | None, typer.Option(
            help="Keep the broker's, controller's and devices' state here (default: a "
                 "temp folder, removed at the end).")] = None,
        list_: Annotated[bool, typer.Option("--list", help="List the built-in scenarios.")]
        = False,
        as_json: Annotated[bool, typer.Option(
            "--json", help="Print the report as JSON.", callback=remember_json)]
        = False,
    ) -> None:
        """Run N real agents (MQTT, SQLite, TUF verification) through a scenario's rollout
        and faults; write a JSON report and an HTML page of charts."""
        from edgefleet.simulations.report import summary_rows
        from edgefleet.simulations.scenario import builtin_scenarios, load_scenario
        from edgefleet.simulations.simulate import run_simulation

        if list_:
            rows = [(name, load_scenario(path).name) for name, path in builtin_scenarios().items()]
            if not emit(dict(rows), as_json):
                table("built-in scenarios", ["name", "what"], rows)
            return
        try:
            sc = load_scenario(scenario)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc), 2)
        if duration is not None:
            sc = dataclasses.replace(sc, duration_s=duration)
        if as_json:
            report = run_simulation(sc, devices, shards=shards, out=out, workdir=workdir)
            emit(report, True)
        else:
            with console.status(f"{sc.name}: starting…") as status:
                def step(message: str) -> None:
                    console.print(f"• {message}")
                    status.update(message)

                def sample(row: dict[str, Any]) -> None:
                    versions = ", ".join(f"v{k}: {v}" if k != "None" else f"none: {v}"
                                         for k, v in sorted(row["versions"].items()))
                    status.update(f"t={row['t']:.0f}s  connected {row['connected']}  "
                                  f"healthy on target {row['converged']}  [{versions}]  "
                                  f"{row['fetched_bytes'] / 1e6:.0f} MB fetched")

                report = run_simulation(sc, devices, shards=shards, out=out, workdir=workdir,
                                        progress=step, on_sample=sample)
            table(f"{sc.name} — {report['elapsed_s']} s", ["figure", "value"],
                  summary_rows(report))
            console.print(f"report: {out / 'report.html'} (and report.json)")
        if sc.rollout is not None and not report["settled"]:
            raise typer.Exit(1)
