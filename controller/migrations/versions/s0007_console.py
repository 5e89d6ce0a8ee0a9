"""Schema 7: the web console's sign-ins (``console_sessions``) and model cards.

A console session is a row keyed by the sha256 of its cookie, so a stolen database
does not sign anyone in and signing out ends the session on every replica. A model
card (intended use, data, metrics, limits) is kept per model version.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_id", sa.String(16), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False))
    op.create_index("console_sessions_expiry", "console_sessions", ["expires_at"])
    op.create_table(
        "model_cards",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("card", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False))


def downgrade() -> None:
    op.drop_table("model_cards")
    op.drop_index("console_sessions_expiry", "console_sessions")
    op.drop_table("console_sessions")
