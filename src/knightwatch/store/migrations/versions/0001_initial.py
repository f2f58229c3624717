"""Initial schema: releases, nodes, join tokens, the fleet row and deployments.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-23 18:30:00

Names of constraints and indexes are spelled out (they follow
``knightwatch.store.models.NAMING_CONVENTION``) so that later migrations can
drop or alter them on both engines.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIGEST = sa.String(64)
NODE_NAME = sa.String(63)
WORD = sa.String(32)
NAME = sa.String(255)
TIME = sa.DateTime(timezone=True)


def _create_releases() -> None:
    """Pushed releases."""
    op.create_table(
        "releases",
        sa.Column("digest", DIGEST, nullable=False),
        sa.Column("release_id", NAME, nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("version", NAME, nullable=False),
        sa.Column("manifest", sa.LargeBinary(), nullable=False),
        sa.Column("sbom", sa.LargeBinary(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("signed_by", NAME, nullable=False),
        sa.Column("pushed_at", TIME, nullable=False),
        sa.Column("pushed_by", NAME, nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_releases"),
        sa.UniqueConstraint("release_id", name="uq_releases_release_id"),
    )


def _create_nodes() -> None:
    """Nodes and their desired and reported state."""
    op.create_table(
        "nodes",
        sa.Column("name", NODE_NAME, nullable=False),
        sa.Column("group_name", NODE_NAME, server_default="default", nullable=False),
        sa.Column("status", WORD, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("enrolled_at", TIME, nullable=True),
        sa.Column("credential_hash", DIGEST, nullable=True),
        sa.Column("public_key", sa.String(64), nullable=True),
        sa.Column("desired_digest", DIGEST, nullable=True),
        sa.Column("active_digest", DIGEST, nullable=True),
        sa.Column("previous_digest", DIGEST, nullable=True),
        sa.Column("service_state", WORD, server_default="none", nullable=False),
        sa.Column("service_pid", sa.Integer(), nullable=True),
        sa.Column("service_started_at", sa.Float(), nullable=True),
        sa.Column("service_version", NAME, nullable=True),
        sa.Column("service_restarts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("service_detail", sa.Text(), nullable=True),
        sa.Column("last_report", sa.Text(), nullable=True),
        sa.Column("last_report_at", TIME, nullable=True),
        sa.Column("last_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("session_nonce", sa.String(128), nullable=True),
        sa.Column("connected", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("connected_at", TIME, nullable=True),
        sa.Column("disconnected_at", TIME, nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'enrolled', 'retired')", name="ck_nodes_status_valid"
        ),
        sa.PrimaryKeyConstraint("name", name="pk_nodes"),
    )


def _create_join_tokens() -> None:
    """One-time enrolment tokens, by hash."""
    op.create_table(
        "join_tokens",
        sa.Column("token_hash", DIGEST, nullable=False),
        sa.Column("node_name", NODE_NAME, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("used_at", TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["node_name"], ["nodes.name"], name="fk_join_tokens_node_name_nodes"
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_join_tokens"),
    )
    op.create_index("ix_join_tokens_node_name", "join_tokens", ["node_name"])


def _create_fleet() -> None:
    """The single row of fleet-wide desired state."""
    op.create_table(
        "fleet",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("desired_digest", DIGEST, nullable=True),
        sa.Column("previous_digest", DIGEST, nullable=True),
        sa.Column("mixed_since", TIME, nullable=True),
        sa.Column("updated_at", TIME, nullable=False),
        sa.CheckConstraint("id = 1", name="ck_fleet_singleton"),
        sa.PrimaryKeyConstraint("id", name="pk_fleet"),
    )


def _create_deployments() -> None:
    """Deployments; ids are never reused (AUTOINCREMENT on SQLite, a sequence on PostgreSQL)."""
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", WORD, nullable=False),
        sa.Column("release_digest", DIGEST, nullable=False),
        sa.Column("from_digest", DIGEST, nullable=True),
        sa.Column("strategy", WORD, nullable=False),
        sa.Column("state", WORD, nullable=False),
        sa.Column("soak_s", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("requested_by", NAME, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("deadline", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.CheckConstraint(
            "kind IN ('deploy', 'rollback', 'catchup')", name="ck_deployments_kind_valid"
        ),
        sa.CheckConstraint(
            "strategy IN ('atomic', 'canary')", name="ck_deployments_strategy_valid"
        ),
        sa.ForeignKeyConstraint(
            ["release_digest"], ["releases.digest"], name="fk_deployments_release_digest_releases"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_deployments_state", "deployments", ["state"])


def _create_deployment_nodes() -> None:
    """Per-node progress within a deployment."""
    op.create_table(
        "deployment_nodes",
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("node_name", NODE_NAME, nullable=False),
        sa.Column("role", WORD, nullable=False),
        sa.Column("previous_digest", DIGEST, nullable=True),
        sa.Column("phase", WORD, nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("version", NAME, nullable=True),
        sa.Column("updated_at", TIME, nullable=False),
        sa.CheckConstraint("role IN ('canary', 'fleet')", name="ck_deployment_nodes_role_valid"),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name="fk_deployment_nodes_deployment_id_deployments",
        ),
        sa.ForeignKeyConstraint(
            ["node_name"], ["nodes.name"], name="fk_deployment_nodes_node_name_nodes"
        ),
        sa.PrimaryKeyConstraint("deployment_id", "node_name", name="pk_deployment_nodes"),
    )
    op.create_index("ix_deployment_nodes_node_name", "deployment_nodes", ["node_name"])


def _create_deployment_events() -> None:
    """The history of each deployment."""
    op.create_table(
        "deployment_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("node_name", NODE_NAME, nullable=True),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name="fk_deployment_events_deployment_id_deployments",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_deployment_events"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_deployment_events_deployment_id", "deployment_events", ["deployment_id"])


def upgrade() -> None:
    """Create every table of the first schema."""
    _create_releases()
    _create_nodes()
    _create_join_tokens()
    _create_fleet()
    _create_deployments()
    _create_deployment_nodes()
    _create_deployment_events()


def downgrade() -> None:
    """Drop every table of the first schema (children first)."""
    for table in (
        "deployment_events",
        "deployment_nodes",
        "deployments",
        "fleet",
        "join_tokens",
        "nodes",
        "releases",
    ):
        op.drop_table(table)
