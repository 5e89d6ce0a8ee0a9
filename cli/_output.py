"""Output helpers: rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["JsonOpt", "console", "emit", "fail", "remember_json", "table", "when"]

console = Console()
err_console = Console(stderr=True)


def emit(data: Any, as_json: bool) -> bool:
    """Print ``data`` as JSON and return True when ``as_json``; else return False."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    return as_json


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    console.print(t)


_json_errors = [False]  # set by the running command's --json option (``remember_json``)


def remember_json(value: bool) -> bool:
    """The ``--json`` option's callback: errors of this command are printed as JSON too."""
    _json_errors[0] = bool(value)
    return value


def _json_requested() -> bool:
    return _json_errors[0]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts (errors too).",
                                       callback=remember_json)]


def fail(message: str, code: int = 1, *, status: int | None = None,
         reason: str | None = None) -> NoReturn:
    """Report an error and exit with ``code``: on stderr for people, or, when the command
    was given ``--json``, as ``{"error", "status", "reason"}`` on stdout for scripts."""
    if _json_requested():
        sys.stdout.write(json.dumps({"error": message, "status": status, "reason": reason})
                         + "\n")
    else:
        err_console.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def when(ts: float | None) -> str:
    """A timestamp as local time for tables ("-" for none)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
