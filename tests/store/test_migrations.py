"""Migrations: applied when a database opens, idempotent, and in step with the models."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, select, text

from knightwatch.errors import SchemaTooNewError, StoreError
from knightwatch.store import Base, Database, Deployment, DeploymentNode, Node, database
from knightwatch.store.database import check_upgrade
from knightwatch.store.migrate import alembic_config, current_revision, head_revision
from tests.databases import Target

TABLES = {
    "alembic_version",
    "alert_notifications",
    "alerts",
    "audit_log",
    "audit_results",
    "audits",
    "lifecycle_events",
    "retirement_nodes",
    "retirements",
    "users",
    "change_requests",
    "change_approvals",
    "change_ticks",
    "review_items",
    "deployment_events",
    "deployment_nodes",
    "deployments",
    "fleet",
    "flags",
    "flag_changes",
    "flag_evaluations",
    "flag_values",
    "release_flags",
    "halt_nodes",
    "halts",
    "join_tokens",
    "nodes",
    "releases",
}


HEAD = "0009_agent_versions"


def test_history_is_one_line_ending_at_head() -> None:
    """The migration history is a single line of named revisions, newest at head."""
    scripts = ScriptDirectory.from_config(alembic_config())
    revisions = list(scripts.walk_revisions())
    assert [r.revision for r in revisions] == [
        HEAD,
        "0008_changes",
        "0007_users",
        "0006_audit_log",
        "0005_flags",
        "0004_vocabulary",
        "0003_safety",
        "0002_audit",
        "0001_initial",
    ]
    assert scripts.get_heads() == [HEAD]
    assert head_revision() == HEAD
    assert revisions[-1].path.endswith("versions/0001_initial.py")


def test_open_applies_migrations_to_head(db: Database) -> None:
    """Opening a database creates every table and records the head revision."""
    with db.engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == TABLES
        assert current_revision(connection) == HEAD


def test_reopening_is_idempotent(target: Target) -> None:
    """Opening an up-to-date database again changes nothing and keeps the data."""
    with target.open() as db, db.session() as session:
        session.add(Node(name="n", status="pending", created_at=datetime.now(UTC)))
    with target.open() as db, db.engine.connect() as connection:
        assert current_revision(connection) == HEAD
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


def test_an_open_waits_for_another_openers_migration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An opener whose write lock is held longer than a request would wait still opens.

    Another process migrating (here: a raw connection holding the write lock)
    may take longer than the ``busy_timeout`` requests use, cut to 0.2 s here;
    opening waits for it instead of failing with "database is locked".
    """
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr(database, "SQLITE_PRAGMAS", ("PRAGMA busy_timeout = 200",))
    holder = sqlite3.connect(
        tmp_path / "knightwatch.db", isolation_level=None, check_same_thread=False
    )
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.5, holder.rollback)
    release.start()
    try:
        db = database.open_database(None, tmp_path)
    finally:
        release.join()
        holder.close()
    with db.reading() as session:
        assert current_revision(session.connection()) == head_revision()
        assert session.connection().exec_driver_sql("PRAGMA busy_timeout").scalar() == 200
    db.close()


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
    """A schema this code does not know is refused before any migration runs, and left as is."""
    with target.open() as db, db.session() as session:
        session.add(Node(name="kept", status="pending", created_at=datetime.now(UTC)))
    with target.open() as db, db.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaTooNewError) as caught:
        target.open()
    assert "schema is at 9999_future" in caught.value.message
    assert f"schema {HEAD}" in caught.value.message
    assert "newer" in caught.value.message and "restore the backup" in (caught.value.hint or "")
    with pytest.raises(SchemaTooNewError):
        check_upgrade(target.url, target.data_dir)
    engine = create_engine(target.url or f"sqlite:///{target.data_dir / 'knightwatch.db'}")
    try:
        with engine.connect() as connection:
            assert current_revision(connection) == "9999_future"
            assert connection.execute(text("SELECT name FROM nodes")).scalars().all() == ["kept"]
    finally:
        engine.dispose()


def _database_at(target: Target, revision: str) -> str:
    """Create ``target``'s database at ``revision`` (not head); return its URL."""
    url = target.url or f"sqlite:///{target.data_dir / 'knightwatch.db'}"
    target.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            command.upgrade(alembic_config(connection), revision)
            connection.commit()
    finally:
        engine.dispose()
    return url


def test_check_upgrade_lists_what_a_start_would_apply_and_changes_nothing(
    target: Target,
) -> None:
    """--check-upgrade's plan: the revisions after the database's, oldest first; none applied."""
    url = _database_at(target, "0006_audit_log")
    plan = check_upgrade(target.url, target.data_dir)
    scripts = ScriptDirectory.from_config(alembic_config())
    expected = [r.revision for r in scripts.iterate_revisions("heads", "0006_audit_log")][::-1]
    assert plan.current == "0006_audit_log" and plan.head == HEAD and not plan.up_to_date
    assert [m.revision for m in plan.pending] == expected
    assert plan.pending[0].revision == "0007_users" and plan.pending[0].summary.startswith("People")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            assert current_revision(connection) == "0006_audit_log"
    finally:
        engine.dispose()
    with target.open():
        pass
    assert check_upgrade(target.url, target.data_dir).up_to_date


