"""The safety policy on a real store: every check returns every refusal, one table per action."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from knightwatch.clock import VirtualClock
from knightwatch.control.alerts import fire
from knightwatch.control.deploy import Orchestrator
from knightwatch.control.deploy_requests import DeployRequest, DeployTimeouts
from knightwatch.control.policy import (
    POLICY,
    Action,
    Proposal,
    dry_run,
    enforce,
    evaluate,
    parse_action,
)
from knightwatch.control.policy.checks import (
    NoDrift,
    NoRunningDeployment,
    ReleaseNotInUse,
    ReleaseNotRetired,
)
from knightwatch.control.retirement import start_retirement
from knightwatch.errors import InvalidInputError, PolicyRefusedError, Refusal
from knightwatch.store import Database, Deployment, Node, Release, Retirement
from knightwatch.store.queries import get_fleet
from tests.helpers import release_row

OLD, NEW = "a" * 64, "b" * 64
NODES = ("node1", "node2", "node3")


@pytest.fixture
def clock() -> VirtualClock:
    """A clock that moves only when the test says so."""
    return VirtualClock(datetime(2012, 8, 1, 9, 30, tzinfo=UTC))


@pytest.fixture
def db(db: Database, clock: VirtualClock) -> Database:
    """Three enrolled, connected nodes running OLD; NEW is pushed and not deployed."""
    now = clock.now()
    with db.session() as session:
        session.add_all([release_row(OLD, "1", now), release_row(NEW, "2", now)])
        for name in NODES:
            session.add(
                Node(
                    name=name,
                    status="enrolled",
                    created_at=now,
                    connected=True,
                    active_digest=OLD,
                    desired_digest=OLD,
                    service_state="running",
                )
            )
        get_fleet(session, now=now).desired_digest = OLD
    return db


def drift(db: Database, *names: str) -> None:
    """Mark nodes DRIFTED, each with one finding naming it."""
    with db.session() as session:
        for name in names:
            node = session.get_one(Node, name)
            node.drift_state = "drifted"
            node.drift_findings = json.dumps([{"detail": f"extra file on {name}"}])


def alert(db: Database, clock: VirtualClock, node: str | None) -> int:
    """Fire a critical alert on ``node`` (the fleet when None); return its id."""
    with db.session() as session:
        return fire(
            session,
            rule="guard:runaway",
            node=node,
            severity="critical",
            summary=f"runaway on {node}",
            detail="",
            now=clock.now(),
        ).id


def halt(db: Database, *names: str, reason: str = "stop") -> None:
    """Mark nodes halted by the kill switch."""
    with db.session() as session:
        for name in names:
            node = session.get_one(Node, name)
            node.halted, node.halt_source, node.halt_reason = True, "kill", reason


def deploy_proposal(db: Database, action: Action = Action.DEPLOY) -> list[Refusal]:
    """What the policy refuses for ``action`` of NEW to every node."""
    with db.session() as session:
        nodes = tuple(session.scalars(select(Node).order_by(Node.name)))
        return evaluate(session, Proposal(action, session.get_one(Release, NEW), nodes))


class _NullSink:
    """Accepts every command (these tests look only at what is recorded)."""

    def send(self, node: str, message: object) -> bool:
        """Pretend the command went out."""
        return True


class TestChecks:
    def test_drift_refuses_once_per_drifted_node(self, db: Database) -> None:
        """Every drifted node is its own refusal, naming it and how to restore it."""
        drift(db, "node1", "node3")
        with db.session() as session:
            refusals = NoDrift().refusals(session, Proposal(Action.DEPLOY))
        assert [r.subjects for r in refusals] == [("node1",), ("node3",)]
        assert refusals[0].reason == "the fleet has drift on node1 (extra file on node1)"
        assert refusals[1].hint is not None
        assert "knightwatch reconcile --node node3" in refusals[1].hint

    def test_a_retired_or_retiring_release_is_refused(self, db: Database) -> None:
        """A release with a retirement recorded is never deployed again."""
        with db.session() as session:
            release = session.get_one(Release, NEW)
            assert ReleaseNotRetired().refusals(session, Proposal(Action.DEPLOY, release)) == []
            session.add(
                Retirement(
                    release_digest=NEW,
                    requested_by="t",
                    requested_at=datetime(2012, 8, 1, tzinfo=UTC),
                    reason="dead code",
                )
            )
            session.flush()
            [refusal] = ReleaseNotRetired().refusals(session, Proposal(Action.DEPLOY, release))
        assert refusal.reason.endswith("is retired; a retired release is never deployed again")
        assert refusal.subjects == (release.release_id,)

    def test_a_release_in_use_is_refused_for_every_use(self, db: Database) -> None:
        """The fleet's release, active on three nodes: one refusal for each use."""
        with db.session() as session:
            release = session.get_one(Release, OLD)
            refusals = ReleaseNotInUse().refusals(session, Proposal(Action.RETIRE, release))
        reasons = [r.reason.removeprefix(f"{release.release_id} is the ") for r in refusals]
        assert reasons == [
            "fleet's active release",
            *(f"{role} on {n}" for n in NODES for role in ("active", "desired release")),
        ]

    def test_a_running_deployment_is_refused(self, db: Database, clock: VirtualClock) -> None:
        """While a deployment runs, another is refused naming it."""
        orchestrator = Orchestrator(db, _NullSink(), clock, DeployTimeouts())
        deployment_id = orchestrator.start(DeployRequest(release=NEW))
        with db.session() as session:
            [refusal] = NoRunningDeployment().refusals(session, Proposal(Action.DEPLOY))
        assert refusal.subjects == (f"deployment {deployment_id}",)
        assert "one deployment runs at a time" in refusal.reason


