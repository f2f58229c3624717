"""Small generic reads and writes over the models; the domain's rules live in control/."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from knightwatch.store.models import Deployment, DeploymentEvent, Fleet
from knightwatch.vocabulary import TERMINAL_STATES

__all__ = ["FLEET_ID", "active_deployment", "get_fleet", "record_event"]

FLEET_ID = 1


def get_fleet(session: Session, *, for_update: bool = False, now: datetime | None = None) -> Fleet:
    """Return the fleet row, creating it (``updated_at=now``) if it does not exist yet.

    ``for_update`` locks the row until the transaction ends on PostgreSQL (on
    SQLite every session already holds the write lock). Concurrent first
    calls are safe: the row is inserted with ``ON CONFLICT DO NOTHING``.
    """
    fleet = session.get(Fleet, FLEET_ID, with_for_update=for_update or None)
    if fleet is not None:
        return fleet
    _insert_fleet_row(session, now or datetime.now(UTC))
    fleet = session.get(Fleet, FLEET_ID, with_for_update=for_update or None)
    if fleet is None:  # pragma: no cover - the row was just inserted or already existed
        raise RuntimeError("the fleet row vanished")
    return fleet


def _insert_fleet_row(session: Session, now: datetime) -> None:
    """Insert the singleton fleet row unless another transaction already did."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(Fleet).values(id=FLEET_ID, updated_at=now).on_conflict_do_nothing()
    session.execute(statement)


def active_deployment(session: Session, *, for_update: bool = False) -> Deployment | None:
    """Return the oldest deployment whose state is not terminal, or None."""
    statement = (
        select(Deployment)
        .where(Deployment.state.not_in(TERMINAL_STATES))
        .order_by(Deployment.id)
        .limit(1)
    )
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).first()


def record_event(
    session: Session,
    deployment_id: int,
    event: str,
    *,
    at: datetime,
    node: str | None = None,
    detail: str = "",
) -> DeploymentEvent:
    """Add one event to a deployment's history and return it (flushed, so it has an id)."""
    row = DeploymentEvent(
        deployment_id=deployment_id, at=at, node_name=node, event=event, detail=detail
    )
    session.add(row)
    session.flush()
    return row
