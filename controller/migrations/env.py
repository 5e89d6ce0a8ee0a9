"""Alembic's environment for the controller's store.

Migrations run through ``edgefleet.controller.store.upgrade_schema`` (the controller
calls it at start; ``edgefleet db upgrade`` does too), which opens the transaction, takes
the migration lock and passes its connection in ``config.attributes["connection"]``.
There is no alembic.ini and no offline (SQL script) mode.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the controller's migrations run with a connection from "
                       "edgefleet.controller.store.upgrade_schema (`edgefleet db upgrade`)")
context.configure(connection=connection)
with context.begin_transaction():  # the caller's transaction: committed by the caller
    context.run_migrations()