class TestPolicy:
    def test_every_action_has_a_row(self) -> None:
        """The table names the checks of every action, in order; a re-arm has none yet."""
        assert set(POLICY) == set(Action)
        assert [c.name for c in POLICY[Action.DEPLOY]] == [
            "one-deployment-at-a-time",
            "release-not-retired",
            "nodes-not-halted",
            "targets-connected",
            "no-unacknowledged-critical",
            "no-drift",
        ]
        assert "no-drift" not in [c.name for c in POLICY[Action.RECONCILE]]
        assert POLICY[Action.REARM] == ()

    def test_a_deploy_is_refused_with_every_reason(self, db: Database, clock: VirtualClock) -> None:
        """Drift, a critical alert and a halt together: every one listed, each naming its nodes."""
        drift(db, "node2")
        alert_id = alert(db, clock, "node1")
        halt(db, "node3", reason="runaway")
        refusals = deploy_proposal(db)
        assert [(r.check, r.subjects) for r in refusals] == [
            ("nodes-not-halted", ("node3",)),
            ("no-unacknowledged-critical", (f"alert #{alert_id}", "node1")),
            ("no-drift", ("node2",)),
        ]

    def test_a_reconcile_is_not_refused_for_drift_or_alerts(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """The repair of drift runs while the fleet drifts and alerts."""
        drift(db, "node2")
        alert(db, clock, None)
        assert deploy_proposal(db, Action.RECONCILE) == []

    def test_enforce_raises_with_all_refusals(self, db: Database, clock: VirtualClock) -> None:
        """PolicyRefusedError carries every refusal; its message names each reason."""
        drift(db, "node1", "node2")
        with db.session() as session:
            proposal = Proposal(Action.DEPLOY, session.get_one(Release, NEW))
            with pytest.raises(PolicyRefusedError) as refused:
                enforce(session, proposal)
        assert refused.value.action == "deploy"
        assert [r.subjects for r in refused.value.refusals] == [("node1",), ("node2",)]
        assert refused.value.message.startswith("deploy refused for 2 reasons: ")
        assert refused.value.exit_code == 2

    def test_the_orchestrator_records_nothing_when_refused(
        self, db: Database, clock: VirtualClock
    ) -> None:
        """A refused deploy leaves no deployment behind, and says every reason."""
        drift(db, "node1")
        alert(db, clock, "node2")
        orchestrator = Orchestrator(db, _NullSink(), clock, DeployTimeouts())
        with pytest.raises(PolicyRefusedError) as refused:
            orchestrator.start(DeployRequest(release=NEW))
        assert {r.check for r in refused.value.refusals} == {
            "no-unacknowledged-critical",
            "no-drift",
        }
        with db.session() as session:
            assert session.query(Deployment).count() == 0

    def test_a_retirement_is_refused_for_every_use(self, db: Database, clock: VirtualClock) -> None:
        """Retiring the fleet's release lists the fleet's and every node's use of it."""
        with db.session() as session, pytest.raises(PolicyRefusedError) as refused:
            start_retirement(session, OLD, "dead code", "alice", clock.now())
        assert len(refused.value.refusals) == 1 + 2 * len(NODES)


class TestDryRun:
    def test_the_dry_run_lists_the_same_refusals(self, db: Database, clock: VirtualClock) -> None:
        """``check deploy`` evaluates the table the deploy does, and changes nothing."""
        drift(db, "node2")
        alert(db, clock, "node1")
        with db.session() as session:
            checked = dry_run(session, Action.DEPLOY, release=NEW)
            assert session.query(Deployment).count() == 0
        assert checked == deploy_proposal(db)

    def test_arguments_are_checked(self, db: Database) -> None:
        """A deploy without a release, or a reconcile without a node, is refused as input."""
        with db.session() as session:
            with pytest.raises(InvalidInputError, match="check deploy needs RELEASE"):
                dry_run(session, Action.DEPLOY)
            with pytest.raises(InvalidInputError, match="--node NODE"):
                dry_run(session, Action.RECONCILE)
            assert dry_run(session, Action.RECONCILE, node="node1") == []
            assert dry_run(session, Action.REARM) == []

    def test_an_unknown_action_lists_the_known_ones(self) -> None:
        """A typo is refused naming every action the policy knows (not the internal catch-up)."""
        with pytest.raises(InvalidInputError) as refused:
            parse_action("deplyo")
        assert refused.value.message == (
            "unknown action 'deplyo': the known actions are "
            "deploy, rollback, reconcile, retire, rearm, flag-set"
        )
        with pytest.raises(InvalidInputError):
            parse_action("catchup")
        assert parse_action("retire") is Action.RETIRE
