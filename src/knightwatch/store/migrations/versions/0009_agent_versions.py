"""Agent versions: each node's agent version and protocol, and its last refusal at connect.

Revision ID: 0009_agent_versions
Revises: 0008_changes
Create Date: 2026-12-05 19:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_agent_versions"
down_revision: str | None = "0008_changes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add ``agent_version``, ``agent_protocol``, ``refused_at`` and ``refusal`` to ``nodes``."""
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("agent_version", sa.String(32), nullable=True))
        batch.add_column(sa.Column("agent_protocol", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("refused_at", TIME, nullable=True))
        batch.add_column(sa.Column("refusal", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop the four columns again."""
    with op.batch_alter_table("nodes") as batch:
        for column in ("refusal", "refused_at", "agent_protocol", "agent_version"):
            batch.drop_column(column)
