"""Every model round-trips, timestamps stay aware UTC, and the schema's constraints hold."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from knightwatch.errors import StoreError
from knightwatch.store import (
    Base,
    Database,
    Deployment,
    DeploymentEvent,
    DeploymentNode,
    Fleet,
    JoinToken,
    Node,
    Release,
)
from knightwatch.vocabulary import DeploymentState, HaltSource, ServiceState

T0 = datetime(2012, 8, 1, 13, 30, 0, 123456, tzinfo=UTC)
NEW_YORK = timezone(timedelta(hours=-4), "EDT")
DIGEST_A = "a" * 64
DIGEST_B = "b" * 64


def release(digest: str = DIGEST_A, release_id: str = "smars@1.0.0+aaaaaaaaaaaa") -> Release:
    """A release with binary blobs that are not valid text."""
    return Release(
        digest=digest,
        release_id=release_id,
        name="smars",
        version="1.0.0",
        manifest=b'{"files":[]}',
        sbom=b"\x00\xff sbom",
        envelope=b"\x89PNG not really",
        signed_by="kw:ed25519:0123abcd",
        pushed_at=T0,
        pushed_by="alice",
    )


def node(name: str = "smars-1", **fields: Any) -> Node:
    """An enrolled node with every column set."""
    values: dict[str, Any] = {
        "name": name,
        "group_name": "nyse",
        "status": "enrolled",
        "created_at": T0,
        "enrolled_at": T0 + timedelta(seconds=1),
        "credential_hash": "c" * 64,
        "public_key": "MCowBQYDK2VwAyEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "desired_digest": DIGEST_A,
        "active_digest": DIGEST_A,
        "previous_digest": DIGEST_B,
        "service_state": "running",
        "service_pid": 4242,
        "service_started_at": 1_343_828_200.123456,
        "service_version": "smars@1.0.0+aaaaaaaaaaaa",
        "service_restarts": 3,
        "service_detail": "ok",
        "last_report": '{"seq": 7}',
        "last_report_at": T0 + timedelta(seconds=2),
        "last_seq": 2**40,
        "session_nonce": "n0nce",
        "connected": True,
        "connected_at": T0,
        "disconnected_at": T0 - timedelta(days=1),
    }
    values.update(fields)
    return Node(**values)


def deployment(**fields: Any) -> Deployment:
    """A canary deployment of release A with every column set."""
    values: dict[str, Any] = {
        "kind": "deploy",
        "release_digest": DIGEST_A,
        "from_digest": DIGEST_B,
        "strategy": "canary",
        "state": "PREPARING",
        "soak_s": 30.5,
        "reason": "quarterly release",
        "requested_by": "alice",
        "created_at": T0,
        "updated_at": T0,
        "deadline": T0 + timedelta(minutes=5),
        "finished_at": None,
    }
    values.update(fields)
    return Deployment(**values)


def columns(row: Base) -> dict[str, Any]:
    """Every column value of a row, by column name."""
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}


def round_trip(db: Database, make: Callable[[], Base], *parents: Callable[[], Base]) -> None:
    """Write ``make()`` (after its parents), read it back in a new session, compare all columns."""
    with db.session() as session:
        session.add_all([p() for p in parents])
        session.flush()
        written = make()
        session.add(written)
        session.flush()
        expected = columns(written)
        key = written.__mapper__.primary_key_from_instance(written)
    with db.session() as session:
        read = session.get(type(written), tuple(key))
        assert read is not None
        assert columns(read) == expected


def add(db: Database, *rows: Base) -> None:
    """Insert rows in one session."""
    with db.session() as session:
        session.add_all(rows)


class TestRoundTrip:
    def test_release(self, db: Database) -> None:
        """A release, binary blobs included, reads back byte for byte."""
        round_trip(db, release)

    def test_node(self, db: Database) -> None:
        """A node with every column set reads back unchanged."""
        round_trip(db, node)

    def test_join_token(self, db: Database) -> None:
        """A join token reads back unchanged."""
        token = JoinToken(
            token_hash="d" * 64, node_name="smars-1", created_at=T0, expires_at=T0, used_at=T0
        )
        round_trip(db, lambda: token, node)

    def test_fleet(self, db: Database) -> None:
        """The fleet row reads back unchanged."""
        fleet = Fleet(
            id=1, desired_digest=DIGEST_A, previous_digest=DIGEST_B, mixed_since=T0, updated_at=T0
        )
        round_trip(db, lambda: fleet)

    def test_deployment(self, db: Database) -> None:
        """A deployment reads back unchanged and gets an id."""
        round_trip(db, deployment, release)

    def test_deployment_node(self, db: Database) -> None:
        """A deployment's node entry reads back unchanged."""
        with db.session() as session:
            session.add_all([release(), node()])
            session.flush()
            session.add(made := deployment())
            session.flush()
            deployment_id = made.id
        entry = DeploymentNode(
            deployment_id=deployment_id,
            node_name="smars-1",
            role="canary",
            previous_digest=DIGEST_B,
            phase="PREPARED",
            reason=None,
            pid=99,
            started_at=1_343_828_200.5,
            version="1.0.0",
            updated_at=T0,
        )
        round_trip(db, lambda: entry)

    def test_deployment_event(self, db: Database) -> None:
        """A deployment event reads back unchanged."""
        with db.session() as session:
            session.add(release())
            session.flush()
            session.add(made := deployment())
        event = DeploymentEvent(
            deployment_id=made.id, at=T0, node_name="smars-1", event="staged", detail="3 files"
        )
        round_trip(db, lambda: event)

    def test_defaults(self, db: Database) -> None:
        """Columns left unset get their documented defaults."""
        add(db, Node(name="n", status="pending", created_at=T0))
        with db.session() as session:
            row = session.get(Node, "n")
            assert row is not None
            assert (row.group_name, row.service_state, row.service_restarts) == (
                "default",
                "none",
                0,
            )
            assert (row.last_seq, row.connected, row.enrolled_at) == (0, False, None)


