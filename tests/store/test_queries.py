"""The generic helpers: the fleet row, the active deployment, deployment events."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from knightwatch.store import (
    Database,
    Deployment,
    DeploymentEvent,
    Fleet,
    Release,
    active_deployment,
    get_fleet,
    record_event,
)
from knightwatch.vocabulary import TERMINAL_STATES

T0 = datetime(2012, 8, 1, 13, 30, tzinfo=UTC)
DIGEST = "a" * 64


def push_release(db: Database) -> None:
    """Store one release to deploy."""
    with db.session() as session:
        session.add(
            Release(
                digest=DIGEST,
                release_id="smars@1.0.0+aaaaaaaaaaaa",
                name="smars",
                version="1.0.0",
                manifest=b"{}",
                sbom=b"{}",
                envelope=b"{}",
                signed_by="kw:key",
                pushed_at=T0,
                pushed_by="alice",
            )
        )


def start_deployment(db: Database, state: str) -> int:
    """Record a deployment in ``state`` and return its id."""
    with db.session() as session:
        row = Deployment(
            kind="deploy",
            release_digest=DIGEST,
            strategy="atomic",
            state=state,
            requested_by="alice",
            created_at=T0,
            updated_at=T0,
        )
        session.add(row)
        session.flush()
        return row.id


class TestGetFleet:
    def test_creates_the_row_once(self, db: Database) -> None:
        """The first call creates the fleet row with ``updated_at=now``; later calls return it."""
        with db.session() as session:
            fleet = get_fleet(session, now=T0)
            assert (fleet.id, fleet.desired_digest, fleet.updated_at) == (1, None, T0)
            fleet.desired_digest = DIGEST
        with db.session() as session:
            again = get_fleet(session, for_update=True, now=T0 + timedelta(hours=1))
            assert (again.desired_digest, again.updated_at) == (DIGEST, T0)
            assert session.scalars(select(Fleet)).all() == [again]

    def test_concurrent_first_calls_create_one_row(self, db: Database) -> None:
        """Racing first calls all succeed and leave exactly one fleet row."""
        errors: list[BaseException] = []

        def call() -> None:
            try:
                with db.session() as session:
                    get_fleet(session, for_update=True, now=T0)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        with db.session() as session:
            assert len(session.scalars(select(Fleet)).all()) == 1


class TestActiveDeployment:
    def test_none_when_nothing_ran(self, db: Database) -> None:
        """A database without deployments has no active one."""
        with db.session() as session:
            assert active_deployment(session) is None

    def test_terminal_states_are_not_active(self, db: Database) -> None:
        """Deployments in SUCCEEDED, FAILED or ROLLED_BACK are never the active one."""
        push_release(db)
        for state in sorted(TERMINAL_STATES):
            start_deployment(db, state)
        with db.session() as session:
            assert active_deployment(session, for_update=True) is None

    def test_returns_the_oldest_unfinished(self, db: Database) -> None:
        """The active deployment is the oldest whose state is not terminal."""
        push_release(db)
        start_deployment(db, "SUCCEEDED")
        first = start_deployment(db, "PREPARING")
        start_deployment(db, "COMMITTING")
        with db.session() as session:
            found = active_deployment(session)
            assert found is not None
            assert (found.id, found.state) == (first, "PREPARING")


class TestRecordEvent:
    def test_events_are_recorded_in_order(self, db: Database) -> None:
        """Events get increasing ids and keep their node, detail and aware timestamp."""
        push_release(db)
        deployment_id = start_deployment(db, "PREPARING")
        with db.session() as session:
            first = record_event(session, deployment_id, "created", at=T0)
            second = record_event(
                session, deployment_id, "staged", at=T0, node="smars-1", detail="3 files"
            )
            assert second.id > first.id
        with db.session() as session:
            rows = session.scalars(select(DeploymentEvent).order_by(DeploymentEvent.id)).all()
            summary = [(r.event, r.node_name, r.detail, r.at) for r in rows]
        assert summary == [("created", None, "", T0), ("staged", "smars-1", "3 files", T0)]
