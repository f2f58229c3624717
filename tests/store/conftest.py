"""Fixtures that run every store test on SQLite and, when configured, on PostgreSQL.

PostgreSQL runs when ``KNIGHTWATCH_TEST_DATABASE_URL`` is set (for example
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Each test then gets
its own schema, ``kw_<random>``, selected through libpq's ``options``
(``-csearch_path=kw_…``) in the URL, and dropped afterwards: parallel tests
and their migrations never see each other's tables.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from knightwatch.store import Database, open_database

PG_ENV = "KNIGHTWATCH_TEST_DATABASE_URL"


@dataclass(frozen=True)
class Target:
    """Where a test's database lives: a URL (None for SQLite) and a data directory."""

    dialect: str
    url: str | None
    data_dir: Path
    schema: str | None = None

    def open(self) -> Database:
        """Open (and migrate) the database; the caller closes it."""
        return open_database(self.url, self.data_dir)


def _admin_execute(base_url: str, statement: str) -> None:
    """Run one statement in autocommit on the server behind ``base_url``."""
    engine = create_engine(base_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _schema_url(base_url: str, schema: str) -> str:
    """``base_url`` with its search_path set to ``schema`` only."""
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture
def postgresql_target(tmp_path: Path) -> Iterator[Target]:
    """A fresh, empty PostgreSQL schema for this test alone (skipped without a server)."""
    base_url = os.environ.get(PG_ENV)
    if not base_url:
        pytest.skip(f"set {PG_ENV} to run the PostgreSQL variant")
    schema = f"kw_{secrets.token_hex(8)}"
    _admin_execute(base_url, f'CREATE SCHEMA "{schema}"')
    try:
        yield Target("postgresql", _schema_url(base_url, schema), tmp_path / "data", schema)
    finally:
        _admin_execute(base_url, f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def sqlite_target(tmp_path: Path) -> Target:
    """The default embedded database in a fresh data directory."""
    return Target("sqlite", None, tmp_path / "data")


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each engine in turn: SQLite always, PostgreSQL when configured."""
    target: Target = request.getfixturevalue(f"{request.param}_target")
    return target


@pytest.fixture
def db(target: Target) -> Iterator[Database]:
    """An open, migrated database on each engine, closed after the test."""
    database = target.open()
    try:
        yield database
    finally:
        database.close()
