"""Fleet status: current facts versus last-known ones, and conditions aged from their start.

Every test runs on a real store (SQLite, and PostgreSQL when
``KNIGHTWATCH_TEST_DATABASE_URL`` is set) with a virtual clock, feeding the
same change points the adapters call: report ingest, connect and
disconnect, the orchestrator's decisions, drain. Status is read the way
``GET /status`` reads it, in a read-only session.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from knightwatch.clock import VirtualClock
from knightwatch.control.deploy import Orchestrator
from knightwatch.control.deploy_requests import DeployRequest, DeployTimeouts
from knightwatch.control.fleet import (
    ingest_report,
    mark_all_disconnected,
    mark_connected,
    mark_disconnected,
    record_fleet_conditions,
)
from knightwatch.control.fleet_status import (
    FleetState,
    FleetStatus,
    NodeLiveness,
    NodeStatus,
    fleet_status,
)
from knightwatch.control.nodes import drain_node
from knightwatch.control.statistics import fleet_statistics
from knightwatch.protocol import (
    Ack,
    AckPhase,
    NodeState,
    Report,
    ServiceState,
    ServiceStatus,
)
from knightwatch.store import Database, Node, Release
from knightwatch.store.queries import get_fleet
from tests.control.test_orchestrator import RecordingSink

T0 = datetime(2012, 8, 1, 9, 30, tzinfo=UTC)
OLD, NEW = "a" * 64, "b" * 64
NAMES = {OLD: "smars@1+aaaaaaaaaaaa", NEW: "smars@2+bbbbbbbbbbbb"}
NODES = ("n1", "n2", "n3")
HOURS = 3 * 3600.0


@pytest.fixture
def clock() -> VirtualClock:
    """A clock that moves only when the test says so."""
    return VirtualClock(T0)


@pytest.fixture
def db(db: Database, clock: VirtualClock) -> Database:
    """Releases OLD and NEW; n1..n3 enrolled, connected, reporting OLD; the fleet on OLD."""
    with db.session() as session:
        for digest, release_id in NAMES.items():
            session.add(
                Release(
                    digest=digest,
                    release_id=release_id,
                    name="smars",
                    version=release_id[6],
                    manifest=b"{}",
                    sbom=b"{}",
                    envelope=b"{}",
                    signed_by="k",
                    pushed_at=T0,
                    pushed_by="t",
                )
            )
        for name in NODES:
            session.add(Node(name=name, status="enrolled", created_at=T0, desired_digest=OLD))
        get_fleet(session, now=T0).desired_digest = OLD
    for name in NODES:
        connect(db, clock, name)
        report(db, clock, name, OLD)
    return db


@pytest.fixture
def orchestrator(db: Database, clock: VirtualClock) -> Orchestrator:
    """An orchestrator with 30 s phase timeouts and a sink that records commands."""
    timeouts = DeployTimeouts(prepare_s=30, commit_s=30, rollback_s=30, canary_soak_s=5)
    return Orchestrator(db, RecordingSink(), clock, timeouts)


_SEQ = iter(range(1, 1_000_000))


def report(
    db: Database,
    clock: VirtualClock,
    name: str,
    active: str | None,
    *,
    pid: int = 4242,
    ack: Ack | None = None,
) -> None:
    """Ingest one report from node ``name`` as the agent API does."""
    message = Report(
        node=name,
        nonce="n" * 24,
        seq=next(_SEQ),
        sent_at=clock.now(),
        kind="ack" if ack else "heartbeat",
        state=NodeState(
            active_digest=active,
            service=ServiceStatus(state=ServiceState.RUNNING, pid=pid, version="v"),
        ),
        ack=ack,
    )
    with db.session() as session:
        node = session.get(Node, name)
        assert node is not None
        if ingest_report(session, node, message, clock.now()):
            record_fleet_conditions(session, clock.now())  # as the report batcher does


def connect(db: Database, clock: VirtualClock, name: str) -> None:
    """Node ``name``'s agent connects."""
    with db.session() as session:
        mark_connected(
            session, name, nonce="n" * 24, now=clock.now(), agent_version="0.2.0", protocol=2
        )


def disconnect(db: Database, clock: VirtualClock, name: str) -> None:
    """Node ``name``'s agent goes away."""
    with db.session() as session:
        mark_disconnected(session, name, now=clock.now())


def status(db: Database, clock: VirtualClock) -> FleetStatus:
    """The fleet status, read as GET /status reads it (a read-only snapshot)."""
    with db.reading() as session:
        return fleet_status(session, clock.now())


def node(data: FleetStatus, name: str) -> NodeStatus:
    """Node ``name`` in a fleet status."""
    return next(n for n in data.nodes if n.name == name)


