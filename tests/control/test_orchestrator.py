"""The deploy state machine, decision by decision, on a real store and a virtual clock.

The command sink records what would go down each agent's WebSocket; the
agents' answers are fed in as acks. (Integration tests drive the same
orchestrator with real agents.)
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from knightwatch.clock import VirtualClock
from knightwatch.control.deploy import Orchestrator
from knightwatch.control.deploy_requests import DeployRequest, DeployTimeouts
from knightwatch.control.states import IllegalTransitionError, check_transition
from knightwatch.errors import (
    GateRefusedError,
    InvalidInputError,
    PolicyRefusedError,
    ReleaseNotFoundError,
)
from knightwatch.protocol import Abort, Ack, AckPhase, Commit, Prepare, Rollback
from knightwatch.store import Database, Deployment, DeploymentNode, Node
from knightwatch.store.queries import get_fleet
from knightwatch.vocabulary import TERMINAL_STATES, DeploymentState
from tests.helpers import release_row

OLD, NEW = "a" * 64, "b" * 64
NODES = ("n1", "n2", "n3")
Command = Prepare | Commit | Rollback | Abort


class RecordingSink:
    """Records commands per node; nodes in ``offline`` are not connected."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Command]] = []
        self.offline: set[str] = set()

    def send(self, node: str, message: Command) -> bool:
        """Record ``message`` unless ``node`` is offline."""
        if node in self.offline:
            return False
        self.sent.append((node, message))
        return True

    def take(self) -> list[tuple[str, Command]]:
        """Return and forget what was sent so far."""
        sent, self.sent = self.sent, []
        return sent


@pytest.fixture
def clock() -> VirtualClock:
    """A clock that moves only when the test says so."""
    return VirtualClock(datetime(2012, 8, 1, 13, 0, tzinfo=UTC))


@pytest.fixture
def db(db: Database, clock: VirtualClock) -> Database:
    """A store with releases OLD and NEW and three connected nodes running OLD."""
    now = clock.now()
    with db.session() as session:
        session.add_all([release_row(OLD, "1", now), release_row(NEW, "2", now)])
        for name in NODES:
            session.add(
                Node(
                    name=name,
                    group_name="default",
                    status="enrolled",
                    created_at=now,
                    connected=True,
                    active_digest=OLD,
                    desired_digest=OLD,
                    service_state="running",
                )
            )
        fleet = get_fleet(session, now=now)
        fleet.desired_digest = OLD
    return db


@pytest.fixture
def sink() -> RecordingSink:
    """The recording command sink."""
    return RecordingSink()


@pytest.fixture
def orchestrator(db: Database, sink: RecordingSink, clock: VirtualClock) -> Orchestrator:
    """An orchestrator with short, known timeouts."""
    return Orchestrator(
        db, sink, clock, DeployTimeouts(prepare_s=30, commit_s=30, rollback_s=30, canary_soak_s=5)
    )


def ack(
    orchestrator: Orchestrator,
    node: str,
    deployment: int,
    phase: AckPhase,
    digest: str = NEW,
    reason: str | None = None,
) -> None:
    """Feed one agent acknowledgement."""
    orchestrator.on_ack(
        node, Ack(deployment_id=deployment, digest=digest, phase=phase, reason=reason)
    )


def state(db: Database, deployment: int) -> str:
    """The deployment's recorded state."""
    with db.session() as session:
        row = session.get(Deployment, deployment)
        assert row is not None
        return row.state


def phases(db: Database, deployment: int) -> dict[str, str]:
    """Each node's recorded phase."""
    with db.session() as session:
        return {
            r.node_name: r.phase
            for r in session.query(DeploymentNode).filter_by(deployment_id=deployment)
        }


def kinds(sent: list[tuple[str, Command]]) -> list[tuple[str, str]]:
    """(node, command type) of what was sent."""
    return [(node, message.type) for node, message in sent]


