"""One vocabulary: CHECK constraints on every column that holds a word of it.

Revision ID: 0004_vocabulary
Revises: 0003_safety
Create Date: 2026-12-04 19:55:00

Deployment states, node phases, service states and halt sources were free
text in the database; a row with a phase that does not exist was stored
without complaint. The lists are written out here (not read from
``knightwatch.vocabulary``) so that this migration stays what it was when a
later release adds a word. Names are given final (``op.f``): the metadata's
naming convention must not prefix them twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_vocabulary"
down_revision: str | None = "0003_safety"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite's batch mode copies the table; ids must stay never-reused in the copy.
_KEEP_AUTOINCREMENT = {"sqlite_autoincrement": True}

DEPLOYMENT_STATES = (
    "PREPARING",
    "CANARY",
    "SOAKING",
    "COMMITTING",
    "ROLLING_BACK",
    "SUCCEEDED",
    "FAILED",
    "ROLLED_BACK",
    "ROLLBACK_FAILED",
)
NODE_PHASES = (
    "PREPARING",
    "PREPARED",
    "PREPARE_FAILED",
    "WAITING",
    "COMMITTING",
    "ACTIVE",
    "COMMIT_FAILED",
    "ROLLING_BACK",
    "ROLLED_BACK",
    "ROLLBACK_FAILED",
    "ABORTED",
    "OFFLINE",
)
SERVICE_STATES = ("none", "starting", "running", "stopped", "crash_loop", "halted")
HALT_SOURCES = ("kill", "dead-man", "guard")

# (table, column, words, keep autoincrement)
CHECKS = (
    ("deployments", "state", DEPLOYMENT_STATES, True),
    ("deployment_nodes", "phase", NODE_PHASES, False),
    ("nodes", "service_state", SERVICE_STATES, False),
    ("nodes", "halt_source", HALT_SOURCES, False),
)


def _one_of(column: str, words: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(w) for w in words)})"


def upgrade() -> None:
    """Add a CHECK per column, refusing any word outside its vocabulary."""
    for table, column, words, keep in CHECKS:
        kwargs = _KEEP_AUTOINCREMENT if keep else {}
        with op.batch_alter_table(table, table_kwargs=kwargs) as batch:
            batch.create_check_constraint(
                op.f(f"ck_{table}_{column}_valid"), _one_of(column, words)
            )


def downgrade() -> None:
    """Drop the CHECKs added by :func:`upgrade`."""
    for table, column, _words, keep in reversed(CHECKS):
        kwargs = _KEEP_AUTOINCREMENT if keep else {}
        with op.batch_alter_table(table, table_kwargs=kwargs) as batch:
            batch.drop_constraint(op.f(f"ck_{table}_{column}_valid"), type_="check")
