"""Schema 6: the database file store's tables (``stored_files``, ``stored_file_chunks``).

Controllers run with ``file_store = "database"`` keep model files and the TUF
repository here instead of in a data directory, so replicas share no filesystem. A file
is a ``stored_files`` row (path, length, sha256) and its chunks; replacing a file gives
it a new id in the same transaction, so a reader sees the old content or the new one.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # SQLite: the rowid


def upgrade() -> None:
    op.create_table(
        "stored_files",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("path", sa.String(1024), nullable=False, unique=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("chunk_bytes", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sqlite_autoincrement=True)  # ids never reused (see _tables)
    op.create_table(
        "stored_file_chunks",
        sa.Column("file_id", _ID, primary_key=True, autoincrement=False),
        sa.Column("chunk", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("data", sa.LargeBinary, nullable=False))
    if op.get_bind().dialect.name == "postgresql":
        # model bytes do not compress: store them out of line without trying to
        op.execute("ALTER TABLE stored_file_chunks ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("stored_file_chunks")
    op.drop_table("stored_files")
