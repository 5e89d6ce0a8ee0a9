"""The ``edgefleet`` command line: a thin layer over the library and the controller API.

Controller-side imports happen inside the commands that need them, so a device with
only the ``[agent]`` extra can run ``edgefleet agent run``. That command, what a device
runs for its whole life, starts without the rest of the command line: typer, click,
rich and pydantic would cost every device ~15 MiB it never uses (see
``edgefleet.cli._agent_run``). ``app`` (the typer application) loads on first use.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]


def main() -> None:
    argv = sys.argv[1:]
    if argv[:2] == ["agent", "run"]:
        from ._agent_run import main as agent_run

        sys.exit(agent_run(argv[2:]))
    from ._app import app

    app()


def __getattr__(name: str) -> Any:
    if name == "app":
        from ._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