class TestTimestamps:
    def read_created_at(self, db: Database, value: datetime) -> datetime:
        """Store ``value`` as a node's created_at and read it back in a new session."""
        add(db, Node(name="n", status="pending", created_at=value))
        with db.session() as session:
            row = session.get(Node, "n")
            assert row is not None
            return row.created_at

    def test_read_back_aware_in_utc(self, db: Database) -> None:
        """A timestamp reads back timezone-aware, in UTC, to the microsecond."""
        read = self.read_created_at(db, T0)
        assert read == T0
        assert read.tzinfo is UTC

    def test_other_offsets_are_converted(self, db: Database) -> None:
        """A timestamp with another offset is stored as the same instant in UTC."""
        local = T0.astimezone(NEW_YORK)
        read = self.read_created_at(db, local)
        assert read == local
        assert read.tzinfo is UTC
        assert read.hour == 13

    def test_naive_datetimes_are_refused(self, db: Database) -> None:
        """A naive datetime cannot be stored: its meaning depends on the writer's machine."""
        with pytest.raises(StatementError, match="naive"), db.session() as session:
            session.add(Node(name="n", status="pending", created_at=datetime(2012, 8, 1)))
            session.flush()


class TestConstraints:
    def expect_refusal(self, db: Database, fill: Callable[[Session], None]) -> None:
        """``fill`` must make the database refuse the transaction with a StoreError."""
        with pytest.raises(StoreError, match="refused the change"), db.session() as session:
            fill(session)
            session.flush()

    def test_release_id_is_unique(self, db: Database) -> None:
        """Two releases cannot share a release ID."""
        add(db, release())
        self.expect_refusal(db, lambda s: s.add(release(digest=DIGEST_B)))

    def test_join_token_needs_its_node(self, db: Database) -> None:
        """A join token must name an existing node (foreign keys are on)."""
        token = JoinToken(token_hash="d" * 64, node_name="ghost", created_at=T0, expires_at=T0)
        self.expect_refusal(db, lambda s: s.add(token))

    def test_deployment_needs_its_release(self, db: Database) -> None:
        """A deployment must name a pushed release."""
        self.expect_refusal(db, lambda s: s.add(deployment()))

    def test_event_needs_its_deployment(self, db: Database) -> None:
        """A deployment event must name an existing deployment."""
        event = DeploymentEvent(deployment_id=12345, at=T0, event="staged")
        self.expect_refusal(db, lambda s: s.add(event))

    def test_deployment_node_is_unique_per_deployment(self, db: Database) -> None:
        """A node appears at most once in a deployment."""
        add(db, release(), node())
        with db.session() as session:
            session.add(made := deployment())
        entry = {
            "deployment_id": made.id,
            "node_name": "smars-1",
            "phase": "PREPARING",
            "updated_at": T0,
        }
        add(db, DeploymentNode(role="fleet", **entry))
        self.expect_refusal(db, lambda s: s.add(DeploymentNode(role="canary", **entry)))

    @pytest.mark.parametrize(
        "row",
        [
            lambda: Node(name="n", status="zombie", created_at=T0),
            lambda: deployment(kind="yolo"),
            lambda: deployment(strategy="big-bang"),
            lambda: Fleet(id=2, updated_at=T0),
        ],
        ids=["node-status", "deployment-kind", "deployment-strategy", "second-fleet-row"],
    )
    def test_closed_vocabularies(self, db: Database, row: Callable[[], Base]) -> None:
        """Statuses, kinds, strategies and the fleet singleton are checked by the schema."""
        add(db, release())
        self.expect_refusal(db, lambda s: s.add(row()))

    def test_deployment_ids_are_never_reused(self, db: Database) -> None:
        """Deleting the newest deployment does not free its id for the next one."""
        add(db, release())
        with db.session() as session:
            session.add(first := deployment())
        with db.session() as session:
            session.delete(session.get(Deployment, first.id))
        with db.session() as session:
            session.add(second := deployment())
        assert second.id > first.id


