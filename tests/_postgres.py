"""A fresh PostgreSQL database per test, on the local server (fixtures in conftest.py).

``EDGEFLEET_TEST_PG_URL`` names the server's admin database (default: the local server,
user postgres, trust auth). Each test gets ``edgefleet_test_<random>``, dropped after it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
from collections.abc import Iterator

import sqlalchemy as sa

ADMIN_URL = os.environ.get("EDGEFLEET_TEST_PG_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _admin() -> sa.Engine:
    return sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool,
                            connect_args={"connect_timeout": 3})


@functools.cache
def unavailable() -> str | None:
    """Why no PostgreSQL server can be used (None: one answers)."""
    shown = sa.make_url(ADMIN_URL).render_as_string()  # (without the password)
    try:
        engine = _admin()
        try:
            with engine.connect() as c:
                c.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:  # no driver, no server, refused: nothing to test against
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        return (f"no PostgreSQL server answers at {shown} (set EDGEFLEET_TEST_PG_URL to an "
                f"admin URL): {first}")
    return None


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty database; yield its SQLAlchemy URL; drop it (and its sessions)."""
    name = f"edgefleet_test_{secrets.token_hex(6)}"
    engine = _admin()
    try:
        with engine.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield sa.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()
