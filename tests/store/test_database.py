"""Opening a database, its sessions, and the errors a user sees."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from knightwatch.errors import StoreError
from knightwatch.store import Database, Node, open_database
from tests.databases import Target

T0 = datetime(2012, 8, 1, 13, 30, tzinfo=UTC)


def make_node(name: str = "smars-1", **fields: object) -> Node:
    """A pending node with the required fields filled in."""
    return Node(name=name, status="pending", created_at=T0, **fields)


def count_nodes(db: Database) -> int:
    """How many rows the nodes table holds."""
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(Node)) or 0


class TestOpen:
    def test_dialect_names_the_engine(self, db: Database, target: Target) -> None:
        """``Database.dialect`` says which engine is behind it."""
        assert db.dialect == target.dialect

    def test_default_is_sqlite_in_the_data_dir(self, tmp_path: Path) -> None:
        """Without a URL the database is ``data_dir/knightwatch.db``, creating the directory."""
        data_dir = tmp_path / "a" / "b"
        with open_database(None, data_dir) as db:
            assert db.dialect == "sqlite"
        assert (data_dir / "knightwatch.db").is_file()

    def test_sqlite_url_is_accepted(self, tmp_path: Path) -> None:
        """An explicit ``sqlite:///`` URL opens that file, not one in the data directory."""
        path = tmp_path / "elsewhere.db"
        with open_database(f"sqlite:///{path}", tmp_path / "unused") as db:
            assert db.dialect == "sqlite"
        assert path.is_file()
        assert not (tmp_path / "unused").exists()

    def test_postgresql_search_path_comes_from_the_url(self, postgresql_target: Target) -> None:
        """A URL with ``options=-csearch_path%3D…`` puts the tables in that schema."""
        with postgresql_target.open() as db, db.session() as session:
            assert session.scalar(text("SELECT current_schema()")) == postgresql_target.schema
            found = session.scalar(text("SELECT to_regclass('nodes')::text"))
        assert found == "nodes"


class TestSqlitePragmas:
    def pragma(self, db: Database, name: str) -> object:
        """The value of one pragma on a pooled connection."""
        with db.engine.connect() as connection:
            return connection.exec_driver_sql(f"PRAGMA {name}").scalar()

    def test_file_is_in_wal_mode(self, sqlite_target: Target) -> None:
        """The SQLite file uses write-ahead logging."""
        with sqlite_target.open() as db:
            assert self.pragma(db, "journal_mode") == "wal"

    def test_connections_are_durable_and_checked(self, sqlite_target: Target) -> None:
        """Every connection enforces foreign keys, waits 5 s for locks and fsyncs each commit."""
        with sqlite_target.open() as db:
            assert self.pragma(db, "foreign_keys") == 1
            assert self.pragma(db, "busy_timeout") == 5000
            assert self.pragma(db, "synchronous") == 2  # FULL


