"""Migrations: applied when a database opens, idempotent, and in step with the models."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from knightwatch.errors import StoreError
from knightwatch.store import Base, Database, Node
from knightwatch.store.migrate import alembic_config, current_revision, head_revision
from tests.store.conftest import Target

TABLES = {
    "alembic_version",
    "deployment_events",
    "deployment_nodes",
    "deployments",
    "fleet",
    "join_tokens",
    "nodes",
    "releases",
}


def test_head_is_the_one_named_initial_revision() -> None:
    """The migration history has exactly one revision, ``0001_initial``, and it is head."""
    scripts = ScriptDirectory.from_config(alembic_config())
    revisions = list(scripts.walk_revisions())
    assert [r.revision for r in revisions] == ["0001_initial"]
    assert scripts.get_heads() == ["0001_initial"]
    assert head_revision() == "0001_initial"
    assert revisions[0].path.endswith("versions/0001_initial.py")


def test_open_applies_migrations_to_head(db: Database) -> None:
    """Opening a database creates every table and records the head revision."""
    with db.engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == TABLES
        assert current_revision(connection) == "0001_initial"


def test_reopening_is_idempotent(target: Target) -> None:
    """Opening an up-to-date database again changes nothing and keeps the data."""
    with target.open() as db, db.session() as session:
        session.add(Node(name="n", status="pending", created_at=datetime.now(UTC)))
    with target.open() as db, db.engine.connect() as connection:
        assert current_revision(connection) == "0001_initial"
        assert connection.execute(text("SELECT name FROM nodes")).scalars().all() == ["n"]


def test_schema_matches_the_models(db: Database) -> None:
    """The migrated schema is exactly what the models declare (autogenerate finds nothing)."""
    # Alembic misreads SQLite's DEFAULT '' as a difference, so defaults are compared on PG.
    opts = {"compare_type": True, "compare_server_default": db.dialect == "postgresql"}
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts=opts)
        assert compare_metadata(context, Base.metadata) == []


def test_concurrent_first_opens_both_succeed(target: Target) -> None:
    """Two processes' worth of opens racing on an empty database both end at head."""
    errors: list[BaseException] = []

    def open_once() -> None:
        try:
            target.open().close()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_once) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


OPEN_ONCE = """
import sys
from pathlib import Path
from knightwatch.store import open_database
open_database(sys.argv[1] or None, Path(sys.argv[2])).close()
"""


def test_replicas_starting_together_all_migrate(target: Target) -> None:
    """Separate processes opening one empty database at once all succeed (no DDL races)."""
    argv = [sys.executable, "-c", OPEN_ONCE, target.url or "", str(target.data_dir)]
    processes = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    failures = [p.stderr.read() for p in processes if p.stderr and p.wait(60) != 0]
    for process in processes:
        if process.stderr:
            process.stderr.close()
    assert failures == []


def test_database_from_a_newer_knightwatch_is_refused(target: Target) -> None:
    """A database at a revision this code does not know raises StoreError, not a traceback."""
    with target.open() as db, db.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(StoreError, match="cannot migrate the database") as caught:
        target.open()
    assert "newer knightwatch" in (caught.value.hint or "")
