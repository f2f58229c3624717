"""The two engines every store-touching test runs on: SQLite always, PostgreSQL when configured.

PostgreSQL runs when ``KNIGHTWATCH_TEST_DATABASE_URL`` is set (for example
``postgresql+psycopg://postgres@127.0.0.1:5432/test``; ``.ci/run`` sets it).
Each test then gets its own schema, ``kw_<random>``, selected through libpq's
``options`` (``-csearch_path=kw_…``) in the URL and dropped afterwards, so
parallel tests (and several developers on one server) never see each
other's tables.
"""

from __future__ import annotations

import contextlib
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

__all__ = ["ENGINES", "PG_ENV", "Target", "postgresql_schema", "target_for"]

PG_ENV = "KNIGHTWATCH_TEST_DATABASE_URL"
ENGINES = ("sqlite", "postgresql")


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


@contextlib.contextmanager
def postgresql_schema(base_url: str) -> Iterator[tuple[str, str]]:
    """A fresh, empty schema: yield its name and a URL selecting it; drop it afterwards."""
    schema = f"kw_{secrets.token_hex(8)}"
    _admin_execute(base_url, f'CREATE SCHEMA "{schema}"')
    try:
        yield schema, _schema_url(base_url, schema)
    finally:
        _admin_execute(base_url, f'DROP SCHEMA "{schema}" CASCADE')


@contextlib.contextmanager
def target_for(engine: str, data_dir: Path) -> Iterator[Target]:
    """A database target on ``engine``; PostgreSQL is skipped when not configured."""
    if engine == "sqlite":
        yield Target("sqlite", None, data_dir)
        return
    base_url = os.environ.get(PG_ENV)
    if not base_url:
        pytest.skip(f"set {PG_ENV} to run the PostgreSQL variant")
    with postgresql_schema(base_url) as (schema, url):
        yield Target("postgresql", url, data_dir, schema)
