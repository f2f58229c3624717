"""Configuration audit: node drift, alerts, audits, retirements, status accounting.

Revision ID: 0002_audit
Revises: 0001_initial
Create Date: 2026-11-23 21:00:00

Changing a CHECK constraint on SQLite means copying the table, which Alembic's
batch mode does; on PostgreSQL the same calls alter the table in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_audit"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIGEST = sa.String(64)
NODE_NAME = sa.String(63)
WORD = sa.String(32)
NAME = sa.String(255)
TIME = sa.DateTime(timezone=True)
EVENT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# SQLite's batch mode copies the table; ids must stay never-reused in the copy.
_KEEP_AUTOINCREMENT = {"sqlite_autoincrement": True}


def _alter_nodes() -> None:
    """Nodes may be drained, and carry their drift."""
    with op.batch_alter_table("nodes") as batch:
        batch.drop_constraint("ck_nodes_status_valid", type_="check")
        batch.create_check_constraint(
            "ck_nodes_status_valid", "status IN ('pending', 'enrolled', 'drained', 'retired')"
        )
        batch.add_column(sa.Column("drift_state", WORD, server_default="unknown", nullable=False))
        batch.add_column(sa.Column("drift_since", TIME, nullable=True))
        batch.add_column(
            sa.Column("drift_count", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(
            sa.Column("drift_findings", sa.Text(), server_default="[]", nullable=False)
        )
        batch.create_check_constraint(
            "ck_nodes_drift_state_valid", "drift_state IN ('unknown', 'clean', 'drifted')"
        )


def _alter_deployments_and_releases() -> None:
    """A reconcile is a deployment kind; a release can be retired."""
    with op.batch_alter_table("deployments", table_kwargs=_KEEP_AUTOINCREMENT) as batch:
        batch.drop_constraint("ck_deployments_kind_valid", type_="check")
        batch.create_check_constraint(
            "ck_deployments_kind_valid",
            "kind IN ('deploy', 'rollback', 'catchup', 'reconcile')",
        )
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("retired_at", TIME, nullable=True))


def _create_alerts() -> None:
    """Alerts, deduplicated by fingerprint."""
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("fingerprint", NAME, nullable=False),
        sa.Column("rule", NAME, nullable=False),
        sa.Column("node_name", NODE_NAME, nullable=True),
        sa.Column("severity", WORD, nullable=False),
        sa.Column("state", WORD, nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.Column("count", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("first_at", TIME, nullable=False),
        sa.Column("last_at", TIME, nullable=False),
        sa.Column("acknowledged_at", TIME, nullable=True),
        sa.Column("acknowledged_by", NAME, nullable=True),
        sa.Column("resolved_at", TIME, nullable=True),
        sa.Column("resolved_by", NAME, nullable=True),
        sa.CheckConstraint(
            "state IN ('firing', 'acknowledged', 'resolved')", name="ck_alerts_state_valid"
        ),
        sa.CheckConstraint(
            "severity IN ('info', 'warning', 'critical')", name="ck_alerts_severity_valid"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_alerts_fingerprint", "alerts", ["fingerprint"])
    op.create_index("ix_alerts_state", "alerts", ["state"])


def _create_audits() -> None:
    """Audits an operator asked for, and each node's answer."""
    op.create_table(
        "audits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("requested_by", NAME, nullable=False),
        sa.Column("requested_at", TIME, nullable=False),
        sa.Column("nodes", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audits"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "audit_results",
        sa.Column("audit_id", sa.Integer(), nullable=False),
        sa.Column("node_name", NODE_NAME, nullable=False),
        sa.Column("received_at", TIME, nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["audit_id"], ["audits.id"], name="fk_audit_results_audit_id_audits"
        ),
        sa.ForeignKeyConstraint(
            ["node_name"], ["nodes.name"], name="fk_audit_results_node_name_nodes"
        ),
        sa.PrimaryKeyConstraint("audit_id", "node_name", name="pk_audit_results"),
    )


def _create_retirements() -> None:
    """Retirements of releases, and each node's verified absence."""
    op.create_table(
        "retirements",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("release_digest", DIGEST, nullable=False),
        sa.Column("requested_by", NAME, nullable=False),
        sa.Column("requested_at", TIME, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["release_digest"], ["releases.digest"], name="fk_retirements_release_digest_releases"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_retirements"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_retirements_release_digest", "retirements", ["release_digest"])
    op.create_table(
        "retirement_nodes",
        sa.Column("retirement_id", sa.Integer(), nullable=False),
        sa.Column("node_name", NODE_NAME, nullable=False),
        sa.Column("state", WORD, nullable=False),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'absent', 'failed')", name="ck_retirement_nodes_state_valid"
        ),
        sa.ForeignKeyConstraint(
            ["retirement_id"],
            ["retirements.id"],
            name="fk_retirement_nodes_retirement_id_retirements",
        ),
        sa.ForeignKeyConstraint(
            ["node_name"], ["nodes.name"], name="fk_retirement_nodes_node_name_nodes"
        ),
        sa.PrimaryKeyConstraint("retirement_id", "node_name", name="pk_retirement_nodes"),
    )


def _create_lifecycle_events() -> None:
    """Status accounting: every transition of every configuration item."""
    op.create_table(
        "lifecycle_events",
        sa.Column("id", EVENT_ID, autoincrement=True, nullable=False),
        sa.Column("item_kind", WORD, nullable=False),
        sa.Column("item_key", NAME, nullable=False),
        sa.Column("state", sa.String(64), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("actor", NAME, nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.CheckConstraint(
            "item_kind IN ('release', 'component', 'flag', 'node')",
            name="ck_lifecycle_events_item_kind_valid",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_lifecycle_events"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_lifecycle_events_item_key", "lifecycle_events", ["item_key"])


def upgrade() -> None:
    """Add drift, alerts, audits, retirements and status accounting."""
    _alter_nodes()
    _alter_deployments_and_releases()
    _create_alerts()
    _create_audits()
    _create_retirements()
    _create_lifecycle_events()


def downgrade() -> None:
    """Remove what :func:`upgrade` added (children first)."""
    for table in (
        "lifecycle_events",
        "retirement_nodes",
        "retirements",
        "audit_results",
        "audits",
        "alerts",
    ):
        op.drop_table(table)
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("retired_at")
    with op.batch_alter_table("deployments", table_kwargs=_KEEP_AUTOINCREMENT) as batch:
        batch.drop_constraint("ck_deployments_kind_valid", type_="check")
        batch.create_check_constraint(
            "ck_deployments_kind_valid", "kind IN ('deploy', 'rollback', 'catchup')"
        )
    with op.batch_alter_table("nodes") as batch:
        batch.drop_constraint("ck_nodes_drift_state_valid", type_="check")
        for column in ("drift_findings", "drift_count", "drift_since", "drift_state"):
            batch.drop_column(column)
        batch.drop_constraint("ck_nodes_status_valid", type_="check")
        batch.create_check_constraint(
            "ck_nodes_status_valid", "status IN ('pending', 'enrolled', 'retired')"
        )
