"""Turn driver and SQLAlchemy errors into :class:`~knightwatch.errors.StoreError`.

The user sees one line naming the database (password masked) and what went
wrong; the original exception stays attached as ``__cause__`` for logs.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from alembic.util import CommandError
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from knightwatch.errors import StoreError

__all__ = ["display_url", "opening", "using"]

POSTGRES_HINT = "check that PostgreSQL is running and reachable and that the database URL is right"
SQLITE_HINT = "check that the data directory exists, is writable and is on a local disk"


def display_url(url: URL) -> str:
    """Render ``url`` for messages, with any password replaced by ``***``."""
    return url.render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of a driver's message, with runs of spaces collapsed."""
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    for line in str(cause).splitlines():
        if line.strip():
            return " ".join(line.split())
    return type(cause).__name__


def _connect_reason(exc: BaseException) -> str:
    """The innermost clause of a connection failure.

    ``connection to server at "h", port 1 failed: Connection refused`` gives
    ``connection refused``; the URL in the message already names the server.
    """
    reason = _first_line(exc).rsplit(": ", 1)[-1].strip()
    reason = re.sub(r"^\[Errno -?\d+\] ", "", reason)
    if len(reason) > 1 and reason[0].isupper() and reason[1].islower():
        reason = reason[0].lower() + reason[1:]
    return reason


def _hint(url: URL) -> str:
    """What to check first for a database of this kind."""
    return SQLITE_HINT if url.get_backend_name() == "sqlite" else POSTGRES_HINT


@contextmanager
def opening(url: URL) -> Iterator[None]:
    """Translate errors raised while connecting to and migrating the database at ``url``."""
    where = display_url(url)
    try:
        yield
    except OperationalError as exc:
        verb = "open" if url.get_backend_name() == "sqlite" else "reach"
        message = f"cannot {verb} the database at {where}: {_connect_reason(exc)}"
        raise StoreError(message, hint=_hint(url)) from exc
    except (DBAPIError, sqlite3.Error) as exc:
        message = f"cannot prepare the database at {where}: {_first_line(exc)}"
        raise StoreError(message, hint=_hint(url)) from exc
    except CommandError as exc:
        message = f"cannot migrate the database at {where}: {exc}"
        hint = "the database may have been migrated by a newer knightwatch; upgrade knightwatch"
        raise StoreError(message, hint=hint) from exc


@contextmanager
def using(url: URL) -> Iterator[None]:
    """Translate errors raised inside a transaction on the database at ``url``."""
    where = display_url(url)
    try:
        yield
    except IntegrityError as exc:
        message = f"the database refused the change: {_first_line(exc)}"
        hint = "another request may have changed the same records; reload and retry"
        raise StoreError(message, hint=hint) from exc
    except OperationalError as exc:
        message = f"the database at {where} failed: {_first_line(exc)}"
        raise StoreError(message, hint=_hint(url)) from exc
    except (DBAPIError, sqlite3.Error) as exc:
        message = f"database error at {where}: {_first_line(exc)}"
        raise StoreError(message, hint=_hint(url)) from exc