def test_check_upgrade_of_no_database_creates_nothing(tmp_path: Path) -> None:
    """With no SQLite file yet, every migration is pending and no file or directory appears."""
    data = tmp_path / "data"
    plan = check_upgrade(None, data)
    assert plan.current is None and len(plan.pending) == len(
        list(ScriptDirectory.from_config(alembic_config()).walk_revisions())
    )
    assert not data.exists()


def test_a_sqlite_database_is_copied_aside_before_it_is_migrated(tmp_path: Path) -> None:
    """The copy is the database as it was: at its old revision, with its rows."""
    target = Target("sqlite", None, tmp_path / "data")
    url = _database_at(target, "0006_audit_log")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO nodes (name, group_name, status, created_at, drift_state, "
                "drift_findings) VALUES ('old', 'default', 'enrolled', :now, 'unknown', '[]')"
            ),
            {"now": datetime.now(UTC)},
        )
    engine.dispose()
    with target.open():
        pass
    backup = tmp_path / "data" / f"knightwatch.db.before-{HEAD}"
    assert backup.exists() and backup.stat().st_mode & 0o777 == 0o600
    copy = sqlite3.connect(backup)
    try:
        assert copy.execute("SELECT version_num FROM alembic_version").fetchone() == (
            "0006_audit_log",
        )
        assert copy.execute("SELECT name FROM nodes").fetchall() == [("old",)]
    finally:
        copy.close()
    with target.open():  # up to date: no second copy is attempted
        pass


def test_upgrade_from_the_first_schema_keeps_the_data(target: Target) -> None:
    """A database made by 0001 upgrades to head: rows kept, new columns at their defaults."""
    engine = create_engine(_database_at(target, "0001_initial"))
    try:
        with engine.connect() as connection:
            now = datetime.now(UTC)
            connection.execute(
                text(
                    "INSERT INTO nodes (name, group_name, status, created_at) "
                    "VALUES ('old', 'default', 'enrolled', :now)"
                ),
                {"now": now},
            )
            connection.commit()
    finally:
        engine.dispose()
    with target.open() as db, db.session() as session:
        node = session.get(Node, "old")
        assert node is not None
        assert (node.status, node.drift_state, node.drift_findings) == ("enrolled", "unknown", "[]")
        node.status = "drained"  # allowed by the new CHECK constraint
    with target.open() as db, db.engine.connect() as connection:
        assert current_revision(connection) == HEAD


def test_upgrade_to_the_vocabulary_keeps_deployments_and_then_refuses_unknown_words(
    target: Target,
) -> None:
    """A 0003 database with a deployment upgrades; afterwards an unknown phase is refused."""
    engine = create_engine(_database_at(target, "0003_safety"))
    now = datetime.now(UTC)
    try:
        with engine.connect() as connection:
            statements = [
                "INSERT INTO releases (digest, release_id, name, version, manifest, sbom, "
                "envelope, signed_by, pushed_at, pushed_by) VALUES ('" + "a" * 64 + "', "
                "'r@1+aaaaaaaaaaaa', 'r', '1', :blob, :blob, :blob, 'k', :now, 'alice')",
                "INSERT INTO nodes (name, group_name, status, created_at) "
                "VALUES ('old', 'default', 'enrolled', :now)",
                "INSERT INTO deployments (kind, release_digest, strategy, state, soak_s, "
                "requested_by, created_at, updated_at) VALUES ('deploy', '" + "a" * 64 + "', "
                "'atomic', 'SUCCEEDED', 0, 'alice', :now, :now)",
            ]
            for statement in statements:
                connection.execute(text(statement), {"now": now, "blob": b"{}"})
            connection.commit()
    finally:
        engine.dispose()
    with target.open() as db, db.session() as session:
        kept = session.scalars(select(Deployment)).one()
        assert kept.state == "SUCCEEDED"
        assert session.get(Node, "old") is not None
    with target.open() as db, pytest.raises(StoreError), db.session() as session:
        session.add(
            DeploymentNode(
                deployment_id=kept.id,
                node_name="old",
                role="fleet",
                phase="VERIFIED",
                updated_at=now,
            )
        )
        session.flush()


def test_upgrade_to_agent_versions_keeps_nodes_and_knows_nothing_of_their_agents(
    target: Target,
) -> None:
    """A 0008 (knightwatch 0.1.0) node upgrades: its row kept, no agent version, no refusal."""
    engine = create_engine(_database_at(target, "0008_changes"))
    now = datetime.now(UTC)
    try:
        with engine.connect() as connection:
            connection.execute(
                text(
                    "INSERT INTO nodes (name, group_name, status, created_at, connected, "
                    "service_state) VALUES ('old', 'edge', 'enrolled', :now, true, 'running')"
                ),
                {"now": now},
            )
            connection.commit()
    finally:
        engine.dispose()
    with target.open() as db, db.session() as session:
        node = session.get(Node, "old")
        assert node is not None
        assert (node.group_name, node.status, node.service_state) == ("edge", "enrolled", "running")
        assert (node.agent_version, node.agent_protocol) == (None, None)
        assert (node.refused_at, node.refusal) == (None, None)
        node.agent_version, node.agent_protocol = "0.1.x", 1
        node.refused_at, node.refusal = now, "agent knightwatch 0.9.0 speaks protocol 3"
    with target.open() as db, db.session() as session:
        node = session.get(Node, "old")
        assert node is not None and (node.agent_version, node.agent_protocol) == ("0.1.x", 1)
        assert node.refusal == "agent knightwatch 0.9.0 speaks protocol 3"