class TestVocabulary:
    """Every column holding a word of knightwatch.vocabulary refuses any other word."""

    def expect_refusal(self, db: Database, fill: Callable[[Session], None]) -> None:
        """``fill`` must make the database refuse the transaction with a StoreError."""
        with pytest.raises(StoreError, match="refused the change"), db.session() as session:
            fill(session)
            session.flush()

    @pytest.mark.parametrize(
        ("column", "word"),
        [
            ("status", "enroled"),
            ("drift_state", "DRIFTED"),
            ("service_state", "sleeping"),
            ("halt_source", "operator"),
        ],
    )
    def test_a_node_refuses_an_unknown_word(self, db: Database, column: str, word: str) -> None:
        """A misspelt or invented status, drift state, service state or halt source."""
        self.expect_refusal(db, lambda s: s.add(node(**{column: word})))

    @pytest.mark.parametrize(
        ("column", "word"),
        [("state", "STAGING"), ("kind", "hotfix"), ("strategy", "blue-green")],
    )
    def test_a_deployment_refuses_an_unknown_word(
        self, db: Database, column: str, word: str
    ) -> None:
        """A deployment state, kind or strategy that does not exist."""
        add(db, release())
        self.expect_refusal(db, lambda s: s.add(deployment(**{column: word})))

    def test_a_deployment_node_refuses_a_phase_that_does_not_exist(self, db: Database) -> None:
        """The phase a test once stored without complaint ("VERIFIED") is refused now."""
        add(db, release(), node())
        with db.session() as session:
            session.add(made := deployment())
            session.flush()
            deployment_id = made.id

        def fill(session: Session) -> None:
            session.add(
                DeploymentNode(
                    deployment_id=deployment_id,
                    node_name="smars-1",
                    role="fleet",
                    phase="VERIFIED",
                    updated_at=T0,
                )
            )

        self.expect_refusal(db, fill)

    def test_every_word_of_the_vocabulary_is_accepted(self, db: Database) -> None:
        """The CHECKs are generated from the enums: each member stores."""
        add(db, release())
        with db.session() as session:
            for index, state in enumerate(DeploymentState):
                session.add(deployment(state=state))
                session.add(node(name=f"n{index}", service_state=list(ServiceState)[index % 6]))
            for source in HaltSource:
                session.add(node(name=f"h-{source}", halt_source=source))
