"""Feature flags: the registry, values per scope, their record, releases' declarations.

Revision ID: 0005_flags
Revises: 0004_vocabulary
Create Date: 2026-12-04 22:40:00

The word lists are written out (not read from ``knightwatch.vocabulary``), so
this migration stays what it was when a later release adds a word. Names are
given final (``op.f``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_flags"
down_revision: str | None = "0004_vocabulary"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIGEST = sa.String(64)
NODE_NAME = sa.String(63)
WORD = sa.String(32)
NAME = sa.String(255)
FLAG_NAME = sa.String(127)
SCOPE = sa.String(70)
TIME = sa.DateTime(timezone=True)
EVENT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _words(column: str, words: tuple[str, ...]) -> sa.CheckConstraint:
    listed = ", ".join(f"'{word}'" for word in words)
    return sa.CheckConstraint(f"{column} IN ({listed})", name=op.f(f"ck_flags_{column}_valid"))


def _create_flags() -> None:
    op.create_table(
        "flags",
        sa.Column("name", FLAG_NAME, nullable=False),
        sa.Column("kind", WORD, nullable=False),
        sa.Column("value_type", WORD, nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("default_value", sa.Text(), nullable=False),
        sa.Column("fingerprint", DIGEST, nullable=False),
        sa.Column("owner", NAME, nullable=True),
        sa.Column("first_release", DIGEST, nullable=True),
        sa.Column("state", WORD, server_default="active", nullable=False),
        sa.Column("lifetime_days", sa.Integer(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("created_by", NAME, nullable=False),
        sa.Column("retired_at", TIME, nullable=True),
        sa.Column("retired_by", NAME, nullable=True),
        sa.Column("retire_reason", sa.Text(), nullable=True),
        _words("kind", ("release", "ops", "kill", "experiment")),
        _words("value_type", ("boolean", "integer", "float", "string")),
        _words("state", ("active", "retired")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_flags")),
    )
    op.create_table(
        "flag_values",
        sa.Column("flag_name", FLAG_NAME, nullable=False),
        sa.Column("scope", SCOPE, nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("set_at", TIME, nullable=False),
        sa.Column("set_by", NAME, nullable=False),
        sa.ForeignKeyConstraint(
            ["flag_name"], ["flags.name"], name=op.f("fk_flag_values_flag_name_flags")
        ),
        sa.PrimaryKeyConstraint("flag_name", "scope", name=op.f("pk_flag_values")),
    )


def _create_flag_changes() -> None:
    kinds = ("create", "declare", "set", "unset", "amend", "retire")
    listed = ", ".join(f"'{kind}'" for kind in kinds)
    op.create_table(
        "flag_changes",
        sa.Column("id", EVENT_ID, autoincrement=True, nullable=False),
        sa.Column("flag_name", FLAG_NAME, nullable=False),
        sa.Column("kind", WORD, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("actor", NAME, nullable=False),
        sa.Column("scope", SCOPE, nullable=True),
        sa.Column("old_value", sa.Text(), nullable=True),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=True),
        sa.Column("targets", sa.Text(), server_default="[]", nullable=False),
        sa.CheckConstraint(f"kind IN ({listed})", name=op.f("ck_flag_changes_kind_valid")),
        sa.ForeignKeyConstraint(
            ["flag_name"], ["flags.name"], name=op.f("fk_flag_changes_flag_name_flags")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flag_changes")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_flag_changes_flag_name"), "flag_changes", ["flag_name"])


def _create_declarations_and_evaluations() -> None:
    op.create_table(
        "release_flags",
        sa.Column("release_digest", DIGEST, nullable=False),
        sa.Column("flag_name", FLAG_NAME, nullable=False),
        sa.ForeignKeyConstraint(
            ["release_digest"],
            ["releases.digest"],
            name=op.f("fk_release_flags_release_digest_releases"),
        ),
        sa.ForeignKeyConstraint(
            ["flag_name"], ["flags.name"], name=op.f("fk_release_flags_flag_name_flags")
        ),
        sa.PrimaryKeyConstraint("release_digest", "flag_name", name=op.f("pk_release_flags")),
    )
    op.create_table(
        "flag_evaluations",
        sa.Column("node_name", NODE_NAME, nullable=False),
        sa.Column("release_digest", DIGEST, nullable=False),
        sa.Column("flag_name", FLAG_NAME, nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_at", TIME, nullable=False),
        sa.Column("last_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["node_name"], ["nodes.name"], name=op.f("fk_flag_evaluations_node_name_nodes")
        ),
        sa.PrimaryKeyConstraint(
            "node_name", "release_digest", "flag_name", name=op.f("pk_flag_evaluations")
        ),
    )


def upgrade() -> None:
    """Create the flag tables; add the fleet's and each node's flag-state version."""
    _create_flags()
    _create_flag_changes()
    _create_declarations_and_evaluations()
    with op.batch_alter_table("fleet") as batch:
        batch.add_column(
            sa.Column("flags_version", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("flags_version", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Drop what :func:`upgrade` made."""
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("flags_version")
    with op.batch_alter_table("fleet") as batch:
        batch.drop_column("flags_version")
    for table in ("flag_evaluations", "release_flags", "flag_changes", "flag_values", "flags"):
        op.drop_table(table)
