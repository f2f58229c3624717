"""Alembic, driven from code: the schema is brought to head whenever a database opens.

The migration scripts live in ``knightwatch/store/migrations``; no
``alembic.ini`` is needed. To write a new migration, open a connection and
call ``alembic.command.revision(alembic_config(connection), message=...,
autogenerate=True)``, then name the file ``NNNN_what_it_does.py`` and set
its ``revision`` to the same name.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from knightwatch import __version__
from knightwatch.errors import SchemaTooNewError

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "UpgradePlan",
    "alembic_config",
    "current_revision",
    "head_revision",
    "plan_upgrade",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Alembic keeps the running migration's context in module globals (alembic.context),
# so two threads must never migrate at once. Processes are kept apart by the
# database itself (env.py).
_ALEMBIC_LOCK = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for knightwatch's migrations, bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    """The migration scripts, read once: they do not change while the process runs."""
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision the code expects the database to be at."""
    head = _scripts().get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS_DIR}")
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database behind ``connection`` is at (None if never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


@dataclass(frozen=True)
class Migration:
    """One migration a start would apply: its revision and what it does."""

    revision: str
    summary: str


@dataclass(frozen=True)
class UpgradePlan:
    """What opening the database would migrate: from ``current`` (None: empty) to ``head``."""

    current: str | None
    head: str
    pending: tuple[Migration, ...]

    @property
    def up_to_date(self) -> bool:
        """True when a start would migrate nothing."""
        return not self.pending


def plan_upgrade(connection: Connection) -> UpgradePlan:
    """The migrations a start would apply to the database behind ``connection``, oldest first.

    A database at a revision this code does not know was written by a newer
    knightwatch: :class:`SchemaTooNewError`, and nothing is attempted.
    """
    scripts = _scripts()
    head = head_revision()
    current = current_revision(connection)
    known = {script.revision for script in scripts.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNewError(current, head, __version__)
    pending = [
        Migration(script.revision, (script.doc or "").strip().split("\n")[0])
        for script in scripts.iterate_revisions("heads", current or "base")
    ]
    pending.reverse()  # iterate_revisions goes newest first, and stops above ``current``
    return UpgradePlan(current, head, tuple(pending))


def upgrade(connection: Connection) -> None:
    """Apply every migration not yet applied, in one transaction; commit it.

    The transaction is begun here, before Alembic reads the schema's revision,
    because on SQLite Alembic would otherwise commit after each migration: a
    second process could then run the next migration in between, and the
    first would apply it again to a table that already has it. Begun here,
    the transaction is SQLite's ``BEGIN IMMEDIATE`` (see ``database.py``), so
    the whole upgrade, revision check included, holds the write lock.
    """
    with _ALEMBIC_LOCK, connection.begin():
        plan_upgrade(connection)  # a newer schema is refused before anything runs
        command.upgrade(alembic_config(connection), "head")
