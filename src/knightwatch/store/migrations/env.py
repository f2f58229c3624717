"""Alembic environment: run knightwatch's migrations on the connection handed over in code.

Only :func:`knightwatch.store.migrate.upgrade` (called when a database opens)
runs this file; it passes the connection in ``config.attributes``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from knightwatch.store.models import Base

# Replicas that start together must not migrate one schema at the same time. The
# lock is per schema, so isolated test schemas never wait for each other.
PG_LOCK = "SELECT pg_advisory_xact_lock(hashtext('knightwatch.migrate:' || current_schema()))"


def run_migrations(connection: Connection) -> None:
    """Bring the schema behind ``connection`` to head inside one transaction."""
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text(PG_LOCK))
        context.run_migrations()


def main() -> None:
    """Run the migrations on the connection from the config, refusing other modes."""
    connection = context.config.attributes.get("connection")
    if context.is_offline_mode() or not isinstance(connection, Connection):
        raise RuntimeError("knightwatch migrations run only through knightwatch.store.migrate")
    run_migrations(connection)


main()