class TestAtomic:
    def test_prepare_everywhere_before_any_commit(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """No node is told to commit until every node has answered PREPARED."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        assert kinds(sink.take()) == [(n, "prepare") for n in NODES]
        ack(orchestrator, "n1", deployment, AckPhase.PREPARED)
        ack(orchestrator, "n2", deployment, AckPhase.PREPARED)
        assert sink.take() == [] and state(db, deployment) == "PREPARING"
        ack(orchestrator, "n3", deployment, AckPhase.PREPARED)
        assert kinds(sink.take()) == [(n, "commit") for n in NODES]
        assert state(db, deployment) == "COMMITTING"

    def test_all_active_succeeds_and_moves_the_fleet(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """When every node is ACTIVE the deployment SUCCEEDS and the fleet's release moves."""
        deployment = orchestrator.start(DeployRequest(release="smars@2"))
        for node in NODES:
            ack(orchestrator, node, deployment, AckPhase.PREPARED)
        for node in NODES:
            ack(orchestrator, node, deployment, AckPhase.ACTIVE)
        assert state(db, deployment) == "SUCCEEDED"
        with db.session() as session:
            fleet = get_fleet(session)
            assert (fleet.desired_digest, fleet.previous_digest) == (NEW, OLD)
            assert {n.desired_digest for n in session.query(Node)} == {NEW}

    def test_one_prepare_failure_aborts_everywhere(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """One PREPARE_FAILED fails the deployment; nobody commits; the prepared abort."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        sink.take()
        ack(orchestrator, "n1", deployment, AckPhase.PREPARED)
        ack(orchestrator, "n2", deployment, AckPhase.PREPARE_FAILED, reason="disk full")
        assert state(db, deployment) == "FAILED"
        sent = sink.take()
        assert "commit" not in {m.type for _, m in sent}
        assert ("n1", "abort") in kinds(sent)
        with db.session() as session:
            row = session.get(Deployment, deployment)
            assert row is not None and "n2: disk full" in (row.reason or "")

    def test_prepare_deadline_names_silent_nodes(
        self, orchestrator: Orchestrator, clock: VirtualClock, db: Database
    ) -> None:
        """A node that never answers PREPARE fails the deployment at the deadline, by name."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        ack(orchestrator, "n1", deployment, AckPhase.PREPARED)
        ack(orchestrator, "n2", deployment, AckPhase.PREPARED)
        clock.advance(29)
        orchestrator.tick()
        assert state(db, deployment) == "PREPARING"
        clock.advance(2)
        orchestrator.tick()
        assert state(db, deployment) == "FAILED"
        with db.session() as session:
            row = session.get(Deployment, deployment)
            assert row is not None and "n3" in (row.reason or "") and "n1" not in (row.reason or "")

    def test_commit_failure_rolls_every_node_back(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """One COMMIT_FAILED sends every node back to the release it ran before."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        for node in NODES:
            ack(orchestrator, node, deployment, AckPhase.PREPARED)
        ack(orchestrator, "n1", deployment, AckPhase.ACTIVE)
        sink.take()
        ack(orchestrator, "n2", deployment, AckPhase.COMMIT_FAILED, reason="health: 404")
        assert state(db, deployment) == "ROLLING_BACK"
        rollbacks = sink.take()
        assert sorted(kinds(rollbacks)) == [(n, "rollback") for n in NODES]
        assert all(isinstance(m, Rollback) and m.digest == OLD for _, m in rollbacks)
        for node in NODES:
            ack(orchestrator, node, deployment, AckPhase.ROLLED_BACK, digest=OLD)
        assert state(db, deployment) == "ROLLED_BACK"
        with db.session() as session:
            assert get_fleet(session).desired_digest == OLD

    def test_node_that_cannot_roll_back_is_named(
        self, orchestrator: Orchestrator, db: Database
    ) -> None:
        """A rollback that fails on a node ends ROLLBACK_FAILED naming that node."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        for node in NODES:
            ack(orchestrator, node, deployment, AckPhase.PREPARED)
        ack(orchestrator, "n1", deployment, AckPhase.COMMIT_FAILED, reason="boom")
        ack(orchestrator, "n1", deployment, AckPhase.ROLLED_BACK, digest=OLD)
        ack(orchestrator, "n2", deployment, AckPhase.ROLLED_BACK, digest=OLD)
        ack(
            orchestrator, "n3", deployment, AckPhase.ROLLBACK_FAILED, digest=OLD, reason="disk gone"
        )
        assert state(db, deployment) == "ROLLBACK_FAILED"

    def test_disconnect_during_prepare_fails(
        self, orchestrator: Orchestrator, db: Database
    ) -> None:
        """An agent that drops out during PREPARE fails the deployment at once."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        orchestrator.on_disconnect("n2")
        assert state(db, deployment) == "FAILED"
        assert phases(db, deployment)["n2"] == "PREPARE_FAILED"

    def test_disconnect_during_commit_rolls_back(
        self, orchestrator: Orchestrator, db: Database
    ) -> None:
        """An agent that drops out before answering COMMIT rolls the fleet back."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        for node in NODES:
            ack(orchestrator, node, deployment, AckPhase.PREPARED)
        orchestrator.on_disconnect("n3")
        assert state(db, deployment) == "ROLLING_BACK"

    def test_late_and_duplicate_acks_are_ignored(
        self, orchestrator: Orchestrator, db: Database
    ) -> None:
        """An ack the current phase does not expect changes nothing."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        ack(orchestrator, "n1", deployment, AckPhase.ACTIVE)
        assert phases(db, deployment)["n1"] == "PREPARING"
        ack(orchestrator, "n1", deployment, AckPhase.PREPARED)
        ack(orchestrator, "n1", deployment, AckPhase.PREPARED)
        assert state(db, deployment) == "PREPARING"


class TestCanary:
    def test_canary_first_then_soak_then_the_rest(
        self, orchestrator: Orchestrator, sink: RecordingSink, clock: VirtualClock, db: Database
    ) -> None:
        """The canary commits alone; the rest follow only after a healthy soak."""
        deployment = orchestrator.start(DeployRequest(release=NEW, strategy="canary"))
        for node in NODES:
            ack(orchestrator, node, deployment, AckPhase.PREPARED)
        assert kinds(sink.take()[-1:]) == [("n1", "commit")]
        assert state(db, deployment) == "CANARY"
        ack(orchestrator, "n1", deployment, AckPhase.ACTIVE)
        assert state(db, deployment) == "SOAKING"
        with db.session() as session:
            canary = session.get(Node, "n1")
            assert canary is not None
            canary.active_digest = NEW
        clock.advance(6)
        orchestrator.tick()
        assert state(db, deployment) == "COMMITTING"
        assert sorted(kinds(sink.take())) == [("n2", "commit"), ("n3", "commit")]

    def test_unhealthy_canary_rolls_back(
        self, orchestrator: Orchestrator, clock: VirtualClock, db: Database
    ) -> None:
        """A canary whose service is not running after its soak rolls everything back."""
        deployment = orchestrator.start(DeployRequest(release=NEW, strategy="canary"))
        for node in NODES:
            ack(orchestrator, node, deployment, AckPhase.PREPARED)
        ack(orchestrator, "n1", deployment, AckPhase.ACTIVE)
        with db.session() as session:
            canary = session.get(Node, "n1")
            assert canary is not None
            canary.active_digest, canary.service_state = NEW, "crash_loop"
        clock.advance(6)
        orchestrator.tick()
        assert state(db, deployment) == "ROLLING_BACK"


class TestRefusals:
    def test_one_deployment_at_a_time(self, orchestrator: Orchestrator) -> None:
        """A second deployment while one runs is refused by the gate."""
        orchestrator.start(DeployRequest(release=NEW))
        with pytest.raises(GateRefusedError, match="one deployment runs at a time"):
            orchestrator.start(DeployRequest(release=OLD))

    def test_unknown_release(self, orchestrator: Orchestrator, db: Database) -> None:
        """An unknown release is refused and no deployment is recorded."""
        with pytest.raises(ReleaseNotFoundError):
            orchestrator.start(DeployRequest(release="smars@9"))
        with db.session() as session:
            assert session.query(Deployment).count() == 0

    def test_zero_nodes(self, orchestrator: Orchestrator, db: Database) -> None:
        """A selector matching no node is refused and nothing is recorded."""
        with pytest.raises(InvalidInputError, match="no enrolled node matches"):
            orchestrator.start(DeployRequest(release=NEW, nodes="web*"))
        with db.session() as session:
            assert session.query(Deployment).count() == 0

    def test_no_connected_node(self, orchestrator: Orchestrator, db: Database) -> None:
        """If every selected node is offline the deploy is refused."""
        with db.session() as session:
            for node in session.query(Node):
                node.connected = False
        with pytest.raises(PolicyRefusedError) as refused:
            orchestrator.start(DeployRequest(release=NEW))
        offline = [r for r in refused.value.refusals if r.check == "targets-connected"]
        assert len(offline) == 1
        assert "none of the 3 selected nodes" in offline[0].reason
        assert set(offline[0].subjects) == {"n1", "n2", "n3"}
        with db.session() as session:
            assert session.query(Deployment).count() == 0

    def test_bad_selector(self, orchestrator: Orchestrator) -> None:
        """A malformed selector is refused with the offending term."""
        with pytest.raises(InvalidInputError, match="'N;1'"):
            orchestrator.start(DeployRequest(release=NEW, nodes="n1,N;1"))

    def test_rollback_needs_a_previous_release(self, orchestrator: Orchestrator) -> None:
        """A rollback with no previous fleet release is refused."""
        with pytest.raises(GateRefusedError, match="no previous fleet release"):
            orchestrator.start_rollback()


def restart_mid_switch(orchestrator: Orchestrator, sink: RecordingSink) -> int:
    """A deployment every node prepared and n1 switched to, then a control-plane restart."""
    deployment = orchestrator.start(DeployRequest(release=NEW))
    for node in NODES:
        ack(orchestrator, node, deployment, AckPhase.PREPARED)
    ack(orchestrator, "n1", deployment, AckPhase.ACTIVE)
    sink.take()
    orchestrator.recover()
    return deployment


class TestRecovery:
    def test_restart_during_prepare_abandons(
        self, orchestrator: Orchestrator, db: Database
    ) -> None:
        """A control plane restarted during PREPARE fails the deployment: nobody switched."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        ack(orchestrator, "n1", deployment, AckPhase.PREPARED)
        orchestrator.recover()
        assert state(db, deployment) == "FAILED"

    def test_restart_during_commit_rolls_back_on_reconnect(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """Restarted mid-switch, it rolls back; each node gets its rollback when it returns."""
        deployment = restart_mid_switch(orchestrator, sink)
        assert state(db, deployment) == "ROLLING_BACK"
        assert sink.take() == []  # nobody is connected after a restart
        orchestrator.on_connect("n2")
        assert kinds(sink.take()) == [("n2", "rollback")]

    def test_nodes_that_reconnect_together_are_each_sent_what_they_owe(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """on_connects (a reconnect storm's batch) owes each node what on_connect would."""
        restart_mid_switch(orchestrator, sink)
        orchestrator.on_connects(["n2", "n3"])
        assert sorted(kinds(sink.take())) == [("n2", "rollback"), ("n3", "rollback")]

    def test_offline_node_is_caught_up_when_it_returns(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """An offline target is marked OFFLINE; on its return a catch-up deployment starts."""
        with db.session() as session:
            node = session.get(Node, "n3")
            assert node is not None
            node.connected = False
        deployment = orchestrator.start(DeployRequest(release=NEW))
        assert phases(db, deployment)["n3"] == "OFFLINE"
        for node_name in ("n1", "n2"):
            ack(orchestrator, node_name, deployment, AckPhase.PREPARED)
        for node_name in ("n1", "n2"):
            ack(orchestrator, node_name, deployment, AckPhase.ACTIVE)
        assert state(db, deployment) == "SUCCEEDED"
        sink.take()
        with db.session() as session:
            for name in ("n1", "n2"):  # what their ACTIVE reports said
                reported = session.get(Node, name)
                assert reported is not None
                reported.active_digest = NEW
            node = session.get(Node, "n3")
            assert node is not None and node.desired_digest == NEW
            node.connected = True
        orchestrator.on_connect("n3")
        orchestrator.tick()
        assert kinds(sink.take()) == [("n3", "prepare")]


class TestTransitions:
    def test_every_terminal_state_is_final(self) -> None:
        """No declared transition leaves a terminal state."""
        for source in TERMINAL_STATES:
            for target in DeploymentState:
                with pytest.raises(IllegalTransitionError):
                    check_transition(source, target)

    def test_no_switch_without_prepare(self) -> None:
        """There is no transition from nothing straight to COMMITTING or SUCCEEDED."""
        with pytest.raises(IllegalTransitionError):
            check_transition(DeploymentState.PREPARING, DeploymentState.SUCCEEDED)


def soaking(orchestrator: Orchestrator, sink: RecordingSink) -> int:
    """A canary deployment of NEW with n1 ACTIVE and soaking, n2 and n3 WAITING."""
    deployment = orchestrator.start(DeployRequest(release=NEW, strategy="canary"))
    for node in NODES:
        ack(orchestrator, node, deployment, AckPhase.PREPARED)
    ack(orchestrator, "n1", deployment, AckPhase.ACTIVE)
    sink.take()
    return deployment


def lose(orchestrator: Orchestrator, sink: RecordingSink, db: Database, node: str) -> None:
    """Node ``node``'s agent is gone: disconnected in the store and the hub."""
    sink.offline.add(node)
    with db.session() as session:
        row = session.get(Node, node)
        assert row is not None
        row.connected = False
    orchestrator.on_disconnect(node)


def reconnect(
    orchestrator: Orchestrator,
    sink: RecordingSink,
    db: Database,
    node: str,
    *,
    active: str = OLD,
    service: str = "running",
) -> list[tuple[str, str]]:
    """Node ``node`` returns reporting ``active`` and ``service``; return what it is sent."""
    sink.offline.discard(node)
    with db.session() as session:
        row = session.get(Node, node)
        assert row is not None
        row.connected, row.active_digest, row.service_state = True, active, service
    sink.take()
    orchestrator.on_connect(node)
    return kinds(sink.take())


class TestLostTargets:
    def test_target_lost_after_prepared_fails_before_any_commit(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """A node lost after PREPARED, before COMMIT, fails the deployment: nobody switches."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        ack(orchestrator, "n1", deployment, AckPhase.PREPARED)
        ack(orchestrator, "n2", deployment, AckPhase.PREPARED)
        sink.take()
        lose(orchestrator, sink, db, "n1")
        assert state(db, deployment) == "FAILED"
        ack(orchestrator, "n3", deployment, AckPhase.PREPARED)
        sent = kinds(sink.take())
        assert "commit" not in {kind for _, kind in sent}
        assert sent == [("n2", "abort"), ("n3", "abort")]
        assert phases(db, deployment)["n1"] == "PREPARED"
        with db.session() as session:
            row = session.get(Deployment, deployment)
            assert row is not None and "n1: agent disconnected" in (row.reason or "")

    def test_waiting_node_lost_during_soak_rolls_the_canary_back_at_once(
        self, orchestrator: Orchestrator, sink: RecordingSink, clock: VirtualClock, db: Database
    ) -> None:
        """A non-canary lost during the soak: no COMMIT to the rest, the canary rolls back now."""
        deployment = soaking(orchestrator, sink)
        lose(orchestrator, sink, db, "n3")
        assert state(db, deployment) == "ROLLING_BACK"
        assert sorted(kinds(sink.take())) == [("n1", "rollback"), ("n2", "abort")]
        ack(orchestrator, "n2", deployment, AckPhase.ABORTED)
        ack(orchestrator, "n1", deployment, AckPhase.ROLLED_BACK, digest=OLD)
        assert state(db, deployment) == "ROLLED_BACK"  # without waiting for n3
        assert phases(db, deployment) == {"n1": "ROLLED_BACK", "n2": "ABORTED", "n3": "WAITING"}
        clock.advance(600)
        orchestrator.tick()
        assert "commit" not in {kind for _, kind in sink.take()}
        assert phases(db, deployment)["n3"] == "WAITING"  # never made to time out a rollback
        assert reconnect(orchestrator, sink, db, "n3") == [("n3", "abort")]
        ack(orchestrator, "n3", deployment, AckPhase.ABORTED)
        assert phases(db, deployment)["n3"] == "ABORTED"
        assert reconnect(orchestrator, sink, db, "n3") == []

    def test_canary_lost_during_soak_rolls_back_at_once(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """The canary lost during its soak rolls the deployment back before the soak ends."""
        deployment = soaking(orchestrator, sink)
        lose(orchestrator, sink, db, "n1")
        assert state(db, deployment) == "ROLLING_BACK"
        assert sorted(kinds(sink.take())) == [("n2", "abort"), ("n3", "abort")]
        assert reconnect(orchestrator, sink, db, "n1", active=NEW, service="stopped") == [
            ("n1", "rollback")
        ]

    def test_waiting_node_not_connected_at_the_end_of_the_soak_stops_the_fleet(
        self, orchestrator: Orchestrator, sink: RecordingSink, clock: VirtualClock, db: Database
    ) -> None:
        """A waiting node gone unnoticed by the hub when the soak ends: no COMMIT, rollback."""
        deployment = soaking(orchestrator, sink)
        with db.session() as session:
            for name, row in ((n, session.get(Node, n)) for n in ("n1", "n2")):
                assert row is not None
                row.active_digest = NEW if name == "n1" else OLD
                row.connected = name == "n1"
        clock.advance(6)
        orchestrator.tick()
        assert state(db, deployment) == "ROLLING_BACK"
        assert "commit" not in {kind for _, kind in sink.take()}

    def test_node_lost_during_commit_gets_its_rollback_when_it_returns(
        self, orchestrator: Orchestrator, sink: RecordingSink, clock: VirtualClock, db: Database
    ) -> None:
        """Lost after switching and back after the rollback ended: told to roll back then."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        for node in NODES:
            ack(orchestrator, node, deployment, AckPhase.PREPARED)
        ack(orchestrator, "n1", deployment, AckPhase.ACTIVE)
        lose(orchestrator, sink, db, "n3")
        assert state(db, deployment) == "ROLLING_BACK"
        for node in ("n1", "n2"):
            ack(orchestrator, node, deployment, AckPhase.ROLLED_BACK, digest=OLD)
        clock.advance(31)
        orchestrator.tick()
        assert state(db, deployment) == "ROLLBACK_FAILED"
        assert reconnect(orchestrator, sink, db, "n3", active=NEW, service="stopped") == [
            ("n3", "rollback")
        ]
        ack(orchestrator, "n3", deployment, AckPhase.ROLLED_BACK, digest=OLD)
        assert phases(db, deployment)["n3"] == "ROLLED_BACK"
        assert state(db, deployment) == "ROLLBACK_FAILED"  # what happened stays recorded
        assert reconnect(orchestrator, sink, db, "n3") == []


class TestOutcomesOnConnect:
    def test_restart_during_prepare_aborts_each_node_when_it_returns(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """Aborts lost with a restarted control plane reach each node when it reconnects."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        ack(orchestrator, "n1", deployment, AckPhase.PREPARED)
        sink.offline |= set(NODES)
        orchestrator.recover()
        assert state(db, deployment) == "FAILED"
        for node in NODES:
            assert reconnect(orchestrator, sink, db, node) == [(node, "abort")]
            ack(orchestrator, node, deployment, AckPhase.ABORTED)
            assert reconnect(orchestrator, sink, db, node) == []
        assert set(phases(db, deployment).values()) == {"ABORTED"}

    def test_prepare_failure_keeps_its_phase_after_the_abort(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """A node that failed PREPARE is told to abort once and its row keeps PREPARE_FAILED."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        lose(orchestrator, sink, db, "n2")
        assert phases(db, deployment)["n2"] == "PREPARE_FAILED"
        assert reconnect(orchestrator, sink, db, "n2") == [("n2", "abort")]
        ack(orchestrator, "n2", deployment, AckPhase.ABORTED)
        assert phases(db, deployment)["n2"] == "PREPARE_FAILED"
        assert reconnect(orchestrator, sink, db, "n2") == []

    def test_restart_during_soak_aborts_the_waiting_and_rolls_back_the_canary(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """Recovered mid-soak: the canary gets Rollback, the nodes that never switched Abort."""
        deployment = soaking(orchestrator, sink)
        sink.offline |= set(NODES)
        orchestrator.recover()
        assert phases(db, deployment) == {"n1": "ROLLING_BACK", "n2": "WAITING", "n3": "WAITING"}
        assert reconnect(orchestrator, sink, db, "n2") == [("n2", "abort")]
        assert reconnect(orchestrator, sink, db, "n1", active=NEW) == [("n1", "rollback")]
        ack(orchestrator, "n1", deployment, AckPhase.ROLLED_BACK, digest=OLD)
        assert state(db, deployment) == "ROLLED_BACK"

    def test_success_tells_each_node_to_run_what_it_kept(
        self, orchestrator: Orchestrator, sink: RecordingSink, db: Database
    ) -> None:
        """On success each node is told to run the release; again on return, if it waits."""
        deployment = orchestrator.start(DeployRequest(release=NEW))
        for node in NODES:
            ack(orchestrator, node, deployment, AckPhase.PREPARED)
        sink.take()
        for node in NODES:
            ack(orchestrator, node, deployment, AckPhase.ACTIVE)
        assert state(db, deployment) == "SUCCEEDED"
        sent = sink.take()
        assert sorted(kinds(sent)) == [(n, "commit") for n in NODES]
        assert all(isinstance(m, Commit) and not m.restage for _, m in sent)
        assert reconnect(orchestrator, sink, db, "n1", active=NEW, service="running") == []
        assert reconnect(orchestrator, sink, db, "n1", active=NEW, service="stopped") == [
            ("n1", "commit")
        ]
        assert reconnect(orchestrator, sink, db, "n1", active=OLD, service="stopped") == []
