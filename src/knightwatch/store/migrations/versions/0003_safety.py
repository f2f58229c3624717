"""Kill switch and alert routing: halts, node halt state, alert escalation, notifications.

Revision ID: 0003_safety
Revises: 0002_audit
Create Date: 2026-11-23 21:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_safety"
down_revision: str | None = "0002_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NODE_NAME = sa.String(63)
WORD = sa.String(32)
NAME = sa.String(255)
TIME = sa.DateTime(timezone=True)
EVENT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _alter_nodes_and_alerts() -> None:
    """Nodes carry their halt; alerts their escalation."""
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(
            sa.Column("halted", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("halt_source", WORD, nullable=True))
        batch.add_column(sa.Column("halt_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("halted_since", TIME, nullable=True))
    with op.batch_alter_table("alerts", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(
            sa.Column("escalation_level", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("notified_at", TIME, nullable=True))
        batch.add_column(sa.Column("next_notify_at", TIME, nullable=True))


def _create_alert_notifications() -> None:
    """Every delivery of an alert to a receiver."""
    op.create_table(
        "alert_notifications",
        sa.Column("id", EVENT_ID, autoincrement=True, nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("receiver", NAME, nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name="fk_alert_notifications_alert_id_alerts"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_alert_notifications"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_alert_notifications_alert_id", "alert_notifications", ["alert_id"])


def _create_halts() -> None:
    """Kill-switch halts and each node's acknowledgement."""
    op.create_table(
        "halts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("selector", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", NAME, nullable=False),
        sa.Column("issued_at", TIME, nullable=False),
        sa.Column("lifted_at", TIME, nullable=True),
        sa.Column("lifted_by", NAME, nullable=True),
        sa.Column("lift_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_halts"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "halt_nodes",
        sa.Column("halt_id", sa.Integer(), nullable=False),
        sa.Column("node_name", NODE_NAME, nullable=False),
        sa.Column("received_at", TIME, nullable=True),
        sa.Column("halted_at", TIME, nullable=True),
        sa.Column("acked_at", TIME, nullable=True),
        sa.Column("rearmed_at", TIME, nullable=True),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.ForeignKeyConstraint(["halt_id"], ["halts.id"], name="fk_halt_nodes_halt_id_halts"),
        sa.ForeignKeyConstraint(
            ["node_name"], ["nodes.name"], name="fk_halt_nodes_node_name_nodes"
        ),
        sa.PrimaryKeyConstraint("halt_id", "node_name", name="pk_halt_nodes"),
    )


def upgrade() -> None:
    """Add halts, node halt state, alert escalation and notifications."""
    _alter_nodes_and_alerts()
    _create_alert_notifications()
    _create_halts()


def downgrade() -> None:
    """Remove what :func:`upgrade` added."""
    for table in ("halt_nodes", "halts", "alert_notifications"):
        op.drop_table(table)
    with op.batch_alter_table("alerts", table_kwargs={"sqlite_autoincrement": True}) as batch:
        for column in ("next_notify_at", "notified_at", "escalation_level"):
            batch.drop_column(column)
    with op.batch_alter_table("nodes") as batch:
        for column in ("halted_since", "halt_reason", "halt_source", "halted"):
            batch.drop_column(column)
