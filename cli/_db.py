"""Database commands: where the controller store's schema stands, and upgrading it.

Thin over ``edgefleet.controller.store`` (``schema_status``, ``upgrade_schema``); the
controller also upgrades its store by itself when it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._admin import JsonOpt
from ._output import console, emit, fail

__all__ = ["db_app"]

DbOpt = Annotated[str, typer.Option("--db", envvar="EDGEFLEET_DB_URL",
                                    help="SQLAlchemy URL of the store (env EDGEFLEET_DB_URL), "
                                         "e.g. postgresql+psycopg://user@host/edgefleet.")]
_DEFAULT_DB = "sqlite:///edgefleet-controller.db"

db_app = typer.Typer(help="The controller's database: schema revision and upgrades.",
                     no_args_is_help=True)


def _status(db: str, upgrade: bool) -> dict[str, Any]:
    import sqlalchemy as sa

    from edgefleet.contract import EdgefleetError
    from edgefleet.controller.store import create_engine, schema_status, upgrade_schema

    try:
        shown = sa.make_url(db).render_as_string()  # (without the password)
    except sa.exc.ArgumentError:
        fail(f"not an SQLAlchemy database URL: {db!r}")
    try:
        engine = create_engine(db)
        try:
            before = schema_status(engine)
            if not upgrade:
                return before
            upgrade_schema(engine)
            return {**schema_status(engine), "from": before["current"],
                    "from_legacy_version": before["legacy_version"]}
        finally:
            engine.dispose()
    except EdgefleetError as exc:
        message = str(exc)
    except (sa.exc.SQLAlchemyError, ImportError) as exc:  # (ImportError: no driver)
        message = f"database {shown}: {str(exc).strip().splitlines()[0]}"
    fail(message)


@db_app.command("current")
def db_current(db: DbOpt = _DEFAULT_DB, as_json: JsonOpt = False) -> None:
    """Show the store's schema revision and whether it is the newest."""
    status = _status(db, upgrade=False)
    if emit(status, as_json):
        return
    if status["current"] is None and status["legacy_version"] is not None:
        console.print(f"schema {status['legacy_version']} from before Alembic; "
                      f"`edgefleet db upgrade` takes it to {status['head']}")
    elif status["current"] is None:
        console.print(f"empty: no schema yet (newest: {status['head']})")
    else:
        note = "up to date" if status["up_to_date"] else \
            f"behind: `edgefleet db upgrade` takes it to {status['head']}"
        console.print(f"revision {status['current']} ({note})")


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = _DEFAULT_DB, as_json: JsonOpt = False) -> None:
    """Upgrade the store's schema to the newest revision (the controller does it too)."""
    status = _status(db, upgrade=True)
    if emit(status, as_json):
        return
    if status["from"] == status["current"]:
        console.print(f"revision {status['current']}: already up to date")
    else:
        was = status["from"] or (f"schema {status['from_legacy_version']} from before Alembic"
                                 if status["from_legacy_version"] is not None else "empty")
        console.print(f"upgraded from {was} to revision {status['current']}")


@db_app.command("import-files")
def db_import_files(
    data: Annotated[Path, typer.Option("--data", help="The controller's data directory.")],
    db: DbOpt = _DEFAULT_DB,
    as_json: JsonOpt = False,
) -> None:
    """Copy a data directory's signed repository and model files into the database, for
    `controller serve --file-store database`. Stop the controller first; safe to repeat."""
    import sqlalchemy as sa

    from edgefleet.contract import EdgefleetError
    from edgefleet.controller._db_files import DatabaseFiles
    from edgefleet.controller._file_import import import_directory
    from edgefleet.controller.store import create_engine, upgrade_schema

    try:
        engine = create_engine(db)
        try:
            upgrade_schema(engine)
            result = import_directory(data, DatabaseFiles(engine, cache_dir=data / "cache"),
                                      engine)
        finally:
            engine.dispose()
    except (EdgefleetError, ValueError) as exc:
        fail(str(exc))
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        fail(f"database: {str(exc).strip().splitlines()[0]}")
    if not emit(result, as_json):
        console.print(f"copied {result['copied']} file(s) ({result['unchanged']} already "
                      f"there); {result['rows_repointed']} model row(s) now name their copy")
        if result["rows_missing"]:
            console.print(f"[yellow]no file in {data} for: "
                          f"{', '.join(result['rows_missing'])}[/yellow]")