def recorded_mixed_since(db: Database) -> datetime | None:
    """The fleet row's mixed_since, as stored."""
    with db.session() as session:
        return get_fleet(session).mixed_since


def start_prepared(orch: Orchestrator) -> int:
    """Deploy NEW and let every node answer PREPARED: the Commit goes out to all."""
    deployment = orch.start(DeployRequest(release=NEW))
    for name in NODES:
        orch.on_ack(name, Ack(deployment_id=deployment, digest=NEW, phase=AckPhase.PREPARED))
    return deployment


def switch_n2_then_lose_it(db: Database, clock: VirtualClock, orch: Orchestrator) -> int:
    """Deploy NEW; n1 and n3 confirm, n2 is lost mid-COMMIT; the rollback gives up on it."""
    deployment = start_prepared(orch)
    clock.advance(1)
    report(db, clock, "n2", OLD)  # a heartbeat after the Commit, before it was applied
    disconnect(db, clock, "n2")
    orch.on_disconnect("n2")
    for name in ("n1", "n3"):
        orch.on_ack(name, Ack(deployment_id=deployment, digest=OLD, phase=AckPhase.ROLLED_BACK))
    clock.advance(31)
    orch.tick()  # n2's rollback times out: ROLLBACK_FAILED, the deployment is over
    return deployment