class TestSession:
    def test_commit_on_success(self, db: Database) -> None:
        """Changes made in a session that ends normally are committed."""
        with db.session() as session:
            session.add(make_node())
        assert count_nodes(db) == 1

    def test_objects_stay_readable_after_the_block(self, db: Database) -> None:
        """Attributes of loaded objects can be read after the session closed."""
        with db.session() as session:
            node = make_node()
            session.add(node)
        assert node.status == "pending"
        assert node.group_name == "default"

    def test_rollback_on_exception_leaves_nothing(self, db: Database) -> None:
        """An exception inside the session rolls back everything, flushed rows included."""
        with pytest.raises(RuntimeError, match="boom"), db.session() as session:
            session.add(make_node("a"))
            session.flush()
            session.add(make_node("b"))
            raise RuntimeError("boom")
        assert count_nodes(db) == 0

    def test_integrity_error_is_a_store_error(self, db: Database) -> None:
        """A duplicate key raises StoreError and rolls back; the database stays usable."""
        with db.session() as session:
            session.add(make_node("a"))
        refused = pytest.raises(StoreError, match="refused the change")
        with refused as caught, db.session() as session:
            session.add(make_node("b"))
            session.flush()
            session.add(make_node("a"))
        assert caught.value.hint
        with db.session() as session:
            assert session.get(Node, "b") is None
            session.add(make_node("c"))
        assert count_nodes(db) == 2

    def test_errors_do_not_carry_row_values(self, db: Database) -> None:
        """Neither the StoreError nor its cause quotes the values of the refused row."""
        secret = "5ec2e7" * 10 + "abcd"
        with db.session() as session:
            session.add(make_node("a"))
        refused = pytest.raises(StoreError)
        with refused as caught, db.session() as session:
            session.add(make_node("a", credential_hash=secret))
        assert secret not in str(caught.value)
        assert secret not in str(caught.value.__cause__)

    def test_sql_errors_are_store_errors(self, db: Database) -> None:
        """A statement the database rejects surfaces as StoreError naming the database."""
        with pytest.raises(StoreError, match="database") as caught, db.session() as session:
            session.execute(text("SELECT * FROM no_such_table"))
        assert caught.value.__cause__ is not None

    def test_concurrent_read_modify_write_loses_nothing(self, db: Database) -> None:
        """Sessions that lock a row before changing it serialise, on both engines."""
        with db.session() as session:
            session.add(make_node())

        def bump(times: int) -> None:
            for _ in range(times):
                with db.session() as session:
                    node = session.get(Node, "smars-1", with_for_update=True)
                    assert node is not None
                    node.service_restarts += 1

        threads = [threading.Thread(target=bump, args=(15,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with db.session() as session:
            node = session.get(Node, "smars-1")
            assert node is not None
            assert node.service_restarts == 45


class TestReading:
    def test_reads_what_was_committed_and_writes_nothing(self, db: Database) -> None:
        """A reading session sees committed rows; a change made in it is discarded."""
        with db.session() as session:
            session.add(make_node("a"))
        with db.reading() as session:
            node = session.get(Node, "a")
            assert node is not None
            node.service_restarts = 99
            session.add(make_node("b"))
        with db.session() as session:
            assert session.get(Node, "b") is None
            assert session.get(Node, "a").service_restarts == 0  # type: ignore[union-attr]

    def test_does_not_wait_for_a_writer(self, db: Database) -> None:
        """While a writer holds its transaction open, a reader answers from the snapshot."""
        with db.session() as session:
            session.add(make_node("a"))
        writing, release = threading.Event(), threading.Event()

        def writer() -> None:
            with db.session() as session:
                session.get(Node, "a", with_for_update=True).service_restarts = 5  # type: ignore[union-attr]
                session.flush()
                writing.set()
                release.wait(30)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert writing.wait(30)
            with db.reading() as session:  # a writer's session would wait here (busy_timeout)
                node = session.get(Node, "a")
                assert node is not None and node.service_restarts == 0
        finally:
            release.set()
            thread.join()
        with db.reading() as session:
            assert session.get(Node, "a").service_restarts == 5  # type: ignore[union-attr]


class TestOpenErrors:
    def test_unreachable_postgresql_is_one_clear_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """An unreachable server raises StoreError saying so, password masked, nothing logged."""
        url = "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/test"
        with pytest.raises(StoreError) as caught:
            open_database(url, tmp_path)
        message = str(caught.value)
        assert message == (
            "cannot reach the database at postgresql+psycopg://postgres:***@127.0.0.1:1/test: "
            "connection refused"
        )
        assert "hunter2" not in message
        assert "PostgreSQL" in (caught.value.hint or "")
        assert capsys.readouterr() == ("", "")
        assert caplog.records == []

    def test_bare_postgresql_scheme_means_psycopg(self, tmp_path: Path) -> None:
        """``postgresql://`` uses psycopg 3 (not the absent psycopg2 default)."""
        with pytest.raises(StoreError, match=r"postgresql\+psycopg://.*connection refused"):
            open_database("postgresql://postgres@127.0.0.1:1/test", tmp_path)

    def test_unopenable_sqlite_file(self, tmp_path: Path) -> None:
        """A SQLite path that cannot be opened raises StoreError naming it."""
        path = tmp_path / "missing-dir" / "kw.db"
        with pytest.raises(StoreError, match="cannot open the database at sqlite:///"):
            open_database(f"sqlite:///{path}", tmp_path)

    def test_data_dir_that_cannot_be_created(self, tmp_path: Path) -> None:
        """A data directory under a regular file raises StoreError."""
        (tmp_path / "file").write_text("")
        with pytest.raises(StoreError, match="cannot create the data directory"):
            open_database(None, tmp_path / "file" / "data")

    @pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url"])
    def test_unsupported_or_malformed_url(self, url: str, tmp_path: Path) -> None:
        """Only SQLite and PostgreSQL URLs are accepted."""
        with pytest.raises(StoreError, match=r"unsupported|malformed"):
            open_database(url, tmp_path)
