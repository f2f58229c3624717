"""Open the control plane's database: SQLite by default, PostgreSQL at scale.

:func:`open_database` connects, migrates the schema to head and returns a
:class:`Database`, whose :meth:`Database.session` is the one way the domain
reads and writes: a short transaction, committed on success and rolled back
on any exception. Database failures surface as
:class:`~knightwatch.errors.StoreError`, integrity violations included.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from knightwatch.errors import StoreError
from knightwatch.store.migrate import UpgradePlan, plan_upgrade, upgrade
from knightwatch.store.translate import display_url, opening, using

__all__ = ["DB_FILENAME", "Database", "DialectName", "check_upgrade", "open_database"]

DB_FILENAME = "knightwatch.db"
CONNECT_TIMEOUT_S = 10
# Engines are created with hide_parameters=True: rows carry credential hashes, public
# keys and session nonces, which must not reach logs through an exception's text.

DialectName = Literal["sqlite", "postgresql"]

_URL_HINT = "use postgresql+psycopg://user:password@host:5432/dbname or leave it unset for SQLite"

BUSY_TIMEOUT_MS = 5000
"""How long a SQLite writer waits for the write lock (and for its turn) before failing."""

MIGRATION_BUSY_TIMEOUT_MS = 120_000
"""How long opening a SQLite database waits for another process's migration to end."""

# Set on every new SQLite connection. busy_timeout comes first so that the switch
# to WAL waits for other connections instead of failing.
#
# synchronous=FULL, not NORMAL: in WAL mode NORMAL never corrupts the file, but it
# fsyncs the log only at checkpoints, so a transaction that had committed (a deploy
# that had switched the fleet, say) can vanish on power loss. FULL fsyncs the log
# at every commit, so what the control plane told an operator is done stays done.
SQLITE_PRAGMAS = (
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
    "PRAGMA journal_mode = WAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA synchronous = FULL",
)


class Database:
    """An open database: an engine plus short, translated transactions."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._turns = WriteTurns() if engine.dialect.name == "sqlite" else None

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tools and tests; the domain uses sessions)."""
        return self._engine

    @property
    def dialect(self) -> DialectName:
        """``"sqlite"`` or ``"postgresql"``."""
        return "sqlite" if self._engine.dialect.name == "sqlite" else "postgresql"

    @property
    def url(self) -> str:
        """The database URL, password masked, for messages and logs."""
        return display_url(self._engine.url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Yield a session inside one transaction: commit on success, roll back on exception.

        Objects stay readable after the block (attributes are not expired on
        commit). Database errors, integrity violations included, are raised
        as :class:`StoreError`; other exceptions pass through after rollback.
        """
        turn = self._turns if self._turns is not None else contextlib.nullcontext()
        with turn, using(self._engine.url), self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """Yield a session for reads only: one consistent snapshot, always rolled back.

        On SQLite it begins deferred, so it neither waits for nor holds the
        write lock (WAL readers never block writers); whatever is changed in
        it is discarded. Use it for reports and status, not for decisions
        that write.
        """
        with _reading_only(), using(self._engine.url), self._sessions() as session:
            session.begin()
            try:
                yield session
            finally:
                session.rollback()

    def close(self) -> None:
        """Close every pooled connection. The object must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_database(url: str | None, data_dir: Path) -> Database:
    """Open (and migrate to head) the database at ``url``, or SQLite in ``data_dir``.

    With ``url`` None the database is ``data_dir/knightwatch.db``, and
    ``data_dir`` is created if missing. PostgreSQL URLs may carry libpq
    parameters in the query, e.g. ``?options=-csearch_path%3Dmy_schema``.
    """
    parsed = _default_url(data_dir) if url is None else _parse_url(url)
    engine = _create_engine(parsed)
    try:
        with opening(parsed), engine.connect() as connection, _waiting_for_migrations(connection):
            _back_up_before_upgrade(connection, parsed)
            upgrade(connection)
    except BaseException:
        engine.dispose()
        raise
    return Database(engine)


def check_upgrade(url: str | None, data_dir: Path) -> UpgradePlan:
    """What :func:`open_database` would migrate, without changing or creating anything.

    A SQLite database that does not exist yet would be created at head: every
    migration is pending. A schema newer than this code raises
    :class:`~knightwatch.errors.SchemaTooNewError`.
    """
    if url is None:
        path = data_dir / DB_FILENAME
        if not path.exists():
            return plan_upgrade_of_nothing()
        parsed = URL.create("sqlite+pysqlite", database=str(path))
    else:
        parsed = _parse_url(url)
    engine = _create_engine(parsed)
    try:
        with opening(parsed), engine.connect() as connection, _reading_only():
            return plan_upgrade(connection)
    finally:
        engine.dispose()


def plan_upgrade_of_nothing() -> UpgradePlan:
    """The plan for a database that does not exist yet: every migration, from nothing."""
    engine = create_engine("sqlite+pysqlite://")
    try:
        with engine.connect() as connection:
            return plan_upgrade(connection)
    finally:
        engine.dispose()


def _back_up_before_upgrade(connection: Connection, url: URL) -> None:
    """Copy a SQLite database that is about to be migrated to ``<file>.before-<head>``.

    A migration runs in one transaction, so a failed one changes nothing; the
    copy is for the day after, when an upgrade turned out to be unwanted (a
    downgrade is refused). PostgreSQL is backed up by its own tools.
    """
    if url.get_backend_name() != "sqlite" or not url.database:
        return
    with _reading_only():  # a snapshot: another process's migration may hold the write lock
        plan = plan_upgrade(connection)
    connection.rollback()  # the plan's read must not hold the file while it is copied
    if plan.current is None or plan.up_to_date:
        return
    target = Path(f"{url.database}.before-{plan.head}")
    if target.exists():
        return
    partial = target.with_name(f"{target.name}.partial")
    source = connection.connection.dbapi_connection
    if source is None:
        return
    try:
        backup = sqlite3.connect(partial)
        try:
            source.backup(backup)
        finally:
            backup.close()
        os.chmod(partial, 0o600)
        os.replace(partial, target)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(
            f"cannot back up the database to {target} before upgrading it: {exc}",
            hint="free space next to the database, or copy it away and start again",
        ) from exc


def _default_url(data_dir: Path) -> URL:
    """The URL of the embedded SQLite database, creating its directory (0700) and file (0600).

    SQLite gives the WAL and SHM files the mode of the database file, so
    they are private too; files an older version made readable are narrowed.
    """
    path = data_dir / DB_FILENAME
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the data directory {data_dir}: {exc.strerror}") from exc
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        for name in (DB_FILENAME, f"{DB_FILENAME}-wal", f"{DB_FILENAME}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(data_dir / name, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot create the database in {data_dir}: {exc.strerror}") from exc
    return URL.create("sqlite+pysqlite", database=str(path))


def _parse_url(text: str) -> URL:
    """Parse a database URL; bare ``postgresql://`` and ``postgres://`` mean psycopg 3."""
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise StoreError("the database URL is malformed", hint=_URL_HINT) from exc
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"unsupported database {display_url(url)}", hint=_URL_HINT)
    return url