class TestAgentGone:
    def test_gone_node_is_unknown_with_its_last_report_and_its_age(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """A node whose agent is gone shows no current service or pid, only last-known ones."""
        clock.advance(10)
        report(db, clock, "n1", OLD, pid=777)
        disconnect(db, clock, "n1")
        clock.advance(60)

        data = status(db, clock)
        n1 = node(data, "n1")
        assert n1.state is NodeLiveness.UNKNOWN and not n1.connected
        assert (n1.service_state, n1.service_pid, n1.active_release) == ("unknown", None, None)
        assert n1.last_known is not None
        assert (n1.last_known.service_state, n1.last_known.service_pid) == ("running", 777)
        assert n1.last_known.active_release == NAMES[OLD]
        assert n1.last_known.age_s == 60 and n1.last_report_age_s == 60
        assert n1.possible_releases == []
        assert node(data, "n2").state is NodeLiveness.CONNECTED
        assert node(data, "n2").last_known is None

    def test_fleet_is_unknown_not_converged_while_a_node_is_unknown(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """With every node last seen on the fleet's release, one gone node makes it UNKNOWN."""
        assert status(db, clock).state is FleetState.CONVERGED
        disconnect(db, clock, "n3")
        data = status(db, clock)
        assert data.state is FleetState.UNKNOWN
        assert any(r.startswith("n3 is UNKNOWN") for r in data.reasons), data.reasons
        connect(db, clock, "n3")
        report(db, clock, "n3", OLD)
        assert status(db, clock).state is FleetState.CONVERGED

    def test_a_drained_node_gone_is_unknown_too(self, db: Database, clock: VirtualClock) -> None:
        """A drained node takes no deploys but still runs code: gone, the fleet is UNKNOWN."""
        with db.session() as session:
            drain_node(session, "n3", at=clock.now(), actor="alice", reason="maintenance")
        assert status(db, clock).state is FleetState.CONVERGED
        disconnect(db, clock, "n3")
        assert status(db, clock).state is FleetState.UNKNOWN

    def test_gone_node_last_on_another_release_makes_the_fleet_mixed_saying_last_reported(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """A gone node last seen on another release is MIXED, worded as a last report."""
        report(db, clock, "n2", NEW)
        disconnect(db, clock, "n2")
        data = status(db, clock)
        assert data.state is FleetState.MIXED
        assert any(f"n2 last reported {NAMES[NEW]}" in r for r in data.reasons), data.reasons

    def test_a_stopping_control_plane_records_every_agent_gone_at_once(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """Every connected node becomes last-known at the stop; MIXED is recorded once, then."""
        report(db, clock, "n2", NEW)  # n2 on another release: the fleet is MIXED
        disconnect(db, clock, "n3")
        clock.advance(5)
        with db.session() as session:  # as if the change point had missed it
            get_fleet(session, now=clock.now()).mixed_since = None
        with db.session() as session:
            assert mark_all_disconnected(session, now=clock.now()) == 2  # n1 and n2, not n3
        data = status(db, clock)
        assert all(not n.connected and n.state is NodeLiveness.UNKNOWN for n in data.nodes)
        with db.reading() as session:
            gone = {n.name: n.disconnected_at for n in session.query(Node)}
            assert get_fleet(session).mixed_since == clock.now()
        assert gone["n1"] == gone["n2"] == clock.now() and gone["n3"] < clock.now()
        with db.session() as session:
            assert mark_all_disconnected(session, now=clock.now()) == 0


class TestUnconfirmedSwitch:
    def test_node_lost_mid_commit_may_run_either_release(
        self, db: Database, clock: VirtualClock, orchestrator: Orchestrator
    ) -> None:
        """Lost while COMMITTING: shown possibly on OLD or NEW, never on OLD; the fleet MIXED."""
        switch_n2_then_lose_it(db, clock, orchestrator)
        data = status(db, clock)
        assert data.deployment_id is None
        n2 = node(data, "n2")
        assert n2.state is NodeLiveness.UNKNOWN and n2.active_release is None
        assert n2.possible_releases == [NAMES[OLD], NAMES[NEW]]
        assert data.state is FleetState.MIXED, data
        assert any("n2 may run any of" in r for r in data.reasons), data.reasons

    def test_node_lost_while_committing_is_uncertain_even_before_the_orchestrator_reacts(
        self, db: Database, clock: VirtualClock, orchestrator: Orchestrator
    ) -> None:
        """Its row still COMMITTING (no reaction yet), a gone node may already have switched."""
        start_prepared(orchestrator)
        disconnect(db, clock, "n2")  # the orchestrator is not told
        data = status(db, clock)
        assert node(data, "n2").possible_releases == [NAMES[OLD], NAMES[NEW]]
        assert any("n2 may run any of" in r for r in data.reasons), data.reasons

    def test_the_agents_own_answer_then_disconnect_is_not_uncertain(
        self, db: Database, clock: VirtualClock, orchestrator: Orchestrator
    ) -> None:
        """A node that answered ROLLBACK_FAILED itself, then left, is known as it reported."""
        deployment = start_prepared(orchestrator)
        failed = Ack(deployment_id=deployment, digest=NEW, phase=AckPhase.COMMIT_FAILED)
        orchestrator.on_ack("n1", failed)  # every node is told to roll back
        clock.advance(1)
        for name in ("n1", "n3"):
            back = Ack(deployment_id=deployment, digest=OLD, phase=AckPhase.ROLLED_BACK)
            orchestrator.on_ack(name, back)
        answer = Ack(deployment_id=deployment, digest=OLD, phase=AckPhase.ROLLBACK_FAILED)
        report(db, clock, "n2", NEW, ack=answer)  # its own answer, with what it runs
        orchestrator.on_ack("n2", answer)
        disconnect(db, clock, "n2")
        n2 = node(status(db, clock), "n2")
        assert n2.state is NodeLiveness.UNKNOWN and n2.possible_releases == []
        assert n2.last_known is not None and n2.last_known.active_release == NAMES[NEW]

    def test_node_that_reported_after_its_failure_then_left_is_not_uncertain(
        self, db: Database, clock: VirtualClock, orchestrator: Orchestrator
    ) -> None:
        """A lost node that came back and reported, then left again, is known as it reported."""
        switch_n2_then_lose_it(db, clock, orchestrator)
        clock.advance(1)
        connect(db, clock, "n2")
        report(db, clock, "n2", NEW)  # it had switched, in truth
        disconnect(db, clock, "n2")
        n2 = node(status(db, clock), "n2")
        assert n2.possible_releases == [] and n2.last_known is not None
        assert n2.last_known.active_release == NAMES[NEW]

    def test_reconnected_node_reports_what_it_runs(
        self, db: Database, clock: VirtualClock, orchestrator: Orchestrator
    ) -> None:
        """Once the lost node reports again, its release is known: no more "possibly"."""
        switch_n2_then_lose_it(db, clock, orchestrator)
        connect(db, clock, "n2")
        report(db, clock, "n2", NEW)
        data = status(db, clock)
        n2 = node(data, "n2")
        assert n2.state is NodeLiveness.CONNECTED and n2.possible_releases == []
        assert n2.active_release == NAMES[NEW]
        assert data.state is FleetState.MIXED
        assert f"n2 runs {NAMES[NEW]}, the fleet runs {NAMES[OLD]}" in data.reasons


class TestConditionAges:
    def test_mixed_age_counts_from_the_report_that_made_it_not_from_the_first_read(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """Nobody reads for three hours after a node switches: the read says three hours."""
        clock.advance(5)
        report(db, clock, "n2", NEW)
        mixed_at = clock.now()
        clock.advance(HOURS)
        data = status(db, clock)
        assert data.state is FleetState.MIXED
        assert data.mixed_since == mixed_at and data.mixed_for_s == HOURS

    def test_mixed_age_counts_from_the_loss_of_a_node_mid_commit(
        self, db: Database, clock: VirtualClock, orchestrator: Orchestrator
    ) -> None:
        """The fleet became mixed when the switching node went away; hours later it says so."""
        switch_n2_then_lose_it(db, clock, orchestrator)
        lost_at = T0 + timedelta(seconds=1)
        clock.advance(HOURS)
        data = status(db, clock)
        assert data.mixed_since == lost_at
        assert data.mixed_for_s == HOURS + 31

    def test_a_reconnect_before_its_first_report_keeps_the_mixed_age(
        self, db: Database, clock: VirtualClock, orchestrator: Orchestrator
    ) -> None:
        """A lost node that reconnects does not restart MIXED's age: it was mixed all along."""
        switch_n2_then_lose_it(db, clock, orchestrator)
        lost_at = T0 + timedelta(seconds=1)
        clock.advance(HOURS)
        connect(db, clock, "n2")
        reconnected = status(db, clock)
        assert node(reconnected, "n2").state is NodeLiveness.UNKNOWN  # nothing said yet
        assert any("n2 is UNKNOWN: its agent has just connected" in r for r in reconnected.reasons)
        with db.session() as session:  # the server tick, between the connect and the report
            record_fleet_conditions(session, clock.now())
        clock.advance(1)
        report(db, clock, "n2", NEW)  # it had switched before it went away
        data = status(db, clock)
        assert node(data, "n2").state is NodeLiveness.CONNECTED
        assert data.state is FleetState.MIXED and data.mixed_since == lost_at

    def test_reading_status_writes_nothing(self, db: Database, clock: VirtualClock) -> None:
        """A fleet mixed behind the change points' back: the read says so, but records nothing."""
        with db.session() as session:  # a change no change point saw
            row = session.get(Node, "n1")
            assert row is not None
            row.active_digest = NEW
        data = status(db, clock)
        assert data.state is FleetState.MIXED and data.mixed_for_s is None
        assert recorded_mixed_since(db) is None
        with db.session() as session:  # what the server tick does within a second
            record_fleet_conditions(session, clock.now())
        clock.advance(30)
        assert status(db, clock).mixed_for_s == 30

    def test_mixed_ends_when_the_fleet_converges_and_a_new_mix_starts_afresh(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """Converging clears the record; the next mix is aged from its own start."""
        report(db, clock, "n1", NEW)
        clock.advance(60)
        report(db, clock, "n1", OLD)
        assert recorded_mixed_since(db) is None
        clock.advance(600)
        report(db, clock, "n3", NEW)
        clock.advance(7)
        assert status(db, clock).mixed_for_s == 7

    def test_draining_the_odd_node_out_ends_mixed_at_the_drain(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """Drain records the change at once: the fleet row says not mixed without any read."""
        report(db, clock, "n3", NEW)
        assert recorded_mixed_since(db) == clock.now()
        with db.session() as session:
            drain_node(session, "n3", at=clock.now(), actor="alice", reason="odd one")
        assert recorded_mixed_since(db) is None

    def test_a_deploy_is_mixed_while_nodes_switch_and_not_once_it_succeeds(
        self, db: Database, clock: VirtualClock, orchestrator: Orchestrator
    ) -> None:
        """The first switched node starts MIXED; the orchestrator's success ends it, unread."""
        deployment = start_prepared(orchestrator)
        for name in NODES:
            clock.advance(1)
            active = Ack(deployment_id=deployment, digest=NEW, phase=AckPhase.ACTIVE)
            report(db, clock, name, NEW, ack=active)
            assert recorded_mixed_since(db) == T0 + timedelta(seconds=1)
            orchestrator.on_ack(name, active)
        assert recorded_mixed_since(db) is None
        assert status(db, clock).state is FleetState.CONVERGED

    def test_drifted_and_halted_ages_count_from_the_nodes_recorded_starts(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """DRIFTED and HALTED are aged from the earliest node's recorded start."""
        with db.session() as session:
            for name, minutes in (("n1", 5), ("n2", 2)):
                row = session.get(Node, name)
                assert row is not None
                row.drift_state = "drifted"
                row.drift_since = T0 + timedelta(minutes=minutes)
            row = session.get(Node, "n3")
            assert row is not None
            row.halted, row.halt_source, row.halted_since = True, "kill", T0
        clock.advance(600)
        data = status(db, clock)
        assert data.state is FleetState.HALTED
        assert (data.drifted_since, data.drifted_for_s) == (T0 + timedelta(minutes=2), 480)
        assert (data.halted_since, data.halted_for_s) == (T0, 600)


class TestStatistics:
    def test_gone_node_is_counted_without_last_known_drift_or_halt(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """/metrics' node counts give a gone node's drift and halt as unknown."""
        report(db, clock, "n2", NEW)
        disconnect(db, clock, "n1")
        clock.advance(45)
        with db.reading() as session:
            stats = fleet_statistics(session, clock.now())
        assert stats.nodes == {("unknown", True, False): 2, ("unknown", False, None): 1}
        assert stats.state is FleetState.MIXED
        assert stats.condition_ages_s == {"mixed": 45}
