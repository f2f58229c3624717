"""People who call the operator API: a role and an HMAC of their token each.

Revision ID: 0007_users
Revises: 0006_audit_log
Create Date: 2026-12-05 01:00:00

The shared operator token of earlier versions (DATA/operator.token) becomes
the token of an admin user named ``admin`` when the server first starts on
this schema (server/users.py): that needs the data directory, which a
migration does not see.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_users"
down_revision: str | None = "0006_audit_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``users``."""
    op.create_table(
        "users",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("rotated_at", TIME, nullable=True),
        sa.Column("revoked_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_users")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_users_token_hash")),
    )


def downgrade() -> None:
    """Drop ``users``."""
    op.drop_table("users")
