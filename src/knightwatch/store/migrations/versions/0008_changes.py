"""Change requests: proposals with a frozen risk assessment, approvals, checklists, reviews.

Revision ID: 0008_changes
Revises: 0007_users
Create Date: 2026-12-05 01:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_changes"
down_revision: str | None = "0007_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIGEST = sa.String(64)
WORD = sa.String(32)
NAME = sa.String(64)
TIME = sa.DateTime(timezone=True)
EVENT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create ``change_requests``, ``change_approvals``, ``change_ticks``, ``review_items``."""
    op.create_table(
        "change_requests",
        sa.Column("id", EVENT_ID, autoincrement=True, nullable=False),
        sa.Column("kind", WORD, nullable=False),
        sa.Column("state", WORD, nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("target_hash", DIGEST, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("author", NAME, nullable=False),
        sa.Column("emergency", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("risk", WORD, nullable=False),
        sa.Column("assessment", sa.Text(), nullable=False),
        sa.Column("assessment_hash", DIGEST, nullable=False),
        sa.Column("approvals_needed", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("decided_by", NAME, nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_change_requests")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_change_requests_state"), "change_requests", ["state"])
    op.create_table(
        "change_approvals",
        sa.Column("id", EVENT_ID, autoincrement=True, nullable=False),
        sa.Column("change_id", EVENT_ID, nullable=False),
        sa.Column("approver", NAME, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("target_hash", DIGEST, nullable=False),
        sa.Column("assessment_hash", DIGEST, nullable=False),
        sa.Column("void", sa.Boolean(), server_default=sa.false(), nullable=False),
        _change_fk("change_approvals"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_change_approvals")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_change_approvals_change_id"), "change_approvals", ["change_id"])
    op.create_table(
        "change_ticks",
        sa.Column("change_id", EVENT_ID, nullable=False),
        sa.Column("item", sa.String(255), nullable=False),
        sa.Column("by", NAME, nullable=False),
        sa.Column("at", TIME, nullable=False),
        _change_fk("change_ticks"),
        sa.PrimaryKeyConstraint("change_id", "item", name=op.f("pk_change_ticks")),
    )
    op.create_table(
        "review_items",
        sa.Column("id", EVENT_ID, autoincrement=True, nullable=False),
        sa.Column("change_id", EVENT_ID, nullable=False),
        sa.Column("opened_by", NAME, nullable=False),
        sa.Column("opened_at", TIME, nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("closed_by", NAME, nullable=True),
        sa.Column("closed_at", TIME, nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        _change_fk("review_items"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_items")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_review_items_change_id"), "review_items", ["change_id"])


def _change_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["change_id"],
        ["change_requests.id"],
        name=op.f(f"fk_{table}_change_id_change_requests"),
    )


def downgrade() -> None:
    """Drop the change-control tables."""
    for table in ("review_items", "change_ticks", "change_approvals", "change_requests"):
        op.drop_table(table)
