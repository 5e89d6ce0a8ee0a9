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


# what each extra brings that a bare ``pip install edgefleet`` lacks
_AGENT_MODULES = frozenset({"paho", "onnxruntime", "tuf", "urllib3", "cryptography",
                            "securesystemslib", "psutil"})
_CLI_MODULES = frozenset({"typer", "click", "rich"})


def _missing(exc: ModuleNotFoundError, agent_run: bool) -> str | None:
    """What to install when an extra's module is missing (None: another problem)."""
    top = (exc.name or "").split(".")[0]
    if top in _AGENT_MODULES or (top in _CLI_MODULES and agent_run):
        return (f"edgefleet: {top} is missing: a device needs the agent extra "
                "(pip install 'edgefleet[agent]')")
    if top in _CLI_MODULES:
        return (f"edgefleet: the command line needs {top}, which comes with an extra: "
                "pip install 'edgefleet[agent]' on a device, 'edgefleet[controller]' for "
                "the controller and everything else")
    return None


def main() -> None:
    argv = sys.argv[1:]
    agent_run = argv[:2] == ["agent", "run"]
    try:
        if agent_run:
            from ._agent_run import main as run

            sys.exit(run(argv[2:]))
        from ._app import app
    except ModuleNotFoundError as exc:
        why = _missing(exc, agent_run)
        if why is None:
            raise
        sys.exit(why)
    app()


def __getattr__(name: str) -> Any:
    if name == "app":
        from ._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