def _create_engine(url: URL) -> Engine:
    """An engine for ``url`` with the per-dialect settings installed."""
    try:
        if url.get_backend_name() == "sqlite":
            return _sqlite_engine(url)
        return _postgresql_engine(url)
    except NoSuchModuleError as exc:
        raise StoreError(f"no driver for {display_url(url)}", hint=_URL_HINT) from exc


def _postgresql_engine(url: URL) -> Engine:
    """A PostgreSQL engine that fails fast when the server is unreachable."""
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    if "application_name" not in url.query:
        connect_args["application_name"] = "knightwatch"
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True, hide_parameters=True)


class WriteTurns:
    """SQLite's writers of this process, served in the order they asked (a ticket lock).

    SQLite's own lock is not fair: a writer waiting in its busy handler polls,
    and a thread that commits and begins again at once (the store thread
    draining a backlog of agent reports) can win every time, until the
    waiter's ``busy_timeout`` runs out. Taking a turn first makes an
    operator's halt wait for at most the transaction in progress. A thread
    that already holds the turn may open another session inside it. A writer
    that waits longer than ``busy_timeout`` gives up with the error SQLite
    would have given, and its turn is skipped.
    """

    def __init__(self, timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> None:
        self._timeout_s = timeout_s
        self._changed = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()
        self._owner: int | None = None
        self._depth = 0

    def __enter__(self) -> None:
        me = threading.get_ident()
        with self._changed:
            if self._owner == me:
                self._depth += 1
                return
            ticket = self._next_ticket
            self._next_ticket += 1
            if not self._changed.wait_for(lambda: self._serving == ticket, self._timeout_s):
                self._abandoned.add(ticket)
                raise StoreError(
                    f"the database is busy: no other writer let go of it in {self._timeout_s:g} s",
                    hint="a transaction is stuck; see the control plane's log",
                )
            self._owner, self._depth = me, 1

    def __exit__(self, *_exc: object) -> None:
        with self._changed:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._serving += 1
                while self._serving in self._abandoned:
                    self._abandoned.discard(self._serving)
                    self._serving += 1
                self._changed.notify_all()


def _sqlite_engine(url: URL) -> Engine:
    """A SQLite engine with WAL, foreign keys, durable commits and real transactions."""
    engine = create_engine(url, hide_parameters=True)
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _on_sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    """Set the pragmas and take transaction control away from the sqlite3 module."""
    # sqlite3 (before Python 3.12's autocommit=False) never emits BEGIN before a
    # SELECT, so reads would escape the transaction; SQLAlchemy emits it instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


_READING: ContextVar[bool] = ContextVar("knightwatch_reading", default=False)
"""True inside :meth:`Database.reading`: a SQLite transaction begins deferred."""


@contextmanager
def _reading_only() -> Iterator[None]:
    """SQLite transactions begun inside begin deferred: they read a snapshot, take no lock."""
    token = _READING.set(True)
    try:
        yield
    finally:
        _READING.reset(token)


@contextmanager
def _waiting_for_migrations(connection: Connection) -> Iterator[None]:
    """On SQLite, wait up to ``MIGRATION_BUSY_TIMEOUT_MS`` for another opener's migration.

    Replicas started together all open the database; one migrates while the
    others wait for its write lock, and on a loaded machine a full migration
    can take longer than the ``busy_timeout`` that suits a request.
    """
    raw = connection.connection.dbapi_connection
    if connection.dialect.name != "sqlite" or raw is None:
        yield
        return
    # on the driver's connection: through SQLAlchemy the pragma would begin a transaction
    raw.execute(f"PRAGMA busy_timeout = {MIGRATION_BUSY_TIMEOUT_MS}")
    try:
        yield
    finally:
        raw.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _on_sqlite_begin(connection: Connection) -> None:
    """Begin every transaction as a writer, waiting (``busy_timeout``) for the write lock.

    A deferred BEGIN that reads and then writes fails at once with "database is
    locked" if another connection wrote meanwhile; IMMEDIATE queues writers up
    front instead, much as ``SELECT ... FOR UPDATE`` does on PostgreSQL. So on
    SQLite sessions run one at a time: keep them short. A reading session
    (:meth:`Database.reading`) begins deferred: it only reads a snapshot.
    """
    connection.exec_driver_sql("BEGIN" if _READING.get() else "BEGIN IMMEDIATE")
